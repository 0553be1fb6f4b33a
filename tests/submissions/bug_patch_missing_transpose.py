# expect: patching: missing transpose
# also-fails: head
"""PatchEmbedding returns [B, E, N]: the final transpose is missing."""

CHANGES = [
    ("return x.transpose(1, 2)  # [B, N, E]",
     "return x  # [B, E, N]"),
]
