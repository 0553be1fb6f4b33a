"""Stage 6: one epoch of training, and an evaluation pass."""
import torch


def train_one_epoch(model, loader, optimizer, criterion, device) -> float:
    """Train for one pass over `loader`; return the mean loss per sample."""
    model.train()
    total_loss, total_samples = 0.0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)  # gradients would otherwise add up across steps
        loss = criterion(model(images), targets)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(targets)
        total_samples += len(targets)
    return total_loss / total_samples


def evaluate(model, loader, criterion, device) -> tuple[float, float]:
    """Return (accuracy, mean loss per sample) over the whole of `loader`; no parameter changes."""
    model.eval()
    correct, total_loss, total_samples = 0, 0.0, 0
    with torch.no_grad():
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            total_loss += criterion(logits, targets).item() * len(targets)
            correct += (logits.argmax(dim=1) == targets).sum().item()
            total_samples += len(targets)
    return correct / total_samples, total_loss / total_samples
