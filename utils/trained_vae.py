"""A trained VAE for the scripts that read one (infer.py's views, evaluate.py): loading it and
the test split it is checked against, batched encoding and decoding, and the codes of the latent
grid. Images are (N, C, H, W) in [0, 1]; nothing here draws (utils/views.py does).
"""

import argparse

import torch

from model.vae import VAE
from utils.checkpoint import load_checkpoint, load_state, vae_state_from
from utils.config import load_model_config
from utils.dataset import MNISTSplit, load_mnist
from utils.errors import UserError

GRID_LIMIT = 3.0  # the latent grid spans [-GRID_LIMIT, GRID_LIMIT] along z[0] and z[1]


def load_vae(model_config: str, ckpt_path: str, device: torch.device) -> VAE:
    """The VAE of `model_config` with the weights of `ckpt_path`, in eval mode on `device`."""
    vae = VAE(load_model_config(model_config).model_config)
    load_state(vae, vae_state_from(load_checkpoint(ckpt_path, device), ckpt_path), ckpt_path)
    return vae.to(device).eval()


def test_split(args: argparse.Namespace, device: torch.device, *vaes: VAE) -> MNISTSplit:
    """The MNIST test split from --data_root, checked against each model's image shape."""
    split = load_mnist(args.data_root, "test", device)
    for vae in vaes:
        if tuple(split.images.shape[1:]) != vae.decoder.image_shape:
            raise UserError(
                f"{args.data_root}: test images are {list(split.images.shape[1:])} but the model "
                f"makes {list(vae.decoder.image_shape)}; pass the model config of the checkpoint"
            )
    return split


def model_device(vae: VAE) -> torch.device:
    return next(vae.parameters()).device


@torch.inference_mode()
def encode_means(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] -> posterior means (N, latent_dim) on the CPU, one pass."""
    return vae.encoder(images.to(model_device(vae)))[0].float().cpu()


@torch.inference_mode()
def decode(vae: VAE, z: torch.Tensor) -> torch.Tensor:
    """Codes (N, latent_dim) -> images (N, C, H, W) in [0, 1] on the CPU, one decoder pass."""
    return vae.decoder(z.to(model_device(vae))).float().cpu()


def latent_grid(latent_dim: int, grid_size: int) -> torch.Tensor:
    """(grid_size^2, latent_dim) codes in row-major display order, as the reference draws them:
    z[0] rises from left to right, z[1] from the top row (-3) down to the bottom row (+3)."""
    values = torch.linspace(-GRID_LIMIT, GRID_LIMIT, grid_size)
    rows, cols = torch.meshgrid(values, values, indexing="ij")
    z = torch.zeros(grid_size * grid_size, latent_dim)
    z[:, 0], z[:, 1] = cols.flatten(), rows.flatten()
    return z
