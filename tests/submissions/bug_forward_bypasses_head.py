# expect: skeleton: forward must return self.head
"""forward re-implements the head inline instead of calling self.head (so pool= is ignored)."""

CHANGES = [
    ("        return self.head(self.forward_features(x))\n",
     "        x = self.forward_features(x)\n"
     "        return self.head.fc(self.head.norm(x[:, 0]))\n"),
]
