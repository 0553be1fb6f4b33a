"""The course data: CT slices in the Clean_LiTS layout, three classes.

    root/<split>/volumes/volume-<v>_<s>.png                            8-bit grayscale slice
    root/<split>/segmentations/segmentation-<v>_livermask_<s>.png      (not read here)
    root/<split>/segmentations/segmentation-<v>_lesionmask_<s>.png     (not read here)
    root/<split>/classes.csv   volume_file,liver_file,liver_visible,tumors_file,tumors_visible

The target of a slice is 2 if tumours are visible, else 1 if the liver is visible, else 0.

The index (classes.csv checked against the folder listing, every PNG's size from its header) is
built once, without decoding an image. Decoded slices go into a uint8 cache that DataLoader worker
processes share, so every epoch after the first is decode-free:

- ``cache="memory"``: a shared-memory tensor ``[n, H, W]`` and a shared "filled" flag per slice,
  filled by whichever process decodes a slice first;
- ``cache="disk"``: the same as memory-mapped files in a cache folder, named by a hash of the index
  (paths, sizes, modification times), so it also survives the process;
- ``cache="none"``: decode every time.

A DataLoader asks for a whole batch at once (``__getitems__``); `LiTSDataset.load_batch` builds it
on several threads, decoding and converting to float in one pass. `batch_loader` goes one step
further and hands that batch to the training loop as it is, with no per-item tensors to collate:
what the trainer uses (`make bench` measures both against a per-item loader).

Slices are decoded with Pillow: torchvision.io.decode_png is 5-20% faster here but crashes the
process (segmentation fault) on a PNG whose compressed data is damaged, where Pillow raises an error
we can name the file in.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import (BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler,
                              get_worker_info)

from vitlab.phantom import CSV_COLUMNS, available_cores, cache_root

CLASS_NAMES = ("no liver", "liver", "liver with tumour")
CACHE_MODES = ("memory", "disk", "none")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DISK_CACHE_VERSION = 1
DECODE_THREADS = min(4, available_cores())  # per process: a batch's first decode uses the cores
FIX_DATA = ("Regenerate the set with `vitlab data synth OUT_DIR` or `vitlab data prepare-lits`, "
            "or repair the file.")


class DataError(ValueError):
    """The data on disk is not what the Clean_LiTS layout promises; the message names the file."""


def _flag(value: str, path: Path, line: int, column: str) -> bool:
    if value == "True":
        return True
    if value == "False":
        return False
    raise DataError(f"{path}, line {line}: {column} is {value!r}, expected True or False. {FIX_DATA}")


def read_classes_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """The slice file names of a classes.csv, in row order, and their targets (int64)."""
    if not path.is_file():
        raise DataError(f"{path} is missing: every split folder needs a classes.csv with the header "
                        f"{','.join(CSV_COLUMNS)}. {FIX_DATA}")
    with open(path, newline="", encoding="utf-8-sig") as file:
        rows = list(csv.reader(file))
    if not rows or tuple(field.strip() for field in rows[0]) != CSV_COLUMNS:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise DataError(f"{path}: wrong header! Expected {','.join(CSV_COLUMNS)}, found {found}. {FIX_DATA}")
    names, targets, seen = [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # a blank line carries no slice
        if len(row) != len(CSV_COLUMNS):
            raise DataError(f"{path}, line {line}: {len(row)} fields, expected {len(CSV_COLUMNS)} "
                            f"({','.join(CSV_COLUMNS)}). {FIX_DATA}")
        name = row[0].strip()
        if not name:
            raise DataError(f"{path}, line {line}: volume_file is empty. {FIX_DATA}")
        if name in seen:
            raise DataError(f"{path}, line {line}: {name} is listed twice (first on line {seen[name]}). {FIX_DATA}")
        seen[name] = line
        liver = _flag(row[2].strip(), path, line, "liver_visible")
        tumours = _flag(row[4].strip(), path, line, "tumors_visible")
        names.append(name)
        targets.append(2 if tumours else 1 if liver else 0)
    if not names:
        raise DataError(f"{path} lists no slices. {FIX_DATA}")
    return names, np.asarray(targets, dtype=np.int64)


def read_png_header(path: Path) -> tuple[int, int, int, int]:
    """(height, width, size in bytes, mtime in ns) from the PNG signature and IHDR chunk alone."""
    with open(path, "rb") as file:
        head = file.read(26)
        stat = os.fstat(file.fileno())
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DataError(f"{path} is not a PNG file (it does not start with a PNG signature and header). "
                        f"{FIX_DATA}")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    bit_depth, color_type = head[24], head[25]
    if color_type != 0 or bit_depth != 8:
        kind = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale + alpha", 6: "RGBA"}.get(color_type, "unknown")
        raise DataError(f"{path} is a {bit_depth}-bit {kind} PNG; the slices must be 8-bit grayscale. "
                        f"Convert it (e.g. PIL: Image.open(p).convert('L').save(p)) or regenerate the set.")
    return height, width, stat.st_size, stat.st_mtime_ns


def decode_slice(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The slice's pixels, uint8 [H, W]; a DataError naming the file if it does not decode."""
    try:
        with Image.open(path) as image:
            if image.mode != "L" or image.size != (size[1], size[0]):
                raise DataError(f"{path}: expected an 8-bit grayscale {size[0]} x {size[1]} image, found mode "
                                f"{image.mode} {image.size[1]} x {image.size[0]}. {FIX_DATA}")
            return np.asarray(image)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path} does not decode as a PNG ({error}). The file is damaged: {FIX_DATA}") from error


