# expect: training: call model.train()
"""train_one_epoch never calls model.train() (after evaluate, the model stays in eval mode)."""

CHANGES = [
    ("    model.train()\n",
     ""),
]
