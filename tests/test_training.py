"""Training end to end: train.py and infer.py in real processes where the process is part of
what is checked (the simple scheme's run and grid, the reference composite files' first offline
attempt, the real-data epoch, missing data), their command lines in this process elsewhere
(tests/helpers.run_main), and the loop called directly. The composite scheme's real-process runs
are in test_resume.py (bit-identical resume) and test_study.py (the smoke study)."""

import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    REPO,
    assert_png,
    config_variant,
    infer_argv,
    read_metrics,
    run_main,
    run_script,
    small_composite_model,
    train_argv,
)
from training_schemes import check_scheme, train
from utils.config import (
    EarlyStoppingConfig,
    ScheduleParams,
    load_model_config,
    load_train_config,
)
from utils.dataset import load_mnist

MODEL_SIMPLE, TRAIN_SIMPLE = "configs/model_simple_config.json", "configs/train_simple_config.json"


def test_simple_scheme_trains_checkpoints_and_renders(tmp_path, fake_mnist):
    cfg = config_variant(tmp_path, "configs/train_simple_config.json", {"save_every": 1})
    run = tmp_path / "run"
    result = run_script(*train_argv("simple", MODEL_SIMPLE, cfg, fake_mnist, run, "--epochs", "2"))
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
    # The reference's keys for the simple scheme: its optimiser and schedule unsuffixed.
    assert {
        "model_state_dict",
        "encoder_state_dict",
        "decoder_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "epoch",
        "step",
        "loss",
        "rng_state",
    } <= set(ckpt)
    assert not {"optimizer_g_state_dict", "scheduler_g_state_dict"} & set(ckpt)
    assert ckpt["scheduler_state_dict"]["last_epoch"] == 8
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
    random_vgg16 = {"backbone": "vgg16", "input_size": 16, "weights": "random"}  # the smallest
    model_path = config_variant(
        tmp_path, "configs/model_composite_config.json", {"pips_config": random_vgg16}
    )
    run = tmp_path / "run"
    argv = train_argv(
        "composite",
        model_path,
        "configs/train_composite_config.json",
        fake_mnist,
        run,
        "--epochs",
        "2",
        "--subset",
        "256",
    )
    result = run_main(*argv)
    assert result.returncode == 0, result.stderr
    rows = read_metrics(run)
    assert len(rows) == 2
    # 4 steps in all: the critic is on from floor(0.05 * 4) = 0, so every term is reported
    for name in ("train_pips", "train_adv", "train_disc", "val_pips", "val_adv", "lr_d"):
        assert math.isfinite(float(rows[1][name])), name
    final = torch.load(run / "final_model.pth", weights_only=True)
    assert "encoder.mu.weight" in final["model_state_dict"]


def test_composite_scheme_with_the_mnist_backbone_makes_it_first(tmp_path, fake_mnist):
    backbone = tmp_path / "mnist_pips_cnn.pth"
    model_path = config_variant(
        tmp_path,
        "configs/model_composite_mnist_config.json",
        {"pips_config.weights_path": str(backbone)},
    )
    run = tmp_path / "run"
    argv = train_argv(
        "composite",
        model_path,
        "configs/train_composite_config.json",
        fake_mnist,
        run,
        "--epochs",
        "1",
        "--subset",
        "256",
    )
    result = run_main(*argv)
    assert result.returncode == 0, result.stderr
    # Trained once, on its half of the whole (512-image) training split rather than the subset.
    assert result.stdout.count("training the PIPS backbone CNN") == 1
    made = f"on half 0 of the MNIST training split: 256 of 512 images, seed 1) -> {backbone}"
    assert made in result.stdout
    assert torch.load(backbone, weights_only=True)["network"] == "pips"
    assert math.isfinite(float(read_metrics(run)[0]["train_pips"]))


SAVED = ["final_model.pth", "checkpoint_epoch_005.pth", "best_model.pth"]


@pytest.fixture(scope="module")
def refused_runs(tmp_path_factory, fake_mnist) -> tuple[Path, dict]:
    """The train.py calls below that stop before training: a folder, and each call's result by
    name. Missing data is refused in a real process, the rest in this one (tests/helpers.run_main:
    a process would spend its time starting up)."""
    root = tmp_path_factory.mktemp("refused")
    commands = {}
    for saved in SAVED:  # a second run into a folder holding a run's weights
        run = root / saved / "run"
        run.mkdir(parents=True)
        (run / saved).write_bytes(b"precious")
        (run / "metrics.csv").write_text("precious\n")
        commands[saved] = simple_argv(fake_mnist, run)
    left = root / "left" / "run"  # what a run leaves when it stops before its first checkpoint
    left.mkdir(parents=True)
    for name in ("model_config.json", "train_config.json", "metrics.csv"):
        (left / name).write_text("left by a run that died\n")
    commands["left"] = [*simple_argv(fake_mnist, left), "--resume", "auto"]
    commands["nowhere"] = train_argv(
        "simple",
        MODEL_SIMPLE,
        TRAIN_SIMPLE,
        root / "nowhere",
        root / "run",
        "--no_download",
        device=None,
    )
    return root, {
        name: run_script(*argv) if name == "nowhere" else run_main(*argv)
        for name, argv in commands.items()
    }


