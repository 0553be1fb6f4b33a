# expect: encoder_block: heads are merged in the wrong order
"""The heads are merged with a reshape of [B, NH, N, d] straight to [B, N, E]."""

CHANGES = [
    ("out = out.transpose(1, 2).reshape(B, N, E)",
     "out = out.reshape(B, N, E)"),
]
