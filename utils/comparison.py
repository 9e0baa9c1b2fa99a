"""What compare_schemes.py and study.py share: an arm (a scheme, its two config files and --set
changes), one graded run of an arm (a real train.py process, then evaluate.py), and the paired
summary of one arm against a baseline over the seeds both ran.

A run folder is kept once finished (final_model.pth) and continued with `--resume auto` when it
holds checkpoints; a graded one (eval.json) is not graded again. Each run's peak memory is its
train.py process's maximum resident set.
"""

import contextlib
import csv
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.cli import RUNNER_PIPE
from utils.errors import Terminated, UserError
from utils.outputs import write_output
from utils.stats import (
    PairedDifference,
    describe,
    equivalence,
    holm,
    interval_text,
    paired_difference,
)

REPO = Path(__file__).resolve().parent.parent
# The grades a run is compared by, in table order: evaluate.py's, then the cost.
MEASURES = (
    "recon_mse",
    "rate_kl",
    "fid_samples",
    "fid_recon",
    "precision",
    "recall",
    "class_kl",
    "edge_sharpness",
    "background_speckle",
    "sharpness_ratio",
    "recon_accuracy",
    "grid_confident_share",
    "grid_classes",
    "seconds_per_epoch",
    "peak_rss_mb",
)
# The smallest differences that would matter, arm minus baseline, in each measure's units:
# "equivalent" needs the 90 % interval inside ±delta (utils/stats.equivalence). About 3 % of a
# 40-epoch recon_mse; FID moves by more than 10 between seeds; a tenth of the sharpness ratio's
# 0.05-0.07; 2 points of accuracy; about one cell in 16 of the grid; one digit; 5 % of real
# digits' edge sharpness; 5 points of precision or recall; 0.05 nats of class histogram; half a
# nat of rate. Cost has none: nobody asks whether one arm is as fast as another.
SMALLEST_EFFECTS = {
    "recon_mse": 1.0,
    "fid_samples": 10.0,
    "fid_recon": 10.0,
    "sharpness_ratio": 0.01,
    "recon_accuracy": 0.02,
    "grid_confident_share": 0.05,
    "grid_classes": 1.0,
    "edge_sharpness": 0.05,
    "precision": 0.05,
    "recall": 0.05,
    "class_kl": 0.05,
    "rate_kl": 0.5,
}
# What the composite loss logs about its balance (metrics.csv's train_ columns): a run's row
# carries the last epoch's, where its run logged them.
DIAGNOSTICS = ("disc_weight", "grad_ratio_pips", "grad_ratio_adv")
SUMMARY_FIELDS = (
    "measure",
    "n",
    "baseline_mean",
    "arm_mean",
    "difference",
    "ci_low",
    "ci_high",
    "d_z",
    "p",
    "p_holm",
    "verdict",
    "smallest_effect",
)


@dataclass(frozen=True)
class Arm:
    """One way to train: `scheme` with its model and training config files (relative to the
    repo, or absolute) and train.py --set changes ("KEY=VALUE", VALUE JSON)."""

    name: str
    scheme: str
    model_config: str
    train_config: str
    settings: tuple[str, ...] = field(default=())

    def config_paths(self) -> tuple[Path, Path]:
        return REPO / self.model_config, REPO / self.train_config


@dataclass(frozen=True)
class Budget:
    """What every run of a comparison shares: epochs, training images (None: all) and data."""

    data_root: str
    epochs: int
    subset: int | None = None
    num_samples: int | None = None


# The stop lines of the entry scripts run_process has running (this process's end of each
# one's pipe), and whether a stop signal has come (after which run_process starts none).
RUNNING: set[io.FileIO] = set()
STOPPING = threading.Event()
# The scripts' own process group, in this process's session: a Ctrl-C at the terminal (which
# signals the foreground group) reaches them only through this process, while the CPU share
# that `nice` gives this session's autogroup covers them. Python 3.10 lacks process_group: a
# session of its own there (and its own autogroup).
OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}


