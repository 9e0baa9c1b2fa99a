"""What the test files share that is not a fixture: synthetic MNIST files, config variants, the
entry scripts' command lines run as real subprocesses, and a run folder's metrics.csv.
(Fixtures live in tests/conftest.py.)"""

import contextlib
import csv
import fcntl
import gzip
import importlib
import io
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Synthetic MNIST


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file: magic 00 00 08 ndim, big-endian dims, raw bytes;
    gzipped when `path` ends in .gz."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    data = header + array.contiguous().numpy().tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def fake_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 28x28 uint8 images of blobs whose position depends on the label, and the labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    cy = 8 + (labels % 5).float() * 3
    cx = 8 + (labels // 5).float() * 10
    blob = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 18.0)
    noise = torch.rand(n, 28, 28, generator=g) * 0.1
    images = ((blob + noise).clamp(0, 1) * 255).to(torch.uint8)
    return images, labels.to(torch.uint8)


def make_mnist_root(
    root: Path,
    n_train: int = 512,
    n_test: int = 256,
    folder: str = "MNIST",
    flat: bool = False,
    gz: bool = False,
) -> Path:
    """A data root with small synthetic splits: in torchvision's layout (<root>/<folder>/raw/),
    or `flat` (the four files in the root itself, as Debian installs them); gzipped if `gz`."""
    raw = root if flat else root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = fake_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root


MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def real_mnist_root(environ: Mapping[str, str], repo: Path = REPO) -> Path | None:
    """Where the real MNIST is: $MNIST_ROOT when set, else the repo's own data/ (train.py's
    default --data_root) when its MNIST/raw/ holds the four uncompressed IDX files (as the
    shared folder has them); None otherwise."""
    if environ.get("MNIST_ROOT"):
        return Path(environ["MNIST_ROOT"])
    raw = repo / "data" / "MNIST" / "raw"
    return repo / "data" if all((raw / name).is_file() for name in MNIST_FILES) else None


# Config files


def set_fields(data: dict, changes: dict[str, Any]) -> dict:
    """`data` with each dotted field of `changes` ("data.train_bs") set to its value."""
    for dotted, value in changes.items():
        *parents, name = dotted.split(".")
        block = data
        for key in parents:
            block = block[key]
        block[name] = value
    return data


def config_variant(folder: Path, source: str | Path, changes: dict[str, Any]) -> Path:
    """A copy of the config `source` (repo-relative or absolute) with dotted fields changed,
    written to `folder` under the same name."""
    data = set_fields(json.loads((REPO / source).read_text()), changes)
    path = folder / Path(source).name
    path.write_text(json.dumps(data))
    return path


def small_composite_model(
    folder: Path,
    source: str = "configs/model_composite_mnist_config.json",
    changes: dict[str, Any] | None = None,
) -> Path:
    """A copy of a composite model config whose critic is narrow (8-16-32-32 channels) and whose
    PIPS is the MNIST CNN at its initial weights, saved in `folder` (made without training): the
    scheme's every code path at a fraction of the reference critic's cost per step."""
    from utils.dataset import MNISTSplit
    from utils.networks import make_network

    backbone = folder / "pips_cnn_initial.pth"
    if not backbone.exists():
        split = MNISTSplit(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long))
        make_network("pips", backbone, split, split, epochs=0)
    small = {
        "discriminator_config.hidden_channels": [8, 16, 32, 32],
        "pips_config": {
            "backbone": "mnist_cnn",
            "input_size": 28,
            "weights": "mnist",
            "weights_path": str(backbone),
        },
    }
    return config_variant(folder, source, {**small, **(changes or {})})


# The entry scripts as a user runs them


def train_argv(
    scheme: str | None,
    model_config: str | Path,
    train_config: str | Path,
    data_root: str | Path,
    save_dir: str | Path,
    *extra: str,
    device: str | None = "cpu",
) -> list[str]:
    """train.py's command line (without the interpreter); scheme None leaves --scheme out, as
    the reference's users do, and device None leaves --device out."""
    argv = ["train.py"] + (["--scheme", scheme] if scheme else [])
    argv += [
        "--model_config",
        str(model_config),
        "--train_config",
        str(train_config),
        "--data_root",
        str(data_root),
        "--save_dir",
        str(save_dir),
    ]
    return argv + (["--device", device] if device else []) + list(extra)


def infer_argv(run: Path, png: Path, *flags: str) -> list[str]:
    """infer.py flags that draw from a run folder's final checkpoint, on the CPU, into `png`."""
    return [
        "--model_config",
        str(run / "model_config.json"),
        "--ckpt_path",
        str(run / "final_model.pth"),
        "--save_path",
        str(png),
        "--device",
        "cpu",
        *flags,
    ]


def run_script(
    *args: str, cwd: Path = REPO, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run one of the repo's entry scripts in a real subprocess with this interpreter."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """An entry script's command line run in this process, as its `__main__` runs it: the
    script's main() behind utils/cli.run_cli, with sys.argv, the working folder, stdout and
    stderr as a subprocess has them, and its exit code. For the many error paths, where a
    subprocess would spend most of the test starting the interpreter and importing torch; every
    script keeps tests in real processes too. An exception run_cli does not turn into one line
    propagates, failing the test, where a subprocess would print its traceback."""
    from utils.cli import run_cli

    module = importlib.import_module(Path(args[0]).stem)
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, code = sys.argv, os.getcwd(), 0
    # The scripts install their own SIGINT / SIGTERM handlers, which end with their process.
    saved_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sys.argv = [str(args[0]), *map(str, args[1:])]
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_cli(module.main)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for signum, handler in saved_handlers.items():
            signal.signal(signum, handler)
        # What the process's exit would do: train.py's run-folder locks last while their files
        # are open.
        for handle in getattr(module, "HELD_LOCKS", []):
            handle.close()
        getattr(module, "HELD_LOCKS", []).clear()
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def run_with_terminal(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, list[str]]:
    """Start an entry script with stderr on a pseudo-terminal, so its progress bar shows, as for
    a person at a terminal; a thread collects what the terminal receives."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, columns
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=follower
    )
    os.close(follower)
    received: list[str] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            received.append(chunk.decode(errors="replace"))
        os.close(leader)

    threading.Thread(target=drain, daemon=True).start()
    return proc, received


# What a run leaves


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def read_metrics(run: Path, seconds: bool = True) -> list[dict[str, str]]:
    """metrics.csv's rows; without the wall-clock `seconds` column when `seconds` is False."""
    with open(run / "metrics.csv") as f:
        return [
            {k: v for k, v in r.items() if seconds or k != "seconds"} for r in csv.DictReader(f)
        ]
