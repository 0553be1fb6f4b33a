"""The phantom generator: the layout it writes, its determinism, the split by volume, class shares."""
import argparse
import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitlab import phantom

SMALL = dict(volumes=5, size=48, slices=12)


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_rows(split_dir: Path) -> list[dict]:
    with open(split_dir / "classes.csv", newline="") as file:
        return list(csv.DictReader(file))


def volume_ids(split_dir: Path) -> set[int]:
    return {int(re.fullmatch(r"volume-(\d+)_\d+\.png", p.name).group(1)) for p in (split_dir / "volumes").iterdir()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "set"
    summary = phantom.generate_phantom_dataset(out, seed=0, workers=1, **SMALL)
    return out, summary


def test_writes_the_clean_lits_layout_with_consistent_masks(small_set):
    root, summary = small_set
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    total = 0
    for split in phantom.SPLITS:
        rows = read_rows(root / split)
        assert list(rows[0]) == phantom.CSV_HEADER.split(",")
        assert len(rows) == summary["slices"][split] == len(list((root / split / "volumes").iterdir()))
        counts = [0, 0, 0]
        for row in rows:
            image = Image.open(root / split / "volumes" / row["volume_file"])
            liver = np.asarray(Image.open(root / split / "segmentations" / row["liver_file"]))
            lesion = np.asarray(Image.open(root / split / "segmentations" / row["tumors_file"]))
            assert image.mode == "L" and image.size == (SMALL["size"], SMALL["size"])
            assert set(np.unique(liver)) <= {0, 255} and set(np.unique(lesion)) <= {0, 255}
            assert not (lesion & ~liver).any(), "a tumour pixel outside the liver mask"
            assert row["liver_visible"] == str(bool(liver.any()))
            assert row["tumors_visible"] == str(bool(lesion.any()))
            counts[2 if lesion.any() else 1 if liver.any() else 0] += 1
        assert counts == summary["class_counts"][split]
        total += len(rows)
    assert total == SMALL["volumes"] * SMALL["slices"]
    assert sum(summary["class_counts"]["train"]) == summary["slices"]["train"]


def test_slices_look_like_ct_not_noise(small_set):
    root, _ = small_set
    rows = read_rows(root / "train")
    liver_rows = [r for r in rows if r["liver_visible"] == "True"]
    assert liver_rows, "no slice of the small set shows the liver"
    row = liver_rows[len(liver_rows) // 2]
    image = np.asarray(Image.open(root / "train" / "volumes" / row["volume_file"])).astype(float)
    liver = np.asarray(Image.open(root / "train" / "segmentations" / row["liver_file"])) > 0
    corner = image[:4, :4]                               # air outside the body: dark
    assert corner.mean() < 20
    assert image[liver].mean() > image.mean() + 20       # the liver is brighter than the slice on average
    columns = np.nonzero(liver.any(axis=0))[0]
    assert columns.mean() < SMALL["size"] / 2            # on the left of the image (patient's right)


def test_liver_spans_one_contiguous_range_of_slices_per_volume(small_set):
    root, _ = small_set
    for split in phantom.SPLITS:
        liver_slices: dict[int, list[int]] = {}
        for row in read_rows(root / split):
            volume, slice_index = map(int, re.fullmatch(r"volume-(\d+)_(\d+)\.png", row["volume_file"]).groups())
            if row["liver_visible"] == "True":
                liver_slices.setdefault(volume, []).append(slice_index)
        for volume, slices in liver_slices.items():
            assert sorted(slices) == list(range(min(slices), max(slices) + 1)), (volume, sorted(slices))


def test_a_slice_renders_the_same_whatever_was_rendered_before():
    volume = phantom.Volume(seed=0, index=2, slices=12)
    alone = phantom.Volume(seed=0, index=2, slices=12).render(7, 32)
    for s in range(12):
        volume.render(s, 32)
    again = volume.render(7, 32)
    assert np.array_equal(alone[0], again[0]) and np.array_equal(alone[1], again[1])


def test_same_seed_same_bytes_whatever_the_worker_count(small_set, tmp_path):
    root, _ = small_set
    again = tmp_path / "again"
    phantom.generate_phantom_dataset(again, seed=0, workers=2, **SMALL)
    assert file_hashes(again) == file_hashes(root)


def test_another_seed_gives_another_set(small_set, tmp_path):
    root, _ = small_set
    other = tmp_path / "other"
    phantom.generate_phantom_dataset(other, seed=1, workers=1, **SMALL)
    first, second = file_hashes(root), file_hashes(other)
    same = [name for name in first if first[name] == second.get(name) and "volumes" in name]
    assert not same, f"slices identical across seeds: {same[:3]}"


def test_splits_by_volume(small_set):
    root, summary = small_set
    ids = {split: volume_ids(root / split) for split in phantom.SPLITS}
    assert all(ids.values()), "every split needs at least one volume"
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert set().union(*ids.values()) == set(range(SMALL["volumes"]))
    assert {split: sorted(v) for split, v in ids.items()} == summary["volumes"]


def test_split_fractions_follow_70_15_15():
    splits = phantom.split_volumes(48, seed=0)
    assert [len(splits[s]) for s in phantom.SPLITS] == [34, 7, 7]
    assert phantom.split_volumes(48, seed=0) == splits
    assert phantom.split_volumes(48, seed=1) != splits
    with pytest.raises(ValueError, match="at least 3 volumes"):
        phantom.split_volumes(2, seed=0)


def test_class_shares_are_close_to_lits(tmp_path):
    """A medium set with the default number of slices per volume: most slices show no liver."""
    summary = phantom.generate_phantom_dataset(tmp_path / "medium", volumes=12, size=64, seed=0)
    shares = summary["class_shares"]
    assert 0.45 <= shares[0] <= 0.72, shares
    assert 0.15 <= shares[1] <= 0.40, shares
    assert 0.04 <= shares[2] <= 0.25, shares
    per_volume_slices = sum(summary["slices"].values()) / 12
    assert phantom.SLICES_RANGE[0] <= per_volume_slices <= phantom.SLICES_RANGE[1]


def test_refuses_to_write_over_an_existing_set(small_set):
    root, _ = small_set
    with pytest.raises(FileExistsError, match="already holds"):
        phantom.generate_phantom_dataset(root, **SMALL)


def test_cli_writes_a_set_and_prints_counts_and_shares(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    phantom.add_arguments(parser)
    out = tmp_path / "cli"
    args = parser.parse_args([str(out), "--volumes", "3", "--seed", "2", "--size", "32", "--slices", "6"])
    assert phantom.run(args) == 0
    printed = capsys.readouterr().out
    assert "class shares: no liver" in printed and re.search(r"train\s+1\s+6\s", printed)
    assert all((out / split / "classes.csv").is_file() for split in phantom.SPLITS)
    assert phantom.run(args) == 2                                   # a second time: refuses to overwrite
    assert "already holds" in capsys.readouterr().out


def test_builtin_dataset_is_generated_once_then_reused(tmp_path, capsys):
    config = dict(volumes=3, size=32, slices=5)
    path = phantom.builtin_dataset(tmp_path, **config)
    printed = capsys.readouterr().out
    assert "generating" in printed and str(path) in printed and printed.count("\n") == 1
    assert path.parent == tmp_path and (path / "train" / "classes.csv").is_file()
    stamp = (path / "train" / "classes.csv").stat().st_mtime_ns
    assert phantom.builtin_dataset(tmp_path, **config) == path
    assert capsys.readouterr().out == ""                            # reused: nothing generated or printed
    assert (path / "train" / "classes.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]      # no temporary folder left behind


def test_builtin_dataset_default_location_follows_vitlab_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "env-cache"))
    path = phantom.builtin_dataset(volumes=3, size=32, slices=4)
    assert path.parent == tmp_path / "env-cache"
    assert phantom.builtin_dataset(volumes=3, size=32, slices=4) == path


def test_interrupted_builtin_generation_leaves_no_set_that_looks_complete(tmp_path, monkeypatch, capsys):
    config = dict(volumes=3, size=32, slices=4)
    real_write_volume = phantom.write_volume
    written = []

    def write_then_crash(*args):
        if written:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C while the second volume was written
        written.append(args)
        return real_write_volume(*args)

    monkeypatch.setattr(phantom, "write_volume", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        phantom.builtin_dataset(tmp_path, workers=1, **config)
    assert written and list(tmp_path.iterdir()) == []              # the half-made set is gone
    monkeypatch.setattr(phantom, "write_volume", real_write_volume)
    path = phantom.builtin_dataset(tmp_path, **config)
    assert sum(1 for _ in (path / "train" / "volumes").iterdir()) == len(read_rows(path / "train"))


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    """A run killed outright (no cleanup) leaves its temporary folder; the next run removes it."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    name = phantom.builtin_name(volumes=3, size=32, slices=4)
    leftover = tmp_path / f".{name}.tmp-{socket.gethostname()}-{dead.stdout.strip()}-0000"
    (leftover / "train").mkdir(parents=True)
    path = phantom.builtin_dataset(tmp_path, volumes=3, size=32, slices=4)
    assert not leftover.exists() and path.is_dir()
