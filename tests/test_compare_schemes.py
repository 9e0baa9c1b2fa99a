"""The comparison: its summary computed by hand, and a real small run of the whole script."""

import argparse
import csv
import json
import math

import pytest

from compare_schemes import smallest_effect
from tests.helpers import REPO, make_mnist_root, run_main, run_script
from utils.comparison import MEASURES, SUMMARY_FIELDS, markdown_table, summarise
from utils.networks import file_sha256

# The measures of a runs.csv written before evaluate.py's later grades (as the committed ones).
NINE = (
    "recon_mse",
    "fid_samples",
    "fid_recon",
    "sharpness_ratio",
    "recon_accuracy",
    "grid_confident_share",
    "grid_classes",
    "seconds_per_epoch",
    "peak_rss_mb",
)
# The comparison's baseline and arm, as runs.csv's scheme column names them.
SCHEMES = ("simple", "composite")


def rows(simple: list[float], composite: list[float], measures=NINE) -> list[dict]:
    """runs.csv rows: every measure takes the given value, seed by seed."""
    return [
        {"scheme": scheme, "seed": seed, **dict.fromkeys(measures, value)}
        for seed, pair in enumerate(zip(simple, composite, strict=True), start=1)
        for scheme, value in zip(("simple", "composite"), pair, strict=True)
    ]


def test_summary_pairs_composite_minus_simple_by_seed_with_holm_across_measures():
    # differences 11-10, 22-20, 33-30 = 1, 2, 3: mean 2, sd 1, se 1/sqrt(3) = 0.57735,
    # t_.975,2 = 4.30265 -> 2 ± 2.48414; t = 3.4641, p = 1 - 3.4641 / sqrt(14) = 0.07418
    summary = summarise(rows([10, 20, 30], [11, 22, 33]), *SCHEMES, "scheme", {"recon_mse": 4.0})
    # the measures runs.csv lacks are left out, in MEASURES' order
    assert [r["measure"] for r in summary] == list(NINE)
    first = summary[0]
    assert set(SUMMARY_FIELDS) <= set(first)
    assert (first["n"], first["baseline_mean"], first["arm_mean"]) == (3, 20.0, 22.0)
    assert first["difference"] == 2.0 and first["d_z"] == pytest.approx(2.0)
    assert (first["ci_low"], first["ci_high"]) == pytest.approx((-0.48414, 4.48414), abs=1e-5)
    assert first["p"] == pytest.approx(0.07418, abs=1e-5)
    # nine equal p-values: Holm multiplies the smallest by 9 and the rest stay monotone
    # at 9 x 0.07418 = 0.66762
    assert all(r["p_holm"] == pytest.approx(9 * first["p"]) for r in summary)
    # recon_mse: 90 % interval 2 ± 2.91999 x 0.57735 = [0.314, 3.686], inside ±4
    assert first["verdict"] == "equivalent" and first["smallest_effect"] == 4.0
    assert {r["verdict"] for r in summary[1:]} == {"not shown equivalent"}

    table = markdown_table(summary, *SCHEMES).splitlines()
    assert table[0].startswith("| measure | simple | composite | composite − simple [95 % CI] |")
    assert table[2] == (
        "| recon_mse | 20 | 22 | +2.0 [-0.5, +4.5] (n = 3, d_z 2.0) | 0.074 | 0.67 | "
        "equivalent within ±4: 90 % interval inside it |"
    )
    assert len(table) == 2 + len(NINE)


def test_every_measure_in_runs_csv_joins_the_summary_and_holms_family():
    # All fifteen measures present: the same p = 0.07418 each, so Holm gives min(1, 15 x p) = 1.
    summary = summarise(rows([10, 20, 30], [11, 22, 33], MEASURES), *SCHEMES, "scheme")
    assert [r["measure"] for r in summary] == list(MEASURES) and len(MEASURES) == 15
    assert all(r["p_holm"] == 1.0 for r in summary)


def test_one_seed_says_n_equals_1_and_never_plus_minus_0():
    summary = summarise(rows([1.0], [5.0]), *SCHEMES, "scheme")
    assert {(r["n"], r["ci_low"], r["p"], r["p_holm"]) for r in summary} == {(1, "", "", "")}
    assert {r["verdict"] for r in summary} == {"no test (n = 1)"}
    table = markdown_table(summary, *SCHEMES)
    assert "| recon_mse | 1 | 5 | n = 1: +4.00 (no interval) | — | — |" in table
    assert "±" not in table


