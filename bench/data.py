"""Data benchmark: images/s through a DataLoader over the phantom set on disk.

`LiTSDataset` in its first epoch (index built, every PNG decoded) and in a later epoch (served
from its uint8 cache), against a per-item loader in the seed course's style. Same DataLoader
settings for all: batch 64, the same number of workers, shuffled. Also: seconds to generate
the built-in dataset.
"""
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench.timing import Case, interleave, slug, summarise

BATCH = 64
BASELINE = "seed-course loader"


class SeedCourseDataset(Dataset):
    """The seed course's loader: per item, PIL open, convert("L"), float32 array, min-max normalise."""

    def __init__(self, root, split: str = "train"):
        split_dir = Path(root) / split
        with open(split_dir / "classes.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        self.paths = [split_dir / "volumes" / row["volume_file"] for row in rows]
        self.targets = [2 if row["tumors_visible"] == "True" else 1 if row["liver_visible"] == "True" else 0
                        for row in rows]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = np.array(Image.open(self.paths[index]).convert("L"), dtype=np.float32)
        image = (image - image.min()) / (image.max() - image.min() + 1e-8)
        return torch.from_numpy(image).unsqueeze(0), self.targets[index]


def missing() -> str | None:
    try:
        import vitlab.data  # noqa: F401
        import vitlab.phantom  # noqa: F401
    except ImportError as error:
        return f"vitlab.data or vitlab.phantom is not there yet ({error})"
    return None


def one_epoch(dataset, workers: int, batched: bool = False) -> int:
    """One shuffled pass; `batched`: through vitlab.data.batch_loader, as the trainer does (the
    dataset builds each batch whole), else through a plain DataLoader (items, then collation)."""
    from vitlab.data import batch_loader

    make_loader = batch_loader if batched else DataLoader
    loader = make_loader(dataset, BATCH, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0))
    return sum(len(images) for images, _ in loader)


def loader_cases(root: Path, workers: int) -> list[Case]:
    from vitlab.data import LiTSDataset

    count = len(SeedCourseDataset(root))
    warm = LiTSDataset(root, "train", cache="memory")
    one_epoch(warm, workers, batched=True)  # fills its cache: every later epoch of `warm` is decode-free

    def first_epoch():  # a new dataset: builds its index from the PNG headers, decodes every slice
        one_epoch(LiTSDataset(root, "train", cache="memory"), workers, batched=True)

    return [
        Case(BASELINE, lambda: one_epoch(SeedCourseDataset(root), workers), work=count),
        Case("LiTSDataset first epoch", first_epoch, work=count),
        Case("LiTSDataset cached epoch", lambda: one_epoch(warm, workers, batched=True), work=count),
        Case("LiTSDataset cached epoch, plain DataLoader", lambda: one_epoch(warm, workers), work=count),
    ]


AUGMENT_BASELINE = "v2.RandomAffine, slice by slice"


def augmentation_cases(size: int) -> list[Case]:
    """The trainer's `--augment light`: torchvision's RandomAffine per slice (in the loader, as the
    seed course does) against vitlab.augment.RandomAffineBatch on the whole batch (in the step)."""
    from torchvision.transforms import v2

    from vitlab.augment import RandomAffineBatch

    limits = dict(degrees=8, translate=(0.04, 0.04), scale=(0.95, 1.05))
    per_slice, batched = v2.RandomAffine(**limits), RandomAffineBatch(**limits)
    images = torch.rand(BATCH, 1, size, size, generator=torch.Generator().manual_seed(0))
    return [Case(AUGMENT_BASELINE, lambda: torch.stack([per_slice(image) for image in images]), work=BATCH),
            Case("RandomAffineBatch, the whole batch", lambda: batched(images), work=BATCH)]


