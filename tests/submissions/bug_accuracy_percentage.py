# expect: training: not a percentage
"""evaluate returns the accuracy in percent."""

CHANGES = [
    ("return correct / total_samples, total_loss / total_samples",
     "return 100 * correct / total_samples, total_loss / total_samples"),
]
