"""MLP decoder: latent code -> image with pixels in [0, 1]."""

import math

import torch
from torch import nn

from model.components import LinearLayer
from model.linear_backend import Linear
from utils.config import MLPConfig


class Decoder(nn.Module):
    """Input z (N, latent_dim); returns (N, C, H, W) in [0, 1]."""

    def __init__(self, image_shape: list[int], latent_dim: int, config: MLPConfig):
        super().__init__()
        widths = config.hidden_features
        self.image_shape = tuple(image_shape)
        self.in_layer = nn.Sequential(Linear(latent_dim, widths[0]), nn.LeakyReLU(0.2))
        self.layers = nn.Sequential(
            *(
                LinearLayer(a, b, config.dropout)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        self.out_layer = nn.Sequential(Linear(widths[-1], math.prod(image_shape)), nn.Sigmoid())

    @property
    def last_layer(self) -> torch.Tensor:
        """The output layer's weight: where the composite loss compares its terms' gradients."""
        return self.out_layer[0].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.layers(self.in_layer(z))).view(-1, *self.image_shape)
