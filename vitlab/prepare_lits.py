"""`vitlab data prepare-lits`: turn the public LiTS CT volumes into the layout LiTSDataset reads.

RAW_DIR holds the LiTS training data, `volume-<v>.nii` (or `.nii.gz`) with `segmentation-<v>.nii`
(labels 0 background, 1 liver, 2 tumour), in any sub-folders (the download comes in two batches),
or the Medical Segmentation Decathlon's Task03_Liver (`imagesTr/liver_<v>.nii.gz` with
`labelsTr/liver_<v>.nii.gz`). OUT_DIR gets, for each split (train, val, test):

    <split>/volumes/volume-<v>_<s>.png                      8-bit CT slice, HU window scaled to 0..255
    <split>/segmentations/segmentation-<v>_livermask_<s>.png  0/255, liver including tumour
    <split>/segmentations/segmentation-<v>_lesionmask_<s>.png 0/255, tumour
    <split>/classes.csv   volume_file,liver_file,liver_visible,tumors_file,tumors_visible

Every slice is shown the same way whatever the file's affine: axial, in the radiological view
(the patient's right on the image's left, anterior at the top), `s` counting from the feet up.
The segmentation is a label map on the volume's voxel grid, so both are oriented by the volume's
affine. liver_visible and tumors_visible come from the labels at the volume's own resolution, so a
tumour of a few voxels that the resized (nearest neighbour) mask loses still counts. A volume goes
to one split only.

Resumable: a volume's slices are written into OUT_DIR/.prepare-lits/volume-<v>.partial/, moved into
place, and only then is its manifest OUT_DIR/.prepare-lits/volume-<v>.json written. A rerun skips
volumes whose manifest and files are all there and redoes the others. The classes.csv files are
removed when a run starts and written (atomically) only when every volume is complete.
"""
import argparse
import csv
import json
import os
import re
import shutil
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vitlab.data import CLASS_NAMES, CSV_COLUMNS, DataError
from vitlab.phantom import SPLITS, available_cores

# Array axes after orientation: rows run anterior -> posterior, columns the patient's right -> left,
# slices feet -> head. Row/column of a slice are then the radiological view.
DISPLAY_AXCODES = ("P", "L", "S")
STATE_DIR = ".prepare-lits"
SETTINGS_FILE = "settings.json"
PNG_COMPRESS_LEVEL = 1  # fast; the masks still shrink to a few hundred bytes

LITS_NAME = re.compile(r"(volume|segmentation)-(\d+)\.nii(\.gz)?")
DECATHLON_NAME = re.compile(r"liver_(\d+)\.nii(\.gz)?")
DECATHLON_FOLDERS = {"imagesTr": "volume", "labelsTr": "segmentation"}


@dataclass(frozen=True)
class VolumePair:
    volume_id: int
    volume_path: Path
    segmentation_path: Path


@dataclass(frozen=True)
class PrepareSettings:
    size: int
    window: tuple[float, float]
    seed: int
    skip_empty_fraction: float | None

    def validate(self) -> None:
        if self.size < 1:
            raise ValueError(f"Wrong --size! Expected a positive number of pixels, got {self.size}.")
        low, high = self.window
        if not low < high:
            raise ValueError(f"Wrong --window! Expected LOW < HIGH in Hounsfield units, got {low} {high}.")
        fraction = self.skip_empty_fraction
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"Wrong --skip-empty-fraction! Expected a fraction in [0, 1], got {fraction}.")


def slice_file_names(volume_id: int, slice_index: int) -> tuple[str, str, str]:
    """(volume PNG, liver mask PNG, lesion mask PNG) of one slice."""
    return (f"volume-{volume_id}_{slice_index}.png",
            f"segmentation-{volume_id}_livermask_{slice_index}.png",
            f"segmentation-{volume_id}_lesionmask_{slice_index}.png")


def slice_paths(split_dir: Path, volume_id: int, slice_index: int) -> tuple[Path, Path, Path]:
    """Where the slice's volume PNG and its two masks live in a split folder."""
    volume_name, liver_name, lesion_name = slice_file_names(volume_id, slice_index)
    return (split_dir / "volumes" / volume_name, split_dir / "segmentations" / liver_name,
            split_dir / "segmentations" / lesion_name)


