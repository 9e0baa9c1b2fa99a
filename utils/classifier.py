"""Train, save and load the two MNIST CNNs of model/mnist_cnn.py with one routine.

`make_network` trains a network from its seed on a training split (Adam, batch 128, a couple of
epochs: about 99 % test accuracy on real MNIST), prints one line saying what it trains and where
it saves it, and saves it atomically; `load_network` reads it back and refuses, in one line, a
file that is unreadable or holds another network.
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.mnist_cnn import NETWORKS, StagedCNN
from utils.checkpoint import load_checkpoint, load_state, save_checkpoint
from utils.dataset import MNISTSplit, epoch_order, eval_batches, train_batches
from utils.errors import CheckpointError

EPOCHS = 2
BATCH_SIZE = 128
LR = 1e-3


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
        bar = tqdm(zip(train_batches(train_set.images, BATCH_SIZE, order),
                       train_batches(train_set.labels, BATCH_SIZE, order), strict=True),
                   total=steps, leave=False, desc=f"epoch {epoch}/{epochs}",
                   disable=not sys.stderr.isatty())  # fmt: skip
        for x, y in bar:
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def make_network(
    name: str, path: Path, train_set: MNISTSplit, test_set: MNISTSplit, epochs: int = EPOCHS
) -> float:
    """Train network `name` ("pips" or "eval") from its seed, save it to `path`; returns its
    accuracy on `test_set`."""
    spec = NETWORKS[name]
    print(
        f"training the {spec.title} ({epochs} epochs on {len(train_set)} MNIST training images, "
        f"seed {spec.seed}) -> {path}",
        flush=True,
    )
    torch.manual_seed(spec.seed)
    net = spec.build().to(train_set.images.device)
    started = time.perf_counter()
    train_classifier(net, train_set, spec.seed, epochs)
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(net, test_set)
    save_checkpoint(
        {"network": name, "state_dict": net.state_dict(), "test_accuracy": test_accuracy,
         "epochs": epochs, "seed": spec.seed, "train_size": len(train_set),
         "seconds": seconds},
        path,
    )  # fmt: skip
    return test_accuracy


def load_network(name: str, path: Path, device: torch.device | str = "cpu") -> StagedCNN:
    """Network `name` with the weights in `path`, frozen, in eval mode on `device`."""
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no {NETWORKS[name].title} file; make it with "
            f"python make_networks.py --network {name} --data_root DIR"
        )
    payload = load_checkpoint(path, device)
    if payload.get("network") != name or "state_dict" not in payload:
        held = payload.get("network", "no network this code wrote")
        raise CheckpointError(
            f"{path}: holds {held!r}, not the {NETWORKS[name].title} ({name!r}); delete it or "
            "point at the right file, and it is made again"
        )
    net = NETWORKS[name].build()
    load_state(net, payload["state_dict"], path)
    return net.to(device).eval().requires_grad_(False)
