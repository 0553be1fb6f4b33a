"""LiTSDataset on a generated set: items, targets, the shared uint8 cache, and every kind of bad data."""
import csv
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from vitlab import phantom
from vitlab.data import CLASS_NAMES, DataError, LiTSDataset, batch_loader, new_shared_tensor

SIZE = 40


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "set"
    phantom.generate_phantom_dataset(root, volumes=4, size=SIZE, slices=10, seed=3, workers=1)
    return root


@pytest.fixture
def copy_of_set(dataset_root, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(dataset_root, tmp_path / "set")


def csv_targets(split_dir) -> list[int]:
    with open(split_dir / "classes.csv", newline="") as file:
        return [2 if row["tumors_visible"] == "True" else 1 if row["liver_visible"] == "True" else 0
                for row in csv.DictReader(file)]


def first_slice(root, split="train"):
    return sorted((root / split / "volumes").iterdir())[0]


def test_items_are_float_images_in_unit_range_with_int64_targets(dataset_root):
    data = LiTSDataset(dataset_root, "train", cache="none")
    assert len(data) == len(csv_targets(dataset_root / "train")) > 0
    assert data.image_size == (SIZE, SIZE) and data.split == "train" and data.root == dataset_root
    for index in (0, len(data) // 2, len(data) - 1):
        image, target = data[index]
        assert image.shape == (1, SIZE, SIZE) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > image.min()
        assert target.dtype == torch.int64 and target.item() == data.targets[index]
        on_disk = np.asarray(Image.open(data.image_paths[index]), dtype=np.float32) / 255
        assert torch.equal(image[0], torch.from_numpy(on_disk))


def test_targets_follow_classes_csv_without_decoding(dataset_root):
    for split in phantom.SPLITS:
        data = LiTSDataset(dataset_root, split, cache="none")
        assert data.decode_count == 0
        assert data.targets.dtype == np.int64 and data.targets.ndim == 1
        assert data.targets.tolist() == csv_targets(dataset_root / split)
        assert data.class_counts().tolist() == [data.targets.tolist().count(c) for c in range(len(CLASS_NAMES))]
        assert [p.name for p in data.image_paths] == [p for p in _csv_names(dataset_root / split)]
    assert "train" in repr(LiTSDataset(dataset_root, "train", cache="none"))


def _csv_names(split_dir):
    with open(split_dir / "classes.csv", newline="") as file:
        return [row["volume_file"] for row in csv.DictReader(file)]


def test_targets_agree_with_the_masks(dataset_root):
    data = LiTSDataset(dataset_root, "train", cache="none")
    segmentations = dataset_root / "train" / "segmentations"
    for path, target in zip(data.image_paths, data.targets):
        volume, slice_index = path.stem.removeprefix("volume-").split("_")
        liver = np.asarray(Image.open(segmentations / f"segmentation-{volume}_livermask_{slice_index}.png")).any()
        lesion = np.asarray(Image.open(segmentations / f"segmentation-{volume}_lesionmask_{slice_index}.png")).any()
        assert target == (2 if lesion else 1 if liver else 0)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cache_gives_identical_items_and_no_decode_on_the_second_pass(dataset_root, tmp_path, cache):
    reference = LiTSDataset(dataset_root, "train", cache="none")
    data = LiTSDataset(dataset_root, "train", cache=cache, cache_dir=tmp_path)
    first = [data[i][0] for i in range(len(data))]
    assert data.decode_count == len(data) and data.cached().all()
    second = [data[i][0] for i in range(len(data))]
    assert data.decode_count == len(data)                      # nothing decoded again
    for i in range(len(data)):
        assert torch.equal(first[i], second[i]) and torch.equal(second[i], reference[i][0])


def test_disk_cache_survives_the_dataset_and_follows_file_changes(copy_of_set, tmp_path):
    cache_dir = tmp_path / "cache"
    data = LiTSDataset(copy_of_set, "val", cache="disk", cache_dir=cache_dir)
    items = [data[i][0] for i in range(len(data))]
    again = LiTSDataset(copy_of_set, "val", cache="disk", cache_dir=cache_dir)
    assert again.cached().all()
    assert all(torch.equal(again[i][0], items[i]) for i in range(len(again)))
    assert again.decode_count == 0
    changed = again.image_paths[0]
    pixels = np.asarray(Image.open(changed)).copy()
    pixels[:5] = 255
    Image.fromarray(pixels).save(changed)                      # new content, size and mtime
    fresh = LiTSDataset(copy_of_set, "val", cache="disk", cache_dir=cache_dir)
    assert not fresh.cached().any()                            # another index, another cache
    assert torch.equal(fresh[0][0][0], torch.from_numpy(pixels / np.float32(255)))


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cache_filled_by_dataloader_workers_is_visible_afterwards(dataset_root, tmp_path, cache):
    data = LiTSDataset(dataset_root, "train", cache=cache, cache_dir=tmp_path)
    loader = DataLoader(data, batch_size=4, num_workers=2)
    batches = list(loader)
    assert data.decode_count == 0                              # the workers decoded, not this process
    assert data.cached().all()                                 # ... into the memory this process sees
    images = torch.cat([images for images, _ in batches])
    targets = torch.cat([targets for _, targets in batches])
    assert images.shape == (len(data), 1, SIZE, SIZE) and targets.dtype == torch.int64
    assert torch.equal(targets, torch.from_numpy(data.targets))
    for i in range(len(data)):
        assert torch.equal(data[i][0], images[i])
    assert data.decode_count == 0


def test_transform_is_applied_to_the_float_image(dataset_root):
    plain = LiTSDataset(dataset_root, "val", cache="none")
    flipped = LiTSDataset(dataset_root, "val", cache="none", transform=v2.RandomHorizontalFlip(p=1.0))
    assert torch.equal(flipped[0][0], plain[0][0].flip(-1)) and flipped[0][1] == plain[0][1]


@pytest.mark.parametrize("cache", ["none", "memory", "disk"])
def test_load_batch_and_items_are_the_pixels_on_disk(dataset_root, tmp_path, cache):
    data = LiTSDataset(dataset_root, "train", cache=cache, cache_dir=tmp_path)
    on_disk = [torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255)[None] for path in data.image_paths]
    rng = np.random.default_rng(0)
    for indices in ([5], [7, 2, 9], rng.permutation(len(data)).tolist(), [4, 4, 1]):  # twice in a batch too
        images, targets = data.load_batch(indices)
        assert images.shape == (len(indices), 1, SIZE, SIZE) and images.dtype == torch.float32
        assert targets.dtype == torch.int64 and targets.tolist() == data.targets[indices].tolist()
        assert torch.equal(images, torch.stack([on_disk[i] for i in indices]))
        assert all(torch.equal(data[i][0], on_disk[i]) for i in indices)  # an item is its batch of one
    if cache != "none":
        assert data.cached().all() and data.decode_count == len(data)   # each slice decoded once


def test_batch_loader_yields_what_a_dataloader_yields(dataset_root):
    data = LiTSDataset(dataset_root, "train")
    plain = DataLoader(data, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(1))
    batched = batch_loader(data, 6, shuffle=True, generator=torch.Generator().manual_seed(1))
    assert len(batched) == len(plain) == -(-len(data) // 6)
    pairs = list(zip(plain, batched, strict=True))
    for (images, targets), (batch_images, batch_targets) in pairs:
        assert torch.equal(images, batch_images) and torch.equal(targets, batch_targets)
    ordered = torch.cat([targets for _, targets in batch_loader(data, 6, drop_last=True)])
    assert ordered.tolist() == data.targets[: len(data) // 6 * 6].tolist()
    sampler = torch.utils.data.SubsetRandomSampler([3, 1, 2], generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat([t for _, t in batch_loader(data, 2, sampler=sampler)]).tolist()) == \
        sorted(data.targets[[1, 2, 3]].tolist())
    with pytest.raises(ValueError, match="either sampler or shuffle"):
        batch_loader(data, 2, sampler=sampler, shuffle=True)


def test_batch_loader_with_workers_and_a_transform(dataset_root):
    data = LiTSDataset(dataset_root, "val", transform=v2.RandomHorizontalFlip(p=1.0))
    plain = LiTSDataset(dataset_root, "val", cache="none")
    batches = list(batch_loader(data, 5, num_workers=2))
    assert data.decode_count == 0 and data.cached().all()     # the workers decoded into the shared cache
    images = torch.cat([images for images, _ in batches])
    assert torch.equal(images, torch.stack([plain[i][0].flip(-1) for i in range(len(plain))]))


def test_batch_loader_names_a_broken_file(copy_of_set):
    data = LiTSDataset(copy_of_set, "train")
    broken = data.image_paths[5]
    broken.write_bytes(broken.read_bytes()[:70])
    with pytest.raises(DataError, match=broken.name):
        list(batch_loader(data, 8))                            # decoded on the main process's threads
    assert not data.cached()[5]                                # nothing half-made was cached


def test_shared_tensor_is_shared_memory_of_the_asked_shape():
    tensor = new_shared_tensor((3, 4, 5), torch.float32)
    assert tensor.is_shared() and tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32
    tensor.fill_(2.0)
    assert tensor.sum().item() == 120.0


def test_unknown_cache_mode_is_refused(dataset_root):
    with pytest.raises(ValueError, match="memory, disk, none"):
        LiTSDataset(dataset_root, "train", cache="ram")


# -- bad data: each raises a DataError naming the file ----------------------------------------


def test_missing_split_folder(dataset_root):
    with pytest.raises(DataError, match=r"Split folder .*validation does not exist .*holds test, train, val"):
        LiTSDataset(dataset_root, "validation")


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"Dataset root .*nowhere does not exist"):
        LiTSDataset(tmp_path / "nowhere")


def test_file_replaced_after_indexing_is_caught_when_decoded(copy_of_set):
    data = LiTSDataset(copy_of_set, "train", cache="none")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(data.image_paths[0])
    with pytest.raises(DataError, match=rf"{data.image_paths[0].name}: expected an 8-bit grayscale"):
        data[0]


def test_missing_classes_csv(copy_of_set):
    (copy_of_set / "train" / "classes.csv").unlink()
    with pytest.raises(DataError, match=r"train/classes\.csv is missing"):
        LiTSDataset(copy_of_set, "train")


def test_bad_header(copy_of_set):
    path = copy_of_set / "train" / "classes.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["image,liver,liver_visible,tumors,tumors_visible", *lines[1:]]))
    with pytest.raises(DataError, match=r"classes\.csv: wrong header! Expected volume_file,"):
        LiTSDataset(copy_of_set, "train")


def test_bad_true_false_value(copy_of_set):
    path = copy_of_set / "train" / "classes.csv"
    lines = path.read_text().splitlines()
    fields = lines[3].split(",")
    fields[2] = "yes"
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"classes\.csv, line 4: liver_visible is 'yes', expected True or False"):
        LiTSDataset(copy_of_set, "train")


def test_image_without_a_classes_csv_row(copy_of_set):
    path = copy_of_set / "train" / "classes.csv"
    lines = path.read_text().splitlines()
    dropped = lines.pop(2).split(",")[0]
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=rf"{dropped} has no row in .*classes\.csv"):
        LiTSDataset(copy_of_set, "train")


