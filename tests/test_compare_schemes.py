"""The comparison: its summary computed by hand, and a real small run of the whole script."""

import csv
import math

import pytest

from compare_schemes import MEASURES, markdown_table, summarise
from tests.helpers import REPO, make_mnist_root, run_script


def row(scheme: str, seed: int, value: float) -> dict:
    return {"scheme": scheme, "seed": seed, **dict.fromkeys(MEASURES, value)}


def test_summary_gives_mean_and_sample_std_per_scheme_and_measure():
    rows = [row("simple", 1, 1.0), row("simple", 2, 3.0), row("composite", 1, 5.0)]
    summary = {(r["scheme"], r["measure"]): r for r in summarise(rows)}
    assert len(summary) == 2 * len(MEASURES)
    simple = summary[("simple", "fid_samples")]
    assert simple["seeds"] == 2 and simple["mean"] == 2.0
    assert simple["std"] == pytest.approx(2**0.5)  # sample std of (1, 3)
    composite = summary[("composite", "sharpness_ratio")]
    assert (composite["seeds"], composite["mean"], composite["std"]) == (1, 5.0, 0.0)

    table = markdown_table(summarise(rows)).splitlines()
    assert table[0] == "| measure | simple (2 seeds) | composite (1 seeds) |"
    assert table[2] == "| recon_mse | 2 ± 1.4 | 5 ± 0 |"
    assert len(table) == 2 + len(MEASURES)


def test_the_comparison_runs_both_schemes_grades_them_and_keeps_finished_runs(tmp_path):
    """A real two-seed comparison in a bare folder: the networks it needs are made there, every
    run is graded, and a second call keeps the finished runs instead of training them again. On
    a small synthetic MNIST (its size is no part of what is checked): the two networks train on
    all of it, and each run takes one step an epoch."""
    mnist = make_mnist_root(tmp_path / "mnist", n_train=256, n_test=128)
    argv = ["--data_root", str(mnist), "--seeds", "1", "2", "--epochs", "1",
            "--subset", "128", "--out", "out"]  # fmt: skip
    result = run_script(str(REPO / "compare_schemes.py"), *argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "checkpoints/mnist_pips_cnn.pth").is_file()
    assert (tmp_path / "checkpoints/mnist_eval_net.pth").is_file()
    out = tmp_path / "out"
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert [(r["scheme"], r["seed"]) for r in runs] == [
        ("simple", "1"), ("composite", "1"), ("simple", "2"), ("composite", "2")]  # fmt: skip
    for run in runs:
        assert run["epochs"] == "1" and float(run["peak_rss_mb"]) > 50
        assert all(math.isfinite(float(run[m])) for m in MEASURES)
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {r["seeds"] for r in summary} == {"2"} and len(summary) == 2 * len(MEASURES)
    assert (out / "summary.md").read_text().startswith("| measure | simple (2 seeds) |")
    for png in ("compare_seed1.png", "simple_samples.png", "composite_samples.png"):
        assert (out / png).stat().st_size > 1000

    finals = sorted(out.glob("runs/*/final_model.pth"))
    made_at = [p.stat().st_mtime_ns for p in finals]
    again = run_script(str(REPO / "compare_schemes.py"), *argv, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [p.stat().st_mtime_ns for p in finals] == made_at
    assert "epoch 1/1" not in again.stdout + again.stderr