def run(rounds: int = 5, quick: bool = False, log=print) -> dict:
    from vitlab.data import DECODE_THREADS
    from vitlab.phantom import builtin_dataset

    volumes, size = (6, 64) if quick else (None, 256)
    tables, results = [], {"title": "Data", "loaders": {}}
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-data-") as tmp:
        start = time.perf_counter()
        extra = {} if volumes is None else {"volumes": volumes, "size": size}
        root = builtin_dataset(cache_dir=tmp, **extra)
        results["generate_builtin_s"] = time.perf_counter() - start
        slices = {split: len(SeedCourseDataset(root, split)) for split in ("train", "val", "test")}
        results["builtin_slices"] = slices
        log(f"  built-in dataset: {sum(slices.values())} slices in {results['generate_builtin_s']:.1f} s")
        for workers in (0, 2):
            log(f"  DataLoader, batch {BATCH}, {workers} workers, {slices['train']} training slices")
            summary = summarise(interleave(loader_cases(root, workers), BASELINE, rounds, log), BASELINE)
            results["loaders"][f"{workers} workers"] = summary
            tables += [[f"{workers}", name, f"{entry['median_per_s']:.0f}", f"{entry['ratio_to_seed_course_loader']:.2f}x"]
                       for name, entry in summary.items()]
        log(f"  augmentation of a batch of {BATCH} slices of {size} x {size}")
        augmentation = summarise(interleave(augmentation_cases(size), AUGMENT_BASELINE, rounds, log), AUGMENT_BASELINE)
        results["augmentation"] = augmentation
    main = results["loaders"]["0 workers"]
    results["targets"] = [
        {"what": "data: LiTSDataset cached epoch vs seed-course loader (0 workers)",
         "value": main["LiTSDataset cached epoch"]["ratio_to_seed_course_loader"], "goal": 10.0},
        {"what": "data: LiTSDataset first epoch vs seed-course loader (0 workers)",
         "value": main["LiTSDataset first epoch"]["ratio_to_seed_course_loader"], "goal": 1.5},
    ]
    for target in results["targets"]:
        target["met"] = target["value"] >= target["goal"]
    results["notes"] = [
        f"Generating the built-in dataset ({sum(slices.values())} slices of {size} x {size}: {slices['train']} "
        f"train, {slices['val']} val, {slices['test']} test) took {results['generate_builtin_s']:.1f} s.",
        "`LiTSDataset` rows go through `vitlab.data.batch_loader`, as in `vitlab train`: the dataset builds each "
        "batch whole (`load_batch`) and the DataLoader passes it on without collating items. The row 'plain "
        "DataLoader' is the same cached dataset through `DataLoader(dataset, batch_size=64)`, which still asks "
        "for whole batches (`__getitems__`) but splits them into items and stacks them again.",
        f"Both loaders decode the same PNGs with Pillow. In the main process (0 workers) `load_batch` cuts a "
        f"batch into {DECODE_THREADS} runs, one per thread (Pillow lets go of the GIL while it inflates), and "
        "each thread decodes its new slices and writes its run as floats: the first epoch uses every core. In "
        "DataLoader workers each worker uses one thread, so with 2 workers both loaders already use both cores "
        "and the first epoch is about even.",
        "With workers, every epoch also starts the worker processes (as in this benchmark, a new DataLoader per "
        "epoch; `vitlab train` keeps them: persistent_workers) and every batch crosses from a worker through "
        "shared memory: for a cached set, 0 workers is the fastest.",
        "`vitlab train --augment light` turns, shifts and zooms every training slice. It used to do so in the "
        "loader with torchvision's RandomAffine, slice by slice; it now draws the same parameters per slice and "
        "resamples the whole batch with one grid_sample in the training step (vitlab.augment, pixel for pixel "
        "torchvision's affine), on the GPU when training there.",
    ]
    results["sections"] = [{"title": f"DataLoader throughput, batch {BATCH}, shuffled",
                            "columns": ["workers", "loader", "images/s (median)", f"vs {BASELINE}"],
                            "rows": tables},
                           {"title": f"Training augmentation (`--augment light`), batch {BATCH}",
                            "columns": ["augmentation", "images/s (median)", f"vs {AUGMENT_BASELINE}"],
                            "rows": [[name, f"{entry['median_per_s']:.0f}",
                                      f"{entry['ratio_to_' + slug(AUGMENT_BASELINE)]:.2f}x"]
                                     for name, entry in augmentation.items()]}]
    return results
