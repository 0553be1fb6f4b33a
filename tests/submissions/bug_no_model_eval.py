# expect: training: call model.eval()
"""evaluate never calls model.eval()."""

CHANGES = [
    ("    model.eval()\n",
     ""),
]
