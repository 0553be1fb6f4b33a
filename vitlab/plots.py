"""Figures of a run and of the model: loss curves, attention maps, the patch grid, a confusion matrix.

Every function returns a matplotlib Figure (a notebook shows it when it is the cell's value)
and, given `out=`, also writes it as a PNG. Figures are built without pyplot, so no backend is
forced on a notebook and a script saves through Agg without a display.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

TRAIN_LOG_COLUMNS = ("epoch", "step", "loss")
VAL_LOG_COLUMNS = ("epoch", "val_loss", "val_accuracy")


def _save(fig: Figure, out) -> Figure:
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110, bbox_inches="tight")
    return fig


def read_log(path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One float array per column of a run's CSV log; a missing file, column or value is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such log. Is this a run folder written by `vitlab train`?")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; "
                             f"expected a header with {', '.join(columns)}.")
        rows = list(reader)
    values = {c: np.empty(len(rows)) for c in columns}
    for line, row in enumerate(rows, start=2):
        for c in columns:
            try:
                values[c][line - 2] = float(row[c])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: {c}={row[c]!r} is not a number; "
                                 f"the row is damaged, delete it or re-run the epoch with --resume.") from None
    return values


def _epoch_positions(epochs: np.ndarray) -> np.ndarray:
    """x of every training step in epochs: the k-th of n steps of epoch e sits at e - 1 + k / n."""
    x = np.empty_like(epochs)
    for epoch in np.unique(epochs):
        in_epoch = np.flatnonzero(epochs == epoch)
        x[in_epoch] = epoch - 1 + np.arange(1, len(in_epoch) + 1) / len(in_epoch)
    return x


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Trailing mean over `width` steps (shorter at the start), so the curve does not lag or shrink."""
    if width <= 1 or len(values) == 0:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    starts = np.maximum(np.arange(1, len(values) + 1) - width, 0)
    return (cumulative[1:] - cumulative[starts]) / (np.arange(1, len(values) + 1) - starts)


def plot_loss_curves(run_dirs, labels=None, out=None) -> Figure:
    """Training and validation loss (left) and validation accuracy (right) of one or several runs.

    `run_dirs`: a run folder or a list of them (e.g. an AdamW run and an SGD run); `labels`
    names them in the legend (default: the folder names). The majority baseline of each run
    (from its summary.json, once the run has finished) is drawn as a dashed line.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("plot_loss_curves needs at least one run folder.")
    labels = [d.name for d in run_dirs] if labels is None else list(labels)
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(run_dirs)} run folder(s) but {len(labels)} label(s): give one label per run.")

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    colours = [f"C{i}" for i in range(len(run_dirs))]
    single = len(run_dirs) == 1
    for run_dir, label, colour in zip(run_dirs, labels, colours):
        train = read_log(run_dir / "train_log.csv", TRAIN_LOG_COLUMNS)
        val = read_log(run_dir / "val_log.csv", VAL_LOG_COLUMNS)
        x = _epoch_positions(train["epoch"])
        steps_per_epoch = max(1, len(x) // max(1, len(np.unique(train["epoch"]))))
        prefix = "" if single else f"{label}: "
        ax_loss.plot(x, train["loss"], color=colour, alpha=0.25, linewidth=0.8)
        ax_loss.plot(x, _smooth(train["loss"], max(1, steps_per_epoch // 5)), color=colour,
                     linewidth=1.6, label=f"{prefix}train loss (per step, smoothed)")
        ax_loss.plot(val["epoch"], val["val_loss"], color=colour, linestyle="--", marker="o",
                     label=f"{prefix}validation loss (per epoch)")
        ax_acc.plot(val["epoch"], val["val_accuracy"], color=colour, marker="o",
                    label=f"{prefix}validation accuracy")
        summary_path = run_dir / "summary.json"
        if summary_path.is_file():
            baseline = json.loads(summary_path.read_text()).get("val_majority_baseline")
            if baseline is not None:
                ax_acc.axhline(baseline, color=colour, linestyle=":", linewidth=1.5,
                               label=f"{prefix}majority baseline ({baseline:.1%})")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xlim(left=0)
    fig.suptitle(labels[0] if single else " vs ".join(labels))
    return _save(fig, out)


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


@torch.no_grad()
def attention_maps(model, images: torch.Tensor) -> dict[str, np.ndarray]:
    """What the class token looks at, for a batch of images [B, C, H, W].

    Runs patch_embed -> class_token -> (+ pos_embed) -> blocks by hand, asking every block for
    its attention weights (contract: block(x, return_attention=True) -> (x, [B, NH, N+1, N+1])).
    Returns numpy arrays:
      last_layer [B, h, w]: the last block's class-token attention to each patch, heads averaged;
      rollout    [B, h, w]: attention rollout (Abnar & Zuidema, 2020): per block, heads averaged,
                 plus the identity for the residual path, rows renormalised, multiplied
                 through the blocks; the class token's row;
      logits     [B, num_classes].
    Both maps sum to at most 1 per image (the rest is attention to the class token itself).
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        images = images.to(device)
        x = model.patch_embed(images)                      # [B, N, E]
        x = model.class_token(x)                           # [B, N + 1, E]
        if getattr(model, "pos_embed", None) is not None:
            x = x + model.pos_embed
        rollout = torch.eye(x.shape[1], device=device).expand(x.shape[0], -1, -1)  # [B, N+1, N+1]
        weights = None
        for block in model.blocks:
            x, weights = block(x, return_attention=True)   # weights [B, NH, N+1, N+1]
            mixing = weights.mean(dim=1) + torch.eye(x.shape[1], device=device)
            mixing = mixing / mixing.sum(dim=-1, keepdim=True)
            rollout = mixing @ rollout
        if weights is None:
            raise ValueError("The model has no blocks, so there is no attention to show.")
        logits = model.head(x)
    finally:
        model.train(was_training)
    h = images.shape[-2] // model.patch_embed.patch_size
    w = images.shape[-1] // model.patch_embed.patch_size
    last = weights.mean(dim=1)[:, 0, 1:].reshape(-1, h, w)  # class token's row, patches only
    rolled = rollout[:, 0, 1:].reshape(-1, h, w)
    return {"last_layer": last.float().cpu().numpy(), "rollout": rolled.float().cpu().numpy(),
            "logits": logits.float().cpu().numpy()}


