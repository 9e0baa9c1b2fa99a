"""study.py: studies/smoke.json run for real (train.py and evaluate.py processes on Optuna's
SQLite storage), a second call that trains nothing, a search, and one-line refusals."""

import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import study
from tests.helpers import REPO, make_mnist_root, run_main, run_script
from utils import study_report, study_spec
from utils.comparison import MEASURES, SUMMARY_FIELDS, Budget, contrast, summarise_contrasts
from utils.config import config_from_dict
from utils.errors import UserError
from utils.stats import Verdict

SMOKE = REPO / "studies" / "smoke.json"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke study on a small synthetic MNIST, run once from a bare folder (study.py in this
    process; its train.py and evaluate.py runs in real ones)."""
    root = tmp_path_factory.mktemp("study")
    mnist = make_mnist_root(root / "mnist", n_train=256, n_test=128)
    argv = [str(SMOKE), "--data_root", str(mnist), "--out", str(root / "out"), "--threads", "1"]
    result = run_main("study.py", *argv, cwd=root)
    return root, argv, result


def test_the_smoke_study_runs_every_arm_and_writes_its_report(smoke):
    root, _, result = smoke
    assert result.returncode == 0, result.stderr
    # The composite arm's PIPS backbone is made once, by study.py, before any run starts.
    assert result.stdout.count("training the PIPS backbone CNN") == 1, result.stdout
    out = root / "out"
    spec = json.loads(SMOKE.read_text())
    arms = [a["name"] for a in spec["arms"]]
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"], r["epochs"]) for r in runs] == [(a, "1", "1") for a in arms]
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0]) == ["arm", "baseline", *SUMMARY_FIELDS]
    assert {r["arm"] for r in summary} == set(arms) - {spec["baseline"]}
    assert {r["n"] for r in summary} == {"1"}  # one seed: no interval, never "± 0"
    report = (out / "REPORT.md").read_text()
    assert report.startswith("# Study `smoke`")
    assert "Budget: 1 epochs, 128 training images of each train config's dataset, seeds 1," in (
        report
    )
    assert "## both_adaptive_hinge against simple" in report and "± 0" not in report
    assert '`loss.params.gan_loss="hinge"`' in report
    # The composite arm's balance: its last epoch's logged ratios, in runs.csv and the report.
    assert runs[0]["grad_ratio_adv"] == "" and float(runs[1]["grad_ratio_adv"]) > 0
    assert "| both_adaptive_hinge | " in report.split("## Balance of the extra terms")[1]
    for arm in arms:
        for view in ("grid", "samples", "recon"):
            assert (out / f"{arm}_{view}.png").stat().st_size > 1000
            assert f"({arm}_{view}.png)" in report
    assert (out / "arms.png").stat().st_size > 10_000 and "![arms.png](arms.png)" in report
    # The headline: the one contrast's row of the question's measures, and its plain words.
    headline = report.split("## Headline")[1].split("## Arms")[0]
    assert "| arm | edge_sharpness | background_speckle | fid_samples |" in headline
    assert "| both_adaptive_hinge | " in headline and " (n = 1) | " in headline
    assert "- **both_adaptive_hinge** against simple: sharpness untested (edge_sharpness " in (
        headline
    )
    assert "seconds per step (bench) |" in report and "not measured (`python study.py" in report
    assert (out / "study.db").is_file()
    # Cost: each arm's counted float operations per epoch, the critic and PIPS arm the dearer.
    cost = report.split("## Cost")[1].split("##")[0]
    gflop = {
        row.split(" | ")[0].strip("| "): float(row.split(" | ")[1])
        for row in cost.splitlines()
        if row.startswith(("| simple |", "| both_"))
    }
    assert 0 < gflop["simple"] < gflop["both_adaptive_hinge"]
    assert len(json.loads((out / "flops.json").read_text())) == 2


def test_the_composite_arm_logs_its_weight_and_gradient_ratios(smoke):
    root, _, result = smoke
    assert result.returncode == 0, result.stderr
    with open(root / "out/runs/both_adaptive_hinge_seed1/metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    # The critic is on from step 0 (warmup_ratio 0), the ratios are measured at step 0.
    weight = float(row["train_disc_weight"])
    assert 0 < weight <= 0.5 * 1e4
    # The adaptive weight makes the adversarial gradient lambda_disc times the reconstruction's
    # (less the 1e-4 in the denominator) at the decoder's last layer.
    assert float(row["train_grad_ratio_adv"]) == pytest.approx(0.5, rel=1e-2)
    assert float(row["train_grad_ratio_pips"]) > 0
    assert float(row["lr_d"]) == 5e-5  # scheduler.params_d null: a constant critic rate


def test_a_second_call_trains_nothing_and_keeps_the_runs(smoke):
    root, argv, first = smoke
    assert first.returncode == 0, first.stderr
    kept = sorted((root / "out/runs").glob("*/final_model.pth"))
    kept += sorted((root / "out/runs").glob("*/eval.json"))
    made_at = [p.stat().st_mtime_ns for p in kept]
    again = run_script(str(REPO / "study.py"), *argv, cwd=root)  # the real process
    assert again.returncode == 0, again.stderr
    assert len(kept) == 4 and [p.stat().st_mtime_ns for p in kept] == made_at
    assert "epoch 1/1" not in again.stdout + again.stderr
    with open(root / "out/runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_search_mode_runs_the_sampler_and_names_the_best_setting(smoke):
    root, argv, first = smoke
    assert first.returncode == 0, first.stderr
    result = run_main("study.py", *argv, "--search", cwd=root)  # its runs: real processes
    assert result.returncode == 0, result.stderr
    with open(root / "out/search.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 1  # the smoke's one trial; a real search sorts them best first
    assert all(10 <= float(t["loss.params.lambda_pips"]) <= 1000 for t in trials)
    assert all(float(t["fid_samples"]) > 0 for t in trials)
    for t in trials:  # each run's folder is named by its settings, so a retry continues it
        assert (root / "out/runs" / t["folder"] / "eval.json").is_file()
    assert "Best: `loss.params.lambda_pips` = " in (root / "out/SEARCH.md").read_text()


def test_bench_times_every_arm_in_one_process_and_the_report_gives_the_ratio(smoke):
    import torch

    root, argv, first = smoke
    assert first.returncode == 0, first.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # not --threads 1: what --bench must give back afterwards
    try:
        result = run_main("study.py", *argv, "--bench", cwd=root)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert result.returncode == 0, result.stderr
    assert "--bench: 2 arms x 3 rounds on cpu, 1 threads" in result.stdout
    assert "-> " not in result.stdout  # it measures and stops
    assert run_main("study.py", *argv, cwd=root).returncode == 0  # the report, with the figures
    bench = json.loads((root / "out/bench.json").read_text())
    assert (bench["device"], bench["threads"], bench["rounds"]) == ("cpu", 1, 3)
    seconds = {a["arms"][0]: a for a in bench["arms"].values()}
    assert [a["arms"] for a in bench["arms"].values()] == [["simple"], ["both_adaptive_hinge"]]
    for arm in seconds.values():  # the smoke's epoch is one step, so each round times one
        assert arm["steps"] == 1 and len(arm["each"]) == 3 and min(arm["each"]) > 0
        assert arm["seconds_per_step"] == sorted(arm["each"])[1]  # the median
    simple, both = (seconds[a]["seconds_per_step"] for a in ("simple", "both_adaptive_hinge"))
    assert simple < both  # the critic and PIPS cost more than the VAE alone
    report = (root / "out/REPORT.md").read_text()
    cost = report.split("## Cost")[1].split("##")[0]
    (simple_row,) = [line for line in cost.splitlines() if line.startswith("| simple |")]
    assert simple_row.split(" | ")[2] == f"{simple:.3g}"  # the seconds per step column
    assert f"at --threads 1, torch {torch.__version__}, the median of 3 rounds" in cost
    assert f" | {both / simple:.3g}x |" in report.split("## Headline")[1].split("## Arms")[0]
    assert f"and {both / simple:.3g}x the seconds per training step." in report
    # Measured once: a second call keeps the figures, which were taken side by side.
    made = (root / "out/bench.json").stat().st_mtime_ns
    again = run_main("study.py", *argv, "--bench", cwd=root)
    assert again.returncode == 0
    assert "holds these arms already (measured on cpu, " in again.stdout
    assert ", at --threads 1); delete it to measure again" in again.stdout
    assert (root / "out/bench.json").stat().st_mtime_ns == made


def test_a_clone_of_the_committed_runs_continues_the_study_without_training_them(smoke, tmp_path):
    """What git keeps of a study (no checkpoints, no Optuna storage): the runs are graded
    already, so a fresh clone's study trains none of them again and keeps their views."""
    root, argv, first = smoke
    assert first.returncode == 0, first.stderr
    clone = tmp_path / "clone"
    shutil.copytree(
        root / "out", clone, ignore=shutil.ignore_patterns("*.pth", "tensorboard", "study.db")
    )
    assert not list(clone.rglob("*.pth"))
    views = sorted(clone.glob("*_*.png"))
    drawn_at = [p.stat().st_mtime_ns for p in views]
    flags = [*argv[:-4], "--out", str(clone), "--threads", "1"]
    result = run_script(str(REPO / "study.py"), *flags, cwd=root)  # the real process
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" not in result.stdout + result.stderr  # nothing trained or graded again
    assert not list(clone.rglob("*.pth"))
    assert len(views) == 6 and [p.stat().st_mtime_ns for p in views] == drawn_at
    for name in ("runs.csv", "summary.csv"):
        assert (clone / name).read_text() == (root / "out" / name).read_text()
    report = (clone / "REPORT.md").read_text()
    for view in views:
        assert f"({view.name})" in report
    assert (clone / "arms.png").stat().st_size > 10_000


