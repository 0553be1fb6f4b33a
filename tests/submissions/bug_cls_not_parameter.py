# expect: cls_token: not an nn.Parameter
"""The class token is a plain tensor: not learnable, not in parameters()."""

CHANGES = [
    ("        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))\n"
     "        nn.init.trunc_normal_(self.cls_token, std=0.02)\n",
     "        self.cls_token = torch.zeros(1, 1, embed_dim)\n"),
]