def new_shared_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor straight in shared memory (no private copy first, unlike share_memory_)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(nbytes), 0, shape)


def new_batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """float32 memory for one batch. In a DataLoader worker it goes straight into shared memory,
    which is how the batch reaches the main process (torch would otherwise copy it there)."""
    return torch.empty(shape) if get_worker_info() is None else new_shared_tensor(shape, torch.float32)


def decode_pool() -> ThreadPoolExecutor:
    """This process's decoding threads, started once (a forked process starts its own)."""
    global _decode_pool, _decode_pool_pid
    if _decode_pool is None or _decode_pool_pid != os.getpid():
        _decode_pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="vitlab-decode")
        _decode_pool_pid = os.getpid()
    return _decode_pool


_decode_pool: ThreadPoolExecutor | None = None
_decode_pool_pid: int | None = None


class SharedMemoryCache:
    """uint8 slices [n, H, W] and a filled flag per slice, in shared memory.

    DataLoader workers see the same memory: forked workers inherit it, spawned workers receive it
    through torch's shared-memory pickling.
    """

    def __init__(self, n: int, height: int, width: int):
        try:
            self.pixels = new_shared_tensor((n, height, width), torch.uint8)
            self.filled = torch.zeros(n, dtype=torch.uint8).share_memory_()
        except RuntimeError as error:
            raise RuntimeError(f"Could not allocate {n * height * width / 2**20:.0f} MiB of shared memory for "
                               f"the slice cache ({error}). Use cache='disk' (or cache='none'), or give "
                               f"the machine more shared memory (/dev/shm).") from error
        self._views()

    def _views(self) -> None:
        self.pixels_np, self.filled_np = self.pixels.numpy(), self.filled.numpy()

    def __getstate__(self):
        return {"pixels": self.pixels, "filled": self.filled}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._views()


