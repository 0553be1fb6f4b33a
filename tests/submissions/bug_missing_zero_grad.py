# expect: training: gradients accumulate across steps
"""optimizer.zero_grad() is missing: gradients add up over the epoch."""

CHANGES = [
    ("        optimizer.zero_grad()\n",
     ""),
]
