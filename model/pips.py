"""PIPS: the reference's perceptual distance over five slices of VGG16 `features`.

For each slice, both feature maps are unit-normalised along channels, squared differences are
averaged over (C, H, W) per image, the five layer terms are summed, and the batch is averaged.
The backbone is frozen and kept in eval mode; gradients flow only into the first argument.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from utils.config import PIPSConfig
from utils.errors import CheckpointError

VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_weights_file() -> Path:
    """Where torchvision looks for the ImageNet VGG16 `features` weights (never downloaded here)."""
    name = Path(VGG16_Weights.IMAGENET1K_FEATURES.url).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _vgg16_features(weights: str) -> nn.Sequential:
    if weights == "random":
        return vgg16(weights=None).features
    path = vgg16_weights_file()
    if not path.is_file():
        raise CheckpointError(
            f"PIPS needs the ImageNet VGG16 weights file {path.name} in {path.parent}/ "
            f"(from {VGG16_Weights.IMAGENET1K_FEATURES.url}; this machine cannot download it); "
            'copy it there, or set pips_config.weights to "random" for a smoke test only'
        )
    return vgg16(weights=VGG16_Weights.IMAGENET1K_FEATURES).features


def _unit_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PIPS(nn.Module):
    """Perceptual distance. Inputs (N, 1 or 3, H, W) in [0, 1]; returns a scalar (batch mean)."""

    def __init__(self, config: PIPSConfig):
        super().__init__()
        features = _vgg16_features(config.weights)
        self.slices = nn.ModuleList(features[a:b] for a, b in VGG16_SLICES)
        self.input_size = config.input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PIPS":
        """The backbone stays in eval mode whatever its parent does."""
        return super().train(False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return (x - self.mean) / self.std

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], self._prepare(x)
        for layer in self.slices:
            h = layer(h)
            out.append(_unit_channels(h))
        return out

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self._features(x)
        per_image = sum(
            (a - b).pow(2).mean(dim=(1, 2, 3))
            for a, b in zip(self._features(x_hat), target, strict=True)
        )
        return per_image.mean()
