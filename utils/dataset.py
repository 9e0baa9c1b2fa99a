"""MNIST straight from its IDX files into tensors, and batches drawn from them.

The whole split lives in one float tensor in [0, 1] on the training device; an epoch is a seeded
permutation of it. No Dataset, no DataLoader, no worker processes: MNIST fits in memory many times
over, and per-sample Python work is what makes the usual pipeline slow.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.errors import DataError, first_line

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08


def mnist_raw_dir(root: str | Path) -> Path:
    """torchvision's layout: <root>/MNIST/raw/."""
    return Path(root) / "MNIST" / "raw"


def read_idx(path: Path) -> torch.Tensor:
    """Read an unsigned-byte IDX file (magic 00 00 08 ndim, big-endian dims) as uint8."""
    try:
        data = path.read_bytes()
    except OSError as e:  # unreadable by this user, a folder where the file should be, ...
        raise DataError(
            f"{path}: cannot read ({e.strerror}); let this user read it, or pass "
            "--data_root DIR whose MNIST/raw/ holds readable copies"
        ) from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != _IDX_UBYTE or data[3] == 0:
        raise DataError(
            f"{path}: not an unsigned-byte IDX file (bad magic number {data[:4].hex()}); "
            "replace it with the original MNIST file"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header; replace it with the original MNIST file")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(torch.tensor(shape).prod())
    if len(data) != expected:
        raise DataError(
            f"{path}: {len(data)} bytes but its header {shape} needs {expected}; "
            "the file is truncated or corrupt, replace it with the original MNIST file"
        )
    if expected == header:  # an empty file: frombuffer refuses a buffer of 0 bytes
        return torch.empty(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).view(*shape)


@dataclass
class MNISTSplit:
    """images (N, 1, 28, 28) float32 in [0, 1]; labels (N,) int64; both on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _download_cause(error: Exception) -> str:
    """One line naming why the download failed. torchvision's MNIST gathers every mirror's error
    into one RuntimeError ("Error downloading <file>:", then "Tried <mirror>, got:" and the error,
    per mirror); the last mirror's error is named, any other exception's first line."""
    lines = str(error).splitlines()
    causes = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith(", got:")]
    return causes[-1].strip() if causes else first_line(error)


def _fetch_missing(root: Path, missing: list[str]) -> None:
    """Try torchvision's download; if it fails, say which files go where."""
    from torchvision.datasets import MNIST

    try:
        MNIST(str(root), train=True, download=True)
        MNIST(str(root), train=False, download=True)
    except Exception as e:  # any download failure ends in the same instruction to the user
        raise DataError(
            f"MNIST files missing from {mnist_raw_dir(root)}/: {', '.join(missing)} "
            f"(download failed: {_download_cause(e)}); copy the four uncompressed IDX files there, "
            "or pass --data_root DIR whose MNIST/raw/ holds them"
        ) from None


def load_mnist(
    root: str | Path, split: str, device: torch.device | str = "cpu", download: bool = True
) -> MNISTSplit:
    """Load `split` ("train" or "test") from <root>/MNIST/raw/; download only missing files."""
    raw = mnist_raw_dir(root)
    image_file, label_file = MNIST_FILES[split]
    missing = [n for pair in MNIST_FILES.values() for n in pair if not (raw / n).is_file()]
    if missing and download:
        _fetch_missing(Path(root), missing)
    elif missing:
        raise DataError(
            f"MNIST files missing from {raw}/: {', '.join(missing)}; copy the four uncompressed "
            "IDX files there, or pass --data_root DIR whose MNIST/raw/ holds them"
        )
    images, labels = read_idx(raw / image_file), read_idx(raw / label_file)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(
            f"{raw}: {image_file} holds {list(images.shape)} but {label_file} holds "
            f"{list(labels.shape)}; expected (N, H, W) images and N labels"
        )
    if len(images) == 0:
        raise DataError(
            f"{raw / image_file}: holds no images; replace it with the original MNIST file"
        )
    wrong = (labels > 9).nonzero()
    if len(wrong):
        index = int(wrong[0])
        raise DataError(
            f"{raw / label_file}: label {int(labels[index])} at index {index} is not a digit "
            "0-9; replace it with the original MNIST file"
        )
    return MNISTSplit(
        images=(images.to(device).unsqueeze(1).float() / 255.0),
        labels=labels.to(device=device, dtype=torch.int64),
    )


def epoch_order(n: int, seed: int, epoch: int, device: torch.device | str) -> torch.Tensor:
    """The permutation of `n` training images for `epoch`: a function of (seed, epoch) alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def rank_share(order: torch.Tensor, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s part of an epoch's `order` when `world_size` processes share each global
    batch of `batch_size` (a multiple of world_size): the rank-th of world_size equal contiguous
    slices of every full batch, batch after batch; the last partial batch is dropped. The ranks'
    parts are disjoint and, batch by batch, make up exactly the batches one process would take;
    with one process it is the order's full batches."""
    per_rank = batch_size // world_size
    whole = len(order) // batch_size * batch_size
    return order[:whole].view(-1, world_size, per_rank)[:, rank].reshape(-1)


def train_batches(
    images: torch.Tensor, batch_size: int, order: torch.Tensor
) -> Iterator[torch.Tensor]:
    """Full batches in `order`; the last partial batch is dropped."""
    for start in range(0, len(order) - batch_size + 1, batch_size):
        yield images[order[start : start + batch_size]]


def eval_batches(split: MNISTSplit, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) in file order, the last batch possibly smaller."""
    for start in range(0, len(split), batch_size):
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
