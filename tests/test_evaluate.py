"""evaluate.py and what it is built from: Frechet distance, sharpness, the evaluation CNN's file."""

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import evaluate
from model.vae import VAE
from tests.helpers import REPO, run_main, run_script
from utils.checkpoint import save_checkpoint
from utils.config import load_model_config
from utils.dataset import load_mnist
from utils.errors import CheckpointError, UserError
from utils.networks import accuracy, file_sha256, load_network, make_network, network_record
from utils.quality import (
    frechet_distance,
    frechet_from_stats,
    gaussian_blur,
    laplacian_variance,
    sharpness,
)
from utils.trained_vae import load_vae

KEYS = (
    "recon_mse",
    "rate_kl",
    "fid_samples",
    "precision",
    "recall",
    "class_kl",
    "fid_recon",
    "sharpness_ratio",
    "recon_accuracy",
    "grid_confident_share",
    "grid_classes",
)

# Frechet distance


def test_frechet_of_diagonal_gaussians_has_its_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = (mu1 - mu2).pow(2).sum() + (s1.sqrt() - s2.sqrt()).pow(2).sum()
    got = frechet_from_stats(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert got == pytest.approx(expected.item(), rel=1e-9)


def test_frechet_of_full_covariances_is_symmetric_and_zero_for_equal_ones():
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov1, cov2 = a @ a.T, torch.eye(5, dtype=torch.float64) * 2
    mu = torch.zeros(5)
    assert frechet_from_stats(mu, cov1, mu, cov2) == pytest.approx(
        frechet_from_stats(mu, cov2, mu, cov1), rel=1e-9
    )
    assert frechet_from_stats(mu, cov1, mu, cov1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_feature_sets_sees_only_a_shift_of_the_mean():
    features = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    assert frechet_distance(features, features.clone()) == pytest.approx(0.0, abs=1e-6)
    shift = torch.arange(8.0) / 4
    assert frechet_distance(features, features + shift) == pytest.approx(
        shift.pow(2).sum().item(), rel=1e-6
    )


# Sharpness: variance of the Laplacian


def test_blurring_lowers_the_laplacian_variance():
    sharp = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    blurred = F.avg_pool2d(sharp, 3, stride=1, padding=1)
    assert (laplacian_variance(blurred) < laplacian_variance(sharp)).all()


def test_a_constant_image_has_zero_sharpness_and_a_set_against_itself_ratio_one():
    assert sharpness(torch.full((2, 1, 28, 28), 0.7)) == pytest.approx(0.0, abs=1e-12)
    images = torch.rand(6, 1, 28, 28)
    assert sharpness(images) / sharpness(images.clone()) == 1.0


# The evaluation CNN's file, and evaluate.py end to end


def evaluate_argv(config: Path, ckpt: Path, data_root: Path, eval_net: Path) -> list[str]:
    """evaluate.py's flags (without --out) for 500 prior samples on the CPU."""
    return [
        "--model_config",
        str(config),
        "--ckpt_path",
        str(ckpt),
        "--data_root",
        str(data_root),
        "--eval_net",
        str(eval_net),
        "--num_samples",
        "500",
        "--device",
        "cpu",
    ]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, fake_mnist):
    """An untrained VAE checkpoint, evaluated once by evaluate.py, which makes the eval CNN."""
    root = tmp_path_factory.mktemp("evaluate")
    config = REPO / "configs/model_simple_config.json"
    torch.manual_seed(0)
    ckpt = root / "final_model.pth"
    save_checkpoint(
        {"model_state_dict": VAE(load_model_config(config).model_config).state_dict()}, ckpt
    )
    argv = evaluate_argv(config, ckpt, fake_mnist, root / "eval_net.pth")
    result = run_script("evaluate.py", *argv, "--out", str(root / "eval.json"))
    return root, argv, result


def test_evaluate_writes_every_key_finite(evaluated):
    root, _, result = evaluated
    assert result.returncode == 0, result.stderr
    results = json.loads((root / "eval.json").read_text())
    for key in KEYS:
        assert math.isfinite(results[key]), key
        assert key in result.stdout
    assert results["rate_kl"] >= 0 and 0 <= results["precision"] <= 1
    for key in ("class_histogram_samples", "class_histogram_test"):
        assert len(results[key]) == 10 and sum(results[key]) == pytest.approx(1.0)


def test_the_sharpness_ratio_is_the_samples_over_the_test_images(evaluated, fake_mnist):
    root, _, result = evaluated
    assert result.returncode == 0, result.stderr
    results = json.loads((root / "eval.json").read_text())
    # The test images' sharpness, computed here; an untrained VAE's samples are far blurrier.
    test_images = load_mnist(fake_mnist, "test", download=False).images
    assert results["sharpness_test"] == pytest.approx(sharpness(test_images), rel=1e-6)
    assert results["sharpness_samples"] < results["sharpness_test"]
    ratio = results["sharpness_samples"] / results["sharpness_test"]
    assert results["sharpness_ratio"] == pytest.approx(ratio, rel=1e-9) and ratio < 1


def test_a_round1_run_folder_is_graded(evaluated, fake_mnist, tmp_path, monkeypatch):
    """A run folder written by round 1 of this repo (its own config layout) grades as it is
    (in this process: evaluate.py's own process is tested above)."""
    root, _, first = evaluated
    assert first.returncode == 0, first.stderr
    run = REPO / "tests" / "fixtures" / "round1_runs" / "simple"
    argv = evaluate_argv(
        run / "model_config.json", run / "final_model.pth", fake_mnist, root / "eval_net.pth"
    )
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *argv, "--out", str(tmp_path / "eval.json")])
    evaluate.main()
    results = json.loads((tmp_path / "eval.json").read_text())
    assert all(math.isfinite(results[key]) for key in KEYS)
    assert 0 <= results["recon_accuracy"] <= 1 and 0 <= results["grid_confident_share"] <= 1
    assert results["num_samples"] == 500 and results["test_images"] == 256


