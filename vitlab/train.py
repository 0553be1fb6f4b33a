"""`vitlab train`: train the reference ViT (or a submission's) on CT slices, and leave a run folder.

    vitlab train                               # the built-in phantom set, the default preset
    vitlab train --optimizer sgd --epochs 20   # SGD with momentum 0.9, as the ViT paper
    vitlab train --resume runs/20250101-120000 # continue an interrupted run
    torchrun --nproc-per-node 4 -m vitlab train --device cuda   # one process per GPU (DDP)

The run folder: train_log.csv (epoch, step, loss), val_log.csv (epoch, val_loss, val_accuracy),
test_log.csv, summary.json, checkpoint.pt (end of the last finished epoch), loss_curve.png and
attention.png.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from vitlab.distributed import (World, ShardedEvalSampler, all_reduce_sum, barrier, broadcast_object,
                                close_world, gather_objects, init_world)
from vitlab.performance import PRECISIONS, SpeedPlan

# Model sizes. The image size comes from the data; the patch size must divide it.
MODEL_PRESETS = {
    # a few seconds per epoch on 64 x 64 test sets
    "tiny": dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0),
    # the default: trains on the built-in 256 x 256 phantoms on a 2-core CPU in minutes
    "small": dict(patch_size=32, embed_dim=96, depth=4, num_heads=3, mlp_ratio=3.0),
    # the course's model (the contract's defaults): ViT-Tiny width, six blocks
    "course": dict(patch_size=16, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0),
}
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 1e-4}
AUGMENTATIONS = ("none", "light")
DEVICES = ("auto", "cpu", "cuda", "mps")
RESUMABLE_FIELDS = ("epochs", "device", "workers")  # what --resume may change
TRAIN_LOG_COLUMNS = ("epoch", "step", "loss")
VAL_LOG_COLUMNS = ("epoch", "val_loss", "val_accuracy")
TEST_LOG_COLUMNS = ("epoch", "test_loss", "test_accuracy", "test_samples", "majority_baseline")


class TrainError(Exception):
    """A run that cannot start or continue; the message says why and what to do."""


@dataclass
class TrainConfig:
    data_dir: str | None = None      # Clean_LiTS layout; None: the built-in phantom set
    out: str | None = None           # run folder; None: runs/<date-time>
    model: str = "small"             # a MODEL_PRESETS key
    submission: str | None = None    # train the VisionTransformer of this submission instead
    optimizer: str = "adamw"
    epochs: int = 10
    batch_size: int = 64             # per process: the global batch is batch_size * world size
    lr: float | None = None          # None: DEFAULT_LR[optimizer]
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY[optimizer]
    warmup_fraction: float = 0.1     # linear warm-up over this share of the steps, then cosine decay
    grad_clip: float = 1.0           # clip the global gradient norm (the ViT paper: 1); 0: off
    augment: str = "light"           # training-time augmentation: none | light
    seed: int = 0
    device: str = "auto"
    workers: int = 0                 # DataLoader worker processes
    precision: str = "auto"          # auto | fp32 | bf16 (auto: bf16 where the hardware has it natively)
    compile: bool | None = None      # torch.compile the model; None: where it pays off (CUDA)
    resume: bool = False             # continue the run in `out` from its checkpoint

    def __post_init__(self):
        if self.model not in MODEL_PRESETS:
            raise TrainError(f"Unknown model preset {self.model!r}: choose one of {', '.join(MODEL_PRESETS)}.")
        if self.optimizer not in OPTIMIZERS:
            raise TrainError(f"Unknown optimizer {self.optimizer!r}: choose adamw or sgd.")
        if self.augment not in AUGMENTATIONS:
            raise TrainError(f"Unknown augmentation {self.augment!r}: choose none or light.")
        if self.device not in DEVICES:
            raise TrainError(f"Unknown device {self.device!r}: choose one of {', '.join(DEVICES)}.")
        if self.precision not in PRECISIONS:
            raise TrainError(f"Unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}.")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name}={getattr(self, name)}: it must be at least 1.")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer]


# ---------------------------------------------------------------------------------------------
# Run folder: CSV logs that survive an interruption, an atomic checkpoint
# ---------------------------------------------------------------------------------------------

class CsvLog:
    """Rows appended and flushed as they come; only rank 0 writes (the others hold a closed log)."""

    def __init__(self, path: Path, columns: tuple[str, ...], enabled: bool, keep_until_epoch: int | None):
        self.path, self.columns, self.file = path, columns, None
        if not enabled:
            return
        if keep_until_epoch is None or not path.is_file():
            path.write_text(",".join(columns) + "\n")
        else:
            self._truncate_after(keep_until_epoch)
        self.file = path.open("a", newline="")
        self.writer = csv.writer(self.file)

    def _truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs the checkpoint does not hold (written after it, before the interruption)."""
        with self.path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if row.get("epoch", "").isdigit()
                    and int(row["epoch"]) <= epoch]
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, self.path)

    def write(self, *values) -> None:
        if self.file is not None:
            self.writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values])
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def save_atomically(obj, path: Path) -> None:
    """Write to a temporary file, then rename: an interruption never leaves a half-written checkpoint."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint(run_dir) -> dict:
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise TrainError(f"{path} does not exist: the run stopped before its first epoch ended "
                         f"(or {run_dir} is not a run folder). Start it again without --resume.")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_run_config(run_dir, **changes) -> TrainConfig:
    """The config of the run in `run_dir`, set to resume it; `changes` may set epochs, device or workers."""
    saved = load_checkpoint(run_dir)["config"]
    not_resumable = sorted(set(changes) - set(RESUMABLE_FIELDS))
    if not_resumable:
        raise TrainError(f"--resume continues a run with its own settings; only {', '.join(RESUMABLE_FIELDS)} "
                         f"may change, not {', '.join(not_resumable)}. Start a new run to change them.")
    known = {f.name for f in fields(TrainConfig)}
    return replace(TrainConfig(**{k: v for k, v in saved.items() if k in known}),
                   out=str(run_dir), resume=True, **changes)


def new_run_dir(config: TrainConfig, world: World) -> Path:
    """The run folder, chosen by rank 0 (a time stamp may differ between processes) and shared."""
    if world.is_main:
        out = Path(config.out) if config.out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
        if (out / "checkpoint.pt").exists():
            out = TrainError(f"{out} already holds a run: continue it with --resume {out}, "
                             f"or choose another --out.")
        else:
            out.mkdir(parents=True, exist_ok=True)
    out = broadcast_object(out if world.is_main else None, world)
    if isinstance(out, TrainError):
        raise out
    return out


# ---------------------------------------------------------------------------------------------
# Data, model, optimiser
# ---------------------------------------------------------------------------------------------

def resolve_data_dir(config: TrainConfig, world: World) -> Path:
    if config.data_dir:
        return Path(config.data_dir)
    from vitlab.phantom import builtin_dataset

    if world.is_main:          # rank 0 generates the built-in set once; the others then find it
        path = builtin_dataset()
    barrier(world)
    return path if world.is_main else builtin_dataset()


def training_augmentation(augment: str) -> torch.nn.Module | None:
    """What `--augment` applies to every training batch, on the device, in the training step."""
    if augment == "none":
        return None
    from vitlab.augment import RandomAffineBatch

    # small shifts, turns and zooms: a patient lies a little differently in every scan
    return RandomAffineBatch(degrees=8, translate=(0.04, 0.04), scale=(0.95, 1.05))


def load_splits(data_dir: Path) -> dict:
    from vitlab.data import LiTSDataset

    return {split: LiTSDataset(data_dir, split=split) for split in ("train", "val", "test")}


def build_model(config: TrainConfig, image_size: tuple[int, int], num_classes: int) -> torch.nn.Module:
    """The reference VisionTransformer, or the submission's, sized by the preset and the data."""
    height, width = image_size
    preset = MODEL_PRESETS[config.model]
    if height != width:
        raise TrainError(f"The images are {height}x{width}; the VisionTransformer takes square images "
                         f"(one img_size). Crop or pad the data to a square.")
    if height % preset["patch_size"]:
        fitting = [name for name, p in MODEL_PRESETS.items() if height % p["patch_size"] == 0]
        raise TrainError(f"The images are {height}x{width}, not divisible by the patch size "
                         f"{preset['patch_size']} of --model {config.model}: use --model "
                         f"{' or '.join(fitting) or '(none fits: resize the data)'}.")
    if config.submission:
        from vitlab.submission import load_submission

        namespace = load_submission(config.submission)
        vision_transformer = getattr(namespace, "VisionTransformer", None)
        if vision_transformer is None:
            raise TrainError(f"{config.submission} defines no VisionTransformer (stages skeleton to head): "
                             f"finish those stages first, or train the reference without --submission.")
    else:
        from solutions import VisionTransformer as vision_transformer
    return vision_transformer(img_size=height, in_channels=1, num_classes=num_classes, **preset)


