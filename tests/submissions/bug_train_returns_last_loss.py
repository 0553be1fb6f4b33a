# expect: training: you return the last batch's loss
"""train_one_epoch returns the loss of the last batch."""

CHANGES = [
    ("    return total_loss / total_samples\n",
     "    return loss.item()\n"),
]
