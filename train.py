r"""Train a beta-VAE on MNIST, alone (simple) or with a PatchGAN critic and PIPS (composite).

    python train.py --scheme simple --model_config configs/model_simple_config.json \
        --train_config configs/train_simple_config.json
    python train.py --scheme composite --model_config configs/model_composite_config.json \
        --train_config configs/train_composite_config.json
    python train.py --scheme composite --model_config configs/model_composite_mnist_config.json \
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
With pips_config.backbone "mnist_cnn" (configs/model_composite_mnist_config.json) the composite
scheme first trains the MNIST PIPS backbone into pips_config.weights_path when that file is missing.
"""

import argparse
import dataclasses
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from training_schemes import (
    SCHEMES,
    Interrupted,
    StopRequest,
    check_scheme,
    train,
)
from utils.checkpoint import checkpoint_step, load_checkpoint, write_text
from utils.classifier import make_network
from utils.config import ModelConfig, TrainConfig, config_json, load_model_config, load_train_config
from utils.dataset import load_mnist
from utils.errors import CheckpointError, UserError
from utils.misc import pick_device, run_cli

RUN_FILES = (
    "metrics.csv",
    "final_model.pth",
    "model_config.json",
    "train_config.json",
    "tensorboard",
)
# Fields that may change on resume: the run's length, and where the continued run is written.
RESUMABLE_CHANGES = {"num_epochs", "save_dir"}


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
        "--resume",
        metavar="auto|PATH",
        help="continue a run: 'auto' = the newest checkpoint in the save_dir, or a checkpoint file",
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


def prepare_save_dir(save_dir: Path, resuming: bool) -> Path:
    """Create the run folder and check it is writable; a new run refuses a folder that already
    holds one, so nothing is overwritten."""
    held = [name for name in RUN_FILES if (save_dir / name).exists()]
    held += sorted(p.name for p in save_dir.glob("checkpoint_*.pth"))
    if held and not resuming:
        raise UserError(
            f"{save_dir}: already holds a run ({held[0]}); resume it with --resume auto, "
            "or choose another --save_dir"
        )
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / ".write_test").touch()
        (save_dir / ".write_test").unlink()
    except OSError as e:
        raise UserError(
            f"{save_dir}: cannot write the run folder ({e.strerror}); choose another --save_dir"
        ) from None
    return save_dir


def newest_checkpoint(save_dir: Path) -> Path:
    """The readable checkpoint_*.pth in `save_dir` written at the latest step."""
    steps = {path: checkpoint_step(path) for path in save_dir.glob("checkpoint_*.pth")}
    readable = {path: step for path, step in steps.items() if step >= 0}
    if not readable:
        raise UserError(
            f"{save_dir}: no readable checkpoint_*.pth to resume from; start without --resume"
        )
    return max(readable, key=readable.get)


