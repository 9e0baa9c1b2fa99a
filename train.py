r"""Train a beta-VAE on MNIST (or Fashion-MNIST), alone (simple) or with a PatchGAN critic and
PIPS (composite).

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
        --train_config configs/train_simple_config.json --set loss.params.beta=2 \
        --set 'save_dir="runs/beta2"'
    python train.py --scheme simple --model_config configs/model_simple_config.json \
        --train_config configs/train_simple_config.json --tensorboard
    python train.py --scheme composite --dataset fashion_mnist \
        --model_config configs/model_composite_fashion_mnist_config.json \
        --train_config configs/train_composite_config.json
    tensorboard --logdir checkpoints/simple/tensorboard
    torchrun --standalone --nproc_per_node 2 train.py --scheme simple \
        --model_config configs/model_simple_config.json \
        --train_config configs/train_simple_config.json
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29400 \
        train.py --scheme simple --model_config configs/model_simple_config.json \
        --train_config configs/train_simple_config.json

Under torchrun (one process per GPU, or per CPU share) the processes train one model with
DistributedDataParallel (NCCL on CUDA, gloo on the CPU); train_bs stays the global batch, split
evenly over the processes, and rank 0 alone writes the run folder and prints.
The run folder (the config's save_dir, or --save_dir) receives the configs as used
(model_config.json, train_config.json), linear_backend.json (the library the linear layers run
on, and why), metrics.csv (one row per epoch),
checkpoint_epoch_NNN.pth every save_every epochs, and final_model.pth; with --tensorboard (or
the config's "tensorboard": true) also live TensorBoard logs in tensorboard/.
With pips_config.backbone "mnist_cnn" (configs/model_composite_mnist_config.json) the composite
scheme first trains the PIPS backbone on the run's dataset into pips_config.weights_path when that
file is missing.
"""

import argparse
import dataclasses
import fcntl
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from model.linear_backend import Choice
from training_schemes import (
    SCHEMES,
    Interrupted,
    StopRequest,
    check_resumable,
    check_scheme,
    linear_backend_choice,
    train,
)
from utils.checkpoint import checkpoint_step, load_checkpoint
from utils.cli import OneLineParser, pick_device, run_cli
from utils.config import (
    ModelConfig,
    TrainConfig,
    check_same_dataset,
    config_json,
    load_model_config,
    load_train_config,
    parse_settings,
    with_overrides,
)
from utils.dataset import DATA_ROOT_HELP, DATASETS, MNISTSplit, load_mnist
from utils.distributed import Cluster, join, leave_finished_rank
from utils.errors import CheckpointError, UserError
from utils.memory import keep_freed_memory
from utils.networks import make_network, pips_backbone_to_make
from utils.outputs import write_output
from utils.tensorboard_log import require_tensorboard
from utils.trained_vae import check_fits

# Weights a run folder keeps besides its checkpoint_*.pth: a new run never starts over them.
SAVED = ("final_model.pth", "best_model.pth")
# The file whose OS lock says which process trains in a run folder (it holds that pid).
RUN_LOCK = ".train.lock"
REPO = Path(__file__).resolve().parent
HELD_LOCKS = []  # the open lock files: a lock lasts as long as its file stays open


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--scheme",
        choices=list(SCHEMES),
        default="composite",
        help="simple: beta-VAE; composite: + critic + PIPS (default, as in the reference)",
    )
    p.add_argument("--model_config", required=True, help="JSON model config (configs/model_*.json)")
    p.add_argument(
        "--train_config", required=True, help="JSON training config (configs/train_*.json)"
    )
    p.add_argument("--data_root", default="data/", help=DATA_ROOT_HELP)
    p.add_argument(
        "--dataset",
        choices=tuple(DATASETS),
        help="the data to train on; overrides the config's data.dataset (default mnist)",
    )
    p.add_argument("--save_dir", help="run folder; overrides the config's save_dir")
    p.add_argument(
        "--epochs",
        type=positive_int,
        help="overrides the config's num_epochs; the LR schedules and the critic's switch-on "
        "scale with it, beta's warm-up (loss.params.warmup_epochs, in epochs) does not",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one config field (repeatable): KEY a dotted path into the training or the "
        "model config, VALUE JSON, e.g. --set loss.params.beta=2 --set "
        "model_config.latent_features=16; checked as the file is, kept in the run folder's "
        "configs",
    )
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
    """Create the run folder and check it is writable. A new run refuses a folder that holds a
    checkpoint or a final model, so nothing is overwritten; a folder a run left before its first
    checkpoint (configs, metrics of unsaved epochs) is free to start in again. The filesystem's
    root and the repository's own folder are never run folders."""
    try:
        resolved = save_dir.resolve()
        if resolved in (Path(resolved.anchor), REPO):
            what = "the repository's folder" if resolved == REPO else "the filesystem root"
            raise UserError(
                f"{save_dir}: is {what}, not a run folder; choose a folder of its own "
                "(--save_dir, or the train config's save_dir), e.g. checkpoints/NAME"
            )
        held = sorted(
            p.name
            for p in save_dir.glob("*.pth")
            if p.name in SAVED or p.name.startswith("checkpoint_")
        )
        if held and not resuming:
            raise UserError(
                f"{save_dir}: already holds a run ({held[0]}); resume it with --resume auto, "
                "or choose another --save_dir"
            )
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / ".write_test").touch()
        (save_dir / ".write_test").unlink()
    except OSError as e:
        raise UserError(
            f"{save_dir}: cannot write the run folder ({e.strerror}); choose another --save_dir"
        ) from None
    return save_dir


