"""vitlab.train on a small generated phantom set: it learns, leaves a complete run folder, resumes."""
import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pictures import assert_not_blank
from solutions import VisionTransformer
from vitlab.cli import main
from vitlab.data import CLASS_NAMES, LiTSDataset
from vitlab.phantom import generate_phantom_dataset
from vitlab.train import (MODEL_PRESETS, Evaluation, TrainConfig, TrainError, build_model, load_run_config,
                          one_class_warning, train, unpredicted_classes_warning)

# 22 steps per epoch on the set below; augmentation off so that learning is quick and steady
TINY = dict(model="tiny", epochs=6, batch_size=16, lr=2e-3, augment="none")
RUN_FILES = {"train_log.csv", "val_log.csv", "test_log.csv", "summary.json", "checkpoint.pt",
             "loss_curve.png", "attention.png"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose a lot on a busy shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """30 small volumes (352 train, 64 val, 64 test slices of 64 x 64): many patients, few slices each."""
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom_dataset(root, volumes=30, size=64, slices=16, workers=1)
    return root


@pytest.fixture(scope="module")
def finished_run(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "adamw"
    summary = train(TrainConfig(data_dir=str(phantom), out=str(out), **TINY))
    return out, summary


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows, name, kind=float):
    return np.array([kind(row[name]) for row in rows])


def test_short_run_lowers_the_loss_and_beats_the_majority_baseline(finished_run, phantom):
    out, summary = finished_run
    train_rows = read_csv(out / "train_log.csv")
    assert column(train_rows, "step", int).tolist() == list(range(1, 6 * 22 + 1))
    assert column(train_rows, "epoch", int).tolist() == [e for e in range(1, 7) for _ in range(22)]
    losses = column(train_rows, "loss")
    assert losses[-22:].mean() < 0.75 * losses[:5].mean(), (losses[:5], losses[-22:])
    # the baseline: always the most common training class, scored on the test split
    train_targets = LiTSDataset(phantom, "train").targets
    test_targets = LiTSDataset(phantom, "test").targets
    baseline = np.mean(test_targets == np.bincount(train_targets).argmax())
    assert summary["majority_baseline"] == pytest.approx(baseline)
    assert summary["test_accuracy"] >= baseline + 0.10, summary["confusion_matrix"]
    assert len(summary["confusion_matrix"]) == 3 and len(np.unique(np.argmax(summary["confusion_matrix"], 0))) > 1


def test_run_folder_holds_logs_checkpoint_summary_and_plots(finished_run, phantom):
    out, summary = finished_run
    assert {p.name for p in out.iterdir()} == RUN_FILES
    val_rows = read_csv(out / "val_log.csv")
    assert column(val_rows, "epoch", int).tolist() == [1, 2, 3, 4, 5, 6]
    assert summary["best_val_accuracy"] == pytest.approx(column(val_rows, "val_accuracy").max(), abs=1e-6)
    test_row, = read_csv(out / "test_log.csv")
    assert float(test_row["test_accuracy"]) == pytest.approx(summary["test_accuracy"], abs=1e-6)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["config"]["model"] == "tiny" and on_disk["world_size"] == 1
    assert on_disk["global_batch_size"] == 16 and on_disk["images_per_second"] > 0
    matrix = np.array(on_disk["confusion_matrix"])
    assert matrix.sum() == on_disk["test_samples"] == 64 and on_disk["val_samples"] == 64
    assert np.trace(matrix) / matrix.sum() == pytest.approx(on_disk["test_accuracy"])
    for i, name in enumerate(CLASS_NAMES):
        if matrix[i].sum():
            assert on_disk["per_class_accuracy"][name] == pytest.approx(matrix[i, i] / matrix[i].sum())

    # the checkpoint holds the final model: reloaded, it scores the same on the test split
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["progress"]["epoch"] == 6 and checkpoint["progress"]["step"] == 132
    model = VisionTransformer(img_size=64, **MODEL_PRESETS["tiny"])
    model.load_state_dict(checkpoint["model"])
    test_set = LiTSDataset(phantom, "test")
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    with torch.no_grad():
        predictions = model.eval()(images).argmax(1).numpy()
    assert np.mean(predictions == test_set.targets) == pytest.approx(summary["test_accuracy"])

    assert_not_blank(out / "loss_curve.png")
    assert_not_blank(out / "attention.png", min_colours=8)
    assert Image.open(out / "attention.png").size[1] > 900  # three slices, one row each


def test_resume_after_an_interruption_matches_an_uninterrupted_run(phantom, tmp_path, capsys):
    # light augmentation on: the resumed run must also restore the random state it draws from
    config = TrainConfig(data_dir=str(phantom), out=str(tmp_path / "whole"),
                         **{**TINY, "epochs": 3, "augment": "light"})
    whole = train(config)

    def ctrl_c_in_epoch_2(epoch, step, loss):
        if epoch == 2 and step == 22 + 5:
            raise KeyboardInterrupt

    cut_dir = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(replace(config, out=str(cut_dir)), on_step=ctrl_c_in_epoch_2)
    assert f"continue with: vitlab train --resume {cut_dir}" in capsys.readouterr().out
    assert torch.load(cut_dir / "checkpoint.pt", weights_only=True)["progress"]["epoch"] == 1
    assert read_csv(cut_dir / "train_log.csv")[-1]["step"] == "27"  # rows past the checkpoint

    resumed = train(load_run_config(cut_dir))
    assert "resuming" in capsys.readouterr().out
    whole_rows, cut_rows = read_csv(tmp_path / "whole" / "train_log.csv"), read_csv(cut_dir / "train_log.csv")
    assert [(r["epoch"], r["step"]) for r in cut_rows] == [(r["epoch"], r["step"]) for r in whole_rows]
    np.testing.assert_allclose(column(cut_rows, "loss"), column(whole_rows, "loss"), rtol=1e-5)
    assert column(read_csv(cut_dir / "val_log.csv"), "epoch", int).tolist() == [1, 2, 3]
    for a, b in zip(torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"].values(),
                    torch.load(cut_dir / "checkpoint.pt", weights_only=True)["model"].values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert resumed["test_accuracy"] == pytest.approx(whole["test_accuracy"])
    assert resumed["epochs_completed"] == 3


def test_cli_resume_extends_a_finished_run(finished_run, tmp_path, capsys):
    out = tmp_path / "extended"
    shutil.copytree(finished_run[0], out)
    assert main(["train", "--resume", str(out), "--epochs", "7"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 7/7:" in printed and "epoch 6/7:" not in printed
    rows = read_csv(out / "train_log.csv")
    assert column(rows, "step", int).tolist() == list(range(1, 7 * 22 + 1))
    assert column(read_csv(out / "val_log.csv"), "epoch", int).tolist() == list(range(1, 8))
    assert json.loads((out / "summary.json").read_text())["epochs_completed"] == 7

    assert main(["train", "--resume", str(out), "--lr", "0.1"]) == 2
    assert "only epochs, device, workers may change, not lr" in capsys.readouterr().err


def test_what_does_not_fit_is_explained(tmp_path, capsys):
    with pytest.raises(TrainError, match="not divisible by the patch size 32 of --model small: use --model tiny or course"):
        build_model(TrainConfig(model="small"), (48, 48), num_classes=3)
    with pytest.raises(TrainError, match="The images are 64x48; the VisionTransformer takes square images"):
        build_model(TrainConfig(model="tiny"), (64, 48), num_classes=3)
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "checkpoint.pt does not exist" in capsys.readouterr().err
    with pytest.raises(TrainError, match="choose adamw or sgd"):
        TrainConfig(optimizer="adam")


def test_a_model_that_predicts_one_class_is_called_out():
    one_class = Evaluation(loss=0.9, accuracy=0.6, samples=10,
                           confusion=np.array([[6, 0, 0], [3, 0, 0], [1, 0, 0]]))
    message = one_class_warning(one_class, CLASS_NAMES, "validation")
    assert "predicts 'no liver' for every validation slice" in message and "majority baseline" in message
    mixed = replace(one_class, confusion=np.array([[5, 1, 0], [3, 0, 0], [1, 0, 0]]))
    assert one_class_warning(mixed, CLASS_NAMES, "validation") is None
    assert unpredicted_classes_warning(one_class, CLASS_NAMES, "test") is None  # said once, above


def test_a_class_the_model_never_predicts_is_named():
    no_tumour = Evaluation(loss=0.3, accuracy=0.9, samples=450,
                           confusion=np.array([[282, 0, 0], [3, 132, 0], [1, 32, 0]]))
    message = unpredicted_classes_warning(no_tumour, CLASS_NAMES, "test")
    assert "never predicts 'liver with tumour' (33 slices) on the test split" in message
    all_found = replace(no_tumour, confusion=np.array([[282, 0, 0], [3, 120, 12], [1, 20, 12]]))
    assert unpredicted_classes_warning(all_found, CLASS_NAMES, "test") is None
    absent_class = replace(no_tumour, confusion=np.array([[282, 0, 0], [3, 132, 0], [0, 0, 0]]))
    assert unpredicted_classes_warning(absent_class, CLASS_NAMES, "test") is None  # none to find


def test_sgd_and_a_submission_model(phantom, tmp_path):
    submission = tmp_path / "student.py"
    submission.write_text("import solutions\n\n"
                          "class VisionTransformer(solutions.VisionTransformer):\n"
                          "    '''A student's model (here: the reference under another name).'''\n")
    summary = train(TrainConfig(data_dir=str(phantom), out=str(tmp_path / "sgd"), submission=str(submission),
                                **{**TINY, "epochs": 1, "optimizer": "sgd", "lr": None}))
    assert summary["model_class"].endswith(".VisionTransformer")
    assert not summary["model_class"].startswith("solutions.")
    assert summary["config"]["optimizer"] == "sgd" and summary["config"]["lr"] == 0.05
    assert np.isfinite(summary["test_loss"])

    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(TrainError, match="defines no VisionTransformer"):
        train(TrainConfig(data_dir=str(phantom), out=str(tmp_path / "empty"), submission=str(empty), **TINY))
