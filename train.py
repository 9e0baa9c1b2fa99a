r"""Train a beta-VAE on MNIST, alone (simple) or with a PatchGAN critic and PIPS (composite).

    python train.py --scheme simple --model_config configs/model_simple_config.json \
        --train_config configs/train_simple_config.json
    python train.py --scheme composite --model_config configs/model_composite_config.json \
        --train_config configs/train_composite_config.json
    python train.py --scheme simple --model_config configs/model_simple_config.json \
        --train_config configs/train_simple_config.json --epochs 1 --subset 2048 \
        --save_dir runs/quick
    python train.py --scheme simple --model_config configs/model_simple_config.json \
        --train_config configs/train_simple_config.json --tensorboard
    tensorboard --logdir checkpoints/simple/tensorboard

The run folder (the config's save_dir, or --save_dir) receives the configs as used
(model_config.json, train_config.json), metrics.csv (one row per epoch),
checkpoint_epoch_NNN.pth every save_every epochs, and final_model.pth; with --tensorboard (or
the config's "tensorboard": true) also live TensorBoard logs in tensorboard/.
"""

import argparse
import dataclasses
from pathlib import Path

from training_schemes import SCHEMES, check_scheme, train
from utils.checkpoint import write_text
from utils.config import config_json, load_model_config, load_train_config
from utils.dataset import load_mnist
from utils.errors import UserError
from utils.misc import pick_device, run_cli

RUN_FILES = (
    "metrics.csv",
    "final_model.pth",
    "model_config.json",
    "train_config.json",
    "tensorboard",
)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--scheme",
        choices=SCHEMES,
        required=True,
        help="simple: beta-VAE; composite: + critic + PIPS",
    )
    p.add_argument("--model_config", required=True, help="JSON model config (configs/model_*.json)")
    p.add_argument(
        "--train_config", required=True, help="JSON training config (configs/train_*.json)"
    )
    p.add_argument("--data_root", default="data/", help="folder holding MNIST/raw/ (default data/)")
    p.add_argument("--save_dir", help="run folder; overrides the config's save_dir")
    p.add_argument("--epochs", type=positive_int, help="overrides the config's num_epochs")
    p.add_argument("--subset", type=positive_int, help="train on the first N training images only")
    p.add_argument("--seed", type=int, help="overrides the config's seed")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when present, else CPU",
    )
    p.add_argument(
        "--no_download",
        action="store_true",
        help="never try torchvision's download when MNIST files are missing",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log to TensorBoard in <save_dir>/tensorboard/ (sets the config's tensorboard)",
    )
    return p.parse_args()


def prepare_save_dir(save_dir: Path) -> Path:
    """Create the run folder; refuse one that already holds a run, so nothing is overwritten."""
    held = [name for name in RUN_FILES if (save_dir / name).exists()]
    held += sorted(p.name for p in save_dir.glob("checkpoint_epoch_*.pth"))
    if held:
        raise UserError(
            f"{save_dir}: already holds a run ({held[0]}); "
            "choose another --save_dir or move the old run away"
        )
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"{save_dir}: cannot create the run folder ({e.strerror}); choose another --save_dir"
        ) from None
    return save_dir


def main() -> None:
    args = parse_args()
    model_cfg = load_model_config(args.model_config)
    train_cfg = load_train_config(args.train_config)
    overrides = {
        "num_epochs": args.epochs,
        "seed": args.seed,
        "save_dir": args.save_dir,
        "tensorboard": args.tensorboard or None,
    }
    train_cfg = dataclasses.replace(
        train_cfg, **{k: v for k, v in overrides.items() if v is not None}
    )
    check_scheme(args.scheme, model_cfg, train_cfg, args.model_config, args.train_config)
    device = pick_device(args.device)
    save_dir = prepare_save_dir(Path(train_cfg.save_dir))

    train_set = load_mnist(args.data_root, "train", device, download=not args.no_download)
    val_set = load_mnist(args.data_root, "test", device, download=False)
    if list(train_set.images.shape[1:]) != model_cfg.image_shape:
        raise UserError(
            f"{args.model_config}: image_shape {model_cfg.image_shape} does not match "
            f"the data's {list(train_set.images.shape[1:])}; set it to that"
        )
    if args.subset is not None:
        if not train_cfg.train_bs <= args.subset <= len(train_set):
            raise UserError(
                f"--subset {args.subset}: must be between train_bs "
                f"({train_cfg.train_bs}) and the {len(train_set)} training images"
            )
        train_set = dataclasses.replace(
            train_set,
            images=train_set.images[: args.subset],
            labels=train_set.labels[: args.subset],
        )

    write_text(save_dir / "model_config.json", config_json(model_cfg))
    write_text(save_dir / "train_config.json", config_json(train_cfg))
    steps = len(train_set) // train_cfg.train_bs
    print(
        f"{args.scheme} scheme on {device}: {len(train_set)} training images, {steps} steps x "
        f"{train_cfg.num_epochs} epochs, {len(val_set)} validation images -> {save_dir}",
        flush=True,
    )
    if train_cfg.tensorboard:
        print(f"TensorBoard: tensorboard --logdir {save_dir / 'tensorboard'}", flush=True)
    summary = train(args.scheme, model_cfg, train_cfg, train_set, val_set, device, save_dir)
    print(
        f"finished {summary.epochs_run} epochs ({summary.steps} steps); "
        f"model -> {summary.final_path}",
        flush=True,
    )


if __name__ == "__main__":
    run_cli(main)