def newest_checkpoint(save_dir: Path, device: torch.device) -> tuple[Path, dict]:
    """The checkpoint_*.pth in `save_dir` written at the latest step that loads intact, and its
    payload; a newer one that is damaged is passed over with a note."""
    steps = {path: checkpoint_step(path) for path in save_dir.glob("checkpoint_*.pth")}
    readable = sorted((path for path, step in steps.items() if step >= 0), key=steps.get)
    if not readable:
        raise UserError(
            f"{save_dir}: no readable checkpoint_*.pth to resume from; start without --resume"
        )
    oldest, *newer = readable
    for path in reversed(newer):
        try:
            return path, load_checkpoint(path, device, flag="--resume")
        except CheckpointError as damaged:
            print(f"note: passing over {damaged}", flush=True)
    return oldest, load_checkpoint(oldest, device, flag="--resume")


def check_processes(train_cfg: TrainConfig, cluster: Cluster, train_path: str) -> None:
    """train_bs is the global batch, so it must split evenly over the processes; SyncBatchNorm
    exists for CUDA only."""
    if train_cfg.data.train_bs % cluster.world_size:
        raise UserError(
            f"{train_path}: field 'data.train_bs' = {train_cfg.data.train_bs} does not split "
            f"evenly over {cluster.world_size} processes (train_bs is the global batch); make it "
            f"a multiple of {cluster.world_size} or start another number of processes"
        )
    if train_cfg.sync_batchnorm and cluster.distributed and cluster.device.type != "cuda":
        raise UserError(
            f"{train_path}: field 'sync_batchnorm' = true needs CUDA devices (PyTorch's "
            "SyncBatchNorm runs on GPUs only); set it to false to train on the CPU"
        )


def stop_on_signals(cluster: Cluster) -> StopRequest:
    """SIGINT / SIGTERM ask the loop to finish its step and checkpoint; a second one stops now.
    Under torchrun a second one is the same request: torchrun forwards the signal it receives to
    every process, a scheduler may signal them directly too, and torchrun itself kills processes
    that have not ended --shutdown_timeout (30 s) after it forwarded the signal."""
    stop = StopRequest()

    def request(signum: int, frame: Any) -> None:
        stop.signal = signum
        if not cluster.distributed:
            signal.signal(signum, signal.SIG_DFL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request)
    return stop


def resume_command(save_dir: Path, launcher: str) -> str:
    """This invocation again (started by `launcher`), continuing from the run folder's newest
    checkpoint."""
    args, kept = sys.argv[1:], []
    while args:
        arg, args = args[0], args[1:]
        if arg in ("--resume", "--save_dir"):
            args = args[1:]
        elif not arg.startswith(("--resume=", "--save_dir=")):
            kept.append(arg)
    return f"{launcher} " + shlex.join(
        ["train.py", *kept, "--save_dir", str(save_dir), "--resume", "auto"]
    )


def main() -> None:
    args = parse_args()
    keep_freed_memory()
    with join(pick_device(args.device)) as cluster:
        run(args, cluster)
    if cluster.distributed:
        leave_finished_rank()