def simple_argv(data_root: Path, run: Path) -> list[str]:
    """train.py for one epoch of the simple scheme into `run`, on the default device."""
    return train_argv(
        "simple", MODEL_SIMPLE, TRAIN_SIMPLE, data_root, run, "--epochs", "1", device=None
    )


@pytest.mark.parametrize("saved", SAVED)
def test_a_second_run_into_a_folder_with_saved_weights_is_refused(refused_runs, saved):
    root, results = refused_runs
    run = root / saved / "run"
    result = results[saved]
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"already holds a run ({saved}); resume it with --resume auto" in result.stderr
    assert (run / saved).read_bytes() == b"precious"
    assert (run / "metrics.csv").read_text() == "precious\n"


def test_a_folder_left_before_the_first_checkpoint_is_free_to_start_in(refused_runs, fake_mnist):
    """What a run leaves when it stops before its first checkpoint (its configs, the metrics of
    unsaved epochs): --resume has nothing to resume, and a new start is let in."""
    root, results = refused_runs
    run = root / "left" / "run"
    resumed = results["left"]
    assert resumed.returncode == 2
    assert "no readable checkpoint_*.pth to resume from; start without --resume" in resumed.stderr
    result = run_main(*simple_argv(fake_mnist, run))
    assert result.returncode == 0, result.stderr
    assert [r["epoch"] for r in read_metrics(run)] == ["1"]
    assert json.loads((run / "train_config.json").read_text())["num_epochs"] == 1


def test_missing_mnist_files_are_one_clear_line(refused_runs):
    root, results = refused_runs
    result = results["nowhere"]
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "train-images-idx3-ubyte" in line and str(root / "nowhere" / "MNIST" / "raw") in line


def _train_in_process(
    fake_mnist: Path, save_dir: Path, epochs: int, early_stopping=None, linear_backend: str = "auto"
):
    model_cfg = load_model_config(REPO / "configs/model_simple_config.json")
    train_cfg = load_train_config(REPO / "configs/train_simple_config.json", "simple")
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
    """An epoch on the first 16,384 real training images (128 steps), validated on the whole
    real test split, then infer.py's grid of it."""
    run = tmp_path / "run"
    argv = train_argv(
        "simple",
        MODEL_SIMPLE,
        TRAIN_SIMPLE,
        real_mnist,
        run,
        "--epochs",
        "1",
        "--subset",
        "16384",
        device=None,
    )
    result = run_script(*argv)
    assert result.returncode == 0, result.stderr
    assert "16384 MNIST training images, 128 steps x 1 epochs, 10000 validation images" in (
        result.stdout
    )
    row = read_metrics(run)[0]
    assert row["step"] == "128"
    # The validation reconstruction error is already well below the ~52 of predicting the mean
    # image (measured: about 42).
    assert float(row["val_recon"]) < 48
    png = tmp_path / "grid.png"
    result = run_main(
        "infer.py",
        "--model_config",
        MODEL_SIMPLE,
        "--ckpt_path",
        run / "final_model.pth",
        "--save_path",
        png,
    )
    assert result.returncode == 0, result.stderr
    assert_png(png)


# The reference's own files, and its critic schedule

REFERENCE = REPO / "tests" / "fixtures" / "reference_configs"


def test_the_reference_simple_files_train_as_they_are(tmp_path, fake_mnist):
    # Their save_dir is the reference author's Google Drive; --save_dir puts the run here.
    argv = train_argv(
        "simple",
        REFERENCE / "model_simple_config.json",
        REFERENCE / "train_simple_config.json",
        fake_mnist,
        tmp_path / "run",
        "--epochs",
        "1",
    )
    result = run_main(*argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "simple scheme on cpu: 512 MNIST training images, 4 steps x 1 epochs"
    )
    assert (tmp_path / "run" / "final_model.pth").is_file()


