"""Two small MNIST classifiers: the PIPS backbone and the evaluation network.

Both take (N, 1, 28, 28) in [0, 1] as they are (no resize, no normalisation) and are a chain of
stages whose last stage gives the 10 digit logits. The PIPS loss compares the outputs of the
`pips` network's stages; evaluate.py grades samples with the `eval` network, a different
architecture trained from a different seed on the other half of the training split, so a model is
never graded by the network it was trained against, nor by one that learnt from the same images.
utils/networks.py trains, saves and loads them.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from model.backbones import BACKBONES


class StagedCNN(nn.Module):
    """A classifier as a chain of stages. Input (N, 1, 28, 28) in [0, 1]; returns logits (N, 10)."""

    def __init__(self, *stages: nn.Module):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output, in order; the last one is the logits as (N, 10, 1, 1)."""
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_outputs(x)[-1].flatten(1)


def pips_cnn() -> StagedCNN:
    """conv 32 -> pool -> conv 64 -> pool -> conv 128 -> linear 10; four stages for PIPS:
    32x28x28, 64x14x14, 128x7x7 and the logits (10x1x1). Pooling before the wider convolutions
    keeps a training epoch on a 2-core CPU near a minute."""
    return StagedCNN(
        nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(128 * 7 * 7, 10), nn.Unflatten(1, (10, 1, 1))),
    )


def eval_cnn() -> StagedCNN:
    """LeNet-like: conv5 16 -> pool -> conv5 32 -> pool -> linear 128 -> linear 10; evaluate.py
    takes its 128-wide penultimate stage as the features of Frechet distances."""
    return StagedCNN(
        nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU()),
        nn.Sequential(nn.Linear(128, 10), nn.Unflatten(1, (10, 1, 1))),
    )


@dataclass(frozen=True)
class NetworkSpec:
    """What one network is: its builder, training seed, the half of the training split it learns
    from (utils/networks.training_half), default file (`file` with "{weights}" for the dataset
    it learns) and a name for messages."""

    build: Callable[[], StagedCNN]
    seed: int
    half: int
    file: str
    title: str

    def default_path(self, dataset: str) -> str:
        """The default file of this network trained on `dataset` (utils/dataset.DATASETS)."""
        return self.file.format(weights=dataset)


NETWORKS = {
    "pips": NetworkSpec(pips_cnn, 1, 0, BACKBONES["mnist_cnn"].weights_path, "PIPS backbone CNN"),
    "eval": NetworkSpec(eval_cnn, 2, 1, "checkpoints/{weights}_eval_net.pth", "evaluation CNN"),
}
