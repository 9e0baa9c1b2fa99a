"""Render a trained VAE's latent-traversal grid as a PNG (headless).

    python infer.py --model_config configs/model_simple_config.json \
        --ckpt_path checkpoints/simple/final_model.pth
    python infer.py --model_config configs/model_composite_config.json \
        --ckpt_path checkpoints/composite/final_model.pth --grid_size 12 --save_path samples/c.png

The grid decodes z on a regular grid over [-3, 3]^2 in one batch: columns sweep latent dimension 1
(left to right), rows sweep latent dimension 2 (bottom to top). Larger latents keep the other
dimensions at 0, and the title says so.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from model.vae import VAE  # noqa: E402
from utils.checkpoint import load_checkpoint, load_state, vae_state_from  # noqa: E402
from utils.config import load_model_config  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.misc import pick_device, run_cli  # noqa: E402

GRID_LIMIT = 3.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model_config", required=True, help="the JSON model config the run used")
    p.add_argument(
        "--ckpt_path", required=True, help="final_model.pth, best_model.pth or a checkpoint"
    )
    p.add_argument("--grid_size", type=int, default=8, help="cells per side (default 8)")
    p.add_argument("--title", help="figure title (default: names the checkpoint)")
    p.add_argument("--save_path", help="PNG to write (default samples/<run>_<checkpoint>_grid.png)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p.parse_args()


def load_vae(model_config: str, ckpt_path: str, device: torch.device) -> VAE:
    """The VAE of `model_config` with the weights of `ckpt_path`, in eval mode on `device`."""
    vae = VAE(load_model_config(model_config))
    load_state(vae, vae_state_from(load_checkpoint(ckpt_path, device), ckpt_path), ckpt_path)
    return vae.to(device).eval()


def latent_grid(latent_dim: int, grid_size: int) -> torch.Tensor:
    """(grid_size^2, latent_dim) codes in row-major display order: top row has the largest z[1]."""
    values = torch.linspace(-GRID_LIMIT, GRID_LIMIT, grid_size)
    rows, cols = torch.meshgrid(values.flip(0), values, indexing="ij")
    z = torch.zeros(grid_size * grid_size, latent_dim)
    z[:, 0], z[:, 1] = cols.flatten(), rows.flatten()
    return z


@torch.inference_mode()
def decode_grid(vae: VAE, grid_size: int, device: torch.device) -> torch.Tensor:
    """One decoder pass for the whole grid; returns the tiled image (C, g*H, g*W) in [0, 1]."""
    images = vae.decoder(latent_grid(vae.latent_dim, grid_size).to(device)).float().cpu()
    c, h, w = images.shape[1:]
    return (
        images.view(grid_size, grid_size, c, h, w)
        .permute(2, 0, 3, 1, 4)
        .reshape(c, grid_size * h, grid_size * w)
    )


def save_grid_figure(canvas: torch.Tensor, grid_size: int, title: str, path: Path) -> None:
    """A titled figure whose axes read in latent units; PNG at `path`."""
    step = 2 * GRID_LIMIT / max(1, grid_size - 1)
    edge = GRID_LIMIT + step / 2
    fig, ax = plt.subplots(figsize=(7, 7.4))
    image = canvas[0] if canvas.shape[0] == 1 else canvas.permute(1, 2, 0)
    ax.imshow(
        image.numpy(),
        cmap="gray",
        vmin=0,
        vmax=1,
        extent=(-edge, edge, -edge, edge),
        interpolation="nearest",
    )
    ax.set_xlabel("z[0]  (latent dimension 1)")
    ax.set_ylabel("z[1]  (latent dimension 2)")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    if args.grid_size < 1:
        raise UserError(f"--grid_size {args.grid_size}: must be >= 1, e.g. 8")
    device = pick_device(args.device)
    vae = load_vae(args.model_config, args.ckpt_path, device)
    if vae.latent_dim < 2:
        raise UserError(
            f"{args.model_config}: latent_dim is {vae.latent_dim}; the 2-D grid needs >= 2"
        )
    ckpt = Path(args.ckpt_path)
    title = args.title or f"Latent traversal: {ckpt.parent.name}/{ckpt.name}"
    if vae.latent_dim > 2:
        title += f"\n(dimensions 3-{vae.latent_dim} held at 0)"
    save_path = Path(args.save_path or f"samples/{ckpt.parent.name}_{ckpt.stem}_grid.png")
    save_grid_figure(decode_grid(vae, args.grid_size, device), args.grid_size, title, save_path)
    print(f"grid of {args.grid_size}x{args.grid_size} -> {save_path}")


if __name__ == "__main__":
    run_cli(main)
