# expect: training: not of batches
"""evaluate divides the number of correct samples by the number of batches."""

CHANGES = [
    ("return correct / total_samples,",
     "return correct / len(loader),"),
]