def test_report_writes_an_interim_report_from_the_runs_finished_so_far(smoke, tmp_path):
    root, argv, first = smoke
    assert first.returncode == 0, first.stderr

    def two_seeds(spec):  # and an arm that has not run: the simple one again, named late
        spec["seeds"] = [1, 2]
        spec["arms"].append({**spec["arms"][0], "name": "late"})

    interim = tmp_path / "interim"  # the smoke's storage, another folder to write into
    interim.mkdir()
    shutil.copy(root / "out/flops.json", interim)  # counted already
    storage = f"sqlite:///{root / 'out/study.db'}"
    flags = ["--data_root", argv[2], "--out", str(interim), "--storage", storage, "--report"]
    result = run_main("study.py", write_spec(tmp_path, two_seeds), *flags, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" not in result.stdout + result.stderr  # it trains nothing
    report = (interim / "REPORT.md").read_text()
    assert (
        "**Interim** (`--report`): 2 of 6 runs have finished; not yet late/seed 1, "
        "simple/seed 2, both_adaptive_hinge/seed 2, late/seed 2. Each arm is compared over "
        "the seeds it and its baseline have both finished, so its verdicts are provisional"
    ) in report
    assert "Not compared yet (no seed finished in both the arm and its baseline): late." in report
    assert "| late |" not in report.split("## Arms")[0] and "## late against" not in report
    with open(interim / "runs.csv") as f:
        assert [(r["arm"], r["seed"]) for r in csv.DictReader(f)] == [
            ("simple", "1"),
            ("both_adaptive_hinge", "1"),
        ]
    assert "| both_adaptive_hinge | " in report.split("## Headline")[1].split("## Arms")[0]
    assert f"--data_root {argv[2]} --report` (2 runs)." in report
    assert not (interim / "runs").exists()  # no run was started


def test_report_elsewhere_counts_the_flops_without_the_pips_backbone_file(smoke, tmp_path):
    """--report where the composite arm's PIPS backbone file is missing (another machine, or
    checkout) and nothing is counted yet: the count needs the backbone's layers, not its
    weights, so it comes out as the study's own, and no backbone is trained for it."""
    root, argv, first = smoke
    assert first.returncode == 0, first.stderr
    assert (root / "checkpoints/mnist_pips_cnn.pth").is_file()  # what the smoke's runs used
    elsewhere, interim = tmp_path / "elsewhere", tmp_path / "interim"
    elsewhere.mkdir()
    storage = f"sqlite:///{root / 'out/study.db'}"
    flags = ["--data_root", argv[2], "--out", str(interim), "--storage", storage, "--report"]
    result = run_main("study.py", str(SMOKE), *flags, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "training the" not in result.stdout + result.stderr
    assert not (elsewhere / "checkpoints").exists()
    counted = json.loads((interim / "flops.json").read_text())
    assert counted == json.loads((root / "out/flops.json").read_text())
    assert len(counted) == 2


def test_bench_report_and_search_are_one_mode_at_a_time(tmp_path):
    result = run_main("study.py", str(SMOKE), "--out", str(tmp_path / "o"), "--bench", "--report")
    assert result.returncode == 2
    assert result.stderr == (
        "error: argument --report: not allowed with argument --bench; see python study.py --help\n"
    )
    assert not (tmp_path / "o").exists()


def test_report_before_any_run_has_finished_is_one_line(tmp_path):
    import optuna

    out = tmp_path / "o"
    result = run_main("study.py", str(SMOKE), "--out", str(out), "--report")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line == (
        f"error: --storage sqlite:///{out.resolve() / 'study.db'}: holds no study "
        "'smoke', so nothing of it has run; run the study first, or pass the "
        "--storage it ran in"
    )
    optuna.create_study(storage=f"sqlite:///{out / 'study.db'}", study_name="smoke")
    result = run_main("study.py", str(SMOKE), "--out", str(out), "--report")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: study 'smoke' in sqlite:///")
    assert line.endswith(
        "no run has finished yet, so there is nothing to report; run the study first"
    )


def test_two_arms_that_train_alike_share_one_measurement(tmp_path):
    def twin(spec):
        spec["arms"].append({**spec["arms"][0], "name": "simple_again"})

    spec = study_spec.load_study(write_spec(tmp_path, twin))
    budget = Budget(str(tmp_path), 1, 128)
    keys = {a.name: study_spec.arm_key(spec, a.name, budget) for a in spec.arms}
    assert keys["simple_again"] == keys["simple"] != keys["both_adaptive_hinge"]
    seconds = {keys["simple"]: 0.05, keys["both_adaptive_hinge"]: 1.5}
    (tmp_path / "bench.json").write_text(
        json.dumps(
            {
                "device": "cpu",
                "processor": "some CPU",
                "threads": 1,
                "torch": "2.x",
                "rounds": 3,
                "arms": {
                    k: {"arms": [], "steps": 1, "each": [v], "seconds_per_step": v}
                    for k, v in seconds.items()
                },
            }
        )
    )
    bench = study_report.read_bench(spec, tmp_path, budget)
    assert bench.seconds_per_step == {
        "simple": 0.05,
        "both_adaptive_hinge": 1.5,
        "simple_again": 0.05,
    }
    assert (bench.device, bench.processor, bench.threads, bench.rounds) == ("cpu", "some CPU", 1, 3)
    del seconds[keys["both_adaptive_hinge"]]  # an arm not measured: measure again, all together
    (tmp_path / "bench.json").write_text(
        json.dumps(
            {
                "device": "cpu",
                "processor": "some CPU",
                "threads": 1,
                "torch": "2.x",
                "rounds": 3,
                "arms": {k: {"seconds_per_step": v} for k, v in seconds.items()},
            }
        )
    )
    assert study_report.read_bench(spec, tmp_path, budget) is None


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("bench.json", "{", "bench.json: unreadable (Expecting property name"),
        ("bench.json", '{"arms": {"x": {"seconds": 1}}}', "bench.json: not as study.py writes"),
        ("bench.json", '{"arms": {"x": {"seconds_per_step": 1}}}', "bench.json: not as study"),
        ("flops.json", "[1, 2]", "flops.json: not as study.py writes it"),
        ("flops.json", '{"x": "many"}', "flops.json: not as study.py writes it"),
        ("flops.json", '{"x": 0}', "flops.json: not as study.py writes it"),
        ("flops.json", '{"x": true}', "flops.json: not as study.py writes it"),
        ("flops.json", '{"x": NaN}', "flops.json: not as study.py writes it"),
    ],
)
def test_a_damaged_cost_file_is_one_line_saying_to_delete_it(tmp_path, name, text, says):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(text)
    if name == "bench.json":  # read before anything is measured
        result = run_main("study.py", str(SMOKE), "--out", str(out), "--bench")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        (line,) = result.stderr.splitlines()
    else:  # read when the report counts each arm's float operations
        spec = study_spec.load_study(str(SMOKE))
        with pytest.raises(UserError) as e:
            study.arm_flops(spec, out, Budget(str(tmp_path), 1, 128))
        line = f"error: {e.value}"
    assert line.startswith(f"error: {out / name}") and says in line
    assert line.endswith("; delete it and study.py makes it again")
    assert (out / name).read_text() == text  # left as it was


