"""The VAE: encoder, reparameterised sample, decoder."""

import torch
from torch import nn

from model.components import init_weights
from model.decoder import Decoder
from model.encoder import Encoder
from model.linear_backend import Linear
from utils.config import VAEConfig


class VAE(nn.Module):
    """Input (N, C, H, W) in [0, 1]; returns (reconstruction, mu, logvar).

    In training mode the decoder sees z = mu + eps * exp(0.5 * logvar); in eval mode it sees mu,
    so validation and inference are deterministic.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.latent_dim = config.latent_features
        # The dataset its weights learnt, where they come from a checkpoint (set by
        # utils/trained_vae.load_vae), so that views and grades use that dataset's images.
        self.trained_on: str | None = None
        self.encoder = Encoder(config.img_size, config.latent_features, config.encoder)
        self.decoder = Decoder(config.img_size, config.latent_features, config.decoder)
        init_weights(self)

    def set_linear_backend(self, backend: str) -> None:
        """Run every linear layer's products through `backend` ("aten", the default, or
        "onednn"; see model/linear_backend.py): the same weights and arithmetic up to rounding."""
        for layer in self.modules():
            if isinstance(layer, Linear):
                layer.set_backend(backend)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar
