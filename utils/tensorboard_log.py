"""Optional live logging to TensorBoard (train.py --tensorboard); metrics.csv stays the record.

    tensorboard --logdir checkpoints/simple/tensorboard

tensorboard itself is an optional package (pip install tensorboard), imported only when a run
turns this on, so other runs neither need it nor pay for importing it.
"""

import math
import textwrap
from pathlib import Path

import torch

from model.vae import VAE
from utils.config import ModelConfig, TrainConfig, config_json
from utils.dataset import MNISTSplit
from utils.errors import UserError

SAMPLES_PER_SIDE = 8  # the epoch picture of samples is 8 x 8 decodes of fixed z ~ N(0, I)
RECONSTRUCTED = 8  # test images shown above their reconstructions each epoch


def require_tensorboard() -> type:
    """torch's SummaryWriter; without the tensorboard package, one UserError line saying how to
    install it or turn the logging off. An entry script calls it at start-up, before training,
    when the config asks for TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard / the config's 'tensorboard': needs the tensorboard package "
            "(pip install tensorboard), or set it to false"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Writes into <save_dir>/tensorboard/: the configs as text, scalars every few steps and
    every metrics.csv column per epoch, and per epoch a picture of samples and one of
    reconstructions."""

    def __init__(self, save_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig):
        self.writer = require_tensorboard()(str(save_dir / "tensorboard"))
        for name, config in (("model_config", model_cfg), ("train_config", train_cfg)):
            # TensorBoard renders text as Markdown; indented lines show the JSON verbatim.
            self.writer.add_text(name, textwrap.indent(config_json(config), "    "))
        generator = torch.Generator().manual_seed(train_cfg.seed)
        self.z = torch.randn(
            SAMPLES_PER_SIDE**2, model_cfg.model_config.latent_features, generator=generator
        )

    def add_step(self, step: int, terms: dict[str, float], beta: float, lr_g: float) -> None:
        """Loss terms the loop has already read from the device; `step` counts steps done."""
        for name, value in {**terms, "beta": beta, "lr_g": lr_g}.items():
            self.writer.add_scalar(f"step/{name}", value, step)

    @torch.inference_mode()
    def add_epoch(self, row: dict[str, float], vae: VAE, val_set: MNISTSplit) -> None:
        """Every metrics.csv column of the epoch's row (NaN terms skipped), and the pictures:
        decodes of the same z each epoch, and the first test images above their
        reconstructions (decoded means)."""
        epoch = row["epoch"]
        for name, value in row.items():
            if name != "epoch" and not math.isnan(value):
                self.writer.add_scalar(f"epoch/{name}", value, epoch)
        was_training = vae.training
        vae.eval()
        images = val_set.images[:RECONSTRUCTED]
        samples = vae.decoder(self.z.to(images.device))
        pairs = torch.cat([images, vae(images)[0]])
        vae.train(was_training)
        for tag, picture, per_row in (
            ("samples", samples, SAMPLES_PER_SIDE),
            ("reconstructions", pairs, len(images)),
        ):
            from torchvision.utils import make_grid  # imported when a picture is logged

            grid = make_grid(picture.float().cpu(), nrow=per_row, padding=1, pad_value=0.5)
            self.writer.add_image(tag, grid, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