def test_classes_csv_row_without_an_image(copy_of_set):
    missing = first_slice(copy_of_set)
    missing.unlink()
    with pytest.raises(DataError, match=rf"{missing.name} is listed in .*classes\.csv but does not exist"):
        LiTSDataset(copy_of_set, "train")


def test_garbage_bytes_instead_of_a_png(copy_of_set):
    broken = first_slice(copy_of_set)
    broken.write_bytes(os.urandom(500))
    with pytest.raises(DataError, match=rf"{broken.name} is not a PNG file"):
        LiTSDataset(copy_of_set, "train")


@pytest.mark.parametrize("damage", ["truncated", "corrupted pixel data"])
def test_png_that_does_not_decode_fails_when_decoded(copy_of_set, damage):
    data = LiTSDataset(copy_of_set, "train", cache="memory")  # the index only reads headers: fine so far
    broken = data.image_paths[1]
    content = bytearray(broken.read_bytes())
    if damage == "truncated":
        content = content[: len(content) // 2]
    else:
        content[60:120] = bytes(60)  # zeros inside the compressed pixel data
    broken.write_bytes(bytes(content))
    data[0]
    with pytest.raises(DataError, match=rf"{broken.name} does not decode as a PNG"):
        data[1]
    assert not data.cached()[1]                               # nothing half-made was cached


def test_mixed_image_sizes(copy_of_set):
    odd = sorted((copy_of_set / "train" / "volumes").iterdir())[3]
    Image.fromarray(np.zeros((SIZE, SIZE + 8), np.uint8)).save(odd)
    with pytest.raises(DataError, match=rf"Wrong image size! .*{odd.name} is {SIZE} x {SIZE + 8}"):
        LiTSDataset(copy_of_set, "train")


def test_non_grayscale_image(copy_of_set):
    colour = first_slice(copy_of_set)
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(colour)
    with pytest.raises(DataError, match=rf"{colour.name} is a 8-bit RGB PNG; the slices must be 8-bit grayscale"):
        LiTSDataset(copy_of_set, "train")


def test_decode_error_in_a_worker_reaches_the_training_loop_with_the_file_name(copy_of_set):
    data = LiTSDataset(copy_of_set, "train", cache="memory")
    broken = data.image_paths[2]
    broken.write_bytes(broken.read_bytes()[:70])
    with pytest.raises(DataError, match=broken.name):
        list(DataLoader(data, batch_size=4, num_workers=1))


def test_cache_reaches_spawned_workers_too(dataset_root, tmp_path):
    """macOS and Windows start workers with spawn: the caches travel by pickling, not by fork."""
    memory = LiTSDataset(dataset_root, "val", cache="memory")
    disk = LiTSDataset(dataset_root, "test", cache="disk", cache_dir=tmp_path)
    both = torch.utils.data.ConcatDataset([memory, disk])
    loader = DataLoader(both, batch_size=8, num_workers=1, multiprocessing_context="spawn")
    assert sum(len(images) for images, _ in loader) == len(both)
    assert memory.cached().all() and disk.cached().all()
    assert memory.decode_count == disk.decode_count == 0
