"""MNIST (or Fashion-MNIST) straight from its IDX files into tensors, and batches drawn from them.

The whole split lives in one float tensor in [0, 1] on the training device; an epoch is a seeded
permutation of it. No Dataset, no DataLoader, no worker processes: MNIST fits in memory many times
over, and per-sample Python work is what makes the usual pipeline slow.

The two datasets share the IDX format, the file names and the sizes; DATASETS says where each
lives and what its classes are. The files may be plain or gzipped (`.gz`, as Debian's
dataset-fashion-mnist installs them), in torchvision's layout (<root>/<folder>/raw/) or in the
data root itself.
"""

import gzip
import hashlib
import zlib
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
# --data_root's help in every script.
DATA_ROOT_HELP = (
    "folder holding MNIST/raw/ or FashionMNIST/raw/ (torchvision's layout), or the four IDX "
    "files themselves, plain or .gz (default data/)"
)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its name in messages, torchvision's folder for it, what a label is called
    in the views and the name of each class."""

    title: str
    folder: str
    noun: str
    classes: tuple[str, ...]


DATASETS = {
    "mnist": DatasetSpec("MNIST", "MNIST", "digit", tuple("0123456789")),
    "fashion_mnist": DatasetSpec(
        "Fashion-MNIST",
        "FashionMNIST",
        "class",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


def mnist_raw_dir(root: str | Path, dataset: str = "mnist") -> Path:
    """torchvision's layout: <root>/MNIST/raw/ (<root>/FashionMNIST/raw/ for Fashion-MNIST)."""
    return Path(root) / DATASETS[dataset].folder / "raw"


def find_files(root: str | Path, dataset: str = "mnist") -> tuple[Path, dict[str, Path]]:
    """The folder holding the dataset's files and each file found there (plain, else `.gz`):
    torchvision's <root>/<folder>/raw/ when it holds any of them, else the root itself when it
    does (Debian's layout), else torchvision's folder with none."""
    names = [n for pair in MNIST_FILES.values() for n in pair]
    for folder in (mnist_raw_dir(root, dataset), Path(root)):
        found = {}
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if found:
            return folder, found
    return mnist_raw_dir(root, dataset), {}


def _file_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it ends in .gz."""
    try:
        data = path.read_bytes()
    except OSError as e:  # unreadable by this user, a folder where the file should be, ...
        raise DataError(
            f"{path}: cannot read ({e.strerror}); let this user read it, or pass "
            "--data_root DIR whose MNIST/raw/ holds readable copies"
        ) from None
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # not gzip, or cut short
        raise DataError(
            f"{path}: not a whole gzip file ({first_line(e)}); replace it with the original file"
        ) from None


# The SHA-256 (first 16 hex digits) of the first 4096 bytes of each original file, per dataset:
# the two datasets share file names, so a folder holding one may be taken for the other.
FINGERPRINTS = {
    "3578fc65cebc6314": "mnist",
    "026c1f9224bc82a8": "mnist",
    "52a0245ca77e0d85": "mnist",
    "465726f2d32f64df": "mnist",
    "73fda24d90a4689a": "fashion_mnist",
    "f99483a0d2b949c8": "fashion_mnist",
    "ca71e055028bc426": "fashion_mnist",
    "8999b541bcbea5ef": "fashion_mnist",
}


def _check_dataset(data: bytes, path: Path, dataset: str) -> None:
    """Refuse a file that is the original of the other dataset (files of neither pass). The fix
    named is another data root: where a checkpoint fixes the dataset, --dataset is no fix."""
    found = FINGERPRINTS.get(hashlib.sha256(data[:4096]).hexdigest()[:16], dataset)
    if found != dataset:
        raise DataError(
            f"{path}: is {DATASETS[found].title}'s file, not {DATASETS[dataset].title}'s; pass "
            f"--data_root DIR whose {DATASETS[dataset].folder}/raw/ holds "
            f"{DATASETS[dataset].title}'s files"
        )


def read_idx(path: Path, dataset: str = "mnist") -> torch.Tensor:
    """Read an unsigned-byte IDX file (magic 00 00 08 ndim, big-endian dims), plain or gzipped,
    as uint8, refusing the other dataset's original file; `dataset` (a key of DATASETS) is
    named in messages."""
    data = _file_bytes(path)
    _check_dataset(data, path, dataset)
    title = DATASETS[dataset].title
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != _IDX_UBYTE or data[3] == 0:
        raise DataError(
            f"{path}: not an unsigned-byte IDX file (bad magic number {data[:4].hex()}); "
            f"replace it with the original {title} file"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header; replace it with the original {title} file")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(torch.tensor(shape).prod())
    if len(data) != expected:
        raise DataError(
            f"{path}: {len(data)} bytes but its header {shape} needs {expected}; "
            f"the file is truncated or corrupt, replace it with the original {title} file"
        )
    if expected == header:  # an empty file: frombuffer refuses a buffer of 0 bytes
        return torch.empty(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).view(*shape)


@dataclass
class MNISTSplit:
    """images (N, 1, 28, 28) float32 in [0, 1]; labels (N,) int64; both on one device; the
    dataset (a key of DATASETS) they come from."""

    images: torch.Tensor
    labels: torch.Tensor
    dataset: str = "mnist"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def spec(self) -> DatasetSpec:
        return DATASETS[self.dataset]

    def class_name(self, index: int) -> str:
        """The name of image `index`'s class (its digit for MNIST)."""
        return self.spec.classes[int(self.labels[index])]


