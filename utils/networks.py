"""The networks that come with weights from files: the two MNIST CNNs of model/mnist_cnn.py
(trained, saved and loaded here with one routine), VGG16 (torchvision's ImageNet weights), and
the PIPS loss cut from either backbone (model/backbones.py says how).

`make_network` trains a network from its seed on its half of the training split (Adam, batch
128, four epochs over the half: the steps of two over the whole split). The two halves are
disjoint, so the evaluation network never learns from the images the PIPS backbone learnt from.
It prints one line saying what it trains and where it saves it, and saves it atomically with its
test accuracy; `load_network` reads it back and refuses, in one line, a file that is unreadable
or holds another network. `build_pips` loads a backbone's layers and
cuts them into the slices its table entry lists.
"""

import hashlib
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from model.backbones import BACKBONES
from model.mnist_cnn import NETWORKS, StagedCNN
from model.pips import PIPS
from utils.checkpoint import load_checkpoint, load_state, save_checkpoint, trained_on
from utils.config import PIPSConfig
from utils.dataset import DATASETS, MNISTSplit, epoch_order, eval_batches, train_batches
from utils.errors import CheckpointError, first_line

EPOCHS = 4
BATCH_SIZE = 128
LR = 1e-3
# The fixed shuffle that cuts the training split into the networks' two halves (NetworkSpec.half).
HALVES_SEED = 0


def training_half(split: MNISTSplit, half: int) -> MNISTSplit:
    """Half `half` (0 or 1) of `split`: every other image of a fixed seeded shuffle, so the two
    halves are disjoint, together hold every image, and each has every digit in about the
    split's proportions."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(HALVES_SEED))
    chosen = order[half::2].to(split.images.device)
    return MNISTSplit(split.images[chosen], split.labels[chosen], split.dataset)


def file_sha256(path: Path) -> str:
    """SHA-256 of the file's bytes, as `sha256sum` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@torch.inference_mode()
def accuracy(net: StagedCNN, split: MNISTSplit, batch_size: int = 1000) -> float:
    """Share of `split`'s images (in [0, 1]) whose most likely digit is their label."""
    net.eval()
    hits = sum((net(x).argmax(1) == y).sum().item() for x, y in eval_batches(split, batch_size))
    return hits / len(split)


def train_classifier(net: StagedCNN, train_set: MNISTSplit, seed: int, epochs: int) -> None:
    """Cross-entropy with Adam over seeded epoch orders of `train_set` (images in [0, 1])."""
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    steps = len(train_set) // BATCH_SIZE
    net.train()
    for epoch in range(1, epochs + 1):
        order = epoch_order(len(train_set), seed, epoch, train_set.images.device)
        bar = tqdm(
            zip(
                train_batches(train_set.images, BATCH_SIZE, order),
                train_batches(train_set.labels, BATCH_SIZE, order),
                strict=True,
            ),
            total=steps,
            leave=False,
            desc=f"epoch {epoch}/{epochs}",
            disable=not sys.stderr.isatty(),
        )
        for x, y in bar:
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def make_network(
    name: str, path: Path, train_split: MNISTSplit, test_set: MNISTSplit, epochs: int = EPOCHS
) -> float:
    """Train network `name` ("pips" or "eval") from its seed on its half of `train_split` (the
    whole training split of its dataset), save it to `path` with the dataset's name; returns its
    accuracy on `test_set`."""
    spec, dataset = NETWORKS[name], train_split.dataset
    train_set = training_half(train_split, spec.half)
    print(
        f"training the {spec.title} ({epochs} epochs on half {spec.half} of the "
        f"{DATASETS[dataset].title} training split: {len(train_set)} of {len(train_split)} "
        f"images, seed {spec.seed}) -> {path}",
        flush=True,
    )
    torch.manual_seed(spec.seed)
    net = spec.build().to(train_set.images.device)
    started = time.perf_counter()
    train_classifier(net, train_set, spec.seed, epochs)
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(net, test_set)
    save_checkpoint(
        {
            "network": name,
            "dataset": dataset,
            "state_dict": net.state_dict(),
            "test_accuracy": test_accuracy,
            "epochs": epochs,
            "seed": spec.seed,
            "train_half": spec.half,
            "train_size": len(train_set),
            "seconds": seconds,
        },
        path,
    )
    return test_accuracy


