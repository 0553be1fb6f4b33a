"""vitlab.plots: figures are written as real PNGs, are not blank, and show the right numbers."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from pictures import assert_not_blank
from solutions import VisionTransformer
from vitlab import plots

CLASS_NAMES = ("no liver", "liver", "liver with tumour")


def write_run(run_dir, epochs=4, steps=10, start_loss=1.1, seed=0):
    """A run folder's CSV logs, as `vitlab train` writes them."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    with (run_dir / "train_log.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "loss"])
        for i in range(epochs * steps):
            writer.writerow([i // steps + 1, i + 1, start_loss * np.exp(-i / 15) + rng.uniform(0, 0.1)])
    with (run_dir / "val_log.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "val_loss", "val_accuracy"])
        for e in range(1, epochs + 1):
            writer.writerow([e, start_loss * np.exp(-e * steps / 15), 0.5 + 0.1 * e])
    (run_dir / "summary.json").write_text('{"val_majority_baseline": 0.6}')
    return run_dir


def test_loss_curves_of_one_run(tmp_path):
    run = write_run(tmp_path / "run")
    fig = plots.plot_loss_curves(run, out=tmp_path / "curve.png")
    assert_not_blank(tmp_path / "curve.png")
    loss_ax, acc_ax = fig.axes
    assert acc_ax.get_ylabel() == "accuracy" and loss_ax.get_xlabel() == "epoch"
    legend = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert "majority baseline (60.0%)" in legend
    # the validation points sit at the epochs' ends, the training steps spread over the epochs
    val_line = [line for line in loss_ax.get_lines() if line.get_marker() == "o"][0]
    np.testing.assert_array_equal(val_line.get_xdata(), [1, 2, 3, 4])
    assert loss_ax.get_lines()[0].get_xdata()[[0, 9, 39]].tolist() == pytest.approx([0.1, 1.0, 4.0])


def test_loss_curves_of_two_runs_side_by_side(tmp_path):
    adamw, sgd = write_run(tmp_path / "a"), write_run(tmp_path / "b", start_loss=1.4, seed=1)
    fig = plots.plot_loss_curves([adamw, sgd], labels=["AdamW", "SGD"], out=tmp_path / "both.png")
    assert_not_blank(tmp_path / "both.png")
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert "AdamW: train loss" in legend and "SGD: validation loss" in legend
    colours = {line.get_color() for line in fig.axes[1].get_lines()}
    assert len(colours) == 2
    with pytest.raises(ValueError, match="one label per run"):
        plots.plot_loss_curves([adamw, sgd], labels=["only one"])


def test_damaged_or_missing_log_is_named(tmp_path):
    run = write_run(tmp_path / "run")
    with (run / "train_log.csv").open("a") as f:
        f.write("5,41,\n")  # a row cut off by a crash
    with pytest.raises(ValueError, match=r"train_log\.csv, line 42: loss=''"):
        plots.plot_loss_curves(run)
    (run / "val_log.csv").unlink()
    (run / "train_log.csv").write_text("epoch,step,loss\n1,1,0.5\n")
    with pytest.raises(FileNotFoundError, match=r"val_log\.csv"):
        plots.plot_loss_curves(run)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, mlp_ratio=2.0)


def test_attention_maps_are_the_blocks_attention(small_model):
    torch.manual_seed(1)
    images = torch.rand(3, 1, 32, 32)
    maps = plots.attention_maps(small_model, images)
    assert maps["last_layer"].shape == (3, 4, 4) and maps["rollout"].shape == (3, 4, 4)
    np.testing.assert_allclose(maps["logits"], small_model(images).detach().numpy(), atol=1e-5)
    # recompute by hand: the last block's class-token row, heads averaged
    with torch.no_grad():
        x = small_model.class_token(small_model.patch_embed(images)) + small_model.pos_embed
        first_x, first_w = small_model.blocks[0](x, return_attention=True)
        _, last_w = small_model.blocks[1](first_x, return_attention=True)
    np.testing.assert_allclose(maps["last_layer"], last_w.mean(1)[:, 0, 1:].reshape(3, 4, 4).numpy(), atol=1e-6)
    # rollout: (A + I) / 2 per block (rows of A sum to 1), multiplied from the first block up
    eye = torch.eye(17)
    rollout = ((last_w.mean(1) + eye) / 2) @ ((first_w.mean(1) + eye) / 2)
    np.testing.assert_allclose(maps["rollout"], rollout[:, 0, 1:].reshape(3, 4, 4).numpy(), atol=1e-6)
    assert small_model.training  # the plot put the model back in its mode


def test_attention_plot_is_written(small_model, tmp_path):
    torch.manual_seed(2)
    images = torch.rand(2, 1, 32, 32)
    fig = plots.plot_attention(small_model, images, targets=[0, 2], class_names=CLASS_NAMES,
                               out=tmp_path / "attention.png")
    assert_not_blank(tmp_path / "attention.png", min_colours=8)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("true: no liver, predicted: ")
    assert "attention rollout, all blocks" in titles
    assert any(ax.get_ylabel() == "share of attention" for ax in fig.axes)  # the colour bars


def test_patch_grid_numbers_every_token(tmp_path):
    image = torch.linspace(0, 1, 48 * 64).reshape(1, 48, 64)
    fig = plots.plot_patch_grid(image, 16, out=tmp_path / "grid.png")
    assert_not_blank(tmp_path / "grid.png")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels == [str(i) for i in range(12)]        # 3 rows x 4 columns, row-major
    assert ax.texts[5].get_position() == (1.5 * 16, 1.5 * 16)  # token 5: row 1, column 1
    assert "3 x 4 = 12 tokens" in ax.get_title()
    with pytest.raises(ValueError, match="not divisible by the patch size 10"):
        plots.plot_patch_grid(image, 10)


def test_confusion_matrix_plot(tmp_path):
    matrix = [[50, 3, 1], [4, 20, 6], [2, 5, 30]]
    fig = plots.plot_confusion_matrix(matrix, CLASS_NAMES, out=tmp_path / "confusion.png")
    assert_not_blank(tmp_path / "confusion.png")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[0] == "50\n93%" and texts[4] == "20\n67%"
    assert "121 samples" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match=r"Expected \(3, 3\)"):
        plots.plot_confusion_matrix([[1, 2], [3, 4]], CLASS_NAMES)