def run(args: argparse.Namespace, cluster: Cluster) -> None:
    """Check everything, then train. Under torchrun each step is agreed by every process, rank 0
    alone handles the run folder and prints, and a failure anywhere stops every process."""
    with cluster.agreed():
        model_cfg, train_cfg = read_configs(args, cluster)
        save_dir = Path(train_cfg.save_dir)
        resume_path, payload = open_run_folder(args, save_dir, cluster)
    with cluster.agreed():
        train_set, val_set = read_data(args, model_cfg, train_cfg, cluster)
        linear = None
        if cluster.is_main:
            if resume_path is not None:
                check_resumable(
                    payload,
                    resume_path,
                    args.scheme,
                    model_cfg,
                    train_cfg,
                    len(train_set),
                    (args.model_config, args.train_config),
                    cluster,
                )
            linear = record_start(
                args, model_cfg, train_cfg, train_set, val_set, cluster, resume_path, payload
            )
    payload, linear = cluster.broadcast((payload, linear))
    stop = stop_on_signals(cluster)
    try:
        summary = train(
            args.scheme,
            model_cfg,
            train_cfg,
            train_set,
            val_set,
            cluster.device,
            save_dir,
            resume=payload,
            stop=stop,
            cluster=cluster,
            linear_backend=linear.backend,
        )
    except Interrupted as e:
        if cluster.is_main:
            print(
                f"{signal.Signals(e.signum).name}: stopped in epoch {e.epoch} after step "
                f"{e.step}, checkpoint -> {e.checkpoint}; resume with: "
                f"{resume_command(save_dir, cluster.launcher())}",
                file=sys.stderr,
                flush=True,
            )
        sys.exit(128 + e.signum)
    if cluster.is_main:
        print(
            f"finished {summary.epochs_run} epochs ({summary.steps} steps); "
            f"model -> {summary.final_path}",
            flush=True,
        )


def read_configs(args: argparse.Namespace, cluster: Cluster) -> tuple[ModelConfig, TrainConfig]:
    """The two configs as this run uses them: each file with its --set changes, then the flags,
    every value through the same checks; the model config as the scheme needs it."""
    dataset = [f"data.dataset={json.dumps(args.dataset)}"] if args.dataset else []
    model_settings, train_settings = parse_settings([*args.set, *dataset], args.scheme)
    model_cfg = load_model_config(args.model_config, model_settings)
    train_cfg = load_train_config(args.train_config, args.scheme, train_settings)
    overrides = {
        "num_epochs": ("--epochs", args.epochs),
        "seed": ("--seed", args.seed),
        "save_dir": ("--save_dir", args.save_dir),
        "tensorboard": ("--tensorboard", args.tensorboard or None),
    }
    train_cfg = with_overrides(
        train_cfg, {k: fv for k, fv in overrides.items() if fv[1] is not None}
    )
    model_cfg = check_scheme(args.scheme, model_cfg, args.model_config)
    if args.scheme == "composite":  # the simple scheme has no perceptual backbone
        check_same_dataset(model_cfg, train_cfg, args.model_config)
    # Training holds four copies of the VAE's weights: the weights, their gradients and Adam's
    # two moments.
    check_fits(model_cfg.model_config, args.model_config, copies=4)
    check_processes(train_cfg, cluster, args.train_config)
    if train_cfg.tensorboard and cluster.is_main:
        require_tensorboard()
    return model_cfg, train_cfg


def open_run_folder(
    args: argparse.Namespace, save_dir: Path, cluster: Cluster
) -> tuple[Path | None, dict | None]:
    """Rank 0 prepares the run folder, takes it for this process (`lock_run_folder`) and, with
    --resume, reads the checkpoint to continue: (its path, its payload), or (None, None) for a
    new run."""
    if not cluster.is_main:
        return None, None
    prepare_save_dir(save_dir, resuming=args.resume is not None)
    lock_run_folder(save_dir)
    # Holding the lock, any temporary file left here is a write a killed process never finished.
    for unfinished in save_dir.glob(".*.tmp"):
        unfinished.unlink(missing_ok=True)
    if args.resume is None:
        return None, None
    if args.resume == "auto":
        return newest_checkpoint(save_dir, cluster.device)
    path = Path(args.resume)
    return path, load_checkpoint(path, cluster.device, flag="--resume")


def lock_run_folder(save_dir: Path) -> None:
    """Take the run folder for this process until it exits (an OS lock on its RUN_LOCK file,
    which the OS releases on any exit, kill -9 included), so that two train.py never write one
    run folder; a folder another process holds is refused, naming its pid."""
    handle = open(save_dir / RUN_LOCK, "a+")  # noqa: SIM115 (held open for the process's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(
            f"{save_dir}: in use by another train.py (pid {owner}); wait for it to end, or "
            "choose another --save_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    HELD_LOCKS.append(handle)


