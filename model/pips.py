"""PIPS: the reference's perceptual distance, over the slices of a frozen backbone.

For each slice, both feature maps are unit-normalised along channels, squared differences are
averaged over (C, H, W) per image, the slice terms are summed, and the batch is averaged.
(Computed in an expanded form, equal within float rounding: see `_mean_sq_distance_to_unit_target`.)
The backbones (model/backbones.py) differ only in their slices and input preparation;
utils/networks.py `build_pips` loads a backbone's weights and cuts it into slices.

The backbone is frozen and kept in eval mode; gradients flow only into the first argument.
"""

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


EPS = 1e-10  # added to each pixel's channel norm before dividing by it


def _channel_norm(features: torch.Tensor) -> torch.Tensor:
    """|f| over channels, (N, C, H, W) -> (N, H, W); its gradient is 0, not NaN, where f = 0."""
    return torch.linalg.vector_norm(features, dim=1)


def _unit_channels(features: torch.Tensor) -> torch.Tensor:
    return features / (_channel_norm(features).unsqueeze(1) + EPS)


def _mean_sq_distance_to_unit_target(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image, the mean over (C, H, W) of (unit(features) - target)^2, where `target` is
    already unit-normalised along channels. Both (N, C, H, W); returns (N,), float32.

    Expanded per pixel as |f|^2 / n^2 - 2 f.t / n + |t|^2 with n = |f| + EPS, the full-size
    tensors take two products instead of a dozen elementwise passes forward and backward
    (bench_ab.py times both forms). The terms nearly cancel for similar images, so they are
    computed in float32, also under a bfloat16 autocast, and rounding below 0 is clamped. For
    near-identical images the value's rounding error is absolute (up to 1e-8) and the gradient's
    up to twice the direct form's (tests/test_pips.py checks both against float64).
    """
    features, target = features.float(), target.float()
    norm = _channel_norm(features)
    per_pixel = (
        norm.pow(2) / (norm + EPS).pow(2)
        - 2 * (features * target).sum(dim=1) / (norm + EPS)
        + target.pow(2).sum(dim=1)
    )
    return per_pixel.clamp(min=0).mean(dim=(1, 2)) / features.shape[1]


class PIPS(nn.Module):
    """Perceptual distance. Inputs (N, C, H, W) in [0, 1]; returns a scalar (batch mean).

    `slices` run one after another on the prepared input: resized to `input_size` when it differs,
    and with `imagenet`, repeated to 3 channels and ImageNet-normalised.
    """

    def __init__(self, slices: Iterable[nn.Module], input_size: int, imagenet: bool):
        super().__init__()
        self.slices = nn.ModuleList(slices)
        self.input_size = input_size
        self.imagenet = imagenet
        if imagenet:
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PIPS":
        """The backbone stays in eval mode whatever its parent does."""
        return super().train(False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        if self.imagenet:
            x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return x

    def slice_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each slice's feature map (N, C_k, H_k, W_k), before normalisation, for images `x`
        (N, C, H, W) in [0, 1]."""
        out, h = [], self._prepare(x)
        for layer in self.slices:
            h = layer(h)
            out.append(h)
        return out

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = [_unit_channels(h.float()) for h in self.slice_outputs(x)]
        pairs = zip(self.slice_outputs(x_hat), targets, strict=True)
        return sum(_mean_sq_distance_to_unit_target(h, t) for h, t in pairs).mean()


def direct_distance(pips: PIPS, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reference only: PIPS as the formula is written (unit-normalise both feature maps, squared
    differences, mean, sum over slices, batch mean), which tests/test_pips.py and bench_ab.py
    hold `PIPS.forward`'s expanded form against. Same inputs and output as `PIPS.forward`."""
    pairs = zip(pips.slice_outputs(x_hat), pips.slice_outputs(x), strict=True)
    return sum(
        (_unit_channels(a) - _unit_channels(b)).pow(2).mean(dim=(1, 2, 3)) for a, b in pairs
    ).mean()