# ---------------------------------------------------------------------------------------------
# Finding the volumes and splitting them


def find_volume_pairs(raw_dir: Path) -> list[VolumePair]:
    """Every volume with its segmentation under raw_dir (LiTS or Decathlon names), by volume id."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: RAW_DIR is not a folder. Point it at the unpacked LiTS training data.")
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}}
    for path in sorted(raw_dir.rglob("*.nii*")):
        if match := LITS_NAME.fullmatch(path.name):
            kind, volume_id = match[1], int(match[2])
        elif (match := DECATHLON_NAME.fullmatch(path.name)) and path.parent.name in DECATHLON_FOLDERS:
            kind, volume_id = DECATHLON_FOLDERS[path.parent.name], int(match[1])
        else:
            continue
        if volume_id in found[kind]:
            raise DataError(f"{path}: {kind} {volume_id} is there twice ({found[kind][volume_id]} and {path}). "
                            "Keep one of them.")
        found[kind][volume_id] = path
    volumes, segmentations = found["volume"], found["segmentation"]
    problems = [f"{volumes[v]}: no segmentation for this volume (expected segmentation-{v}.nii or .nii.gz "
                f"in {raw_dir})" for v in sorted(volumes.keys() - segmentations.keys())]
    problems += [f"{segmentations[v]}: no volume for this segmentation (expected volume-{v}.nii or .nii.gz "
                 f"in {raw_dir})" for v in sorted(segmentations.keys() - volumes.keys())]
    if problems:
        raise DataError("\n".join(problems))
    if not volumes:
        raise DataError(f"{raw_dir}: no volume-<v>.nii / .nii.gz files (nor a Decathlon imagesTr/ folder) "
                        "in this folder or below it.")
    return [VolumePair(v, volumes[v], segmentations[v]) for v in sorted(volumes)]


def split_counts(n_volumes: int, fractions: tuple[float, ...]) -> list[int]:
    """Volumes per split: largest remainders, and at least one for every non-zero fraction if possible."""
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"Wrong --split! Expected three fractions >= 0 (train val test) that add up to 1, "
                         f"got {' '.join(str(f) for f in fractions)}.")
    exact = np.asarray(fractions, dtype=np.float64) * n_volumes
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n_volumes - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((counts == 0) & (np.asarray(fractions) > 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def assign_splits(volume_ids: list[int], fractions: tuple[float, ...], seed: int) -> dict[int, str]:
    """volume id -> split name; a seeded shuffle, so the same volumes and seed give the same split."""
    order = np.random.default_rng(seed).permutation(sorted(volume_ids))
    assignment, start = {}, 0
    for split, count in zip(SPLITS, split_counts(len(order), fractions)):
        assignment.update({int(v): split for v in order[start:start + count]})
        start += count
    return assignment


# ---------------------------------------------------------------------------------------------
# One volume: read, orient, window, resize, write


def _load_nifti(path: Path):
    import nibabel as nib

    try:
        image = nib.load(path)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as error:
        raise DataError(f"{path}: cannot read this file as NIfTI ({error}). Download it again.") from error
    if len(image.shape) != 3:
        raise DataError(f"{path}: expected a 3-D CT volume, got shape {image.shape}.")
    return image


def _read_array(path: Path, read):
    try:
        return read()
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise DataError(f"{path}: cannot read the voxels of this NIfTI file ({error}). The file is "
                        "probably truncated: download it again.") from error


def load_pair(pair: VolumePair) -> tuple[np.ndarray, float, float, np.ndarray]:
    """(stored CT values, slope, intercept, labels), both arrays oriented to DISPLAY_AXCODES."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    volume, segmentation = _load_nifti(pair.volume_path), _load_nifti(pair.segmentation_path)
    if volume.shape != segmentation.shape:
        raise DataError(f"{pair.segmentation_path}: shape {segmentation.shape} does not match its volume "
                        f"{pair.volume_path} of shape {volume.shape}.")
    try:
        to_display = ornt_transform(io_orientation(volume.affine), axcodes2ornt(DISPLAY_AXCODES))
    except ValueError as error:
        raise DataError(f"{pair.volume_path}: its affine has no usable orientation (an axis of length 0 or "
                        f"two axes along one direction), so left, right, up and down are unknown:\n"
                        f"{volume.affine}") from error
    stored = _read_array(pair.volume_path, volume.dataobj.get_unscaled)
    labels = _read_array(pair.segmentation_path, lambda: np.asanyarray(segmentation.dataobj))
    proxy = volume.dataobj
    return (apply_orientation(stored, to_display), float(proxy.slope), float(proxy.inter),
            apply_orientation(labels, to_display))


