# expect: training: wrap the loop in torch.no_grad()
"""evaluate builds a graph for every batch."""

BASE = "valid_training_variants"  # its evaluate is decorated with @torch.no_grad()
CHANGES = [
    ("@torch.no_grad()\n",
     ""),
]