def forward_stop_signals() -> None:
    """From now on each SIGINT or SIGTERM this process gets reaches the scripts it runs as one
    stop, a SIGINT (utils/cli.stop_with_runner): train.py checkpoints and stops, a second stop
    stops it at once, and a later call continues the run. The scripts run in their own process
    group (run_process), so Ctrl-C at the terminal, `kill -INT PID`, `kill PID` and a signal to
    this process's group all reach them this one way. This process starts no more scripts,
    waits for the running ones to stop, and stops as on Ctrl-C: exit code 130, or 143 on
    SIGTERM (utils/cli.run_cli)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _forward_stop)


def _forward_stop(signum: int, frame: Any) -> None:
    STOPPING.set()
    for line in list(RUNNING):
        _stop(line)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _stop(line: io.FileIO) -> None:
    """One stop down a script's stop line: one byte."""
    with contextlib.suppress(OSError, ValueError):  # the script has ended; the line is closed
        line.write(b"\0")


def run_process(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run one of the repo's entry scripts; returns (wall seconds, peak resident memory in MB).
    The script runs in its own process group and takes its stops from this process, down the
    pipe named in its RUNNER_PIPE: one byte a stop, and the pipe closing, when this process
    ends however it ends (kill -9 included), is one more if none came (utils/cli). A script
    stopped that way raises KeyboardInterrupt once it has ended, so that its checkpoint is
    whole before this process goes on to stop."""
    if STOPPING.is_set():
        raise KeyboardInterrupt
    started = time.perf_counter()
    script_end, our_end = os.pipe()
    line = open(our_end, "wb", buffering=0)  # noqa: SIM115 (closed once the script has ended)
    env = {**(os.environ if env is None else env), RUNNER_PIPE: str(script_end)}
    try:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / args[0]), *args[1:]],
            env=env,
            pass_fds=(script_end,),
            **OWN_GROUP,
        )
    except BaseException:
        line.close()
        raise
    finally:
        os.close(script_end)
    RUNNING.add(line)
    if STOPPING.is_set():  # a stop signal came between the check above and RUNNING.add
        _stop(line)
    try:
        _, status, usage = _wait_for(proc)
    finally:
        RUNNING.discard(line)
        line.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        raise KeyboardInterrupt
    if proc.returncode != 0:
        raise UserError(f"{' '.join(args[:3])} ... exited {proc.returncode}; see its output above")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def _wait_for(proc: subprocess.Popen) -> tuple[int, int, Any]:
    """os.wait4 of `proc`; when this process is interrupted meanwhile (in its main thread), the
    wait goes on until the script has stopped too, then the interruption goes on."""
    try:
        return os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        os.wait4(proc.pid, 0)
        raise


def is_graded(run: Path) -> bool:
    """Whether run folder `run` holds its grades (eval.json): it is then kept as it is, never
    trained or graded again, also without its checkpoints (a run committed without them)."""
    return (run / "eval.json").exists()


def train_and_grade(
    arm: Arm, seed: int, budget: Budget, run: Path, env: dict[str, str] | None = None
) -> dict:
    """One run of `arm` with `seed` into `run` (kept if finished), graded by evaluate.py: a row
    of the arm, seed, epochs, cost and every measure evaluate.py gave. The folder records how
    it was made (recipe.json); a folder made otherwise (another arm's settings, budget or seed,
    from an edited study file) is refused rather than reused. A graded run is kept as it is
    (is_graded)."""
    check_recipe(run, arm, seed, budget)
    model_config, train_config = arm.config_paths()
    cost = run / "cost.json"
    if not (run / "final_model.pth").exists() and not is_graded(run):
        command = [
            "train.py",
            "--scheme",
            arm.scheme,
            "--model_config",
            str(model_config),
            "--train_config",
            str(train_config),
            "--data_root",
            budget.data_root,
            "--save_dir",
            str(run),
            "--epochs",
            str(budget.epochs),
            "--seed",
            str(seed),
        ]
        for setting in arm.settings:
            command += ["--set", setting]
        if budget.subset:
            command += ["--subset", str(budget.subset)]
        if list(run.glob("checkpoint_*.pth")):
            command += ["--resume", "auto"]
        _, peak_mb = run_process(command, env)
        before = json.loads(cost.read_text())["peak_rss_mb"] if cost.exists() else 0.0
        write_json(cost, {"peak_rss_mb": max(before, peak_mb)})
    if not is_graded(run):
        command = [
            "evaluate.py",
            "--model_config",
            str(run / "model_config.json"),
            "--ckpt_path",
            str(run / "final_model.pth"),
            "--data_root",
            budget.data_root,
            "--out",
            str(run / "eval.json"),
        ]
        if budget.num_samples:
            command += ["--num_samples", str(budget.num_samples)]
        run_process(command, env)
    grades = json.loads((run / "eval.json").read_text())
    with open(run / "metrics.csv") as f:
        epochs = list(csv.DictReader(f))
    last = epochs[-1]
    return {
        "arm": arm.name,
        "scheme": arm.scheme,
        "seed": seed,
        "epochs": len(epochs),
        "seconds_per_epoch": statistics.median(float(e["seconds"]) for e in epochs),
        "peak_rss_mb": json.loads(cost.read_text())["peak_rss_mb"],
        **{k: grades[k] for k in MEASURES if k in grades},
        **{
            k: float(last[f"train_{k}"])
            for k in DIAGNOSTICS
            if last.get(f"train_{k}") not in (None, "")
        },
    }


def recipe_of(arm: Arm, seed: int, budget: Budget) -> dict:
    """Everything that makes a run what it is (its folder's name aside)."""
    return {
        "scheme": arm.scheme,
        "model_config": arm.model_config,
        "train_config": arm.train_config,
        "settings": list(arm.settings),
        "seed": seed,
        "epochs": budget.epochs,
        "subset": budget.subset,
        "num_samples": budget.num_samples,
    }


def check_recipe(run: Path, arm: Arm, seed: int, budget: Budget) -> None:
    """Record in `run` how its run is made, or refuse the folder if it records another way."""
    recipe = recipe_of(arm, seed, budget)
    path = run / "recipe.json"
    if path.exists():
        saved = json.loads(path.read_text())
        changed = [k for k in recipe if saved.get(k) != recipe[k]]
        if changed:
            raise UserError(
                f"{run}: was made with {changed[0]} = {json.dumps(saved.get(changed[0]))}, not "
                f"{json.dumps(recipe[changed[0]])}; give the changed arm a new name, or use "
                "another --out"
            )
        return
    if (run / "final_model.pth").exists() or list(run.glob("checkpoint_*.pth")):
        return  # a run folder from before recipes: taken as it is
    run.mkdir(parents=True, exist_ok=True)
    write_json(path, recipe)


def write_json(path: Path, value: Any) -> None:
    write_output(path, (json.dumps(value, indent=1) + "\n").encode(), "--out")


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...] | None = None) -> None:
    """`rows` under `fields` (default: every key of any row, in order of first appearance; a
    row without one leaves its cell empty), written whole or not at all."""
    fields = fields or tuple(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_output(path, text.getvalue().encode(), "--out")


def contrast(rows: list[dict], baseline: str, arm: str, key: str = "arm") -> list[tuple]:
    """Per measure, (measure, baseline values, arm values, their paired difference) over the
    seeds both ran, `key` the rows' column naming the arms. A runs.csv written before a measure
    existed has no column for it: that measure is left out (and out of Holm's family)."""
    measures = [m for m in MEASURES if all(r.get(m) not in (None, "") for r in rows)]
    out = []
    for measure in measures:
        by_seed = {
            name: {r["seed"]: float(r[measure]) for r in rows if r[key] == name}
            for name in (baseline, arm)
        }
        seeds = [seed for seed in by_seed[baseline] if seed in by_seed[arm]]
        base, other = ([by_seed[name][seed] for seed in seeds] for name in (baseline, arm))
        out.append((measure, base, other, paired_difference(base, other)))
    return out


def summarise_contrasts(
    contrasts: dict[str, list[tuple]], smallest_effects: dict[str, float] | None = None
) -> dict[str, list[dict]]:
    """Each contrast's rows (SUMMARY_FIELDS, plus `text`, the difference as utils/stats.describe
    writes it, `interval`, as interval_text writes it, and `sentence`, the verdict's), with
    Holm's correction taken across the measures of each contrast: an arm against its baseline
    is one question, asked in every measure at once, so each arm's verdicts hold at 5 %
    together (all arms' at once do not). (One family for a whole study would ask
    more than a few seeds can give: at 3 seeds the t-test has 2 degrees of freedom, and Holm
    over the main study's 90 tests (6 comparisons x 15 measures) wants the strongest effect 24
    times its seeds' SD before anything counts.)"""
    effects = SMALLEST_EFFECTS if smallest_effects is None else smallest_effects
    summaries: dict[str, list[dict]] = {name: [] for name in contrasts}
    for name, family in contrasts.items():
        p_holm = holm([d.p for *_, d in family])
        for (measure, base, other, d), adjusted in zip(family, p_holm, strict=True):
            summaries[name].append(_summary_row(measure, base, other, d, adjusted, effects))
    return summaries


def _summary_row(
    measure: str,
    base: list[float],
    other: list[float],
    d: PairedDifference,
    adjusted: float | None,
    effects: dict[str, float],
) -> dict:
    """One measure's row of a contrast's summary (see summarise_contrasts)."""
    verdict = equivalence(d, effects.get(measure), adjusted)
    return {
        "measure": measure,
        "n": d.n,
        "baseline_mean": statistics.fmean(base),
        "arm_mean": statistics.fmean(other),
        "difference": d.mean,
        "ci_low": d.ci[0] if d.ci else "",
        "ci_high": d.ci[1] if d.ci else "",
        "d_z": "" if d.d_z is None else d.d_z,
        "p": "" if d.p is None else d.p,
        "p_holm": "" if adjusted is None else adjusted,
        "verdict": verdict.verdict.value,
        "smallest_effect": effects.get(measure, ""),
        "text": describe(d),
        "interval": interval_text(d),
        "sentence": verdict.sentence,
    }


def summarise(
    rows: list[dict],
    baseline: str,
    arm: str,
    key: str = "arm",
    smallest_effects: dict[str, float] | None = None,
) -> list[dict]:
    """Per measure, `arm` minus `baseline` paired by seed, Holm's correction across the
    measures (summarise_contrasts with this one contrast)."""
    contrasts = {arm: contrast(rows, baseline, arm, key)}
    return summarise_contrasts(contrasts, smallest_effects)[arm]


def markdown_table(summary: list[dict], baseline: str, arm: str) -> str:
    """The summary as a Markdown table: a row per measure, both arms' means, the paired
    difference as describe() writes it, p before and after Holm's correction, the verdict."""
    header = (
        "measure",
        baseline,
        arm,
        f"{arm} − {baseline} [95 % CI]",
        "p",
        "p (Holm)",
        "verdict",
    )
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " --- |" * (len(header) - 1)]
    for r in summary:
        ps = " | ".join("—" if r[k] == "" else f"{r[k]:.2g}" for k in ("p", "p_holm"))
        lines.append(
            f"| {r['measure']} | {r['baseline_mean']:.4g} | {r['arm_mean']:.4g} | "
            f"{r['text']} | {ps} | {r['sentence']} |"
        )
    return "\n".join(lines) + "\n"


def read_runs(path: Path, key: str) -> list[dict]:
    """The rows of a runs.csv a comparison wrote."""
    if not path.is_file():
        raise UserError(f"{path}: no runs.csv to summarise; run the comparison first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {key, "seed"} <= rows[0].keys():
        raise UserError(f"{path}: holds no runs (no {key} and seed columns)")
    return rows