def slice_flags(labels: np.ndarray, segmentation_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(liver visible, tumour visible) per slice, at the volume's own resolution; checks the labels."""
    depth = labels.shape[2]
    liver, tumour = np.zeros(depth, dtype=bool), np.zeros(depth, dtype=bool)
    for s in range(depth):
        label = labels[:, :, s]
        wrong = (label != 0) & (label != 1) & (label != 2)
        if wrong.any():
            values = np.unique(label[wrong])[:5].tolist()
            raise DataError(f"{segmentation_path}: labels must be 0 (background), 1 (liver) or 2 (tumour); "
                            f"slice {s} has {values}.")
        liver[s], tumour[s] = (label >= 1).any(), (label == 2).any()
    return liver, tumour


def slices_to_keep(liver: np.ndarray, skip_empty_fraction: float | None, seed: int, volume_id: int) -> np.ndarray:
    """All slices with liver, and a seeded random fraction of those without (all if no fraction)."""
    if skip_empty_fraction is None:
        return np.arange(len(liver))
    empty = np.flatnonzero(~liver)
    rng = np.random.default_rng([seed, volume_id])
    kept_empty = rng.choice(empty, size=round(skip_empty_fraction * len(empty)), replace=False)
    return np.sort(np.concatenate([np.flatnonzero(liver), kept_empty]))


def window_slice(stored: np.ndarray, slope: float, inter: float, window: tuple[float, float], size: int) -> Image.Image:
    """HU slice -> 8-bit image of size x size: clip to the window, scale to 0..255, resize bilinear."""
    low, high = window
    hu = stored.astype(np.float32) * slope + inter
    scaled = (np.clip(hu, low, high) - low) * (255.0 / (high - low))
    resized = Image.fromarray(np.ascontiguousarray(scaled, dtype=np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR)
    return Image.fromarray(np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8), mode="L")


def mask_slice(mask: np.ndarray, size: int) -> Image.Image:
    """Boolean slice -> 0/255 image of size x size, nearest neighbour."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8) * 255, mode="L")
    return image.resize((size, size), Image.Resampling.NEAREST)


def _write_json_atomically(path: Path, data) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(partial, path)


def prepare_volume(pair: VolumePair, split: str, out_dir: Path, settings: PrepareSettings) -> dict:
    """Write one volume's slices and masks into out_dir/<split>, then its manifest; returns the manifest."""
    state_dir = out_dir / STATE_DIR
    partial_dir = state_dir / f"volume-{pair.volume_id}.partial"
    shutil.rmtree(partial_dir, ignore_errors=True)
    stored, slope, inter, labels = load_pair(pair)
    liver, tumour = slice_flags(labels, pair.segmentation_path)
    kept = slices_to_keep(liver, settings.skip_empty_fraction, settings.seed, pair.volume_id)

    partial_dir.mkdir(parents=True)
    for s in kept:
        pictures = (window_slice(stored[:, :, s], slope, inter, settings.window, settings.size),
                    mask_slice(labels[:, :, s] >= 1, settings.size),
                    mask_slice(labels[:, :, s] == 2, settings.size))
        for name, picture in zip(slice_file_names(pair.volume_id, int(s)), pictures):
            picture.save(partial_dir / name, compress_level=PNG_COMPRESS_LEVEL)
    for s in kept:
        for path in slice_paths(out_dir / split, pair.volume_id, int(s)):
            os.replace(partial_dir / path.name, path)
    manifest = {
        "volume_id": pair.volume_id,
        "split": split,
        "volume_file": str(pair.volume_path),
        "segmentation_file": str(pair.segmentation_path),
        "slices": [[int(s), bool(liver[s]), bool(tumour[s])] for s in kept],
    }
    _write_json_atomically(state_dir / f"volume-{pair.volume_id}.json", manifest)
    partial_dir.rmdir()
    return manifest


def _prepare_volume_job(job: tuple[VolumePair, str, Path, PrepareSettings]) -> tuple[int, dict | None, str | None]:
    """(volume id, manifest, None) when written, (volume id, None, message) for bad input."""
    pair = job[0]
    try:
        return pair.volume_id, prepare_volume(*job), None
    except DataError as error:
        return pair.volume_id, None, str(error)


def _finished_jobs(jobs: list[tuple], workers: int):
    """Yield each job's result as it finishes: in this process for one worker, else in a process pool."""
    if workers == 1 or len(jobs) <= 1:
        yield from map(_prepare_volume_job, jobs)
        return
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_prepare_volume_job, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


# ---------------------------------------------------------------------------------------------
# The whole run: state, resume, classes.csv


def _settings_record(settings: PrepareSettings, assignment: dict[int, str]) -> dict:
    return json.loads(json.dumps({
        "size": settings.size,
        "window": list(settings.window),
        "seed": settings.seed,
        "skip_empty_fraction": settings.skip_empty_fraction,
        "orientation": "".join(DISPLAY_AXCODES),
        "splits": {str(v): split for v, split in sorted(assignment.items())},
    }))


def _claim_out_dir(out_dir: Path, record: dict) -> None:
    """Start OUT_DIR, or check that it was started with the same settings and volumes."""
    settings_path = out_dir / STATE_DIR / SETTINGS_FILE
    if settings_path.exists():
        try:
            previous = json.loads(settings_path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{settings_path}: unreadable ({error}). Delete OUT_DIR and start again.") from error
        different = sorted(key for key in record.keys() | previous.keys() if record.get(key) != previous.get(key))
        if different:
            raise DataError(f"{out_dir}: was started with other settings ({', '.join(different)} differ: "
                            f"see {settings_path}). Rerun with the same options and RAW_DIR to finish it, or "
                            "use a new OUT_DIR.")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir}: OUT_DIR is not empty and was not made by prepare-lits. Use a new folder.")
    (out_dir / STATE_DIR).mkdir(parents=True)
    _write_json_atomically(settings_path, record)


def _completed_manifest(out_dir: Path, volume_id: int, split: str) -> dict | None:
    """The volume's manifest if it and every file it lists are there, else None (redo the volume)."""
    path = out_dir / STATE_DIR / f"volume-{volume_id}.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for s, _, _ in manifest["slices"]:
        if not all(file.is_file() for file in slice_paths(out_dir / split, volume_id, s)):
            return None
    return manifest


def _write_classes_csv(path: Path, manifests: list[dict]) -> np.ndarray:
    """classes.csv of one split, atomically; returns its class counts."""
    counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for manifest in sorted(manifests, key=lambda m: m["volume_id"]):
            for s, liver, tumour in manifest["slices"]:
                volume_name, liver_name, lesion_name = slice_file_names(manifest["volume_id"], s)
                writer.writerow([volume_name, liver_name, liver, lesion_name, tumour])
                counts[2 if tumour else int(liver)] += 1
    os.replace(partial, path)
    return counts


def _print_class_shares(class_counts: dict[str, np.ndarray], assignment: dict[int, str]) -> None:
    print(f"{'split':<6} {'volumes':>7} {'slices':>7}  " + "  ".join(f"{name:>17}" for name in CLASS_NAMES))
    for split, counts in class_counts.items():
        volumes = sum(1 for s in assignment.values() if s == split)
        shares = "  ".join(f"{n:>8} ({n / max(counts.sum(), 1):6.1%})" for n in counts)
        print(f"{split:<6} {volumes:>7} {counts.sum():>7}  {shares}")


def prepare_lits(raw_dir, out_dir, size=256, window=(-100, 400), split=(0.7, 0.15, 0.15), seed=0,
                 workers=None, skip_empty_fraction=None) -> dict:
    """Prepare every LiTS volume in raw_dir into out_dir (see the module docstring); returns a summary.

    The summary: out_dir, splits (split -> volume ids), written and skipped (volume ids this run wrote
    or found complete), class_counts (split -> [no liver, liver, liver with tumour]), slices, wall_time_s.
    Bad input raises DataError naming the file; volumes finished before it stay finished.
    """
    start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    settings = PrepareSettings(int(size), (float(window[0]), float(window[1])), int(seed),
                               None if skip_empty_fraction is None else float(skip_empty_fraction))
    settings.validate()
    fractions = tuple(float(f) for f in split)
    workers = min(4, available_cores()) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"Wrong --workers! Expected at least 1 process, got {workers}.")
    pairs = find_volume_pairs(raw_dir)
    assignment = assign_splits([p.volume_id for p in pairs], fractions, settings.seed)
    _claim_out_dir(out_dir, _settings_record(settings, assignment))
    used_splits = [s for s in SPLITS if s in assignment.values()]
    for name in used_splits:
        (out_dir / name / "volumes").mkdir(parents=True, exist_ok=True)
        (out_dir / name / "segmentations").mkdir(parents=True, exist_ok=True)
        (out_dir / name / "classes.csv").unlink(missing_ok=True)

    manifests = {p.volume_id: _completed_manifest(out_dir, p.volume_id, assignment[p.volume_id]) for p in pairs}
    skipped = sorted(v for v, m in manifests.items() if m is not None)
    jobs = [(p, assignment[p.volume_id], out_dir, settings) for p in pairs if manifests[p.volume_id] is None]
    if skipped:
        print(f"{len(skipped)} of {len(pairs)} volumes already prepared in {out_dir}; skipping them")

    errors = {}
    with tqdm(total=len(jobs), desc="prepare-lits", unit="volume", disable=not jobs) as progress:
        for volume_id, manifest, error in _finished_jobs(jobs, workers):
            manifests[volume_id] = manifest
            if error:
                errors[volume_id] = error
            progress.update()
    if errors:
        done = sum(m is not None for m in manifests.values())
        raise DataError("\n".join(errors[v] for v in sorted(errors))
                        + f"\n{done} of {len(pairs)} volumes are prepared in {out_dir}; fix or replace the files "
                        "above and rerun the same command to finish (finished volumes are skipped).")

    class_counts = {name: _write_classes_csv(out_dir / name / "classes.csv",
                                             [m for m in manifests.values() if m["split"] == name])
                    for name in used_splits}
    _print_class_shares(class_counts, assignment)
    return {
        "out_dir": str(out_dir),
        "splits": {name: sorted(v for v, s in assignment.items() if s == name) for name in used_splits},
        "written": sorted(p.volume_id for p, *_ in jobs),
        "skipped": skipped,
        "class_counts": {name: counts.tolist() for name, counts in class_counts.items()},
        "slices": int(sum(c.sum() for c in class_counts.values())),
        "wall_time_s": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("raw_dir", metavar="RAW_DIR", type=Path,
                        help="LiTS training data: volume-<v>.nii[.gz] and segmentation-<v>.nii[.gz] "
                             "(sub-folders allowed), or the Decathlon's Task03_Liver folder")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path,
                        help="where the train/val/test slice folders go (new, or one this command started)")
    parser.add_argument("--size", type=int, default=256, help="output slices are SIZE x SIZE pixels (256)")
    parser.add_argument("--window", type=float, nargs=2, default=[-100.0, 400.0], metavar=("LOW", "HIGH"),
                        help="Hounsfield window mapped to 0..255 (-100 400)")
    parser.add_argument("--split", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST"),
                        help="fractions of the volumes per split (0.7 0.15 0.15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of --skip-empty-fraction (0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="volumes prepared in parallel (default: up to 4); each holds one volume in memory")
    parser.add_argument("--skip-empty-fraction", type=float, default=None, metavar="F",
                        help="keep only a fraction F of the slices without liver (default: keep all)")


def run(args: argparse.Namespace) -> int:
    try:
        summary = prepare_lits(args.raw_dir, args.out_dir, size=args.size, window=tuple(args.window),
                               split=tuple(args.split), seed=args.seed, workers=args.workers,
                               skip_empty_fraction=args.skip_empty_fraction)
    except ValueError as error:
        print(f"vitlab data prepare-lits: error: {error}", file=sys.stderr)
        return 1
    print(f"{summary['slices']} slices in {summary['out_dir']} ({summary['wall_time_s']:.1f} s); "
          f"train with: vitlab train --data-dir {summary['out_dir']}")
    return 0
