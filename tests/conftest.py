"""Shared test fixtures: small MNIST-format IDX files written by the tests themselves."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file: magic 00 00 08 ndim, big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    path.write_bytes(header + array.contiguous().numpy().tobytes())


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


def make_mnist_root(root: Path, n_train: int = 512, n_test: int = 256) -> Path:
    """A torchvision-layout MNIST folder (<root>/MNIST/raw/) with small synthetic splits."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = fake_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory) -> Path:
    return make_mnist_root(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The real MNIST root named by $MNIST_ROOT (.ci/run sets it when ../shared/data exists).
    Without it the real-data tests are reported as skipped, never as passed."""
    root = os.environ.get("MNIST_ROOT")
    if not root:
        pytest.skip("MNIST_ROOT is not set: point it at a folder holding MNIST/raw/")
    return Path(root)


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


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_script(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one of the repo's entry scripts in a real subprocess with this interpreter."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def run_with_terminal(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, list[str]]:
    """Start an entry script with stderr on a pseudo-terminal, so its progress bar shows, as for
    a person at a terminal; a thread collects what the terminal receives."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, columns
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=follower)  # fmt: skip
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
