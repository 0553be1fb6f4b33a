"""`vitlab data prepare-lits`: tiny synthetic NIfTI volumes, stored in several orientations, become
the Clean_LiTS layout that LiTSDataset reads."""
import argparse
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from vitlab.data import DataError, LiTSDataset
from vitlab.prepare_lits import add_arguments, assign_splits, prepare_lits, run, split_counts

# The anatomy, drawn in the display frame: rows anterior -> posterior, columns the patient's
# right -> left, slices feet -> head. Liver and tumour slices are not symmetric about the middle,
# so a volume read upside down would give other classes.
HEIGHT, WIDTH, DEPTH = 40, 40, 12
LIVER_SLICES = range(2, 9)
TUMOUR_SLICES = (6, 7)
OUT_SIZE = 32

# name -> (display array -> stored array, affine, the axis codes nibabel should read from it)
ORIENTATIONS = {
    "LPS": (lambda d: d.transpose(1, 0, 2), np.diag([-0.8, -0.8, 2.5, 1.0]), ("L", "P", "S")),
    "RAS": (lambda d: d[::-1, ::-1, :].transpose(1, 0, 2), np.diag([0.8, 0.8, 2.5, 1.0]), ("R", "A", "S")),
    "LPI": (lambda d: d.transpose(1, 0, 2)[:, :, ::-1], np.diag([-0.8, -0.8, -2.5, 1.0]), ("L", "P", "I")),
    "SPL": (lambda d: d.transpose(2, 0, 1),
            np.array([[0, 0, -0.8, 10], [0, -0.8, 0, 20], [2.5, 0, 0, -30], [0, 0, 0, 1.0]]), ("S", "P", "L")),
}
# volume id -> (orientation, file suffix, tumour drawn, stored with a slope and intercept)
VOLUMES = {
    0: ("LPS", ".nii", True, False),
    1: ("RAS", ".nii.gz", True, False),
    2: ("LPI", ".nii", True, False),
    3: ("SPL", ".nii", True, False),
    4: ("LPS", ".nii", True, True),
    5: ("RAS", ".nii", False, False),
}


