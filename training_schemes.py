"""The training loop shared by both schemes.

    simple:    beta-VAE: lambda_recon * recon + beta * KL (beta warm-up, free bits)
    composite: the same VAE + lambda_pips * PIPS + lambda_disc * PatchGAN adversarial term,
               and a discriminator trained from step floor(disc_start_ratio * total_steps)

One loop runs both: the scheme's loss object decides what a step computes, and the composite
scheme adds one discriminator update per step. Reading order is execution order: model, loss,
optimisers, then epochs of (train steps, validation, metrics row, checkpoint, early stopping).
train.py is the entry point; nothing here parses arguments or exits.
"""

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from model.discriminator import PatchDiscriminator
from model.pips import PIPS
from model.vae import VAE
from utils.checkpoint import save_checkpoint
from utils.config import ModelConfig, OptimizerParams, TrainConfig
from utils.dataset import MNISTSplit, epoch_order, eval_batches, train_batches
from utils.errors import UserError
from utils.loss import BetaVAELoss, CompositeLoss
from utils.metrics import MetricsLog
from utils.misc import warmup_cosine
from utils.tensorboard_log import TensorBoardLog

SCHEMES = ("simple", "composite")
LIVE_LOSS_EVERY = 25  # steps between progress-bar / TensorBoard updates (each syncs the device)


def check_scheme(
    scheme: str, model_cfg: ModelConfig, train_cfg: TrainConfig, model_path: str, train_path: str
) -> None:
    """The composite scheme needs the critic, the perceptual loss and a critic optimiser."""
    if scheme != "composite":
        return
    for name in ("discriminator_config", "pips_config"):
        if getattr(model_cfg, name) is None:
            raise UserError(
                f"{model_path}: the composite scheme needs '{name}'; "
                "see configs/model_composite_config.json"
            )
    if train_cfg.optimizer.params_d is None:
        raise UserError(
            f"{train_path}: the composite scheme needs 'optimizer.params_d'; "
            "see configs/train_composite_config.json"
        )


def build_loss(
    scheme: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    steps_per_epoch: int,
    total_steps: int,
) -> BetaVAELoss:
    if scheme == "simple":
        return BetaVAELoss(train_cfg.loss, steps_per_epoch)
    critic = PatchDiscriminator(
        model_cfg.discriminator_config, in_channels=model_cfg.image_shape[0]
    )
    return CompositeLoss(
        train_cfg.loss, steps_per_epoch, total_steps, critic, PIPS(model_cfg.pips_config)
    )


def adam_with_schedule(
    params, settings: OptimizerParams, total_steps: int
) -> tuple[torch.optim.Adam, LambdaLR]:
    """Adam, with linear warm-up then cosine decay to 0, stepped once per optimisation step."""
    optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = math.floor(settings.warmup_ratio * total_steps)
    return optimizer, LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total_steps))