def test_each_arms_comparison_is_its_own_holm_family():
    """Two arms, each with one tested measure: edge +0.20, +0.21, +0.19 (t = 34.64, two-sided
    p = 1 - t / sqrt(t^2 + 2) = 0.000832 at 2 degrees of freedom) and recon +1, +2, +3 (t = 3.464,
    p = 0.0742). Each arm's family holds its one test, so Holm leaves each p as it is; one
    family for both would double the smaller (0.00166)."""
    base = {m: 1.0 for m in MEASURES}
    rows = [{"arm": "simple", "seed": seed, **base} for seed in (1, 2, 3)]
    for seed, edge, recon in ((1, 0.20, 1.0), (2, 0.21, 2.0), (3, 0.19, 3.0)):
        rows.append({"arm": "sharp", "seed": seed, **base, "edge_sharpness": 1.0 + edge})
        rows.append({"arm": "blurred", "seed": seed, **base, "recon_mse": 1.0 + recon})
    summaries = summarise_contrasts(
        {arm: contrast(rows, "simple", arm) for arm in ("sharp", "blurred")}
    )
    tested = {
        arm: [(r["measure"], r["p"], r["p_holm"]) for r in summary if r["p"] != ""]
        for arm, summary in summaries.items()
    }
    (sharp,), (blurred,) = tested["sharp"], tested["blurred"]
    assert sharp[0] == "edge_sharpness" and sharp[1] == pytest.approx(0.000832, rel=1e-3)
    assert blurred[0] == "recon_mse" and blurred[1] == pytest.approx(0.0742, abs=1e-4)
    assert sharp[2] == sharp[1] and blurred[2] == blurred[1]