def read_data(
    args: argparse.Namespace, model_cfg: ModelConfig, train_cfg: TrainConfig, cluster: Cluster
) -> tuple[MNISTSplit, MNISTSplit]:
    """The training split (cut to --subset) and the test split of the config's dataset, checked
    against the model; the PIPS backbone CNN is made first, on that dataset, when the composite
    scheme needs it and it is missing."""
    device, dataset = cluster.device, train_cfg.data.dataset
    train_set = load_mnist(args.data_root, "train", device, not args.no_download, dataset)
    val_set = load_mnist(args.data_root, "test", device, download=False, dataset=dataset)
    img_size = model_cfg.model_config.img_size
    if list(train_set.images.shape[1:]) != img_size:
        raise UserError(
            f"{args.model_config}: field 'model_config.img_size' = {img_size} does not match "
            f"the data's {list(train_set.images.shape[1:])}; set it to that"
        )
    backbone = pips_backbone_to_make(model_cfg.pips_config if args.scheme == "composite" else None)
    if cluster.is_main and backbone is not None:
        # The MNIST PIPS backbone is made once, on its half of the full training split, before
        # any subset (by rank 0; the others load it once this block has ended).
        make_network("pips", backbone, train_set, val_set)
    if train_cfg.data.train_bs > len(train_set):
        raise UserError(
            f"{args.train_config}: field 'data.train_bs' = {train_cfg.data.train_bs} is more than "
            f"the {len(train_set)} training images, so an epoch would take no step; lower it"
        )
    if args.subset is not None:
        if not train_cfg.data.train_bs <= args.subset <= len(train_set):
            raise UserError(
                f"--subset {args.subset}: must be between train_bs "
                f"({train_cfg.data.train_bs}) and the {len(train_set)} training images"
            )
        train_set = dataclasses.replace(
            train_set,
            images=train_set.images[: args.subset],
            labels=train_set.labels[: args.subset],
        )
    return train_set, val_set


def record_start(
    args: argparse.Namespace,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_set: MNISTSplit,
    val_set: MNISTSplit,
    cluster: Cluster,
    resume_path: Path | None,
    payload: dict | None,
) -> Choice:
    """Rank 0: write the configs as used and the linear layers' backend into the run folder, and
    print what is about to run (and, for a run shorter than its beta warm-up, that beta will not
    reach its value). Returns the backend choice."""
    save_dir, batch = Path(train_cfg.save_dir), train_cfg.data.train_bs // cluster.world_size
    write_output(save_dir / "model_config.json", config_json(model_cfg).encode(), "--save_dir")
    write_output(save_dir / "train_config.json", config_json(train_cfg).encode(), "--save_dir")
    linear = linear_backend_choice(train_cfg, model_cfg, batch, cluster.device, payload)
    chosen = save_dir / "linear_backend.json"
    if payload is None or not chosen.exists():  # a resumed run keeps why its backend was chosen
        write_output(chosen, (json.dumps(vars(linear)) + "\n").encode(), "--save_dir")
    print(
        start_line(
            args.scheme,
            train_cfg,
            len(train_set),
            len(val_set),
            save_dir,
            cluster,
            resume_path,
            payload,
            linear,
        ),
        flush=True,
    )
    warning = short_warmup(train_cfg)
    if warning:
        print(warning, flush=True)
    if train_cfg.tensorboard:
        print(f"TensorBoard: tensorboard --logdir {save_dir / 'tensorboard'}", flush=True)
    return linear


def short_warmup(train_cfg: TrainConfig) -> str | None:
    """One line when the run ends before beta's warm-up does (loss.params.warmup_epochs counts
    epochs, so --epochs shortens the LR schedules but not the warm-up); None otherwise."""
    params, epochs = train_cfg.loss.params, train_cfg.num_epochs
    if epochs >= params.warmup_epochs:
        return None
    return (
        f"note: num_epochs {epochs} < loss.params.warmup_epochs {params.warmup_epochs:g}, so beta "
        f"ends at {params.beta * epochs / params.warmup_epochs:.3g} of {params.beta:g} (the "
        "warm-up counts epochs; --epochs does not shorten it)"
    )


def start_line(
    scheme: str,
    train_cfg: TrainConfig,
    train_size: int,
    val_size: int,
    save_dir: Path,
    cluster: Cluster,
    resume_path: Path | None,
    payload: dict | None,
    linear: Choice,
) -> str:
    """What is about to run, on what, into where; under torchrun also how the batch is split;
    which library runs the linear layers, and why."""
    where, train_bs = str(cluster.device), train_cfg.data.train_bs
    if cluster.distributed:
        where = (
            f"{cluster.world_size} {cluster.device.type} processes (each "
            f"{train_bs // cluster.world_size} of every {train_bs} images)"
        )
    start = f", resuming {resume_path} at step {payload['step']}" if resume_path else ""
    steps = train_size // train_bs
    return (
        f"{scheme} scheme on {where}: {train_size} {DATASETS[train_cfg.data.dataset].title} "
        f"training images, {steps} steps x "
        f"{train_cfg.num_epochs} epochs, {val_size} validation images -> {save_dir}{start}; "
        f"linear layers: {linear.backend} ({linear.why})"
    )


if __name__ == "__main__":
    run_cli(main)