def test_a_missing_eval_net_is_made_once_and_saved(evaluated):
    root, _, result = evaluated
    assert result.stdout.count("training the evaluation CNN") == 1
    assert str(root / "eval_net.pth") in result.stdout
    net = load_network("eval", root / "eval_net.pth")
    assert not any(p.requires_grad for p in net.parameters())


def test_a_present_eval_net_is_loaded_not_retrained(evaluated, monkeypatch):
    root, argv, _ = evaluated
    made_at = (root / "eval_net.pth").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the evaluation CNN was trained again")

    monkeypatch.setattr(evaluate, "make_network", no_training)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *argv, "--out", str(root / "again.json")])
    evaluate.main()
    assert (root / "eval_net.pth").stat().st_mtime_ns == made_at
    first = json.loads((root / "eval.json").read_text())
    again = json.loads((root / "again.json").read_text())
    assert {k: again[k] for k in KEYS} == pytest.approx({k: first[k] for k in KEYS}, rel=1e-5)


def test_the_output_records_the_eval_nets_hash_accuracy_and_half(evaluated):
    root, _, result = evaluated
    assert result.returncode == 0, result.stderr
    results = json.loads((root / "eval.json").read_text())
    made = torch.load(root / "eval_net.pth", weights_only=True)
    digest = hashlib.sha256((root / "eval_net.pth").read_bytes()).hexdigest()
    assert results["eval_net_sha256"] == digest
    assert results["eval_net_test_accuracy"] == made["test_accuracy"]
    assert results["eval_net_train_half"] == 1 and results["eval_net_train_size"] == 256
    assert f"test accuracy {made['test_accuracy']:.2%}" in result.stdout


def test_the_shipped_eval_net_is_the_one_every_grade_comes_from(real_mnist):
    """checkpoints/mnist_eval_net.pth: the evaluation CNN, made on half 1 of the real training
    split, whose recorded test accuracy is what it scores on the real test split today."""
    shipped = evaluate.shipped_eval_net("mnist")
    assert shipped == REPO / "checkpoints" / "mnist_eval_net.pth"
    record = network_record(shipped)
    assert record["train_half"] == 1 and record["train_size"] == 30_000
    assert record["test_accuracy"] > 0.98
    net = load_network("eval", shipped)
    test = load_mnist(real_mnist, "test", download=False)
    assert accuracy(net, test) == pytest.approx(record["test_accuracy"], abs=1e-9)