def test_the_headline_judges_each_arm_by_its_intervals_in_plain_words():
    """Three seeds made up so that the verdicts are known: the edge grade rises by 0.20 with sd
    0.01 (t = 34.6, p 0.00083) and class KL by 0.55 with sd 0.05 (t = 19.1, p 0.0027), each
    significant after Holm's correction over the three tested measures; recon_mse moves +3,
    -1, +0.5 (not shown either way); every other measure is equal seed by seed: equivalent,
    except background_speckle, which has no smallest effect stated."""
    base = {m: 1.0 for m in MEASURES}
    rows = []
    for seed, edge, kl, recon in (
        (1, 0.20, 0.50, 3.0),
        (2, 0.21, 0.60, -1.0),
        (3, 0.19, 0.55, 0.5),
    ):
        rows.append({"arm": "simple", "seed": seed, **base})
        rows.append(
            {
                "arm": "sharp",
                "seed": seed,
                **base,
                "edge_sharpness": 1.0 + edge,
                "class_kl": 1.0 + kl,
                "recon_mse": 1.0 + recon,
            }
        )
    summaries = summarise_contrasts({"sharp": contrast(rows, "simple", "sharp")})
    bench = study_report.Bench({"simple": 0.02, "sharp": 0.5}, "cpu", "some CPU", 1, "2.x", 3)
    cost = study_report.Cost({"simple": 1e9, "sharp": 3.7e10}, bench)
    baselines = {"simple": "simple", "sharp": "simple"}
    text = "\n".join(study_report.headline_lines(baselines, summaries, cost))
    assert text.count("Against `") == 1 and "Against `simple`:" in text
    # mean 0.2, se 0.01 / sqrt(3) = 0.005774, t_.975,2 4.30265: half-width 0.02484
    assert "| sharp | **+0.200 [+0.175, +0.225]** | 0 [0, 0] | ≈ 0 [0, 0] |" in text
    # recon: mean 0.833, sd 2.021, se 1.167, half-width 5.02
    assert "| ≈ 0 [0, 0] | **+0.55 [+0.43, +0.67]** | +0.8 [-4.2, +5.9] | 37x | 25x |" in text
    assert (
        "- **sharp** against simple: sharper samples (edge_sharpness +0.200 [+0.175, +0.225]); "
        "speckle not settled (background_speckle 0 [0, 0]); as realistic (fid_samples 0 "
        "[0, 0], precision 0 [0, 0]); loses coverage (recall 0 [0, 0], class_kl +0.55 "
        "[+0.43, +0.67]); reconstruction not settled (recon_mse +0.8 [-4.2, +5.9]); at 37x "
        "the float operations per epoch and 25x the seconds per training step."
    ) in text