def first_difference(saved: Any, current: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """(dotted field, saved value, current value) of the first difference between two config
    dicts, ignoring the top-level RESUMABLE_CHANGES; None when they agree."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(saved.keys() | current.keys()):
            if where or key not in RESUMABLE_CHANGES:
                found = first_difference(saved.get(key), current.get(key), f"{where}{key}.")
                if found:
                    return found
        return None
    return None if saved == current else (where.rstrip("."), saved, current)


def check_resumable(
    payload: dict, path: Path, scheme: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
    train_size: int, config_paths: tuple[str, str],
) -> None:  # fmt: skip
    """Refuse a checkpoint that cannot continue this run: weights only, or other settings."""
    if "next_epoch" not in payload:
        raise CheckpointError(
            f"{path}: holds weights only (no training state); resume from a "
            "checkpoint_*.pth written by this train.py"
        )
    if payload["scheme"] != scheme:
        raise UserError(
            f"{path}: is a {payload['scheme']} run; resume it with --scheme {payload['scheme']}"
        )
    for name, config, config_path in zip(
        ("model_config", "train_config"), (model_cfg, train_cfg), config_paths, strict=True
    ):
        found = first_difference(payload[name], dataclasses.asdict(config))
        if found:
            field, saved, current = found
            raise UserError(
                f"{config_path}: field '{field}' is {current!r} but the run used {saved!r}; "
                "only the epoch count may change on resume"
            )
    if payload["train_size"] != train_size:
        raise UserError(
            f"--subset: the run trained on {payload['train_size']} images, this call on "
            f"{train_size}; pass --subset {payload['train_size']}"
        )


def stop_on_signals() -> StopRequest:
    """SIGINT / SIGTERM ask the loop to finish its step and checkpoint; a second one stops now."""
    stop = StopRequest()

    def request(signum: int, frame: Any) -> None:
        stop.signal = signum
        signal.signal(signum, signal.SIG_DFL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request)
    return stop


def resume_command(save_dir: Path) -> str:
    """This invocation again, continuing from the run folder's newest checkpoint."""
    args, kept = sys.argv[1:], []
    while args:
        arg, args = args[0], args[1:]
        if arg in ("--resume", "--save_dir"):
            args = args[1:]
        elif not arg.startswith(("--resume=", "--save_dir=")):
            kept.append(arg)
    return shlex.join(
        ["python", "train.py", *kept, "--save_dir", str(save_dir), "--resume", "auto"]
    )


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
    save_dir = prepare_save_dir(Path(train_cfg.save_dir), resuming=args.resume is not None)
    resume_path = None
    if args.resume is not None:
        resume_path = newest_checkpoint(save_dir) if args.resume == "auto" else Path(args.resume)
        payload = load_checkpoint(resume_path, device)

    train_set = load_mnist(args.data_root, "train", device, download=not args.no_download)
    val_set = load_mnist(args.data_root, "test", device, download=False)
    if list(train_set.images.shape[1:]) != model_cfg.image_shape:
        raise UserError(
            f"{args.model_config}: image_shape {model_cfg.image_shape} does not match "
            f"the data's {list(train_set.images.shape[1:])}; set it to that"
        )
    pips_cfg = model_cfg.pips_config if args.scheme == "composite" else None
    if pips_cfg and pips_cfg.backbone == "mnist_cnn" and not Path(pips_cfg.weights_path).is_file():
        # The MNIST PIPS backbone is made once, on the full training split, before any subset.
        make_network("pips", Path(pips_cfg.weights_path), train_set, val_set)
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
    if resume_path is not None:
        check_resumable(payload, resume_path, args.scheme, model_cfg, train_cfg, len(train_set),
                        (args.model_config, args.train_config))  # fmt: skip

    write_text(save_dir / "model_config.json", config_json(model_cfg))
    write_text(save_dir / "train_config.json", config_json(train_cfg))
    steps = len(train_set) // train_cfg.train_bs
    start = f", resuming {resume_path} at step {payload['step']}" if resume_path else ""
    print(
        f"{args.scheme} scheme on {device}: {len(train_set)} training images, {steps} steps x "
        f"{train_cfg.num_epochs} epochs, {len(val_set)} validation images -> {save_dir}{start}",
        flush=True,
    )
    if train_cfg.tensorboard:
        print(f"TensorBoard: tensorboard --logdir {save_dir / 'tensorboard'}", flush=True)
    stop = stop_on_signals()
    try:
        summary = train(args.scheme, model_cfg, train_cfg, train_set, val_set, device, save_dir,
                        resume=payload if resume_path else None, stop=stop)  # fmt: skip
    except Interrupted as e:
        print(
            f"{signal.Signals(e.signum).name}: stopped in epoch {e.epoch} after step {e.step}, "
            f"checkpoint -> {e.checkpoint}; resume with: {resume_command(save_dir)}",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + e.signum)
    print(
        f"finished {summary.epochs_run} epochs ({summary.steps} steps); "
        f"model -> {summary.final_path}",
        flush=True,
    )


if __name__ == "__main__":
    run_cli(main)
