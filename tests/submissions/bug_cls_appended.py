# expect: cls_token: appended at the end
"""The class token is concatenated after the patch tokens instead of before them."""

CHANGES = [
    ("torch.cat([cls, x], dim=1)",
     "torch.cat([x, cls], dim=1)"),
]
