r"""Answer the reference's question with numbers: train both schemes with the same seeds and
epochs, grade every run with evaluate.py, and write the comparison to results/.

    python compare_schemes.py --data_root data/ --seeds 1 2 3 --epochs 40
    python compare_schemes.py --data_root data/ --seeds 1 --epochs 2 --subset 4096 \
        --out results/quick
    python compare_schemes.py --seeds 1 2 3 4 5 --equivalence fid_samples=20 \
        --equivalence grid_classes=2

The composite scheme uses the MNIST perceptual backbone (configs/model_composite_mnist_config.json)
so that it trains offline on a CPU. Each run is a real `train.py` process; its peak memory is the
process's maximum resident set. The comparison is resumable: a finished run is kept, an
interrupted one continues with `--resume auto`. It runs from any folder: the networks it needs
(checkpoints/mnist_pips_cnn.pth, checkpoints/mnist_eval_net.pth) are taken from, or made in, the
current folder. Writes into --out:
    runs/<scheme>_seed<S>/   the run folders (metrics.csv, checkpoints, eval.json)
    runs.csv                 one row per run: cost and every evaluate.py number
    summary.csv              per measure, composite minus simple over the shared seeds: both
                             means, the difference with its 95 % t-interval, d_z, p, p after
                             Holm's correction across the measures, and a verdict
    summary.md               the same as a Markdown table (the one README "Results" quotes)
    compare_seed<S>.png      latent grids and reconstructions, simple vs composite (first seed)
    <scheme>_samples.png     prior samples of each scheme (first seed)
"""

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from utils.cli import OneLineParser, run_cli
from utils.errors import UserError
from utils.stats import describe, equivalence, holm, paired_difference

REPO = Path(__file__).resolve().parent
CONFIGS = {
    "simple": (
        REPO / "configs/model_simple_config.json",
        REPO / "configs/train_simple_config.json",
    ),
    "composite": (
        REPO / "configs/model_composite_mnist_config.json",
        REPO / "configs/train_composite_config.json",
    ),
}
MEASURES = ("recon_mse", "rate_kl", "fid_samples", "fid_recon", "precision", "recall", "class_kl",
            "edge_sharpness", "background_speckle", "sharpness_ratio", "recon_accuracy",
            "grid_confident_share", "grid_classes", "seconds_per_epoch", "peak_rss_mb")  # fmt: skip
# The smallest differences that would matter, composite minus simple, in each measure's units:
# "equivalent" needs the 90 % interval inside ±delta (utils/stats.equivalence). About 3 % of a
# 40-epoch recon_mse; FID moves by more than 10 between seeds; a tenth of the sharpness ratio's
# 0.05-0.07; 2 points of accuracy; about one cell in 16 of the grid; one digit. Cost has none:
# nobody asks whether one scheme is as fast as the other.
SMALLEST_EFFECTS = {
    "recon_mse": 1.0,
    "fid_samples": 10.0,
    "fid_recon": 10.0,
    "sharpness_ratio": 0.01,
    "recon_accuracy": 0.02,
    "grid_confident_share": 0.05,
    "grid_classes": 1.0,
    # The grades evaluate.py added later (runs.csv files from before them lack these columns,
    # and their summaries leave them out): 5 % of real digits' edge sharpness; 5 points of
    # precision or recall; 0.05 nats of class histogram; half a nat of rate.
    "edge_sharpness": 0.05,
    "precision": 0.05,
    "recall": 0.05,
    "class_kl": 0.05,
    "rate_kl": 0.5,
}
SUMMARY_FIELDS = (
    "measure",
    "n",
    "simple_mean",
    "composite_mean",
    "difference",
    "ci_low",
    "ci_high",
    "d_z",
    "p",
    "p_holm",
    "verdict",
    "smallest_effect",
)


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default="data/", help="folder holding MNIST/raw/")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (default 1 2 3)")
    p.add_argument("--epochs", type=int, default=40, help="epochs per run (default 40)")
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--out", default="results", help="output folder (default results/)")
    p.add_argument(
        "--summarise_only",
        action="store_true",
        help="train nothing: summarise --out's runs.csv again (summary.csv, summary.md)",
    )
    p.add_argument(
        "--equivalence",
        action="append",
        default=[],
        type=smallest_effect,
        metavar="MEASURE=DELTA",
        help=f"the smallest difference in MEASURE that matters (repeatable; defaults: "
        f"{', '.join(f'{k}={v:g}' for k, v in SMALLEST_EFFECTS.items())})",
    )
    return p.parse_args()


