r"""Answer the reference's question with numbers: train both schemes with the same seeds and
epochs, grade every run with evaluate.py, and write the comparison to results/.

    python compare_schemes.py --data_root data/ --seeds 1 2 3 --epochs 40
    python compare_schemes.py --data_root data/ --seeds 1 --epochs 2 --subset 4096 \
        --out results/quick

The composite scheme uses the MNIST perceptual backbone (configs/model_composite_mnist_config.json)
so that it trains offline on a CPU. Each run is a real `train.py` process; its peak memory is the
process's maximum resident set. The comparison is resumable: a finished run is kept, an
interrupted one continues with `--resume auto`. It runs from any folder: the networks it needs
(checkpoints/mnist_pips_cnn.pth, checkpoints/mnist_eval_net.pth) are taken from, or made in, the
current folder. Writes into --out:
    runs/<scheme>_seed<S>/   the run folders (metrics.csv, checkpoints, eval.json)
    runs.csv                 one row per run: cost and every evaluate.py number
    summary.csv              mean and standard deviation per scheme over the seeds
    summary.md               the same as a Markdown table (the one README "Results" quotes)
    compare_seed<S>.png      latent grids and reconstructions, simple vs composite (first seed)
    <scheme>_samples.png     prior samples of each scheme (first seed)
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from utils.cli import OneLineParser, run_cli
from utils.errors import UserError

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
MEASURES = ("recon_mse", "fid_samples", "fid_recon", "sharpness_ratio", "recon_accuracy",
            "grid_confident_share", "grid_classes", "seconds_per_epoch", "peak_rss_mb")  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default="data/", help="folder holding MNIST/raw/")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (default 1 2 3)")
    p.add_argument("--epochs", type=int, default=40, help="epochs per run (default 40)")
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--out", default="results", help="output folder (default results/)")
    return p.parse_args()


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


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation (0 for one seed) of every measure, per scheme."""
    summary = []
    for scheme in CONFIGS:
        own = [r for r in rows if r["scheme"] == scheme]
        for measure in MEASURES:
            values = [float(r[measure]) for r in own]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary.append({"scheme": scheme, "measure": measure, "seeds": len(values),
                            "mean": statistics.mean(values), "std": spread})  # fmt: skip
    return summary


def markdown_table(summary: list[dict]) -> str:
    """The summary as a Markdown table: a row per measure, mean ± standard deviation per scheme."""
    cell = {(r["scheme"], r["measure"]): r for r in summary}
    seeds = {scheme: cell[(scheme, MEASURES[0])]["seeds"] for scheme in CONFIGS}
    lines = ["| measure | " + " | ".join(f"{s} ({seeds[s]} seeds)" for s in CONFIGS) + " |",
             "| --- |" + " --- |" * len(CONFIGS)]  # fmt: skip
    for measure in MEASURES:
        values = [cell[(scheme, measure)] for scheme in CONFIGS]
        spreads = " | ".join(f"{v['mean']:.4g} ± {v['std']:.2g}" for v in values)
        lines.append(f"| {measure} | {spreads} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    rows = [train_and_grade(scheme, seed, args, out / "runs" / f"{scheme}_seed{seed}")
            for seed in args.seeds for scheme in CONFIGS]  # fmt: skip
    write_csv(out / "runs.csv", rows)
    summary = summarise(rows)
    write_csv(out / "summary.csv", summary)
    (out / "summary.md").write_text(markdown_table(summary))
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
