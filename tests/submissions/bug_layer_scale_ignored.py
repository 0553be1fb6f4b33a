# expect: encoder_block: multiplies each branch
"""layer_scale is accepted but never used."""

CHANGES = [
    ("self.ls1 = nn.Identity() if layer_scale is None else LayerScale(embed_dim, layer_scale)",
     "self.ls1 = nn.Identity()"),
    ("self.ls2 = nn.Identity() if layer_scale is None else LayerScale(embed_dim, layer_scale)",
     "self.ls2 = nn.Identity()"),
]