def test_equivalence_flag_reads_measure_and_delta():
    assert smallest_effect("fid_samples=20") == ("fid_samples", 20.0)
    for bad in ("fid=20", "fid_samples=0", "fid_samples=x", "fid_samples"):
        with pytest.raises(argparse.ArgumentTypeError):
            smallest_effect(bad)


def test_the_comparison_runs_both_schemes_grades_them_and_keeps_finished_runs(tmp_path):
    """A real one-seed comparison in a bare folder (pairing over several seeds is checked by hand
    above): the PIPS backbone it needs is made there, every run is graded by the evaluation CNN
    the repo ships, and a second call keeps the finished runs and figures instead of making them
    again. On a small synthetic MNIST (its size is no part of what is checked): the PIPS backbone
    trains on half of it, each run takes one step an epoch."""
    mnist = make_mnist_root(tmp_path / "mnist", n_train=256, n_test=128)
    argv = [
        "--data_root",
        str(mnist),
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--subset",
        "128",
        "--num_samples",
        "500",
        "--out",
        "out",
    ]
    # compare_schemes.py in this process (its train.py and evaluate.py runs in real ones), then
    # again in a real process.
    result = run_main("compare_schemes.py", *argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "checkpoints/mnist_pips_cnn.pth").is_file()
    assert not (tmp_path / "checkpoints/mnist_eval_net.pth").exists()  # the shipped one graded
    out = tmp_path / "out"
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert [(r["scheme"], r["seed"]) for r in runs] == [("simple", "1"), ("composite", "1")]
    shipped = file_sha256(REPO / "checkpoints/mnist_eval_net.pth")
    for run in runs:
        assert run["epochs"] == "1" and float(run["peak_rss_mb"]) > 50
        graded = json.loads(
            (tmp_path / "out/runs" / f"{run['scheme']}_seed{run['seed']}" / "eval.json").read_text()
        )
        assert graded["eval_net_sha256"] == shipped and graded["num_samples"] == 500
        assert all(math.isfinite(float(run[m])) for m in MEASURES)
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0]) == list(SUMMARY_FIELDS)
    assert [r["measure"] for r in summary] == list(MEASURES)
    simple, composite = runs
    for r in summary:
        assert (r["n"], r["verdict"], r["ci_low"]) == ("1", "no test (n = 1)", "")
        want = float(composite[r["measure"]]) - float(simple[r["measure"]])
        assert float(r["difference"]) == pytest.approx(want)
    md = (out / "summary.md").read_text()
    assert md.startswith("| measure | simple | composite | composite − simple [95 % CI] |")
    assert "n = 1: " in md and "± 0" not in md
    for png in ("compare_seed1.png", "simple_samples.png", "composite_samples.png"):
        assert (out / png).stat().st_size > 1000

    kept = sorted(out.glob("runs/*/final_model.pth")) + sorted(out.glob("*.png"))
    made_at = [p.stat().st_mtime_ns for p in kept]
    again = run_script(str(REPO / "compare_schemes.py"), *argv, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [p.stat().st_mtime_ns for p in kept] == made_at
    assert "epoch 1/1" not in again.stdout + again.stderr


def test_summarise_only_rewrites_the_summary_from_runs_csv_without_training(tmp_path):
    # recon_mse differences 1, 2, 3 over seeds 1-3: mean 2, SD 1, SE 1/sqrt(3) = 0.577,
    # t(0.975, 2) = 4.303 -> 2 +- 2.484 = [-0.48, +4.48]; every other measure differs by 0.
    fields = ["scheme", "seed", *MEASURES]
    with open(tmp_path / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for seed, gap in ((1, 1.0), (2, 2.0), (3, 3.0)):
            for scheme, shift in (("simple", 0.0), ("composite", gap)):
                values = {m: 10.0 + shift if m == "recon_mse" else 5.0 for m in MEASURES}
                writer.writerow({"scheme": scheme, "seed": seed, **values})
    done = run_main("compare_schemes.py", "--out", str(tmp_path), "--summarise_only")
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "summary.md").read_text()
    assert "| recon_mse | 10 | 12 | +2.0 [-0.5, +4.5] (n = 3, d_z 2.0) |" in table
    assert not (tmp_path / "runs").exists()
    missing = run_main("compare_schemes.py", "--out", str(tmp_path / "none"), "--summarise_only")
    assert missing.returncode == 2
    assert missing.stderr == (
        f"error: {tmp_path / 'none' / 'runs.csv'}: no runs.csv to summarise; run the comparison "
        "first\n"
    )