def _download_cause(error: Exception) -> str:
    """One line naming why the download failed. torchvision's MNIST gathers every mirror's error
    into one RuntimeError ("Error downloading <file>:", then "Tried <mirror>, got:" and the error,
    per mirror); the last mirror's error is named, any other exception's first line."""
    lines = str(error).splitlines()
    causes = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith(", got:")]
    return causes[-1].strip() if causes else first_line(error)


def _missing_line(dataset: str, raw: Path, missing: list[str]) -> tuple[str, str]:
    """What is missing where, and how to fix it (the download's cause goes between)."""
    spec = DATASETS[dataset]
    return (
        f"{spec.title} files missing from {raw}/: {', '.join(missing)}",
        f"copy the four IDX files (plain or .gz) there, or pass --data_root DIR whose "
        f"{spec.folder}/raw/ holds them",
    )


def _fetch_missing(root: Path, missing: list[str], dataset: str) -> None:
    """Try torchvision's download; if it fails, say which files go where."""
    from torchvision import datasets

    fetch = getattr(datasets, DATASETS[dataset].folder)
    try:
        fetch(str(root), train=True, download=True)
        fetch(str(root), train=False, download=True)
    except Exception as e:  # any download failure ends in the same instruction to the user
        what, how = _missing_line(dataset, mnist_raw_dir(root, dataset), missing)
        raise DataError(f"{what} (download failed: {_download_cause(e)}); {how}") from None


def load_mnist(
    root: str | Path,
    split: str,
    device: torch.device | str = "cpu",
    download: bool = True,
    dataset: str = "mnist",
) -> MNISTSplit:
    """Load `split` ("train" or "test") of `dataset` (DATASETS) from `root` (find_files says
    where); download only missing files."""
    raw, found = find_files(root, dataset)
    missing = [n for pair in MNIST_FILES.values() for n in pair if n not in found]
    if missing and download:
        _fetch_missing(Path(root), missing, dataset)
        raw, found = find_files(root, dataset)
    elif missing:
        what, how = _missing_line(dataset, raw, missing)
        raise DataError(f"{what}; {how}")
    title = DATASETS[dataset].title
    image_path, label_path = (found[name] for name in MNIST_FILES[split])
    images, labels = read_idx(image_path, dataset), read_idx(label_path, dataset)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(
            f"{raw}: {image_path.name} holds {list(images.shape)} but {label_path.name} holds "
            f"{list(labels.shape)}; expected (N, H, W) images and N labels"
        )
    if len(images) == 0:
        raise DataError(f"{image_path}: holds no images; replace it with the original {title} file")
    wrong = (labels > 9).nonzero()
    if len(wrong):
        index = int(wrong[0])
        kind = "digit" if dataset == "mnist" else "class"
        raise DataError(
            f"{label_path}: label {int(labels[index])} at index {index} is not a {kind} "
            f"0-9; replace it with the original {title} file"
        )
    return MNISTSplit(
        images=(images.to(device).unsqueeze(1).float() / 255.0),
        labels=labels.to(device=device, dtype=torch.int64),
        dataset=dataset,
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
