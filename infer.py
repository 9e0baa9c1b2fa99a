r"""Look at a trained VAE or a run: one headless PNG per view (--mode).

    python infer.py --model_config configs/model_simple_config.json \
        --ckpt_path checkpoints/simple/final_model.pth
    python infer.py --model_config configs/model_composite_config.json \
        --ckpt_path checkpoints/composite/final_model.pth --grid_size 12 --save_path samples/c.png
    python infer.py --mode traverse --model_config checkpoints/simple/model_config.json \
        --ckpt_path checkpoints/simple/final_model.pth --image_index 0
    python infer.py --mode recon --model_config checkpoints/simple/model_config.json \
        --ckpt_path checkpoints/simple/final_model.pth --grid_size 10
    python infer.py --mode samples --model_config checkpoints/simple/model_config.json \
        --ckpt_path checkpoints/simple/final_model.pth --seed 1
    python infer.py --mode scatter --model_config checkpoints/simple/model_config.json \
        --ckpt_path checkpoints/simple/final_model.pth
    python infer.py --mode curves --run_dir checkpoints/simple
    python infer.py --mode compare --model_config configs/model_simple_config.json \
        --ckpt_path checkpoints/simple/final_model.pth \
        --model_config_b configs/model_composite_config.json \
        --ckpt_path_b checkpoints/composite/final_model.pth

grid (default)  z over a regular grid on [-3, 3]^2: columns sweep latent dimension 1 (left to
                right), rows sweep dimension 2 (top to bottom, as the reference draws it); larger
                latents keep the others at 0
traverse        one row per latent dimension swept over [-3, 3], the others at 0 or at the mean
                code of test image --image_index
recon           --grid_size test images (from --image_index on) above their reconstructions
samples         decodes of z ~ N(0, I) drawn with --seed
scatter         every test image's latent mean coloured by digit (PCA beyond 2-D)
curves          metrics.csv of --run_dir: every loss term, train and validation, beta, LR
compare         --ckpt_path and --ckpt_path_b on the same latent grid and test images
Test images come from <data_root>/MNIST/raw/; every picture is one batched decoder pass.
"""

import argparse
from pathlib import Path

from utils.cli import OneLineParser, pick_device, run_cli
from utils.dataset import DATA_ROOT_HELP, DATASETS
from utils.errors import UserError
from utils.views import FIGURE_FORMATS, VIEWS, figure_path

MAX_GRID_SIZE = 100  # 10,000 cells of grid and samples; a recon row 100 images wide


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=VIEWS, default="grid", help="the view to draw (default grid)")
    p.add_argument("--model_config", help="the JSON model config the run used")
    p.add_argument("--ckpt_path", help="final_model.pth, best_model.pth or a checkpoint")
    p.add_argument("--ckpt_path_b", help="compare: the second checkpoint")
    p.add_argument("--model_config_b", help="compare: its model config (default --model_config)")
    p.add_argument("--run_dir", help="curves: a run folder holding metrics.csv")
    p.add_argument("--data_root", default="data/", help=DATA_ROOT_HELP)
    p.add_argument(
        "--dataset",
        choices=tuple(DATASETS),
        help="the test images' dataset (default the one the checkpoint learnt)",
    )
    p.add_argument(
        "--grid_size",
        type=int,
        default=8,
        help="cells per side of grid and samples; values per row of traverse; test images of "
        f"recon and compare (default 8, at most {MAX_GRID_SIZE})",
    )
    p.add_argument(
        "--image_index",
        type=int,
        help="traverse: hold the other dimensions at this test image's mean code (default 0s); "
        "recon, compare: the first test image shown (default 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="samples: seed of z ~ N(0, I) (default 0)")
    p.add_argument("--title", help="figure title (default: names the checkpoint)")
    p.add_argument(
        "--save_path",
        help=f"figure to write, ending in {', '.join(FIGURE_FORMATS)} (no suffix: .png is added; "
        "default samples/<run>_<ckpt>_<mode>.png)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """The flags each view needs; the ranges no view can draw."""
    needed = ["run_dir"] if args.mode == "curves" else ["model_config", "ckpt_path"]
    needed += ["ckpt_path_b"] if args.mode == "compare" else []
    missing = [f"--{name}" for name in needed if getattr(args, name) is None]
    if missing:
        raise UserError(f"--mode {args.mode} needs {' and '.join(missing)}; see python infer.py -h")
    if args.grid_size < 1:
        raise UserError(f"--grid_size {args.grid_size}: must be >= 1, e.g. 8")
    if args.grid_size > MAX_GRID_SIZE:
        raise UserError(
            f"--grid_size {args.grid_size}: must be at most {MAX_GRID_SIZE}; lower it, e.g. 8"
        )
    if args.image_index is not None and args.image_index < 0:
        raise UserError(f"--image_index {args.image_index}: must be >= 0, e.g. 0")


def default_save_path(args: argparse.Namespace) -> Path:
    """samples/<run>_<checkpoint>_<mode>.png; curves name the run, compare both checkpoints."""
    if args.mode == "curves":
        return Path(f"samples/{Path(args.run_dir).resolve().name}_curves.png")
    ckpts = [Path(args.ckpt_path), *([Path(args.ckpt_path_b)] if args.mode == "compare" else [])]
    names = "_vs_".join(f"{c.parent.name}_{c.stem}" for c in ckpts)
    return Path(f"samples/{names}_{args.mode}.png")


def main(argv: list[str] | None = None) -> int:
    """Draw one view; returns how many items (cells, images, points, curves) it drew."""
    args = parse_args(argv)
    check_args(args)
    save_path = figure_path(Path(args.save_path) if args.save_path else default_save_path(args))
    device = pick_device(args.device)
    drawn, summary = VIEWS[args.mode](args, device, save_path)
    print(f"{summary} -> {save_path}")
    return drawn


if __name__ == "__main__":
    run_cli(main)