def smallest_effect(text: str) -> tuple[str, float]:
    """'fid_samples=20' -> ('fid_samples', 20.0): a known measure and a delta > 0."""
    measure, _, delta = text.partition("=")
    if measure not in MEASURES:
        raise argparse.ArgumentTypeError(f"{measure!r} is none of {', '.join(MEASURES)}")
    try:
        value = float(delta)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: DELTA must be a number > 0")
    return measure, value


def run_process(args: list[str]) -> tuple[float, float]:
    """Run one of the repo's entry scripts; returns (wall seconds, peak resident memory in MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / args[0]), *args[1:]])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise UserError(f"{' '.join(args[:3])} ... exited {proc.returncode}; see its output above")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def train_and_grade(scheme: str, seed: int, args: argparse.Namespace, run: Path) -> dict:
    """One run of `scheme` with `seed` into `run` (kept if finished), graded by evaluate.py."""
    model_config, train_config = CONFIGS[scheme]
    cost = run / "cost.json"
    if not (run / "final_model.pth").exists():
        command = ["train.py", "--scheme", scheme, "--model_config", str(model_config),
                   "--train_config", str(train_config), "--data_root", args.data_root,
                   "--save_dir", str(run), "--epochs", str(args.epochs),
                   "--seed", str(seed)]  # fmt: skip
        if args.subset:
            command += ["--subset", str(args.subset)]
        if list(run.glob("checkpoint_*.pth")):
            command += ["--resume", "auto"]
        _, peak_mb = run_process(command)
        before = json.loads(cost.read_text())["peak_rss_mb"] if cost.exists() else 0.0
        cost.write_text(json.dumps({"peak_rss_mb": max(before, peak_mb)}) + "\n")
    if not (run / "eval.json").exists():
        run_process(["evaluate.py", "--model_config", str(run / "model_config.json"),
                     "--ckpt_path", str(run / "final_model.pth"), "--data_root", args.data_root,
                     "--out", str(run / "eval.json")])  # fmt: skip
    grades = json.loads((run / "eval.json").read_text())
    with open(run / "metrics.csv") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    return {"scheme": scheme, "seed": seed, "epochs": len(seconds),
            "seconds_per_epoch": statistics.median(seconds),
            "peak_rss_mb": json.loads(cost.read_text())["peak_rss_mb"],
            **{k: grades[k] for k in MEASURES if k in grades}}  # fmt: skip


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...] | None = None) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def summarise(rows: list[dict], smallest_effects: dict[str, float] | None = None) -> list[dict]:
    """Per measure, composite minus simple over the seeds both schemes ran (paired by seed): the
    SUMMARY_FIELDS, Holm's correction taken across the measures, plus `text` (the difference as
    utils/stats.describe writes it) and `sentence` (the verdict's)."""
    effects = SMALLEST_EFFECTS if smallest_effects is None else smallest_effects
    # A runs.csv written before a measure existed has no column for it: that measure is left
    # out (and out of Holm's family).
    measures = [m for m in MEASURES if all(r.get(m) not in (None, "") for r in rows)]
    arms, differences = [], []
    for measure in measures:
        by_seed = {
            s: {r["seed"]: float(r[measure]) for r in rows if r["scheme"] == s} for s in CONFIGS
        }
        seeds = [seed for seed in by_seed["simple"] if seed in by_seed["composite"]]
        arms.append([[by_seed[s][seed] for seed in seeds] for s in CONFIGS])
        differences.append(paired_difference(*arms[-1]))
    summary = []
    p_holm = holm([d.p for d in differences])
    for measure, (simple, composite), d, adjusted in zip(
        measures, arms, differences, p_holm, strict=True
    ):
        verdict = equivalence(d, effects.get(measure), adjusted)
        summary.append(
            {
                "measure": measure,
                "n": d.n,
                "simple_mean": statistics.fmean(simple),
                "composite_mean": statistics.fmean(composite),
                "difference": d.mean,
                "ci_low": d.ci[0] if d.ci else "",
                "ci_high": d.ci[1] if d.ci else "",
                "d_z": "" if d.d_z is None else d.d_z,
                "p": "" if d.p is None else d.p,
                "p_holm": "" if adjusted is None else adjusted,
                "verdict": verdict.verdict.value,
                "smallest_effect": effects.get(measure, ""),
                "text": describe(d),
                "sentence": verdict.sentence,
            }
        )
    return summary


def markdown_table(summary: list[dict]) -> str:
    """The summary as a Markdown table: a row per measure, both schemes' means, the paired
    difference as describe() writes it, p before and after Holm's correction, the verdict."""
    header = (
        "measure",
        "simple",
        "composite",
        "composite − simple [95 % CI]",
        "p",
        "p (Holm)",
        "verdict",
    )
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " --- |" * (len(header) - 1)]
    for r in summary:
        ps = " | ".join("—" if r[k] == "" else f"{r[k]:.2g}" for k in ("p", "p_holm"))
        lines.append(
            f"| {r['measure']} | {r['simple_mean']:.4g} | {r['composite_mean']:.4g} | "
            f"{r['text']} | {ps} | {r['sentence']} |"
        )
    return "\n".join(lines) + "\n"