def test_an_arm_with_its_own_baseline_is_a_cell_of_its_own_and_equal_seeds_read_as_same():
    base = {m: 1.0 for m in MEASURES}
    rows = [{"arm": arm, "seed": seed, **base} for seed in (1, 2) for arm in ("a", "b", "c")]
    contrasts = {"b": contrast(rows, "a", "b"), "c": contrast(rows, "b", "c")}
    cost = study_report.Cost({"a": 1.0, "b": 2.0, "c": 8.0}, None)
    text = "\n".join(
        study_report.headline_lines(
            {"a": "a", "b": "a", "c": "b"}, summarise_contrasts(contrasts), cost
        )
    )
    assert text.index("Against `a`:") < text.index("| b | ") < text.index("Against `b`:")
    assert text.index("Against `b`:") < text.index("| c | ")
    assert "seconds per step |" not in text  # not measured: no column
    assert (
        "- **c** against b: samples as sharp (edge_sharpness 0 [0, 0]); speckle not settled "
        "(background_speckle 0 [0, 0]); as realistic (fid_samples 0 [0, 0], precision 0 "
        "[0, 0]); keeps coverage (recall 0 [0, 0], class_kl 0 [0, 0]); reconstructions as "
        "good (recon_mse 0 [0, 0]); at 4x the float operations per epoch."
    ) in text


# Which way is better in each measure the words judge, as the question has it: sharper edges,
# less speckle, lower FID, higher precision and recall, a class histogram nearer the test
# split's, a smaller reconstruction error.
HIGHER_IS_BETTER = {
    "edge_sharpness": True,
    "background_speckle": False,
    "fid_samples": False,
    "precision": True,
    "recall": True,
    "class_kl": False,
    "recon_mse": False,
}


