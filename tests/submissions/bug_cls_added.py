# expect: cls_token: added to every patch token
# also-fails: head
"""The class token is added to every patch token instead of concatenated."""

CHANGES = [
    ("return torch.cat([cls, x], dim=1)                 # [B, N + 1, E]",
     "return x + cls                                    # [B, N, E]"),
]
