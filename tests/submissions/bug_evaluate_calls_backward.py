# expect: training: must not call loss.backward()
"""evaluate was copied from the training loop and still calls loss.backward()."""

BASE = "valid_training_variants"  # its evaluate loops without a `with` block
CHANGES = [
    ("@torch.no_grad()\n",
     ""),
    ("        losses.append(criterion(logits, targets.to(device)).item())\n",
     "        loss = criterion(logits, targets.to(device))\n"
     "        loss.backward()\n"
     "        losses.append(loss.item())\n"),
]