@pytest.mark.parametrize("measure", HIGHER_IS_BETTER)
def test_each_verdict_reads_the_right_way_for_each_measure(measure):
    up = 1.0 if HIGHER_IS_BETTER[measure] else -1.0

    def row(verdict, difference=up, p_holm=0.01):
        return {
            "verdict": verdict.value,
            "difference": difference,
            "p_holm": p_holm,
            "interval": "+1 [+0.5, +1.5]",
        }

    cases = [
        (row(Verdict.DIFFERENT), "better", "**+1 [+0.5, +1.5]**"),
        (row(Verdict.DIFFERENT, -up), "worse", "**+1 [+0.5, +1.5]**"),
        (row(Verdict.DIFFERENT, p_holm=""), "open", "+1 [+0.5, +1.5] (no spread)"),
        (row(Verdict.NEGLIGIBLE), "same", "≈ +1 [+0.5, +1.5]"),
        (row(Verdict.EQUIVALENT), "same", "≈ +1 [+0.5, +1.5]"),
        (row(Verdict.NOT_SHOWN), "open", "+1 [+0.5, +1.5]"),
        (row(Verdict.NO_TEST, p_holm=""), "untested", "+1 [+0.5, +1.5]"),
    ]
    for summary_row, judgement, cell in cases:
        assert study_report.judged(summary_row, measure) == judgement, summary_row
        assert study_report.marked(summary_row) == cell, summary_row
    assert study_report.judged(None, measure) == "untested"