def read_runs(path: Path) -> list[dict]:
    """The rows of a runs.csv this script wrote (for --summarise_only)."""
    if not path.is_file():
        raise UserError(f"{path}: no runs.csv to summarise; run the comparison first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"scheme", "seed"} <= rows[0].keys():
        raise UserError(f"{path}: holds no runs (no scheme and seed columns)")
    return rows


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    if args.summarise_only:
        rows = read_runs(out / "runs.csv")
    else:
        rows = [train_and_grade(scheme, seed, args, out / "runs" / f"{scheme}_seed{seed}")
                for seed in args.seeds for scheme in CONFIGS]  # fmt: skip
        write_csv(out / "runs.csv", rows)
    summary = summarise(rows, {**SMALLEST_EFFECTS, **dict(args.equivalence)})
    write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
    (out / "summary.md").write_text(markdown_table(summary))
    if args.summarise_only:
        print(markdown_table(summary), end="")
        return
    first = {scheme: out / "runs" / f"{scheme}_seed{args.seeds[0]}" for scheme in CONFIGS}
    run_process(["infer.py", "--mode", "compare",
                 "--model_config", str(first["simple"] / "model_config.json"),
                 "--ckpt_path", str(first["simple"] / "final_model.pth"),
                 "--model_config_b", str(first["composite"] / "model_config.json"),
                 "--ckpt_path_b", str(first["composite"] / "final_model.pth"),
                 "--data_root", args.data_root,
                 "--save_path", str(out / f"compare_seed{args.seeds[0]}.png")])  # fmt: skip
    for scheme, run in first.items():
        run_process(["infer.py", "--mode", "samples", "--model_config",
                     str(run / "model_config.json"), "--ckpt_path", str(run / "final_model.pth"),
                     "--save_path", str(out / f"{scheme}_samples.png")])  # fmt: skip
    print(markdown_table(summary), end="")
    print(f"-> {out / 'runs.csv'}, {out / 'summary.csv'}, {out / 'summary.md'}, figures in {out}")


if __name__ == "__main__":
    run_cli(main)
