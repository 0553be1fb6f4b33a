# expect: training: only the first batch is counted
"""evaluate returns from inside the loop, after the first batch."""

CHANGES = [  # the return is indented into the loop
    ("    return correct / total_samples, total_loss / total_samples\n",
     "            return correct / total_samples, total_loss / total_samples\n"),
]