@pytest.mark.parametrize(
    ("judgements", "together"),
    [
        (["better", "worse"], "mixed"),
        (["worse", "same"], "worse"),
        (["worse", "open"], "worse"),
        (["better", "same"], "better"),
        (["better", "open"], "open"),
        (["same", "same"], "same"),
        (["same", "untested"], "open"),
        (["untested", "untested"], "untested"),
    ],
)
def test_an_aspect_of_several_measures_reads_them_together(judgements, together):
    assert study_report.together(judgements) == together


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"baseline": "nobody"}, "field 'baseline' = \"nobody\" must be one of the arms"),
        ({"seeds": [1, 1]}, "field 'seeds' = [1, 1] must be distinct seeds"),
        ({"objective": "beauty"}, "field 'objective' = \"beauty\" must be one of recon_mse"),
        ({"arms": []}, "must be one of the arms: "),
        ({"dataset": "cifar10"}, 'field \'dataset\' = "cifar10" must be one of "mnist", '),
    ],
)
def test_a_bad_study_file_is_one_line_naming_the_field(tmp_path, change, says):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({**json.loads(SMOKE.read_text()), **change}))
    result = run_main("study.py", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {path}: ")
    assert says in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_arm_whose_settings_train_py_would_refuse_stops_the_study_first(tmp_path):
    spec = json.loads(SMOKE.read_text())
    spec["arms"][1]["settings"] = ['loss.params.gan_loss="wgan"']
    path = tmp_path / "study.json"
    path.write_text(json.dumps(spec))
    result = run_main("study.py", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "arm 'both_adaptive_hinge'" in result.stderr
    assert "'loss.params.gan_loss' = \"wgan\" must be one of bce, hinge" in result.stderr


def test_a_dataset_goes_to_every_arm_and_a_mismatched_backbone_stops_the_study_first(tmp_path):
    """The study's dataset reaches each arm as train.py's data.dataset, before every other
    setting (an arm's own dataset wins); the smoke's composite arm keeps the MNIST PIPS backbone,
    which Fashion-MNIST runs refuse, so the study stops before its first run."""
    spec = config_from_dict(
        {**json.loads(SMOKE.read_text()), "dataset": "fashion_mnist"}, study_spec.StudySpec, "smoke"
    )
    spec.arms[0].dataset = "mnist"
    assert study_spec.arm_of(spec, "simple").settings == ('data.dataset="mnist"',)
    assert (
        study_spec.arm_of(spec, "both_adaptive_hinge").settings[0] == 'data.dataset="fashion_mnist"'
    )

    def fashion(spec):
        spec["dataset"] = "fashion_mnist"

    result = run_main("study.py", write_spec(tmp_path, fashion), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "arm 'both_adaptive_hinge': configs/model_composite_mnist_config.json: field " in (
        result.stderr
    )
    assert "is the PIPS backbone trained on MNIST, but the run trains on Fashion-MNIST" in (
        result.stderr
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["smoke", "pilot", "main", "fashion"])
def test_every_shipped_study_passes_its_checks(name):
    """Each arm's configs and settings as train.py checks them (load_study), before any run."""
    spec = study_spec.load_study(str(REPO / "studies" / f"{name}.json"))
    assert spec.name == name and spec.baseline in [a.name for a in spec.arms]
    if name == "fashion":
        assert spec.dataset == "fashion_mnist"
        assert all(
            a.model_config.endswith(("simple_config.json", "fashion_mnist_config.json"))
            for a in spec.arms
        )


def test_without_optuna_the_study_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(UserError, match=r"study.py needs Optuna: pip install optuna"):
        study.import_optuna()


def test_a_study_killed_interrupted_or_terminated_mid_run_continues_that_run(tmp_path):
    """Each way study.py can be stopped mid-run, signalled alone (its pid, not its group), and
    the next call continues the run from its checkpoint:
    - kill -9: its train.py, in a session of its own, gets a SIGINT as the runner dies,
      checkpoints and stops; the trial stays "running" in the storage, and the next call
      retries it once its heartbeat has been silent for the grace period;
    - SIGINT (`kill -INT PID`, before this a stop that waited for the run to end): train.py
      checkpoints and stops, and the study stops in one line with 130;
    - SIGINT to its process group, as Ctrl-C at a terminal: the same;
    - SIGTERM: the same, with 143.
    The last call finishes the run, each epoch trained once."""
    spec = json.loads(SMOKE.read_text())
    spec["epochs"] = 24  # one step an epoch: long enough to be stopped four times mid-run
    spec["arms"] = [{**spec["arms"][0], "settings": ["save_every=1"]}]
    del spec["search"]  # it names the arm left out
    path = tmp_path / "study.json"
    path.write_text(json.dumps(spec))
    mnist = make_mnist_root(tmp_path / "mnist", n_train=256, n_test=128)
    out, run = tmp_path / "out", tmp_path / "out" / "runs" / "simple_seed1"
    argv = [
        sys.executable,
        str(REPO / "study.py"),
        str(path),
        "--data_root",
        str(mnist),
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    env = {**os.environ, "STUDY_GRACE_PERIOD": "2"}
    interrupted = run / "checkpoint_interrupted.pth"

    def last_epoch() -> int:
        return max(
            (int(p.stem.rsplit("_", 1)[1]) for p in run.glob("checkpoint_epoch_*.pth")), default=0
        )

    def start_and_wait_for_an_epoch() -> subprocess.Popen:
        """study.py started, once its train.py has checkpointed an epoch more than before."""
        before = last_epoch()
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while last_epoch() <= before:
            assert time.monotonic() < deadline, f"no checkpoint after epoch {before} in 120 s"
            time.sleep(0.02)
        return proc

    first = start_and_wait_for_an_epoch()
    trainer = int((run / ".train.lock").read_text())
    # in study.py's session (and CPU autogroup, which nice covers), not its process group
    assert os.getsid(trainer) == os.getsid(first.pid)
    assert os.getpgid(trainer) not in (os.getpgid(first.pid), first.pid)
    first.kill()
    first.wait()
    with open(run / ".train.lock") as lock:  # released when its train.py has ended
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "train.py went on after its runner's kill -9"
                time.sleep(0.02)
    assert interrupted.is_file() and not (run / "final_model.pth").exists()

    time.sleep(2.5)  # the killed trial's heartbeat is now older than the grace period
    ctrl_c = "error: interrupted (Ctrl-C); no file was left half-written\n"
    for send, signum, code, line in (
        (os.kill, signal.SIGINT, 130, ctrl_c),  # study.py alone
        (os.killpg, signal.SIGINT, 130, ctrl_c),  # its process group, as a terminal's Ctrl-C
        (
            os.kill,
            signal.SIGTERM,
            143,
            "error: stopped by SIGTERM; no file was left half-written\n",
        ),
    ):
        stopped_before = interrupted.stat().st_mtime_ns if interrupted.exists() else None
        proc = start_and_wait_for_an_epoch()
        send(proc.pid, signum)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == code, stderr
        assert stderr.endswith(line)
        # train.py checkpointed and stopped (it removes an older interrupt checkpoint on its
        # next epoch checkpoint): this one is new
        assert interrupted.stat().st_mtime_ns != stopped_before
        assert not (run / "final_model.pth").exists()

    again = run_script(*argv[1:], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "resuming " in again.stdout
    with open(run / "metrics.csv") as f:
        epochs = [row["epoch"] for row in csv.DictReader(f)]
    assert epochs == [str(e) for e in range(1, 25)]  # each epoch once: continued, not redone
    with open(out / "runs.csv") as f:
        assert [(r["arm"], r["epochs"]) for r in csv.DictReader(f)] == [("simple", "24")]


def write_spec(tmp_path, change) -> str:
    """The smoke study changed by `change(spec)`, written to a file; its path."""
    spec = json.loads(SMOKE.read_text())
    change(spec)
    path = tmp_path / "study.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_a_search_range_train_py_would_refuse_stops_the_study_first(tmp_path):
    def negative_low(spec):
        spec["search"]["params"][0].update(low=-5, log=False)

    result = run_main("study.py", write_spec(tmp_path, negative_low), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "search.params at their low ends" in result.stderr
    assert "'loss.params.lambda_pips' = -5.0 must be >= 0" in result.stderr


def test_an_unknown_scheme_is_one_line(tmp_path):
    def gan(spec):
        spec["arms"][1]["scheme"] = "gan"

    result = run_main("study.py", write_spec(tmp_path, gan), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "field 'arms[1].scheme' = \"gan\" must be one of simple, composite" in result.stderr


@pytest.mark.parametrize(
    ("flags", "env", "says"),
    [
        (["--storage", "nosuchdb://x"], {}, "--storage nosuchdb://x: cannot open it ("),
        ([], {"STUDY_GRACE_PERIOD": "soon"}, "STUDY_GRACE_PERIOD='soon': must be a whole number"),
        ([], {"STUDY_GRACE_PERIOD": "1"}, "STUDY_GRACE_PERIOD='1': must be a whole number"),
    ],
)
def test_a_bad_storage_or_grace_period_is_one_line(tmp_path, monkeypatch, flags, env, says):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_main("study.py", str(SMOKE), "--out", str(tmp_path / "o"), *flags)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {says}")


@pytest.mark.parametrize("workers", [2, 4])
def test_each_queued_run_is_claimed_by_one_worker_only(tmp_path, workers):
    """Workers sharing one SQLite study each take a queued run no other worker has taken.
    Without lock_each_transaction, two of them sometimes took the same one, and Optuna's tell of the
    second failed ("Cannot tell a COMPLETE trial")."""
    optuna, runs = study.import_optuna(), 60
    url = f"sqlite:///{tmp_path / 'study.db'}"
    shared = study.open_study(optuna, "claims", url, optuna.samplers.RandomSampler(seed=0))
    for number in range(runs):
        shared.enqueue_trial({}, user_attrs={"run": number})
    ran = []

    def objective(trial) -> float:
        if "run" not in trial.user_attrs:  # the queue emptied under us, as in run_grid
            raise optuna.TrialPruned()
        ran.append(trial.user_attrs["run"])
        time.sleep(0.002)  # long enough for the other workers to ask meanwhile
        return 0.0

    def more() -> bool:
        waiting = optuna.trial.TrialState.WAITING
        return bool(shared.get_trials(deepcopy=False, states=(waiting,)))

    study.run_workers(shared, objective, workers, more)
    assert sorted(ran) == list(range(runs))
    queued = [t for t in shared.get_trials(deepcopy=False) if "run" in t.user_attrs]
    assert {t.state for t in queued} == {optuna.trial.TrialState.COMPLETE}


def test_a_run_that_fails_is_named_and_the_study_ends_in_one_line(tmp_path):
    """A batch larger than the subset passes the config checks but train.py refuses it: the
    run's failure is one line, the others' go on, and the study ends naming what is missing."""

    def big_batch(spec):
        spec["arms"][1]["settings"] = ["data.train_bs=256"]  # more than the 128 images
        del spec["search"]

    mnist = make_mnist_root(tmp_path / "mnist", n_train=256, n_test=128)
    result = run_script(
        str(REPO / "study.py"),
        write_spec(tmp_path, big_batch),
        "--data_root",
        str(mnist),
        "--out",
        str(tmp_path / "o"),
        "--threads",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # train.py's own line, then the study's naming the run, then the study's last word
    assert errors[0] == (
        "error: --subset 128: must be between train_bs (256) and the 256 training images"
    )
    assert errors[1].startswith("error: arm 'both_adaptive_hinge', seed 1: train.py ")
    assert errors[-1].startswith("error: 1 of 2 runs did not finish (both_adaptive_hinge/seed 1)")
    assert "Traceback" not in result.stderr
    assert (tmp_path / "o/runs/simple_seed1/eval.json").is_file()  # the other run went on


def test_an_edited_arm_is_a_new_run_and_its_old_folder_is_refused(smoke, tmp_path):
    root, argv, first = smoke
    assert first.returncode == 0, first.stderr

    def two_epochs(spec):
        spec["epochs"] = 2

    edited = [write_spec(tmp_path, two_epochs), *argv[1:]]
    result = run_script(str(REPO / "study.py"), *edited, cwd=root)
    assert result.returncode == 2
    assert (
        "runs/simple_seed1: was made with epochs = 1, not 2; give the changed arm a new "
        "name, or use another --out" in result.stderr
    )


def test_the_studys_settings_come_before_each_arms_own(tmp_path):
    def scaled_warmup(spec):
        spec["settings"] = ["loss.params.warmup_epochs=0.25"]
        spec["arms"][1]["settings"].append("loss.params.warmup_epochs=0.5")

    spec = study_spec.load_study(write_spec(tmp_path, scaled_warmup))
    simple, composite = (study_spec.arm_of(spec, a.name) for a in spec.arms)
    assert simple.settings == ("loss.params.warmup_epochs=0.25",)
    assert composite.settings[0] == "loss.params.warmup_epochs=0.25"
    assert composite.settings[-1] == "loss.params.warmup_epochs=0.5"  # the arm's own wins

    def bad_common(spec):
        spec["settings"] = ["loss.params.warmup_epochs=-1"]

    result = run_main("study.py", write_spec(tmp_path, bad_common), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "'loss.params.warmup_epochs' = -1" in result.stderr
