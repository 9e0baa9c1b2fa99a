"""MLP encoder: flattened image -> (mu, logvar) of a diagonal Gaussian posterior."""

import math

import torch
from torch import nn

from model.components import LinearLayer
from model.linear_backend import Linear
from utils.config import MLPConfig


class Encoder(nn.Module):
    """Input (N, C, H, W) in [0, 1]; returns mu and logvar, each (N, latent_dim)."""

    def __init__(self, image_shape: list[int], latent_dim: int, config: MLPConfig):
        super().__init__()
        widths = config.hidden_features
        self.in_layer = nn.Sequential(Linear(math.prod(image_shape), widths[0]), nn.LeakyReLU(0.2))
        self.layers = nn.Sequential(
            *(
                LinearLayer(a, b, config.dropout)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        self.mu = Linear(widths[-1], latent_dim)
        self.logvar = Linear(widths[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.layers(self.in_layer(x.flatten(1)))
        return self.mu(h), self.logvar(h)
