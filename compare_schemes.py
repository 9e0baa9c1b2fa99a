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
interrupted one continues with `--resume auto` (utils/comparison.py; study.py runs any set of
arms the same way). It runs from any folder: the PIPS backbone (checkpoints/mnist_pips_cnn.pth) is
taken from, or made in, the current folder; the evaluation CNN is the one the repo ships.
Writes into --out:
    runs/<scheme>_seed<S>/   the run folders (metrics.csv, checkpoints, eval.json)
    runs.csv                 one row per run: cost and every evaluate.py number
    summary.csv              per measure, composite minus simple over the shared seeds: both
                             means (baseline_mean simple, arm_mean composite), the difference
                             with its 95 % t-interval, d_z, p, p after Holm's correction
                             across the measures, and a verdict
    summary.md               the same as a Markdown table (the one README "Results" quotes)
    compare_seed<S>.png      latent grids and reconstructions, simple vs composite (first seed)
    <scheme>_samples.png     prior samples of each scheme (first seed)
"""

import argparse
import math
from pathlib import Path

from utils.cli import OneLineParser, run_cli
from utils.comparison import (
    MEASURES,
    SMALLEST_EFFECTS,
    SUMMARY_FIELDS,
    Arm,
    Budget,
    forward_stop_signals,
    markdown_table,
    read_runs,
    summarise,
    train_and_grade,
    write_csv,
)
from utils.outputs import write_output

ARMS = {
    "simple": Arm(
        "simple", "simple", "configs/model_simple_config.json", "configs/train_simple_config.json"
    ),
    "composite": Arm(
        "composite",
        "composite",
        "configs/model_composite_mnist_config.json",
        "configs/train_composite_config.json",
    ),
}


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default="data/", help="folder holding MNIST/raw/")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (default 1 2 3)")
    p.add_argument("--epochs", type=int, default=40, help="epochs per run (default 40)")
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument(
        "--num_samples", type=int, help="prior samples evaluate.py grades (default its 10000)"
    )
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


def main() -> None:
    forward_stop_signals()
    args = parse_args()
    out = Path(args.out)
    if args.summarise_only:
        rows = read_runs(out / "runs.csv", "scheme")
    else:
        budget = Budget(args.data_root, args.epochs, args.subset, args.num_samples)
        rows = [
            train_and_grade(arm, seed, budget, out / "runs" / f"{name}_seed{seed}")
            for seed in args.seeds
            for name, arm in ARMS.items()
        ]
        write_csv(out / "runs.csv", rows)
    effects = {**SMALLEST_EFFECTS, **dict(args.equivalence)}
    summary = summarise(rows, "simple", "composite", "scheme", effects)
    table = markdown_table(summary, "simple", "composite")
    write_csv(out / "summary.csv", summary, SUMMARY_FIELDS)
    write_output(out / "summary.md", table.encode(), "--out")
    if args.summarise_only:
        print(table, end="")
        return
    # The figures show the first seed's runs, which a later call with more seeds keeps: drawn
    # once, in this process through infer.main (as study.py draws its own).
    import infer

    first = {name: out / "runs" / f"{name}_seed{args.seeds[0]}" for name in ARMS}
    compare = out / f"compare_seed{args.seeds[0]}.png"
    if not compare.exists():
        infer.main(
            [
                "--mode",
                "compare",
                "--model_config",
                str(first["simple"] / "model_config.json"),
                "--ckpt_path",
                str(first["simple"] / "final_model.pth"),
                "--model_config_b",
                str(first["composite"] / "model_config.json"),
                "--ckpt_path_b",
                str(first["composite"] / "final_model.pth"),
                "--data_root",
                args.data_root,
                "--save_path",
                str(compare),
            ]
        )
    for scheme, run in first.items():
        samples = out / f"{scheme}_samples.png"
        if not samples.exists():
            infer.main(
                [
                    "--mode",
                    "samples",
                    "--model_config",
                    str(run / "model_config.json"),
                    "--ckpt_path",
                    str(run / "final_model.pth"),
                    "--save_path",
                    str(samples),
                ]
            )
    print(table, end="")
    print(f"-> {out / 'runs.csv'}, {out / 'summary.csv'}, {out / 'summary.md'}, figures in {out}")


if __name__ == "__main__":
    run_cli(main)
