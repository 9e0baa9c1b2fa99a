"""A trained VAE for the scripts that read one (infer.py's views, evaluate.py): loading it and
the test split it is checked against, batched encoding and decoding, and the codes of the latent
grid. Images are (N, C, H, W) in [0, 1]; nothing here draws (utils/views.py does).
"""

import argparse
import math
import os
from pathlib import Path

import torch

from model.vae import VAE
from utils.checkpoint import load_checkpoint, load_state, trained_on, vae_state_from
from utils.config import VAEConfig, load_model_config
from utils.dataset import DATASETS, MNISTSplit, load_mnist
from utils.errors import CheckpointError, ConfigError, UserError

GRID_LIMIT = 3.0  # the latent grid spans [-GRID_LIMIT, GRID_LIMIT] along z[0] and z[1]


def memory_bytes() -> int:
    """The host memory this process may use: the physical memory, or the cgroup's limit
    (cgroup v2 memory.max) where one is set and lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def _widest_field(cfg: VAEConfig) -> tuple[str, int]:
    """The model config field with the largest width: the one to lower to shrink the model."""
    fields = [("latent_features", cfg.latent_features), ("img_size", math.prod(cfg.img_size))]
    for part in ("encoder", "decoder"):
        widths = getattr(cfg, part).hidden_features
        fields += [(f"{part}.hidden_features[{i}]", w) for i, w in enumerate(widths)]
    return max(fields, key=lambda f: f[1])


def check_fits(model_cfg: VAEConfig, path: str | Path, copies: int = 1) -> int:
    """The bytes `copies` float32 copies of the VAE of `model_cfg` take (1: weights alone; a
    script that also holds the checkpoint's copy passes 2; training about 4: weights, gradients
    and Adam's two moments). Counted on the meta device, so nothing is allocated; when they
    exceed this machine's memory, raises one-line ConfigError naming the config file `path`
    and the field to lower."""
    try:
        with torch.device("meta"):
            vae = VAE(model_cfg)
        count = sum(t.numel() for t in [*vae.parameters(), *vae.buffers()])
    except (RuntimeError, OverflowError):  # a size past int64: far beyond any memory
        count = math.inf
    needed, available = 4 * count * copies, memory_bytes()
    if needed > available:
        field, value = _widest_field(model_cfg)
        shown = "more than 2**63" if count == math.inf else f"{count:,}"
        raise ConfigError(
            f"{path}: the model has {shown} parameters, {needed / 2**30:,.1f} GiB of float32 "
            f"weights ({copies} {'copy' if copies == 1 else 'copies'}) but this machine has "
            f"{available / 2**30:,.1f} GiB of memory; lower model_config.{field} ({value:,})"
        )
    return int(needed)


def check_finite(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights holding NaN or infinity (a diverged run), naming the first such tensor."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"{path}: tensor '{name}' holds NaN or infinite values: the weights are not "
                "finite (training diverged); pass an earlier checkpoint"
            )


def load_vae(model_config: str, ckpt_path: str, device: torch.device) -> VAE:
    """The VAE of `model_config` with the weights of `ckpt_path`, in eval mode on `device`.
    A model too big for memory is refused before it is built, weights that are not finite
    before they are loaded."""
    cfg = load_model_config(model_config).model_config
    check_fits(cfg, model_config, copies=2)  # the model and the checkpoint's copy
    vae = VAE(cfg)
    payload = load_checkpoint(ckpt_path, device)
    state = vae_state_from(payload, ckpt_path)
    load_state(vae, state, ckpt_path)
    check_finite(state, ckpt_path)
    vae.trained_on = trained_on(payload, ckpt_path)
    return vae.to(device).eval()


def dataset_of(args: argparse.Namespace, *vaes: VAE) -> str:
    """The dataset to read test images from: the one the models learnt (MNIST without one),
    which --dataset may name but not contradict; models of two datasets are refused."""
    learnt = sorted({vae.trained_on or "mnist" for vae in vaes})
    if len(learnt) > 1:
        titles = " and ".join(DATASETS[d].title for d in learnt)
        raise UserError(f"the checkpoints learnt {titles}; pass checkpoints of one dataset")
    dataset = learnt[0] if learnt else (args.dataset or "mnist")
    if args.dataset not in (None, dataset):
        raise UserError(
            f"--dataset {args.dataset}: {args.ckpt_path} was trained on {DATASETS[dataset].title}; "
            f"pass --dataset {dataset}, or leave --dataset out"
        )
    return dataset


def test_split(args: argparse.Namespace, device: torch.device, *vaes: VAE) -> MNISTSplit:
    """The test split of the models' dataset (dataset_of) from --data_root, checked against
    each model's image shape."""
    split = load_mnist(args.data_root, "test", device, dataset=dataset_of(args, *vaes))
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
def encode_posterior(vae: VAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) in [0, 1] -> the posterior's means and log-variances, each
    (N, latent_dim) on the CPU, one pass."""
    mu, logvar = vae.encoder(images.to(model_device(vae)))[:2]
    return mu.float().cpu(), logvar.float().cpu()


def encode_means(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] -> posterior means (N, latent_dim) on the CPU, one pass."""
    return encode_posterior(vae, images)[0]


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
