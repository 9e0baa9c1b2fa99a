"""model/components.py: the layers the encoder, decoder and critic are built of, by hand."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.components import LinearLayer
from model.vae import VAE
from tests.helpers import REPO
from utils.config import load_model_config

EPS = 1e-5  # BatchNorm's default


def identity_layer(dropout: float) -> LinearLayer:
    """A LinearLayer(3, 3) whose product is the identity, so its input is what BatchNorm sees."""
    layer = LinearLayer(3, 3, dropout)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.eye(3))
    return layer


def test_linear_layer_slopes_negative_inputs_by_one_fifth():
    # Eval mode: BatchNorm divides by sqrt(running var 1 + eps), dropout is off.
    layer = identity_layer(dropout=0.5).eval()
    x = torch.tensor([[-1.0, 2.0, -0.5]])
    scale = 1 / math.sqrt(1 + EPS)
    expected = torch.tensor([[-0.2 * scale, 2.0 * scale, -0.1 * scale]])
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=0)


def test_every_leaky_relu_of_the_vae_has_the_reference_slope():
    # The encoder's and decoder's input layers and their 3 + 3 LinearLayers.
    vae = VAE(load_model_config(REPO / "configs/model_simple_config.json").model_config)
    slopes = [m.negative_slope for m in vae.modules() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.2] * 8
    # The encoder's input layer, on a negative input: 784 pixels of -1 through Xavier weights.
    with torch.no_grad():
        layer = vae.encoder.in_layer
        pre = layer[0](torch.full((1, 784), -1.0))
        torch.testing.assert_close(
            layer(torch.full((1, 784), -1.0)), torch.where(pre < 0, 0.2 * pre, pre)
        )


def test_linear_layer_drops_out_after_batchnorm_and_activation():
    # Train mode: BatchNorm normalises by the batch's own mean and biased variance; dropout then
    # zeroes units of the activated output and scales the rest by 1 / (1 - p).
    layer = identity_layer(dropout=0.5).train()
    x = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.5], [-2.0, 4.0, 2.5], [0.0, 1.0, -4.0]])
    normalised = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + EPS)
    activated = torch.where(normalised < 0, 0.2 * normalised, normalised)
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    expected = F.dropout(activated, 0.5, training=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    dropped = expected == 0
    assert 0 < dropped.sum() < dropped.numel()  # the seed drops some units, not all
    torch.testing.assert_close(out[~dropped], 2 * activated[~dropped], rtol=1e-5, atol=1e-6)