def load_network(
    name: str, path: Path, device: torch.device | str = "cpu", dataset: str = "mnist"
) -> StagedCNN:
    """Network `name` trained on `dataset` with the weights in `path`, frozen, in eval mode on
    `device`. A file of another network, or of the same network trained on another dataset
    (files made before datasets were recorded are MNIST's), is refused in one line."""
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no {NETWORKS[name].title} file; make it with python make_networks.py "
            f"--network {name} --dataset {dataset} --data_root DIR"
        )
    payload = load_checkpoint(path, device)
    if payload.get("network") != name or "state_dict" not in payload:
        held = payload.get("network", "no network this code wrote")
        raise CheckpointError(
            f"{path}: holds {held!r}, not the {NETWORKS[name].title} ({name!r}); delete it or "
            "point at the right file, and it is made again"
        )
    learnt = trained_on(payload, path)
    if learnt != dataset:
        raise CheckpointError(
            f"{path}: holds the {NETWORKS[name].title} trained on {DATASETS[learnt].title}, not "
            f"{DATASETS[dataset].title}; point at the {DATASETS[dataset].title} one "
            f"({NETWORKS[name].default_path(dataset)})"
        )
    net = NETWORKS[name].build()
    load_state(net, payload["state_dict"], path)
    return net.to(device).eval().requires_grad_(False)


def network_record(path: Path) -> dict:
    """What a network file is, for the grades it gives: its SHA-256, its accuracy on the test
    split it was made with, the training half and number of images it learnt from (None where
    a file made before halves existed does not say)."""
    payload = load_checkpoint(path, "cpu")
    return {
        "sha256": file_sha256(path),
        "test_accuracy": payload.get("test_accuracy"),
        "train_half": payload.get("train_half"),
        "train_size": payload.get("train_size"),
    }


def _torchvision_vgg16():
    """torchvision's VGG16 builder and weights enum, imported on first use: importing
    torchvision.models pulls in torch._dynamo, which would slow every script's start-up for
    a backbone only the reference configs use."""
    from torchvision.models import VGG16_Weights, vgg16

    return vgg16, VGG16_Weights


def vgg16_weights_file() -> Path:
    """Where torchvision keeps the ImageNet VGG16 `features` weights (torch's hub cache)."""
    _, VGG16_Weights = _torchvision_vgg16()
    name = Path(VGG16_Weights.IMAGENET1K_FEATURES.url).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def vgg16_features(config: PIPSConfig) -> nn.Sequential:
    """VGG16's `features` with config.weights; ImageNet weights come from torch's hub cache,
    downloaded by torchvision when missing (as the reference does). Offline, a failed download is
    one line saying where the file goes and how to train without it."""
    vgg16, VGG16_Weights = _torchvision_vgg16()
    if config.weights == "random":
        return vgg16(weights=None).features
    path = vgg16_weights_file()
    cached = path.is_file()
    try:
        return vgg16(weights=VGG16_Weights.IMAGENET1K_FEATURES).features
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        # URLError is an OSError; a damaged file raises any of the others.
        cause = first_line(e)
        if cached:
            raise CheckpointError(
                f"{path}: not a readable VGG16 weights file ({cause}); delete it, and it is "
                "downloaded again"
            ) from None
        raise CheckpointError(
            f"PIPS needs the ImageNet VGG16 weights file {path.name} in {path.parent}/ and "
            f"downloading it from {VGG16_Weights.IMAGENET1K_FEATURES.url} failed ({cause}); "
            "copy the file there, or train offline with the MNIST backbone "
            "(--model_config configs/model_composite_mnist_config.json)"
        ) from None


def pips_backbone_to_make(config: PIPSConfig | None) -> Path | None:
    """The CNN backbone file PIPS config `config` names, when it does not exist yet (None
    otherwise, or without a config): whatever starts a composite run (train.py, bench.py,
    study.py --bench) makes it first, on the run's dataset, with make_network("pips", ...)."""
    if config is None or not config.weights_path:
        return None
    path = Path(config.weights_path)
    return None if path.is_file() else path


def mnist_cnn_stages(config: PIPSConfig) -> nn.ModuleList:
    """The stages of the PIPS CNN trained on config.weights (a dataset) in config.weights_path,
    which must exist already (train.py makes it first; so does `python make_networks.py
    --network pips`)."""
    return load_network("pips", Path(config.weights_path), dataset=config.weights).stages


# Each backbone's chain of layers with its weights, which model/backbones.py's slices index.
BACKBONE_LAYERS: dict[str, Callable[[PIPSConfig], nn.Sequential | nn.ModuleList]] = {
    "vgg16": vgg16_features,
    "mnist_cnn": mnist_cnn_stages,
}


def build_pips(config: PIPSConfig) -> PIPS:
    """The PIPS loss of `config`: its backbone's layers, cut into the backbone's slices."""
    spec = BACKBONES[config.backbone]
    layers = BACKBONE_LAYERS[config.backbone](config)
    slices = (nn.Sequential(*layers[start:end]) for start, end in spec.slices)
    return PIPS(slices, config.input_size, spec.imagenet)