def display_volume(tumour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(HU int16, labels uint8), both [HEIGHT, WIDTH, DEPTH] in the display frame."""
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    hu = np.full((HEIGHT, WIDTH, DEPTH), -1000, dtype=np.int16)
    labels = np.zeros((HEIGHT, WIDTH, DEPTH), dtype=np.uint8)
    hu[(rows - 20) ** 2 + (cols - 20) ** 2 < 18 ** 2] = 40                       # body
    hu[1:4, 1:10] = 1000                                                         # marker: anterior, patient's right
    for s in LIVER_SLICES:
        hu[6:20, 3:18, s], labels[6:20, 3:18, s] = 60, 1
    for s in TUMOUR_SLICES if tumour else ():
        hu[11:15, 8:12, s], labels[11:15, 8:12, s] = 10, 2
    return hu, labels


def expected_class(volume_id: int, slice_index: int) -> int:
    if VOLUMES[volume_id][2] and slice_index in TUMOUR_SLICES:
        return 2
    return int(slice_index in LIVER_SLICES)


def write_pair(raw_dir, volume_id, orientation="LPS", suffix=".nii", tumour=True, scaled=False, labels=None):
    to_stored, affine, _ = ORIENTATIONS[orientation]
    hu, drawn = display_volume(tumour)
    labels = drawn if labels is None else labels
    if scaled:  # stored = (HU + 1024) / 2, read back through scl_slope = 2, scl_inter = -1024
        volume = nib.Nifti1Image(to_stored((hu + 1024) // 2), affine)
        volume.header.set_slope_inter(2.0, -1024.0)
    else:
        volume = nib.Nifti1Image(to_stored(hu), affine)
    nib.save(volume, raw_dir / f"volume-{volume_id}{suffix}")
    nib.save(nib.Nifti1Image(to_stored(labels), affine), raw_dir / f"segmentation-{volume_id}{suffix}")


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory):
    raw = tmp_path_factory.mktemp("lits_raw")
    (raw / "batch2").mkdir()  # the LiTS download comes in two folders
    for volume_id, (orientation, suffix, tumour, scaled) in VOLUMES.items():
        write_pair(raw if volume_id < 3 else raw / "batch2", volume_id, orientation, suffix, tumour, scaled)
    return raw


@pytest.fixture(scope="session")
def prepared(raw_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lits_prepared") / "out"
    summary = prepare_lits(raw_dir, out, size=OUT_SIZE, workers=2)
    return out, summary


def test_the_helper_writes_the_orientations_it_claims(raw_dir):
    for volume_id, (orientation, suffix, _, scaled) in VOLUMES.items():
        image = nib.load(next(raw_dir.rglob(f"volume-{volume_id}{suffix}")))
        assert nib.aff2axcodes(image.affine) == ORIENTATIONS[orientation][2]
        assert image.dataobj.slope == (2.0 if scaled else 1.0)


def test_hounsfield_window_is_scaled_to_8_bits(prepared):
    out, summary = prepared
    split = next(s for s, ids in summary["splits"].items() if 0 in ids)
    body = read_png(out / split / "volumes" / "volume-0_0.png")
    liver = read_png(out / split / "volumes" / "volume-0_4.png")
    assert body[16, 16] == round((40 + 100) / 500 * 255)   # soft tissue, 40 HU in the window -100..400
    assert liver[8, 6] == round((60 + 100) / 500 * 255)    # liver, 60 HU
    assert body[0, -1] == 0 and body[1, 1] == 255          # air below the window, the 1000 HU marker above


def test_output_reads_back_with_lits_dataset_and_classes_match_the_labels(prepared):
    out, summary = prepared
    assert summary["written"] == sorted(VOLUMES) and summary["skipped"] == []
    for split, volume_ids in summary["splits"].items():
        dataset = LiTSDataset(out, split=split)
        assert dataset.image_size == (OUT_SIZE, OUT_SIZE)
        assert len(dataset) == DEPTH * len(volume_ids)
        names = [path.stem.split("-")[1].split("_") for path in dataset.image_paths]
        expected = [expected_class(int(v), int(s)) for v, s in names]
        assert sorted({int(v) for v, _ in names}) == volume_ids
        np.testing.assert_array_equal(dataset.targets, expected)
        assert summary["class_counts"][split] == np.bincount(expected, minlength=3).tolist()
        image, target = dataset[0]
        assert image.shape == (1, OUT_SIZE, OUT_SIZE) and 0.0 <= image.min() and image.max() <= 1.0
        assert target == expected[0]


def test_masks_are_0_or_255_and_show_the_drawn_labels(prepared):
    out, summary = prepared
    for split, volume_ids in summary["splits"].items():
        for v in volume_ids:
            for s in range(DEPTH):
                liver = read_png(out / split / "segmentations" / f"segmentation-{v}_livermask_{s}.png")
                lesion = read_png(out / split / "segmentations" / f"segmentation-{v}_lesionmask_{s}.png")
                assert set(np.unique(liver)) <= {0, 255} and set(np.unique(lesion)) <= {0, 255}
                assert liver.any() == (s in LIVER_SLICES)
                assert lesion.any() == (expected_class(v, s) == 2)
                assert not (lesion & ~liver).any()  # a tumour lies inside the liver mask


def test_every_affine_gives_the_same_picture_in_the_radiological_view(prepared):
    out, summary = prepared
    split_of = {v: split for split, ids in summary["splits"].items() for v in ids}
    same_anatomy = [v for v in VOLUMES if VOLUMES[v][2]]
    for s in range(DEPTH):
        pictures = [read_png(out / split_of[v] / "volumes" / f"volume-{v}_{s}.png") for v in same_anatomy]
        for v, picture in zip(same_anatomy[1:], pictures[1:]):
            np.testing.assert_array_equal(picture, pictures[0], err_msg=f"volume {v} ({VOLUMES[v][0]}), slice {s}")
    image = read_png(out / split_of[0] / "volumes" / "volume-0_0.png")
    assert (image[1:3, 1:7] == 255).all()                           # the marker: top left
    for mirrored in (image[1:3, -7:-1], image[-3:-1, 1:7], image[-3:-1, -7:-1]):
        assert mirrored.max() == 0                                  # air in the other corners
    liver = read_png(out / split_of[0] / "segmentations" / "segmentation-0_livermask_4.png")
    rows, cols = np.nonzero(liver)
    assert rows.mean() < OUT_SIZE / 2 and cols.mean() < OUT_SIZE / 2  # anterior, image left = patient right


def test_split_is_by_volume(prepared):
    out, summary = prepared
    assert split_counts(len(VOLUMES), (0.7, 0.15, 0.15)) == [4, 1, 1]
    assert sorted(v for ids in summary["splits"].values() for v in ids) == sorted(VOLUMES)
    for v in VOLUMES:
        holders = [split for split in summary["splits"] if any((out / split / "volumes").glob(f"volume-{v}_*.png"))]
        assert holders == [s for s, ids in summary["splits"].items() if v in ids]
    assert {s: len(ids) for s, ids in summary["splits"].items()} == {"train": 4, "val": 1, "test": 1}
    assert assign_splits(list(range(131)), (0.7, 0.15, 0.15), seed=5) == assign_splits(
        list(range(131)), (0.7, 0.15, 0.15), seed=5)
    assert split_counts(131, (0.7, 0.15, 0.15)) == [92, 20, 19]
    assert split_counts(3, (0.7, 0.15, 0.15)) == [1, 1, 1]
    with pytest.raises(ValueError, match="add up to 1"):
        split_counts(10, (0.7, 0.2, 0.2))


def _missing_segmentation(raw):
    nib.save(nib.Nifti1Image(display_volume()[0], np.eye(4)), raw / "volume-7.nii")


def _missing_volume(raw):
    nib.save(nib.Nifti1Image(display_volume()[1], np.eye(4)), raw / "segmentation-7.nii")


def _shapes_disagree(raw):
    hu, labels = display_volume()
    nib.save(nib.Nifti1Image(hu, np.eye(4)), raw / "volume-7.nii")
    nib.save(nib.Nifti1Image(labels[:, :, :10], np.eye(4)), raw / "segmentation-7.nii")


def _label_out_of_range(raw):
    labels = display_volume()[1]
    labels[30, 30, 5] = 3
    write_pair(raw, 7, labels=labels)


def _unreadable_volume(raw):
    write_pair(raw, 7)
    (raw / "volume-7.nii").write_bytes(b"this is not a NIfTI file" * 20)


def _truncated_gzip(raw):
    write_pair(raw, 7, suffix=".nii.gz")
    data = (raw / "segmentation-7.nii.gz").read_bytes()
    (raw / "segmentation-7.nii.gz").write_bytes(data[: len(data) // 2])


def _duplicate_volume(raw):
    write_pair(raw, 7)
    shutil.copy(raw / "volume-7.nii", raw / "volume-7.nii.gz")


def _affine_without_orientation(raw):
    write_pair(raw, 7)
    volume = nib.Nifti1Image(display_volume()[0], np.eye(4))
    volume.header.set_sform(np.diag([0.8, 0.0, 2.5, 1.0]), code=1)  # the second axis points nowhere
    volume.update_header = lambda: None                              # keep that sform as it is on save
    nib.save(volume, raw / "volume-7.nii")


@pytest.mark.parametrize("make_bad, bad_file, message", [
    (_missing_segmentation, "volume-7.nii", "no segmentation for this volume"),
    (_missing_volume, "segmentation-7.nii", "no volume for this segmentation"),
    (_shapes_disagree, "segmentation-7.nii", "does not match its volume"),
    (_label_out_of_range, "segmentation-7.nii", "labels must be 0 (background), 1 (liver) or 2 (tumour)"),
    (_unreadable_volume, "volume-7.nii", "cannot read this file as NIfTI"),
    (_truncated_gzip, "segmentation-7.nii.gz", "cannot read the voxels"),
    (_duplicate_volume, "volume-7.nii.gz", "volume 7 is there twice"),
    (_affine_without_orientation, "volume-7.nii", "its affine has no usable orientation"),
], ids=["missing segmentation", "missing volume", "shapes disagree", "label 3", "not NIfTI", "truncated gzip",
        "duplicate", "degenerate affine"])
def test_bad_input_names_the_file_and_leaves_nothing_looking_complete(tmp_path, make_bad, bad_file, message):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    write_pair(raw, 0)
    make_bad(raw)
    with pytest.raises(DataError) as error:
        prepare_lits(raw, out, size=OUT_SIZE, split=(1, 0, 0), workers=1)
    assert str(raw / bad_file) in str(error.value) and message in str(error.value)
    assert not list(out.rglob("classes.csv"))
    assert not list(out.rglob("volume-7*"))


def test_fixing_the_bad_file_and_rerunning_finishes_the_run(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    write_pair(raw, 0)
    _label_out_of_range(raw)
    with pytest.raises(DataError, match="rerun the same command"):
        prepare_lits(raw, out, size=OUT_SIZE, split=(1, 0, 0), workers=1)
    write_pair(raw, 7)
    summary = prepare_lits(raw, out, size=OUT_SIZE, split=(1, 0, 0), workers=1)
    assert summary["skipped"] == [0] and summary["written"] == [7]
    assert len(LiTSDataset(out, split="train")) == 2 * DEPTH


def test_an_interrupted_run_resumes_and_skips_finished_volumes(raw_dir, tmp_path):
    out = tmp_path / "out"
    first = prepare_lits(raw_dir, out, size=OUT_SIZE, workers=1)
    split_of = {v: split for split, ids in first["splits"].items() for v in ids}
    classes = {split: (out / split / "classes.csv").read_text() for split in first["splits"]}
    long_ago = 1_000_000_000
    for path in out.rglob("*.png"):
        os.utime(path, (long_ago, long_ago))
    # Volume 2 as if killed while moving its slices: no manifest, a leftover partial folder,
    # a slice cut short. Volume 3 lost a mask after it was finished.
    state = out / ".prepare-lits"
    (state / "volume-2.json").unlink()
    (state / "volume-2.partial").mkdir()
    (state / "volume-2.partial" / "volume-2_5.png").write_bytes(b"\x89PNG")
    slice_2_5 = out / split_of[2] / "volumes" / "volume-2_5.png"
    slice_2_5.write_bytes(slice_2_5.read_bytes()[:40])
    (out / split_of[3] / "segmentations" / "segmentation-3_lesionmask_4.png").unlink()

    second = prepare_lits(raw_dir, out, size=OUT_SIZE, workers=1)
    assert second["written"] == [2, 3] and second["skipped"] == [0, 1, 4, 5]
    for v in VOLUMES:
        mtimes = {path.stat().st_mtime for path in out.rglob(f"*-{v}_*.png")}
        assert len(list(out.rglob(f"*-{v}_*.png"))) == 3 * DEPTH
        assert (mtimes == {long_ago}) == (v in second["skipped"]), f"volume {v}"
    assert not (state / "volume-2.partial").exists()
    assert read_png(slice_2_5).shape == (OUT_SIZE, OUT_SIZE)
    assert {split: (out / split / "classes.csv").read_text() for split in first["splits"]} == classes


def test_a_rerun_with_other_settings_or_a_foreign_folder_is_refused(prepared, raw_dir, tmp_path):
    out, _ = prepared
    with pytest.raises(DataError, match=r"other settings \(size differ"):
        prepare_lits(raw_dir, out, size=OUT_SIZE // 2, workers=1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and was not made by prepare-lits"):
        prepare_lits(raw_dir, foreign, size=OUT_SIZE, workers=1)


def test_skip_empty_fraction_keeps_that_share_of_slices_without_liver(raw_dir, tmp_path):
    empty_slices = DEPTH - len(LIVER_SLICES)
    half = prepare_lits(raw_dir, tmp_path / "half", size=OUT_SIZE, workers=1, skip_empty_fraction=0.6, seed=3)
    again = prepare_lits(raw_dir, tmp_path / "again", size=OUT_SIZE, workers=1, skip_empty_fraction=0.6, seed=3)
    none = prepare_lits(raw_dir, tmp_path / "none", size=OUT_SIZE, workers=1, skip_empty_fraction=0.0)
    for split, ids in half["splits"].items():
        assert half["class_counts"][split][0] == round(0.6 * empty_slices) * len(ids)
        assert sum(half["class_counts"][split][1:]) == len(LIVER_SLICES) * len(ids)
        assert (tmp_path / "half" / split / "classes.csv").read_text() == (
            tmp_path / "again" / split / "classes.csv").read_text()
        assert none["class_counts"][split][0] == 0
        assert sorted(LiTSDataset(tmp_path / "none", split=split).targets.tolist()) == sorted(
            expected_class(v, s) for v in ids for s in LIVER_SLICES)


def test_decathlon_task03_liver_layout(tmp_path):
    raw, out = tmp_path / "Task03_Liver", tmp_path / "out"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    hu, labels = display_volume()
    to_stored, affine, _ = ORIENTATIONS["RAS"]
    nib.save(nib.Nifti1Image(to_stored(hu), affine), raw / "imagesTr" / "liver_12.nii.gz")
    nib.save(nib.Nifti1Image(to_stored(labels), affine), raw / "labelsTr" / "liver_12.nii.gz")
    (raw / "imagesTr" / "._liver_12.nii.gz").write_bytes(b"macOS resource fork")  # as in the Decathlon tar
    summary = prepare_lits(raw, out, size=OUT_SIZE, split=(1, 0, 0), workers=1)
    assert summary["splits"] == {"train": [12]}
    np.testing.assert_array_equal(LiTSDataset(out, split="train").targets,
                                  [expected_class(0, s) for s in range(DEPTH)])


def test_command_line(raw_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args([str(raw_dir), str(out), "--size", "24", "--window", "-200", "300", "--split", "0.5",
                              "0.25", "0.25", "--seed", "3", "--workers", "1", "--skip-empty-fraction", "1"])
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "liver with tumour" in printed and "%" in printed and f"vitlab train --data-dir {out}" in printed
    body = read_png(next((out / "train" / "volumes").glob("*.png")))
    assert body.shape == (24, 24) and body[12, 12] == round((40 + 200) / 500 * 255)  # window -200..300
    assert json.loads((out / ".prepare-lits" / "settings.json").read_text())["window"] == [-200.0, 300.0]

    assert run(parser.parse_args([str(tmp_path / "nowhere"), str(tmp_path / "out2")])) == 1
    assert f"{tmp_path / 'nowhere'}: RAW_DIR is not a folder" in capsys.readouterr().err
