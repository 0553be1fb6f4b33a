# expect: patching: check the reshape/permute
"""Reshape/permute patching with the wrong permute: each token gathers pixel rows of several patches."""

BASE = "valid_reshape_patching"
CHANGES = [
    (".permute(0, 2, 4, 1, 3, 5)  # [B, H/P, W/P, C, P, P]",
     ".permute(0, 2, 3, 1, 4, 5)  # should be (0, 2, 4, 1, 3, 5)"),
]