class DiskCache:
    """uint8 slices [n, H, W] and a filled flag per slice, in two memory-mapped files.

    Every process maps the same files (MAP_SHARED), so what one worker writes the others read,
    and a later run over the same data starts with the cache already filled.
    """

    def __init__(self, folder: Path, name: str, n: int, height: int, width: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.files = (folder / f"{name}.pixels", folder / f"{name}.filled")
        self.shape = (n, height, width)
        self._views()

    def _views(self) -> None:
        pixels, filled = self.files
        self.pixels_np = _map_file(pixels, self.shape)
        self.filled_np = _map_file(filled, self.shape[:1])

    def __getstate__(self):
        return {"files": self.files, "shape": self.shape}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._views()


def _map_file(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """Map `path` as uint8 `shape`, creating it filled with zeros when it is new."""
    nbytes = int(np.prod(shape))
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(descriptor).st_size != nbytes:
            os.ftruncate(descriptor, nbytes)  # new file (or one cut short): zeros, i.e. nothing filled
    finally:
        os.close(descriptor)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)


class LiTSDataset(Dataset):
    """CT slices of one split: items are (float32 [1, H, W] in [0, 1], int64 target).

    Args:
        root: the folder holding train/, val/ and test/.
        split: the split folder to read.
        transform: applied to the float image tensor (torchvision transforms v2 work).
        cache: "memory", "disk" or "none" (see the module docstring).
        cache_dir: where cache="disk" keeps its files (default: $VITLAB_CACHE/decoded, else
            ~/.cache/vitlab/decoded).
    """

    def __init__(self, root, split: str = "train", transform=None, cache: str = "memory", cache_dir=None):
        if cache not in CACHE_MODES:
            raise ValueError(f"cache={cache!r}: expected one of {', '.join(CACHE_MODES)}.")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.decode_count = 0  # slices decoded by this process (a DataLoader worker counts its own)
        self._decode_lock = threading.Lock()
        split_dir = self.root / split
        if not self.root.is_dir():
            raise DataError(f"Dataset root {self.root} does not exist. Write one with `vitlab data synth "
                            f"{self.root}` or point root at a folder with train/, val/ and test/.")
        if not split_dir.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            where = f"{self.root} holds {', '.join(found)}" if found else f"{self.root} holds no split folder"
            raise DataError(f"Split folder {split_dir} does not exist ({where}). Point root at a folder with "
                            f"train/, val/ and test/, e.g. one written by `vitlab data synth OUT_DIR`.")
        names, self.targets = read_classes_csv(split_dir / "classes.csv")
        volumes = split_dir / "volumes"
        self.image_paths = [volumes / name for name in names]
        self._check_listing(volumes, names)
        headers = [read_png_header(path) for path in self.image_paths]
        self.image_size = self._common_size(headers)
        if cache == "memory":
            self._cache = SharedMemoryCache(len(names), *self.image_size)
        elif cache == "disk":
            key = self._index_key(headers)
            self._cache = DiskCache(cache_root(cache_dir) / "decoded", f"{split}-{key}", len(names), *self.image_size)
        else:
            self._cache = None

    def _check_listing(self, volumes: Path, names: list[str]) -> None:
        if not volumes.is_dir():
            raise DataError(f"{volumes} does not exist: the slices of {self.split} belong there. {FIX_DATA}")
        on_disk = {entry.name for entry in os.scandir(volumes) if entry.name.endswith(".png")}
        listed = set(names)
        without_image = [name for name in names if name not in on_disk and not (volumes / name).is_file()]
        without_row = sorted(on_disk - listed)
        csv_path = self.root / self.split / "classes.csv"
        if without_image:
            raise DataError(f"{volumes / without_image[0]} is listed in {csv_path} but does not exist"
                            f"{_and_more(without_image)}. Restore the file or remove its row. {FIX_DATA}")
        if without_row:
            raise DataError(f"{volumes / without_row[0]} has no row in {csv_path}{_and_more(without_row)}: "
                            f"its class is unknown. Add its row or remove the file. {FIX_DATA}")

    def _common_size(self, headers: list[tuple[int, int, int, int]]) -> tuple[int, int]:
        height, width = headers[0][:2]
        for path, header in zip(self.image_paths, headers):
            if header[:2] != (height, width):
                raise DataError(f"Wrong image size! {path} is {header[0]} x {header[1]} (H x W) but "
                                f"{self.image_paths[0]} is {height} x {width}: every slice of a split must "
                                f"have the same size. Resize or regenerate the odd ones.")
        return height, width

    def _index_key(self, headers) -> str:
        digest = hashlib.sha256(f"v{DISK_CACHE_VERSION} {self.image_size}\n".encode())
        for path, (_, _, size, mtime_ns) in zip(self.image_paths, headers):
            digest.update(f"{path.resolve()}\0{size}\0{mtime_ns}\n".encode())
        return digest.hexdigest()[:20]

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = self.load_batch([index])
        return images[0], targets[0]

    def __getitems__(self, indices: list[int]) -> list:
        """A DataLoader asks for a whole batch this way: built by load_batch, then split into items."""
        images, targets = self.load_batch(indices)
        return list(zip(images, targets))

    def load_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """The slices at `indices` as one batch: (float32 [B, 1, H, W] in [0, 1], int64 [B]).

        The batch is cut into DECODE_THREADS runs, one per thread of this process; each thread
        decodes the slices of its run that are not cached yet (Pillow lets go of the GIL while it
        inflates a PNG) and writes the run into the batch as floats, so decoding and converting
        use every core. No per-item tensors are made and stacked again: `batch_loader` hands the
        batch to the training loop as it is.
        """
        indices = np.asarray(indices, dtype=np.int64)
        images = new_batch_tensor((len(indices), 1, *self.image_size))
        # in a DataLoader worker one thread: the workers already share the cores
        threads = 1 if get_worker_info() is not None else max(1, min(DECODE_THREADS, len(indices)))
        bounds = np.linspace(0, len(indices), threads + 1).astype(int)
        runs = [(indices[start:stop], images.numpy()[start:stop, 0]) for start, stop in zip(bounds, bounds[1:])]
        if threads > 1:
            list(decode_pool().map(self._fill, runs))
        else:
            self._fill(runs[0])
        if self.transform is not None:
            images = torch.stack([self.transform(image) for image in images])
        return images, torch.from_numpy(self.targets[indices])

    def _fill(self, run: tuple[np.ndarray, np.ndarray]) -> None:
        """run = (indices, out): write those slices into out (float32 [n, H, W]) as floats in [0, 1],
        decoding the ones not cached yet."""
        indices, out = run
        cache = self._cache
        if cache is None:
            pixels = np.array([self._decode(index) for index in indices], dtype=np.uint8).reshape(out.shape)
        else:
            for index in indices[cache.filled_np[indices] == 0]:
                self._decode(index)
            pixels = cache.pixels_np[indices]
        np.divide(pixels, np.float32(255.0), out=out, dtype=np.float32)

    def _decode(self, index: int) -> np.ndarray:
        pixels = decode_slice(self.image_paths[index], self.image_size)
        with self._decode_lock:
            self.decode_count += 1
        if self._cache is not None:
            self._cache.pixels_np[index] = pixels
            self._cache.filled_np[index] = 1  # after the pixels: a reader never sees a half-written slice
        return pixels

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_decode_lock"]  # locks do not pickle (spawned DataLoader workers)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._decode_lock = threading.Lock()

    def cached(self) -> np.ndarray:
        """bool [n]: which slices are in the cache (filled by this process or any worker)."""
        if self._cache is None:
            return np.zeros(len(self), dtype=bool)
        return self._cache.filled_np.astype(bool)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=len(CLASS_NAMES))

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}: {n}" for name, n in zip(CLASS_NAMES, self.class_counts()))
        return (f"LiTSDataset(root={str(self.root)!r}, split={self.split!r}, {len(self)} slices of "
                f"{self.image_size[0]} x {self.image_size[1]}; {counts})")


def _and_more(items: list) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


class _Batches(Dataset):
    """Item i of this dataset is a whole batch: the list of indices a BatchSampler yields."""

    def __init__(self, dataset: LiTSDataset):
        self.dataset = dataset

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.load_batch(indices)


def batch_loader(dataset: LiTSDataset, batch_size: int, sampler: Sampler | None = None, shuffle: bool = False,
                 drop_last: bool = False, generator: torch.Generator | None = None, **options) -> DataLoader:
    """A DataLoader over `dataset` whose batches are built whole by `LiTSDataset.load_batch`.

    It yields what `DataLoader(dataset, batch_size, ...)` yields, (images [B, 1, H, W], targets [B]),
    without making B items and stacking them again (collation copies every batch once more).
    `sampler` orders the items (a DistributedSampler, say); `options` go to the DataLoader
    (num_workers, pin_memory, persistent_workers, ...).
    """
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    elif shuffle:
        raise ValueError("batch_loader: pass either sampler or shuffle=True, not both (the sampler decides the order).")
    return DataLoader(_Batches(dataset), sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None,
                      generator=generator, **options)