def test_a_corrupt_or_foreign_eval_net_file_is_one_line(tmp_path, fake_mnist):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_network("eval", corrupt)
    assert str(corrupt) in str(err.value) and "\n" not in str(err.value)

    split = load_mnist(fake_mnist, "test", download=False)
    foreign = tmp_path / "pips.pth"
    make_network("pips", foreign, split, split, epochs=0)
    with pytest.raises(CheckpointError, match="holds 'pips', not the evaluation CNN") as err:
        load_network("eval", foreign)
    assert "\n" not in str(err.value)


# evaluate.py --images: the sample measures of a file of images, no VAE


def test_images_are_graded_blurred_noisy_and_real_the_right_way_round(tmp_path, real_mnist):
    """1,000 real training digits, the same blurred (sigma 1), and blurred plus noise (SD 0.05),
    each saved as a .pt file and graded by evaluate.py against the real test split, by the
    evaluation CNN the repo ships: no network is trained first."""
    train = load_mnist(real_mnist, "train", download=False)
    real = train.images[-1000:]
    blurred = gaussian_blur(real, 1.0)
    noise = torch.randn(blurred.shape, generator=torch.Generator().manual_seed(0))
    files = {"real": real, "blurred": blurred, "noisy": (blurred + 0.05 * noise).clamp(0, 1)}
    commands = {}
    for name, images in files.items():
        torch.save(images if name != "real" else {"images": images}, tmp_path / f"{name}.pt")
        commands[name] = [
            "evaluate.py",
            "--images",
            str(tmp_path / f"{name}.pt"),
            "--data_root",
            str(real_mnist),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / f"{name}.json"),
        ]
    # One in a real process, the others in this one.
    done = {"real": run_script(*commands["real"])}
    done |= {name: run_main(*commands[name]) for name in ("blurred", "noisy")}
    graded = {}
    shipped = evaluate.shipped_eval_net("mnist")
    for name, result in done.items():
        assert result.returncode == 0, result.stderr
        assert "training the" not in result.stdout
        graded[name] = json.loads((tmp_path / f"{name}.json").read_text())
        assert graded[name]["eval_net"] == str(shipped)
        assert graded[name]["eval_net_sha256"] == file_sha256(shipped)
        assert f"sha256 {file_sha256(shipped)}" in result.stdout
    real_r, blur_r, noisy_r = graded["real"], graded["blurred"], graded["noisy"]
    assert real_r["edge_sharpness"] == pytest.approx(1.0, abs=0.05)
    assert noisy_r["edge_sharpness"] <= blur_r["edge_sharpness"] < 0.8
    assert noisy_r["background_speckle"] > blur_r["background_speckle"] + 0.01
    assert noisy_r["background_speckle"] > real_r["background_speckle"] + 0.01
    assert noisy_r["sharpness_ratio"] > blur_r["sharpness_ratio"]  # the Laplacian is fooled
    assert real_r["fid_samples"] < min(blur_r["fid_samples"], noisy_r["fid_samples"])
    assert real_r["num_images"] == 1000 and "ckpt_path" not in real_r


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ([1, 2, 3], "holds list, not a tensor"),
        ({"pictures": torch.zeros(2, 1, 28, 28)}, "a dict without a tensor under 'images'"),
        (torch.zeros(2, 28, 28), "shape [2, 28, 28]"),
        (torch.full((2, 1, 28, 28), 2.0), "values span [2, 2]"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "torch.uint8"),
    ],
)
def test_a_bad_images_file_is_one_line_naming_it(tmp_path, content, says, monkeypatch):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    argv = ["evaluate.py", "--images", str(path), "--out", str(tmp_path / "e.json")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(UserError) as err:
        evaluate.main()
    assert str(path) in str(err.value) and says in str(err.value) and "\n" not in str(err.value)


def test_the_rate_is_the_mean_posterior_kl_over_the_test_images(evaluated, fake_mnist):
    root, _, result = evaluated
    assert result.returncode == 0, result.stderr
    results = json.loads((root / "eval.json").read_text())
    vae = load_vae(
        str(REPO / "configs/model_simple_config.json"),
        str(root / "final_model.pth"),
        torch.device("cpu"),
    )
    with torch.no_grad():
        _, mu, logvar = vae(load_mnist(fake_mnist, "test", download=False).images)
    rate = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean().item()
    assert results["rate_kl"] == pytest.approx(rate, rel=1e-4)