class TermAverager:
    """Weighted means of named loss terms, summed on the device and read once."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, int] = {}

    def add(self, terms: dict[str, torch.Tensor], weight: int = 1) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value * weight
            self.weights[name] = self.weights.get(name, 0) + weight

    def means(self, names: tuple[str, ...]) -> dict[str, float]:
        """NaN for a term never reported (the adversarial terms before the critic is on)."""
        return {
            n: (self.sums[n] / self.weights[n]).item() if n in self.sums else math.nan
            for n in names
        }


class EarlyStopping:
    """Stop once the epoch's train loss has not beaten the best by more than `tol` for
    `patience` epochs; remembers the best weights."""

    def __init__(self, patience: int, tol: float):
        self.patience, self.tol = patience, tol
        self.best_loss, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] = {}

    def should_stop(self, epoch: int, loss: float, model: torch.nn.Module) -> bool:
        if loss < self.best_loss - self.tol:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


@torch.inference_mode()
def validate(
    vae: VAE, loss_fn: BetaVAELoss, val_set: MNISTSplit, batch_size: int, step: int
) -> dict[str, float]:
    """Generator loss terms over the whole validation split, eval mode (decodes mu)."""
    vae.eval()
    loss_fn.eval()
    averager = TermAverager()
    for x, _ in eval_batches(val_set, batch_size):
        x_hat, mu, logvar = vae(x)
        averager.add(loss_fn.generator_loss(x_hat, x, mu, logvar, step)[1], weight=len(x))
    return averager.means(loss_fn.term_names)


@dataclass
class RunSummary:
    epochs_run: int
    steps: int
    stopped_early: bool
    final_path: Path
    last_row: dict[str, float]


def train(
    scheme: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_set: MNISTSplit,
    val_set: MNISTSplit,
    device: torch.device,
    save_dir: Path,
) -> RunSummary:
    """Train one run into `save_dir` (metrics.csv, checkpoints, final_model.pth)."""
    torch.manual_seed(train_cfg.seed)
    vae = VAE(model_cfg).to(device)
    steps_per_epoch = len(train_set) // train_cfg.train_bs
    total_steps = train_cfg.num_epochs * steps_per_epoch
    loss_fn = build_loss(scheme, model_cfg, train_cfg, steps_per_epoch, total_steps).to(device)
    opt_g, sched_g = adam_with_schedule(vae.parameters(), train_cfg.optimizer.params_g, total_steps)
    critic = loss_fn.discriminator if isinstance(loss_fn, CompositeLoss) else None
    if critic is not None:
        opt_d, sched_d = adam_with_schedule(
            critic.parameters(), train_cfg.optimizer.params_d, total_steps
        )

    train_terms = loss_fn.term_names + loss_fn.critic_term_names
    columns = [
        "epoch",
        "step",
        *(f"train_{t}" for t in train_terms),
        *(f"val_{t}" for t in loss_fn.term_names),
        "beta",
        "lr_g",
        *(["lr_d"] if critic is not None else []),
        "seconds",
    ]
    metrics = MetricsLog(save_dir / "metrics.csv", columns)
    board = TensorBoardLog(save_dir, model_cfg, train_cfg) if train_cfg.tensorboard else None
    stopper = (
        EarlyStopping(train_cfg.early_stopping.patience, train_cfg.early_stopping.tol)
        if train_cfg.early_stopping
        else None
    )
    show_bar = sys.stderr.isatty()
    step, epoch, stopped_early = 0, 0, False

    for epoch in range(1, train_cfg.num_epochs + 1):
        started = time.perf_counter()
        vae.train()
        loss_fn.train()
        averager = TermAverager()
        order = epoch_order(len(train_set), train_cfg.seed, epoch, device)
        bar = tqdm(
            train_batches(train_set.images, train_cfg.train_bs, order),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{train_cfg.num_epochs}",
            leave=False,
            disable=not show_bar,
        )
        for x in bar:
            x_hat, mu, logvar = vae(x)
            loss, terms = loss_fn.generator_loss(x_hat, x, mu, logvar, step)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            sched_g.step()
            if critic is not None:
                if loss_fn.discriminator_on(step):
                    loss_d, critic_terms = loss_fn.discriminator_loss(x_hat.detach(), x)
                    opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    opt_d.step()
                    terms.update(critic_terms)
                with warnings.catch_warnings():
                    # Its schedule follows the global step, also before the critic's first update.
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler")
                    sched_d.step()
            averager.add(terms)
            step += 1
            if step % LIVE_LOSS_EVERY == 0 and (show_bar or board is not None):
                live = dict(zip(terms, torch.stack(list(terms.values())).tolist(), strict=True))
                bar.set_postfix(loss=f"{live['loss']:.3f}")
                if board is not None:
                    board.add_step(step, live, loss_fn.beta(step), sched_g.get_last_lr()[0])

        row = {
            "epoch": epoch,
            "step": step,
            **{f"train_{k}": v for k, v in averager.means(train_terms).items()},
            **{
                f"val_{k}": v
                for k, v in validate(vae, loss_fn, val_set, train_cfg.val_bs, step).items()
            },
            "beta": loss_fn.beta(step),
            "lr_g": sched_g.get_last_lr()[0],
        }
        if critic is not None:
            row["lr_d"] = sched_d.get_last_lr()[0]
        row["seconds"] = time.perf_counter() - started
        metrics.append(row)
        if board is not None:
            board.add_epoch(row, vae, val_set)
        print(epoch_summary(row, train_cfg.num_epochs), flush=True)

        if epoch % train_cfg.save_every == 0:
            payload = {
                "epoch": epoch,
                "step": step,
                "scheme": scheme,
                "loss": row["train_loss"],
                "beta": row["beta"],
                "model_state_dict": vae.state_dict(),
                "encoder_state_dict": vae.encoder.state_dict(),
                "decoder_state_dict": vae.decoder.state_dict(),
                "optimizer_g_state_dict": opt_g.state_dict(),
                "scheduler_g_state_dict": sched_g.state_dict(),
                "rng_state": torch.get_rng_state(),
            }
            if critic is not None:
                payload.update(
                    discriminator_state_dict=critic.state_dict(),
                    optimizer_d_state_dict=opt_d.state_dict(),
                    scheduler_d_state_dict=sched_d.state_dict(),
                )
            save_checkpoint(payload, save_dir / f"checkpoint_epoch_{epoch:03d}.pth")

        if stopper is not None and stopper.should_stop(epoch, row["train_loss"], vae):
            save_checkpoint(
                {
                    "model_state_dict": stopper.best_state,
                    "epoch": stopper.best_epoch,
                    "loss": stopper.best_loss,
                },
                save_dir / "best_model.pth",
            )
            print(
                f"early stop after epoch {epoch}: train loss has not improved by more than "
                f"{stopper.tol} for {stopper.patience} epochs; best epoch {stopper.best_epoch} "
                f"-> {save_dir / 'best_model.pth'}",
                flush=True,
            )
            stopped_early = True
            break

    if board is not None:
        board.close()
    final_path = save_dir / "final_model.pth"
    save_checkpoint(
        {"model_state_dict": vae.state_dict(), "epoch": epoch, "step": step, "scheme": scheme},
        final_path,
    )
    return RunSummary(
        epochs_run=epoch,
        steps=step,
        stopped_early=stopped_early,
        final_path=final_path,
        last_row=row,
    )


def epoch_summary(row: dict[str, float], num_epochs: int) -> str:
    """One line per epoch: the main terms of train and validation, beta, LR and time."""

    def terms(prefix: str) -> str:
        return " ".join(
            f"{k[len(prefix) :]} {v:.4g}"
            for k, v in row.items()
            if k.startswith(prefix) and not math.isnan(v)
        )

    return (
        f"epoch {row['epoch']}/{num_epochs} step {row['step']} | train {terms('train_')} | "
        f"val {terms('val_')} | beta {row['beta']:.3g} lr_g {row['lr_g']:.3g} | "
        f"{row['seconds']:.1f} s"
    )
