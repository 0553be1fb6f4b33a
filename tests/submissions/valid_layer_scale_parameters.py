# expect: valid
"""LayerScale as two raw nn.Parameter vectors in the block, no LayerScale module."""

CHANGES = [
    ("        self.ls1 = nn.Identity() if layer_scale is None else LayerScale(embed_dim, layer_scale)\n",
     ""),
    ("        self.ls2 = nn.Identity() if layer_scale is None else LayerScale(embed_dim, layer_scale)\n",
     "        if layer_scale is None:\n"
     "            self.gamma1 = self.gamma2 = None\n"
     "        else:\n"
     "            self.gamma1 = nn.Parameter(layer_scale * torch.ones(embed_dim))\n"
     "            self.gamma2 = nn.Parameter(layer_scale * torch.ones(embed_dim))\n"),
    ("        x = x + self.ls1(attn_out)\n"
     "        x = x + self.ls2(self.mlp(self.norm2(x)))\n",
     "        if self.gamma1 is None:\n"
     "            x = x + attn_out\n"
     "            x = x + self.mlp(self.norm2(x))\n"
     "        else:\n"
     "            x = x + self.gamma1 * attn_out\n"
     "            x = x + self.gamma2 * self.mlp(self.norm2(x))\n"),
]
