"""The two schemes' losses. Each loss object owns its schedules and returns named, detached terms.

`BetaVAELoss` (simple scheme): lambda_recon * recon + beta * KL, with beta warm-up and free bits.
`CompositeLoss` adds the perceptual (PIPS) term and, from its switch-on step, the PatchGAN
adversarial term; it also computes the discriminator's own loss. The training loop only calls
`generator_loss` / `discriminator_loss` and logs whatever terms come back.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.discriminator import PatchDiscriminator
from model.pips import PIPS
from utils.config import CompositeLossParams, LossParams

Terms = dict[str, torch.Tensor]


def reconstruction_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum of squared pixel errors per image, mean over the batch. Inputs (N, C, H, W) in [0, 1]."""
    return (x_hat - x).pow(2).flatten(1).sum(dim=1).mean()


def kl_per_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over dimensions: (N, D) -> (N,)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


class BetaVAELoss(nn.Module):
    """Simple scheme. beta rises by beta / (warmup_epochs * steps_per_epoch) per step, capped;
    free bits clamp each sample's total KL from below before the batch mean."""

    # The terms each step may report, in logging order: generator terms, then the critic's. The
    # adversarial terms exist only once the critic is on; epochs before that log NaN, not 0.
    term_names: tuple[str, ...] = ("loss", "recon", "kl", "kl_raw")
    critic_term_names: tuple[str, ...] = ()

    def __init__(self, config: LossParams, steps_per_epoch: int):
        super().__init__()
        self.config = config
        self.beta_warmup_steps = config.warmup_epochs * steps_per_epoch

    def beta(self, step: int) -> float:
        """beta in force for optimisation step `step` (0-based): `step` increments taken so far."""
        if self.beta_warmup_steps == 0:
            return self.config.beta
        return min(self.config.beta, step * (self.config.beta / self.beta_warmup_steps))

    def generator_loss(
        self,
        x_hat: torch.Tensor,
        x: torch.Tensor,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        step: int,
    ) -> tuple[torch.Tensor, Terms]:
        """Images (N, C, H, W) in [0, 1], posterior (N, D). Returns (loss, detached named terms),
        computed in float32 also when the forward pass ran under a bfloat16 autocast."""
        x_hat, mu, logvar = x_hat.float(), mu.float(), logvar.float()
        recon = reconstruction_error(x_hat, x)
        kl = kl_per_sample(mu, logvar)
        kl_free = kl.clamp(min=self.config.free_bits).mean()
        loss = self.config.lambda_recon * recon + self.beta(step) * kl_free
        return loss, {
            "loss": loss.detach(),
            "recon": recon.detach(),
            "kl": kl_free.detach(),
            "kl_raw": kl.mean().detach(),
        }


class CompositeLoss(BetaVAELoss):
    """Composite scheme: the simple loss + lambda_pips * PIPS (+ lambda_disc * adversarial from
    step int(critic_start_ratio * total_steps), the train config's optimizer.params_d.warmup_ratio).
    Owns the discriminator and the PIPS network."""

    term_names = (*BetaVAELoss.term_names, "pips", "adv")
    critic_term_names = ("disc",)

    def __init__(
        self,
        config: CompositeLossParams,
        steps_per_epoch: int,
        total_steps: int,
        critic_start_ratio: float,
        discriminator: PatchDiscriminator,
        pips: PIPS,
    ):
        super().__init__(config, steps_per_epoch)
        self.discriminator = discriminator
        self.pips = pips
        self.disc_start = math.floor(critic_start_ratio * total_steps)

    def discriminator_on(self, step: int) -> bool:
        return step >= self.disc_start

    def generator_loss(
        self,
        x_hat: torch.Tensor,
        x: torch.Tensor,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        step: int,
    ) -> tuple[torch.Tensor, Terms]:
        loss, terms = super().generator_loss(x_hat, x, mu, logvar, step)
        pips = self.pips(x_hat, x)
        loss = loss + self.config.lambda_pips * pips
        terms["pips"] = pips.detach()
        if self.discriminator_on(step):
            # The critic's weights need no gradient here: only the generator is being updated.
            self.discriminator.requires_grad_(False)
            logits = self.discriminator(x_hat)
            self.discriminator.requires_grad_(True)
            adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            loss = loss + self.config.lambda_disc * adv
            terms["adv"] = adv.detach()
        terms["loss"] = loss.detach()
        return loss, terms

    def discriminator_loss(
        self, x_hat: torch.Tensor, x: torch.Tensor, critic: nn.Module | None = None
    ) -> tuple[torch.Tensor, Terms]:
        """0.5 * (BCE(D(fake), 0) + BCE(D(real), 1)); `x_hat` must already be detached. `critic`
        runs D: by default the discriminator itself; under torchrun its DistributedDataParallel
        wrapper, which averages this update's gradients over ranks. (The generator's
        adversarial term needs no such wrapper: it computes no gradient for D.)"""
        critic = self.discriminator if critic is None else critic
        fake = critic(x_hat)
        real = critic(x)
        loss = 0.5 * (
            F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
            + F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        )
        return loss, {"disc": loss.detach()}