def build_optimizer(model: torch.nn.Module, config: TrainConfig, speed: SpeedPlan) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum 0.9 (the ViT paper's), fused where the device has it."""
    return speed.make_optimizer(model.parameters(), config.optimizer, lr=config.lr,
                                weight_decay=config.weight_decay, momentum=0.9)


def warmup_cosine(optimizer, total_steps: int, warmup_fraction: float):
    """Linear warm-up to the full learning rate, then a cosine decay to zero at `total_steps`."""
    warmup_steps = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal digests on all ranks = one model, in sync."""
    digest = hashlib.sha256()
    for parameter in model.parameters():
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# One epoch, one evaluation
# ---------------------------------------------------------------------------------------------

def train_one_epoch(model, loader, optimizer, scheduler, config: TrainConfig, world: World, speed: SpeedPlan,
                    epoch: int, step: int, log: CsvLog, on_step=None) -> tuple[int, float, int, float]:
    """Train over the loader once; return (global step, mean loss, images seen by all ranks, seconds)."""
    model.train()
    device = world.device
    augment = training_augmentation(config.augment)
    loss_sum, images_seen = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
               disable=not world.is_main, mininterval=1.0, dynamic_ncols=True)
    start = time.perf_counter()
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images)
        with speed.autocast():
            loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the ranks here
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        # the step's loss over the global batch: the same figure a single process would see
        totals = all_reduce_sum(torch.tensor([loss.item() * len(targets), len(targets)],
                                             dtype=torch.float64, device=device), world)
        batch_loss, batch_images = totals[0].item() / totals[1].item(), int(totals[1].item())
        loss_sum += batch_loss * batch_images
        images_seen += batch_images
        log.write(epoch, step, batch_loss)
        bar.set_postfix(loss=f"{loss_sum / images_seen:.4f}",
                        img_per_s=f"{images_seen / (time.perf_counter() - start):.0f}")
        if on_step is not None:
            on_step(epoch, step, batch_loss)
    bar.close()
    return step, loss_sum / max(1, images_seen), images_seen, time.perf_counter() - start


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    confusion: np.ndarray  # [true class, predicted class] counts over the whole split
    samples: int

    @property
    def predicted_classes(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(self.confusion.sum(axis=0))]


@torch.no_grad()
def evaluate(model, loader, world: World, speed: SpeedPlan, num_classes: int) -> Evaluation:
    """Loss, accuracy and confusion matrix over the whole split, each sample counted once over all ranks."""
    model.eval()
    # one tensor, one all-reduce: [loss sum, confusion matrix counts ...]
    totals = torch.zeros(1 + num_classes * num_classes, dtype=torch.float64, device=world.device)
    for images, targets in loader:
        images = images.to(world.device, non_blocking=True)
        targets = targets.to(world.device, non_blocking=True)
        with speed.autocast():
            logits = model(images).float()
        totals[0] += F.cross_entropy(logits, targets, reduction="sum").double()
        pairs = targets * num_classes + logits.argmax(dim=1)
        totals[1:] += torch.bincount(pairs, minlength=num_classes * num_classes).double()
    totals = all_reduce_sum(totals, world).cpu().numpy()
    confusion = totals[1:].reshape(num_classes, num_classes).astype(np.int64)
    samples = int(confusion.sum())
    return Evaluation(loss=float(totals[0]) / max(1, samples),
                      accuracy=float(np.trace(confusion)) / max(1, samples), confusion=confusion, samples=samples)


def one_class_warning(evaluation: Evaluation, class_names, split: str) -> str | None:
    predicted = evaluation.predicted_classes
    if len(predicted) != 1:
        return None
    return (f"  warning: the model predicts '{class_names[predicted[0]]}' for every {split} slice: "
            f"its accuracy is just that class's share of the split (the majority baseline if it is "
            f"the most common class); it has not learned to tell the classes apart yet.")


def unpredicted_classes_warning(evaluation: Evaluation, class_names, split: str) -> str | None:
    """A line naming the classes of the split that the model never predicts (None if there are none,
    or if it predicts a single class, which one_class_warning already says)."""
    present = np.flatnonzero(evaluation.confusion.sum(axis=1))
    missed = [c for c in present if c not in evaluation.predicted_classes]
    if not missed or len(evaluation.predicted_classes) <= 1:
        return None
    named = ", ".join(f"'{class_names[c]}' ({int(evaluation.confusion[c].sum())} slices)" for c in missed)
    return (f"  note: the model never predicts {named} on the {split} split: every slice of "
            f"{'that class' if len(missed) == 1 else 'those classes'} counts as wrong, and the accuracy comes "
            f"from the others (per-class accuracy: summary.json).")


# ---------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------

def train(config: TrainConfig, on_step=None) -> dict:
    """Train, validate every epoch, test at the end; write the run folder and return the summary.

    Under torchrun every process calls this; they train one model together (DDP) and rank 0 writes.
    `on_step(epoch, step, loss)`, if given, is called after every optimiser step (e.g. to follow
    a run live in a notebook, or to stop it: a KeyboardInterrupt there is a Ctrl-C).
    """
    world = init_world(config.device)
    try:
        return _train(config, world, on_step)
    finally:
        close_world(world)


def _train(config: TrainConfig, world: World, on_step) -> dict:
    from vitlab.data import CLASS_NAMES, batch_loader

    session_start = time.perf_counter()
    say = print if world.is_main else (lambda *args, **kwargs: None)
    checkpoint = load_checkpoint(config.out) if config.resume else None
    run_dir = Path(config.out) if config.resume else new_run_dir(config, world)
    data_dir = resolve_data_dir(config, world)
    splits = load_splits(data_dir)
    train_set, val_set, test_set = splits["train"], splits["val"], splits["test"]
    num_classes = len(CLASS_NAMES)

    torch.manual_seed(config.seed)  # the same initial model on every rank (DDP also broadcasts rank 0's)
    speed = SpeedPlan.for_device(world.device, config.precision, config.compile)
    model = speed.prepare_model(build_model(config, train_set.image_size, num_classes))
    raw_model = model
    if world.is_distributed:
        model = DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    torch.manual_seed(config.seed + 1 + world.rank)  # augmentation draws differ between ranks
    random.seed(config.seed + 1 + world.rank)

    loader_options = dict(num_workers=config.workers, pin_memory=world.device.type == "cuda",
                          persistent_workers=config.workers > 0)
    # Rank r takes items r, r + W, ... of one shuffled order per epoch (seed + epoch), so the
    # global batch of step k is the same for any number of processes with the same global batch.
    train_sampler = DistributedSampler(train_set, num_replicas=world.world_size, rank=world.rank,
                                       shuffle=True, seed=config.seed)
    train_loader = batch_loader(train_set, config.batch_size, sampler=train_sampler, **loader_options)
    val_loader, test_loader = (batch_loader(split, 2 * config.batch_size, sampler=ShardedEvalSampler(len(split), world),
                                            **loader_options)
                               for split in (val_set, test_set))

    optimizer = build_optimizer(model, config, speed)
    scheduler = warmup_cosine(optimizer, config.epochs * len(train_loader), config.warmup_fraction)
    progress = dict(epoch=0, step=0, best_val_accuracy=None, best_val_epoch=None,
                    elapsed_s=0.0, trained_images=0, train_seconds=0.0)
    if checkpoint is not None:
        raw_model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        progress.update(checkpoint["progress"])
        if checkpoint["world_size"] == world.world_size:
            set_rng_state(checkpoint["rng"][world.rank], world.device)
        say(f"resuming {run_dir} after epoch {progress['epoch']} (step {progress['step']})")

    majority_class, val_baseline, test_baseline = majority_baselines(splits)
    keep = progress["epoch"] if checkpoint is not None else None
    train_log = CsvLog(run_dir / "train_log.csv", TRAIN_LOG_COLUMNS, world.is_main, keep)
    val_log = CsvLog(run_dir / "val_log.csv", VAL_LOG_COLUMNS, world.is_main, keep)

    say(describe_run(config, world, data_dir, splits, raw_model, run_dir, speed))
    val = None
    try:
        for epoch in range(progress["epoch"] + 1, config.epochs + 1):
            train_sampler.set_epoch(epoch)
            step, train_loss, images, seconds = train_one_epoch(
                model, train_loader, optimizer, scheduler, config, world, speed, epoch, progress["step"],
                train_log, on_step)
            val = evaluate(raw_model, val_loader, world, speed, num_classes)
            val_log.write(epoch, val.loss, val.accuracy)
            if progress["best_val_accuracy"] is None or val.accuracy > progress["best_val_accuracy"]:
                progress.update(best_val_accuracy=val.accuracy, best_val_epoch=epoch)
            progress.update(epoch=epoch, step=step, trained_images=progress["trained_images"] + images,
                            train_seconds=progress["train_seconds"] + seconds)
            say(f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f} | val loss {val.loss:.4f} | "
                f"val accuracy {val.accuracy:.1%} (majority baseline {val_baseline:.1%}) | "
                f"{images / seconds:.0f} img/s | {seconds:.0f} s", flush=True)
            warning = one_class_warning(val, CLASS_NAMES, "validation")
            if warning:
                say(warning)
            rng_states = gather_objects(rng_state(world.device), world)  # every rank's, for --resume
            if world.is_main:
                elapsed = progress["elapsed_s"] + time.perf_counter() - session_start
                save_atomically({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(), "config": asdict(config),
                                 "progress": {**progress, "elapsed_s": elapsed},
                                 "rng": rng_states, "world_size": world.world_size},
                                run_dir / "checkpoint.pt")
    except KeyboardInterrupt:
        if progress["epoch"]:
            say(f"\ninterrupted: {run_dir / 'checkpoint.pt'} holds the end of epoch {progress['epoch']}; "
                f"continue with: vitlab train --resume {run_dir}", flush=True)
        raise
    finally:
        train_log.close()
        val_log.close()

    if val is None:  # resumed after the last epoch: nothing trained in this session
        val = evaluate(raw_model, val_loader, world, speed, num_classes)
    test = evaluate(raw_model, test_loader, world, speed, num_classes)
    say(f"test accuracy {test.accuracy:.1%} | test loss {test.loss:.4f} | majority baseline {test_baseline:.1%} "
        f"(always '{CLASS_NAMES[majority_class]}', the most common training class) | "
        f"{test.accuracy - test_baseline:+.1%} above it", flush=True)
    for warning in (one_class_warning(test, CLASS_NAMES, "test"), unpredicted_classes_warning(test, CLASS_NAMES, "test")):
        if warning:
            say(warning)
    digests = gather_objects(parameter_digest(raw_model), world)
    if len(set(digests)) > 1:
        say("warning: the ranks ended with different parameters; DDP did not keep them in sync.")

    summary = build_summary(config, world, progress, splits, val, test, data_dir, raw_model, digests)
    summary["speed"] = speed.to_dict()  # what vitlab.performance turned on
    summary["wall_time_s"] += time.perf_counter() - session_start
    if world.is_main:
        write_results(run_dir, summary, test, raw_model, test_set, CLASS_NAMES)
        say(f"run folder: {run_dir} (summary.json, loss_curve.png, attention.png, checkpoint.pt)")
    return summary


def majority_baselines(splits: dict) -> tuple[int, float, float]:
    """The most common training class, and the accuracy of always answering it on val and on test."""
    majority_class = int(np.argmax(splits["train"].class_counts()))
    return (majority_class, float(np.mean(splits["val"].targets == majority_class)),
            float(np.mean(splits["test"].targets == majority_class)))


def build_summary(config, world, progress, splits, val: Evaluation, test: Evaluation, data_dir, model,
                  digests) -> dict:
    from vitlab.data import CLASS_NAMES

    majority_class, val_baseline, test_baseline = majority_baselines(splits)
    per_class = {name: (float(test.confusion[i, i] / test.confusion[i].sum()) if test.confusion[i].sum() else None)
                 for i, name in enumerate(CLASS_NAMES)}
    return {
        "test_accuracy": float(test.accuracy), "test_loss": float(test.loss),
        "best_val_accuracy": progress["best_val_accuracy"], "best_val_epoch": progress["best_val_epoch"],
        "majority_baseline": test_baseline, "val_majority_baseline": val_baseline,
        "majority_class": CLASS_NAMES[majority_class],
        "per_class_accuracy": per_class, "confusion_matrix": test.confusion.tolist(),
        "class_names": list(CLASS_NAMES),
        "test_samples": test.samples, "val_samples": val.samples,
        "split_sizes": {name: len(split) for name, split in splits.items()},
        "epochs_completed": progress["epoch"], "steps": progress["step"],
        "images_per_second": progress["trained_images"] / max(progress["train_seconds"], 1e-9),
        "wall_time_s": progress["elapsed_s"],  # the caller adds this session's time
        "world_size": world.world_size, "global_batch_size": config.batch_size * world.world_size,
        "device": str(world.device), "parameters": sum(p.numel() for p in model.parameters()),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "rank_parameter_digests": digests,
        "data_dir": str(data_dir), "config": asdict(config),
    }


def describe_run(config, world, data_dir, splits, model, run_dir, speed: SpeedPlan) -> str:
    from vitlab.data import CLASS_NAMES

    preset = MODEL_PRESETS[config.model]
    size = splits["train"].image_size
    tokens = (size[0] // preset["patch_size"]) * (size[1] // preset["patch_size"])
    counts = splits["train"].class_counts()
    shares = ", ".join(f"{name} {n / counts.sum():.0%}" for name, n in zip(CLASS_NAMES, counts))
    source = config.submission or "solutions (the reference)"
    return "\n".join([
        f"data: {data_dir}: {len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} test "
        f"slices of {size[0]}x{size[1]}; train classes: {shares}",
        f"model: {source}, preset {config.model}: {tokens} patches of {preset['patch_size']}x{preset['patch_size']}, "
        f"embed {preset['embed_dim']}, depth {preset['depth']}, heads {preset['num_heads']}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters",
        f"training: {config.optimizer} lr {config.lr:g} wd {config.weight_decay:g}, {config.epochs} epochs, "
        f"batch {config.batch_size} x {world.world_size} process(es) on {world.device}, augment {config.augment}",
        f"speed: {speed.precision}, {'compiled' if speed.compile else 'eager'}, "
        f"{'fused' if speed.fused_optimizer else 'plain'} {config.optimizer} (see docs/performance.md)",
        f"run folder: {run_dir}",
    ])


def write_results(run_dir: Path, summary: dict, test: Evaluation, model, test_set, class_names) -> None:
    from vitlab import plots

    with (run_dir / "test_log.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TEST_LOG_COLUMNS)
        writer.writerow([summary["epochs_completed"], f"{test.loss:.6g}", f"{test.accuracy:.6g}",
                         test.samples, f"{summary['majority_baseline']:.6g}"])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots.plot_loss_curves(run_dir, labels=[run_dir.name], out=run_dir / "loss_curve.png")
    picks = attention_examples(test_set.targets, len(class_names))
    images = torch.stack([test_set[i][0] for i in picks])
    plots.plot_attention(model, images, targets=[int(test_set.targets[i]) for i in picks],
                         class_names=class_names, out=run_dir / "attention.png")


def attention_examples(targets: np.ndarray, num_classes: int, count: int = 3) -> list[int]:
    """A few test slices, one of each class where the split has it (the middle one of that class)."""
    picks = []
    for c in range(num_classes):
        of_class = np.flatnonzero(targets == c)
        if len(of_class):
            picks.append(int(of_class[len(of_class) // 2]))
    rest = [i for i in np.linspace(0, len(targets) - 1, count + len(picks)).astype(int) if i not in picks]
    return (picks + rest)[:count]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Every default is None here, so a run can tell what was given (e.g. with --resume);
    # the real defaults live in TrainConfig.
    defaults = TrainConfig()
    parser.add_argument("--data-dir", help="dataset in the Clean_LiTS layout (default: the built-in phantom set)")
    parser.add_argument("--out", help="run folder (default: runs/<date-time>)")
    parser.add_argument("--model", choices=list(MODEL_PRESETS),
                        help=f"model size preset (default {defaults.model}); "
                             + "; ".join(f"{name}: patch {p['patch_size']}, embed {p['embed_dim']}, "
                                         f"depth {p['depth']}, heads {p['num_heads']}"
                                         for name, p in MODEL_PRESETS.items()))
    parser.add_argument("--submission", metavar="PATH",
                        help="train the VisionTransformer of this submission (.py, .ipynb or folder)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS,
                        help="adamw (default) or sgd (momentum 0.9, as the ViT paper)")
    parser.add_argument("--epochs", type=int, help=f"number of epochs (default {defaults.epochs})")
    parser.add_argument("--batch-size", type=int,
                        help=f"batch size per process (default {defaults.batch_size})")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--weight-decay", type=float, help="weight decay (default: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_WEIGHT_DECAY.items()) + ")")
    parser.add_argument("--augment", choices=AUGMENTATIONS,
                        help=f"training augmentation (default {defaults.augment})")
    parser.add_argument("--seed", type=int, help=f"random seed (default {defaults.seed})")
    parser.add_argument("--device", choices=DEVICES, help="auto (default): CUDA, else MPS, else CPU")
    parser.add_argument("--workers", type=int, help=f"DataLoader worker processes (default {defaults.workers})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="auto (default): bf16 autocast where the hardware has bf16, else fp32")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="torch.compile the model (default: on CUDA only, where it pays off)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue this run from its last checkpoint (--epochs may raise its length)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if f.name != "resume" and getattr(args, f.name, None) is not None}
    if args.resume:
        if "out" in given:
            raise TrainError("--resume RUN_DIR continues that folder: leave out --out.")
        return load_run_config(args.resume, **given)
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    from vitlab.data import DataError

    try:
        config = config_from_args(args)
        train(config)
    except (TrainError, DataError) as error:
        print(f"vitlab train: {error}", file=sys.stderr)
        return 2
    return 0
