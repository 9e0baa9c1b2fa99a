"""PatchGAN critic: one real/fake logit per image patch."""

import torch
from torch import nn

from model.components import ConvLayer, Swish, init_weights
from utils.config import DiscriminatorConfig


class PatchDiscriminator(nn.Module):
    """Input (N, C, H, W) in [0, 1]; returns logits (N, 1, h, w), 7x7 for 28x28 by default."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        c = config.hidden_channels
        self.in_layer = nn.Sequential(nn.Conv2d(config.im_channels, c[0], 3, 1, 1), Swish())
        self.layers = nn.Sequential(
            *(
                ConvLayer(
                    c[i], c[i + 1], config.kernel_size[i], config.stride[i], config.padding[i]
                )
                for i in range(len(c) - 1)
            )
        )
        self.out_layer = nn.Conv2d(c[-1], 1, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.layers(self.in_layer(x)))