def plot_attention(model, images: torch.Tensor, targets=None, class_names=None, out=None) -> Figure:
    """One row per image: the slice, the last block's class-token attention, the attention rollout.

    `targets` (optional, one int per image) and `class_names` label each row with the true and
    the predicted class.
    """
    maps = attention_maps(model, images)
    predictions = maps["logits"].argmax(axis=1)
    images = images.detach().float().cpu().numpy()
    n = len(images)
    fig = Figure(figsize=(11, 3.4 * n), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, 3))
    columns = (("last_layer", "class-token attention, last block"),
               ("rollout", "attention rollout, all blocks"))
    def name(c: int) -> str:
        return class_names[c] if class_names is not None else f"class {c}"

    for row, image in enumerate(images):
        slice_ = image[0]
        extent = (0, slice_.shape[1], slice_.shape[0], 0)
        title = f"predicted: {name(predictions[row])}"
        if targets is not None:
            title = f"true: {name(int(targets[row]))}, {title}"
        axes[row, 0].imshow(slice_, cmap="gray", vmin=0, vmax=1, extent=extent)
        axes[row, 0].set_title(title, fontsize=9)
        for col, (key, label) in enumerate(columns, start=1):
            ax = axes[row, col]
            ax.imshow(slice_, cmap="gray", vmin=0, vmax=1, extent=extent)
            overlay = ax.imshow(maps[key][row], cmap="inferno", alpha=0.55, extent=extent,
                                interpolation="nearest")
            ax.set_title(label, fontsize=9)
            fig.colorbar(overlay, ax=ax, shrink=0.85, label="share of attention")
        for ax in axes[row]:
            ax.set_xlabel("x (pixels)", fontsize=8)
            ax.set_ylabel("y (pixels)", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("Where the class token looks (brighter = more attention)")
    return _save(fig, out)


def plot_patch_grid(image, patch_size: int, out=None) -> Figure:
    """How a slice becomes tokens: the P x P patches, numbered in row-major order (token i = row i // w, column i % w)."""
    image = torch.as_tensor(image).detach().float().cpu()
    if image.dim() == 3:
        image = image[0]                                   # [1, H, W] -> [H, W]
    if image.dim() != 2:
        raise ValueError(f"Wrong image shape {tuple(image.shape)}! Expected [H, W] or [1, H, W].")
    H, W = image.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"Image size {H}x{W} is not divisible by the patch size {patch_size}.")
    h, w = H // patch_size, W // patch_size
    fig = Figure(figsize=(7, 7 * H / W + 0.6), layout="constrained")
    ax = fig.subplots()
    ax.imshow(image.numpy(), cmap="gray", extent=(0, W, H, 0))
    for k in range(1, w):
        ax.axvline(k * patch_size, color="yellow", linewidth=0.6)
    for k in range(1, h):
        ax.axhline(k * patch_size, color="yellow", linewidth=0.6)
    font = max(4, min(10, int(160 / max(h, w))))
    for i in range(h * w):
        r, c = divmod(i, w)
        ax.text((c + 0.5) * patch_size, (r + 0.5) * patch_size, str(i), color="yellow",
                ha="center", va="center", fontsize=font)
    ax.set(title=f"{h} x {w} = {h * w} tokens of {patch_size} x {patch_size} pixels (token i: row i // {w}, column i % {w})",
           xlabel="x (pixels)", ylabel="y (pixels)")
    ax.title.set_fontsize(9)
    return _save(fig, out)


def plot_confusion_matrix(matrix, class_names, out=None) -> Figure:
    """Counts of (true class, predicted class), each cell also as a share of its true class."""
    matrix = np.asarray(matrix, dtype=float)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"Wrong confusion matrix shape {matrix.shape}! Expected ({k}, {k}) for {k} class names.")
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros_like(matrix), where=row_totals > 0)
    fig = Figure(figsize=(5.5, 4.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(matrix[i, j])}\n{shares[i, j]:.0%}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(k), class_names, rotation=20)
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix ({int(matrix.sum())} samples)")
    fig.colorbar(image, ax=ax, label="share of the true class")
    return _save(fig, out)
