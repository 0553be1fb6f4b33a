"""Does the fast path learn as well? A short real training run, fp32 against the default path.

Same seed, same data order, same model (the course config); only the SpeedPlan differs.
The data: a small phantom set generated on disk, read through LiTSDataset.
"""
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import solutions
from vitlab.performance import SpeedPlan

BATCH = 32
LR, WEIGHT_DECAY, GRAD_CLIP = 3e-4, 0.05, 1.0


def evaluate(model, loader, plan: SpeedPlan) -> tuple[float, float]:
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    with torch.inference_mode(), plan.autocast():
        for images, targets in loader:
            logits = model(images).float()
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(1) == targets).sum().item()
            count += len(targets)
    return correct / count, loss_sum / count


def short_run(plan: SpeedPlan, splits: dict, config: dict, epochs: int, log) -> dict:
    torch.manual_seed(0)
    model = plan.prepare_model(solutions.VisionTransformer(**config))
    optimizer = plan.make_optimizer(model.parameters(), "adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    train = DataLoader(splits["train"], batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    test = DataLoader(splits["test"], batch_size=64)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        losses = []
        for images, targets in train:
            optimizer.zero_grad(set_to_none=True)
            with plan.autocast():
                loss = F.cross_entropy(model(images), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            losses.append(loss.item())
        log(f"  {plan.precision}: epoch {epoch + 1}/{epochs}, train loss {np.mean(losses):.4f}")
    seconds = time.perf_counter() - start
    accuracy, test_loss = evaluate(model, test, plan)
    return {"test_accuracy": accuracy, "test_loss": test_loss, "final_train_loss": float(np.mean(losses)),
            "train_seconds": seconds, "plan": plan.to_dict()}


def compare(root, config: dict, epochs: int, log=print) -> dict:
    from vitlab.data import LiTSDataset

    splits = {split: LiTSDataset(root, split) for split in ("train", "test")}
    counts = splits["test"].class_counts()
    runs = {"fp32": short_run(SpeedPlan("cpu", "fp32", compile=False, fused_optimizer=False), splits, config, epochs, log),
            "default path": short_run(SpeedPlan.for_device("cpu"), splits, config, epochs, log)}
    return {"epochs": epochs, "train_slices": len(splits["train"]), "test_slices": len(splits["test"]),
            "majority_baseline": float(counts.max() / counts.sum()), "runs": runs}
