# expect: encoder_block: attention mixes the samples
# also-fails: head
"""nn.MultiheadAttention without batch_first=True: the samples attend to each other, tokens do not."""

BASE = "valid_torch_multihead_attention"
CHANGES = [
    ("nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)",
     "nn.MultiheadAttention(embed_dim, num_heads)"),
    ("self.mha(x, x, x, need_weights=return_attention, average_attn_weights=False)",
     "self.mha(x, x, x, average_attn_weights=False)"),
]
