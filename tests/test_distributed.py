"""`torchrun -m vitlab train` on the CPU (gloo): two processes train one model with DDP."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vitlab.distributed import ShardedEvalSampler, World
from vitlab.phantom import generate_phantom_dataset
from vitlab.train import TrainConfig, train

from test_train import one_thread  # noqa: F401  (autouse: one thread, as torchrun gives each process)

RUN_FILES = {"train_log.csv", "val_log.csv", "test_log.csv", "summary.json", "checkpoint.pt",
             "loss_curve.png", "attention.png"}
# fp32: these runs are compared to 1e-4, and bf16 matmuls round differently at another batch size
TRAIN_ARGS = ["--model", "tiny", "--augment", "none", "--lr", "0.002", "--seed", "3", "--precision", "fp32"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m vitlab train ...` (standalone: a free local port)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "vitlab", "train", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """128 train slices; 31 validation slices (an odd count: one slice removed) and 32 test slices."""
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom_dataset(root, volumes=12, size=64, slices=16, workers=1)
    classes = root / "val" / "classes.csv"
    header, *rows = classes.read_text().splitlines()
    (root / "val" / "volumes" / rows[-1].split(",")[0]).unlink()
    classes.write_text("\n".join([header, *rows[:-1]]) + "\n")
    return root


@pytest.fixture(scope="module")
def two_process_run(phantom, tmp_path_factory):
    """Epoch 1 with two processes, then --resume to epoch 2, also under torchrun."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    first = torchrun(2, "--data-dir", str(phantom), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                     *TRAIN_ARGS)
    second = torchrun(2, "--resume", str(out), "--epochs", "2")
    return out, first.stdout, second.stdout


def test_eval_shards_cover_every_item_once():
    for items, world_size in ((31, 2), (32, 2), (10, 3), (1, 2)):
        shards = [list(ShardedEvalSampler(items, World(rank=r, world_size=world_size)))
                  for r in range(world_size)]
        assert sorted(i for shard in shards for i in shard) == list(range(items))
        assert [len(ShardedEvalSampler(items, World(rank=r, world_size=world_size))) for r in range(world_size)] \
            == [len(shard) for shard in shards]


def test_two_processes_train_one_model_and_write_one_run(two_process_run):
    out, first_stdout, second_stdout = two_process_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 16
    digests = summary["rank_parameter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], "the ranks ended with different parameters"
    # every sample of validation (31, odd) and test (32) counted exactly once over both ranks
    assert summary["split_sizes"] == {"train": 128, "val": 31, "test": 32}
    assert summary["val_samples"] == 31 and summary["test_samples"] == 32
    assert np.sum(summary["confusion_matrix"]) == 32

    # one set of logs and one checkpoint, written by rank 0 only; the resumed run continued them
    assert {p.name for p in out.iterdir()} == RUN_FILES
    rows = read_csv(out / "train_log.csv")
    steps_per_epoch = 128 // 16
    assert [int(r["step"]) for r in rows] == list(range(1, 2 * steps_per_epoch + 1))
    assert [int(r["epoch"]) for r in rows] == [1] * steps_per_epoch + [2] * steps_per_epoch
    assert [r["epoch"] for r in read_csv(out / "val_log.csv")] == ["1", "2"]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert checkpoint["progress"]["epoch"] == 2
    assert first_stdout.count("epoch 1/1:") == 1 and first_stdout.count("test accuracy") == 1
    assert second_stdout.count("resuming") == 1 and second_stdout.count("epoch 2/2:") == 1
    assert "epoch 1/2:" not in second_stdout


def test_two_processes_match_one_process_with_twice_the_batch(two_process_run, phantom, tmp_path):
    """Same seed, same global batches: DDP's averaged gradient is the big batch's gradient."""
    out, _, _ = two_process_run
    config = TrainConfig(data_dir=str(phantom), out=str(tmp_path / "one"), model="tiny", augment="none",
                         lr=0.002, seed=3, epochs=1, batch_size=16, precision="fp32")
    summary = train(config)
    assert summary["world_size"] == 1
    one = [float(r["loss"]) for r in read_csv(tmp_path / "one" / "train_log.csv")]
    two = [float(r["loss"]) for r in read_csv(out / "train_log.csv") if r["epoch"] == "1"]
    assert len(one) == len(two) == 8
    np.testing.assert_allclose(two[:5], one[:5], rtol=1e-4)
