"""Training end to end: real subprocess runs of train.py and infer.py, and the loop in-process."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, assert_png, config_variant, infer_argv, run_script
from training_schemes import train
from utils.config import EarlyStoppingConfig, load_model_config, load_train_config
from utils.dataset import load_mnist

SIMPLE = (
    "--model_config",
    "configs/model_simple_config.json",
    "--train_config",
    "configs/train_simple_config.json",
)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_simple_scheme_trains_checkpoints_and_renders(tmp_path, fake_mnist):
    cfg = config_variant(tmp_path, "configs/train_simple_config.json", save_every=1)
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        "--scheme",
        "simple",
        "--model_config",
        "configs/model_simple_config.json",
        "--train_config",
        str(cfg),
        "--data_root",
        str(fake_mnist),
        "--save_dir",
        str(run),
        "--epochs",
        "2",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("epoch ") >= 2 and "final_model.pth" in result.stdout
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["step"] for r in rows] == ["4", "8"]
    assert {"train_recon", "train_kl", "val_loss", "val_recon", "beta", "lr_g", "seconds"} <= set(
        rows[0]
    )
    # beta after 4 of 15 * 4 warm-up steps; every term is finite
    assert float(rows[0]["beta"]) == pytest.approx(4.0 * 4 / 60, rel=1e-4)
    assert all(math.isfinite(float(v)) for v in rows[1].values())
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["num_epochs"] == 2 and saved["save_dir"] == str(run)

    ckpt = torch.load(run / "checkpoint_epoch_002.pth", weights_only=True)
    assert {
        "model_state_dict",
        "encoder_state_dict",
        "decoder_state_dict",
        "optimizer_g_state_dict",
        "scheduler_g_state_dict",
        "epoch",
        "step",
        "loss",
        "rng_state",
    } <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 8
    assert (run / "checkpoint_epoch_001.pth").is_file()
    final = torch.load(run / "final_model.pth", weights_only=True)
    assert torch.equal(
        final["model_state_dict"]["encoder.mu.weight"],
        ckpt["model_state_dict"]["encoder.mu.weight"],
    )

    png = tmp_path / "grid.png"
    result = run_script(
        "infer.py", *infer_argv(run, png, "--grid_size", "5", "--title", "test grid")
    )
    assert result.returncode == 0, result.stderr
    assert_png(png)


def test_composite_scheme_with_a_small_random_backbone(tmp_path, fake_mnist):
    model = json.loads((REPO / "configs/model_composite_config.json").read_text())
    model["pips_config"] = {"backbone": "vgg16", "input_size": 32, "weights": "random"}
    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model))
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        "--scheme",
        "composite",
        "--model_config",
        str(model_path),
        "--train_config",
        "configs/train_composite_config.json",
        "--data_root",
        str(fake_mnist),
        "--save_dir",
        str(run),
        "--epochs",
        "2",
        "--subset",
        "256",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    rows = read_metrics(run)
    assert len(rows) == 2
    # 4 steps in all: the critic is on from floor(0.05 * 4) = 0, so every term is reported
    for name in ("train_pips", "train_adv", "train_disc", "val_pips", "val_adv", "lr_d"):
        assert math.isfinite(float(rows[1][name])), name
    final = torch.load(run / "final_model.pth", weights_only=True)
    assert "encoder.mu.weight" in final["model_state_dict"]


def test_composite_scheme_with_the_mnist_backbone_makes_it_first(tmp_path, fake_mnist):
    model = json.loads((REPO / "configs/model_composite_mnist_config.json").read_text())
    backbone = tmp_path / "mnist_pips_cnn.pth"
    model["pips_config"]["weights_path"] = str(backbone)
    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model))
    run = tmp_path / "run"
    argv = ["train.py", "--scheme", "composite", "--model_config", str(model_path),
            "--train_config", "configs/train_composite_config.json", "--data_root",
            str(fake_mnist), "--save_dir", str(run), "--epochs", "1", "--subset", "256",
            "--device", "cpu"]  # fmt: skip
    result = run_script(*argv)
    assert result.returncode == 0, result.stderr
    # Trained once, on the whole (512-image) training split rather than the subset.
    assert result.stdout.count("training the PIPS backbone CNN") == 1
    assert f"on 512 MNIST training images, seed 1) -> {backbone}" in result.stdout
    assert torch.load(backbone, weights_only=True)["network"] == "pips"
    assert math.isfinite(float(read_metrics(run)[0]["train_pips"]))


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, fake_mnist):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("precious\n")
    result = run_script(
        "train.py",
        "--scheme",
        "simple",
        *SIMPLE,
        "--data_root",
        str(fake_mnist),
        "--save_dir",
        str(run),
        "--epochs",
        "1",
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "already holds a run" in result.stderr
    assert (run / "metrics.csv").read_text() == "precious\n"


def test_missing_mnist_files_are_one_clear_line(tmp_path):
    result = run_script(
        "train.py",
        "--scheme",
        "simple",
        *SIMPLE,
        "--data_root",
        str(tmp_path / "nowhere"),
        "--save_dir",
        str(tmp_path / "run"),
        "--no_download",
    )
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "train-images-idx3-ubyte" in line and str(tmp_path / "nowhere" / "MNIST" / "raw") in line


def _train_in_process(fake_mnist: Path, save_dir: Path, epochs: int, early_stopping=None,
                      linear_backend: str = "auto"):  # fmt: skip
    model_cfg = load_model_config(REPO / "configs/model_simple_config.json")
    train_cfg = load_train_config(REPO / "configs/train_simple_config.json")
    train_cfg.num_epochs, train_cfg.early_stopping = epochs, early_stopping
    train_cfg.linear_backend = linear_backend
    save_dir.mkdir()
    train_set = load_mnist(fake_mnist, "train", download=False)
    val_set = load_mnist(fake_mnist, "test", download=False)
    return train("simple", model_cfg, train_cfg, train_set, val_set, torch.device("cpu"), save_dir)


# On one backend; "auto" may time its way to the other backend in a second run, whose products
# round differently.
@pytest.mark.parametrize("linear_backend", ["aten", "onednn"])
def test_training_is_deterministic_on_cpu(tmp_path, fake_mnist, linear_backend):
    a = _train_in_process(fake_mnist, tmp_path / "a", epochs=1, linear_backend=linear_backend)
    b = _train_in_process(fake_mnist, tmp_path / "b", epochs=1, linear_backend=linear_backend)
    sa = torch.load(a.final_path, weights_only=True)["model_state_dict"]
    sb = torch.load(b.final_path, weights_only=True)["model_state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_without_early_stopping_every_epoch_runs(tmp_path, fake_mnist):
    summary = _train_in_process(fake_mnist, tmp_path / "run", epochs=3)
    assert summary.epochs_run == 3 and not summary.stopped_early
    assert len(read_metrics(tmp_path / "run")) == 3
    assert not (tmp_path / "run" / "best_model.pth").exists()


def test_early_stopping_keeps_the_best_weights_and_ends_the_run(tmp_path, fake_mnist):
    # A tolerance no epoch can beat: epoch 1 is the best, epochs 2 and 3 use up patience 2.
    summary = _train_in_process(
        fake_mnist,
        tmp_path / "run",
        epochs=6,
        early_stopping=EarlyStoppingConfig(patience=2, tol=1e9),
    )
    assert summary.stopped_early and summary.epochs_run == 3
    assert len(read_metrics(tmp_path / "run")) == 3
    best = torch.load(tmp_path / "run" / "best_model.pth", weights_only=True)
    final = torch.load(summary.final_path, weights_only=True)
    assert best["epoch"] == 1
    assert not torch.equal(
        best["model_state_dict"]["encoder.mu.weight"],
        final["model_state_dict"]["encoder.mu.weight"],
    )


def test_one_real_epoch_and_a_grid(tmp_path, real_mnist):
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        "--scheme",
        "simple",
        *SIMPLE,
        "--data_root",
        str(real_mnist),
        "--save_dir",
        str(run),
        "--epochs",
        "1",
    )
    assert result.returncode == 0, result.stderr
    row = read_metrics(run)[0]
    assert row["step"] == "468"
    # After one epoch on real MNIST the validation reconstruction error is well below the
    # ~52 of predicting the mean image (measured: about 35-45).
    assert float(row["val_recon"]) < 50
    png = tmp_path / "grid.png"
    result = run_script(
        "infer.py",
        "--model_config",
        "configs/model_simple_config.json",
        "--ckpt_path",
        str(run / "final_model.pth"),
        "--save_path",
        str(png),
    )
    assert result.returncode == 0, result.stderr
    assert_png(png)