def test_the_reference_composite_files_offline_stop_at_one_vgg16_line(
    tmp_path, fake_mnist, monkeypatch
):
    """No --scheme: composite, as in the reference. Its ImageNet VGG16 weights are missing and
    cannot be downloaded (a proxy on a closed local port stands in for no network), so the run
    stops in one line before its first checkpoint, and the folder is free to start in again (the
    second attempt in this process)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    argv = train_argv(
        None,
        REFERENCE / "model_composite_config.json",
        REFERENCE / "train_composite_config.json",
        fake_mnist,
        tmp_path / "run",
        "--epochs",
        "1",
    )
    for attempt in range(2):
        result = run_script(*argv, timeout=300) if attempt == 0 else run_main(*argv)
        assert result.returncode == 2, result.stderr
        assert result.stdout.startswith("composite scheme on cpu"), attempt
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0] == result.stderr.splitlines()[-1]
        folder = tmp_path / "torch" / "hub" / "checkpoints"
        assert errors[0].startswith(
            f"error: PIPS needs the ImageNet VGG16 weights file vgg16_features-amdegroot-"
            f"88682ab5.pth in {folder}/ and downloading it from https://download.pytorch.org/"
        )
        assert errors[0].endswith(
            "or train offline with the MNIST backbone "
            "(--model_config configs/model_composite_mnist_config.json)"
        )
    assert not list((tmp_path / "run").glob("*.pth"))


def small_composite_run(tmp_path: Path, fake_mnist: Path, critic_schedule) -> Path:
    """4 epochs x 4 steps of the composite scheme (narrow networks, the MNIST CNN at its initial
    weights as PIPS), in-process: the critic from step int(0.25 * 16) = 4, its schedule
    `critic_schedule` (a warm-up ratio, or None)."""
    narrow = {
        "model_config.encoder.hidden_features": [64, 32],
        "model_config.decoder.hidden_features": [32, 64],
        "discriminator_config": {
            "im_channels": 1,
            "hidden_channels": [8, 16],
            "kernel_size": [4],
            "stride": [2],
            "padding": [1],
        },
    }
    model = small_composite_model(tmp_path, "configs/model_composite_config.json", narrow)
    model_cfg = check_scheme("composite", load_model_config(model), str(model))
    train_cfg = load_train_config(REPO / "configs/train_composite_config.json", "composite")
    train_cfg.num_epochs, train_cfg.save_every = 4, 4
    train_cfg.optimizer.params_d.warmup_ratio = 0.25
    train_cfg.scheduler.params_d = critic_schedule and ScheduleParams(critic_schedule)
    run = tmp_path / "run"
    run.mkdir()
    train(
        "composite",
        model_cfg,
        train_cfg,
        load_mnist(fake_mnist, "train", download=False),
        load_mnist(fake_mnist, "test", download=False),
        torch.device("cpu"),
        run,
    )
    return run


def test_the_critic_schedule_counts_critic_updates_as_the_reference_does(tmp_path, fake_mnist):
    run = small_composite_run(tmp_path, fake_mnist, critic_schedule=0.25)
    # Warm-up int(0.25 * 16) = 4 critic updates, cosine to 0 at 16 updates, stepped after each
    # critic update only: after epochs 1-4 the critic has taken 0, 4, 8, 12 updates, so the LR
    # for its next one is 5e-5 times 0, 1, (1 + cos(pi * 4 / 12)) / 2, (1 + cos(pi * 8 / 12)) / 2.
    lr_d = [float(r["lr_d"]) for r in read_metrics(run)]
    assert lr_d == pytest.approx([0.0, 5e-5, 3.75e-5, 1.25e-5], rel=1e-5, abs=1e-12)
    ckpt = torch.load(run / "checkpoint_epoch_004.pth", weights_only=True)
    assert ckpt["scheduler_d_state_dict"]["last_epoch"] == 12
    assert ckpt["scheduler_g_state_dict"]["last_epoch"] == 16
    assert {"optimizer_g_state_dict", "optimizer_d_state_dict", "discriminator_state_dict"} <= set(
        ckpt
    )
    assert "optimizer_state_dict" not in ckpt


def test_a_null_critic_schedule_is_a_constant_lr_and_none_in_the_checkpoint(tmp_path, fake_mnist):
    run = small_composite_run(tmp_path, fake_mnist, critic_schedule=None)
    assert [float(r["lr_d"]) for r in read_metrics(run)] == [5e-5] * 4
    ckpt = torch.load(run / "checkpoint_epoch_004.pth", weights_only=True)
    assert "scheduler_d_state_dict" in ckpt and ckpt["scheduler_d_state_dict"] is None
    assert ckpt["optimizer_d_state_dict"]["param_groups"][0]["lr"] == 5e-5
