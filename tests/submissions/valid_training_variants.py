# expect: valid
"""zero_grad after the step with model.zero_grad(), per-batch mean losses, accuracy from a running count over len(loader.dataset)."""


def train_one_epoch(model, loader, optimizer, criterion, device) -> float:
    model.train()
    losses = []
    for images, targets in loader:
        loss = criterion(model(images.to(device)), targets.to(device))
        loss.backward()
        optimizer.step()
        model.zero_grad()
        losses.append(loss.item())
    return sum(losses) / len(losses)


@torch.no_grad()
def evaluate(model, loader, criterion, device) -> tuple[float, float]:
    model.eval()
    correct, losses = 0, []
    for images, targets in loader:
        logits = model(images.to(device))
        losses.append(criterion(logits, targets.to(device)).item())
        correct += int((logits.argmax(1) == targets.to(device)).sum())
    return correct / len(loader.dataset), sum(losses) / len(losses)
