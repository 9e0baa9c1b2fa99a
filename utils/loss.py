"""The two schemes' losses. Each loss object owns its schedules and returns named, detached terms.

`BetaVAELoss` (simple scheme): lambda_recon * recon + beta * KL, with beta warm-up and free bits.
`CompositeLoss` adds the perceptual (PIPS) term and, from its switch-on step, the PatchGAN
adversarial term; it also computes the discriminator's own loss. The training loop only calls
`generator_loss` / `discriminator_loss` and logs whatever terms come back.
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from model.discriminator import PatchDiscriminator
from model.pips import PIPS
from utils.config import CompositeLossParams, LossParams
from utils.gan_losses import GAN_LOSSES

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

    # The terms each step may report, in logging order: generator terms (training and
    # validation), diagnostics of the training steps alone, then the critic's. The adversarial
    # terms exist only once the critic is on; epochs before that log NaN, not 0.
    term_names: tuple[str, ...] = ("loss", "recon", "kl", "kl_raw")
    diagnostic_names: tuple[str, ...] = ()
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

    def vae_terms(
        self,
        x_hat: torch.Tensor,
        x: torch.Tensor,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        step: int,
    ) -> tuple[torch.Tensor, torch.Tensor, Terms]:
        """(lambda_recon * recon, the simple loss, its detached named terms), in float32 also
        when the forward pass ran under a bfloat16 autocast."""
        x_hat, mu, logvar = x_hat.float(), mu.float(), logvar.float()
        recon = reconstruction_error(x_hat, x)
        kl = kl_per_sample(mu, logvar)
        kl_free = kl.clamp(min=self.config.free_bits).mean()
        recon_term = self.config.lambda_recon * recon
        loss = recon_term + self.beta(step) * kl_free
        terms = {
            "loss": loss.detach(),
            "recon": recon.detach(),
            "kl": kl_free.detach(),
            "kl_raw": kl.mean().detach(),
        }
        return recon_term, loss, terms

    def generator_loss(
        self,
        x_hat: torch.Tensor,
        x: torch.Tensor,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        step: int,
    ) -> tuple[torch.Tensor, Terms]:
        """Images (N, C, H, W) in [0, 1], posterior (N, D). Returns (loss, detached named terms)."""
        _, loss, terms = self.vae_terms(x_hat, x, mu, logvar, step)
        return loss, terms


class CompositeLoss(BetaVAELoss):
    """Composite scheme: the simple loss + lambda_pips * PIPS (+ the adversarial term from step
    int(critic_start_ratio * total_steps), the train config's optimizer.params_d.warmup_ratio,
    weighted by lambda_disc or, with adaptive_disc_weight, by taming-transformers' adaptive
    weight). Owns the discriminator and the PIPS network; `last_layer` returns the decoder's
    last weight, where the adaptive weight and the logged gradient ratios are measured.

    A term whose weight is 0 is not computed: lambda_pips 0 runs no PIPS network (the `pips`
    column stays NaN) and lambda_disc 0 never switches the critic on, so those arms cost only
    what they use; the VAE's updates are the same as if they were computed and multiplied by 0.
    """

    term_names = (*BetaVAELoss.term_names, "pips", "adv")
    diagnostic_names = ("disc_weight", "grad_ratio_pips", "grad_ratio_adv")
    critic_term_names = ("disc",)

    def __init__(
        self,
        config: CompositeLossParams,
        steps_per_epoch: int,
        total_steps: int,
        critic_start_ratio: float,
        discriminator: PatchDiscriminator,
        pips: PIPS,
        last_layer: Callable[[], torch.Tensor],
    ):
        super().__init__(config, steps_per_epoch)
        self.discriminator = discriminator
        self.pips = pips
        self.last_layer = last_layer
        self.gan = GAN_LOSSES[config.gan_loss]
        self.disc_start = (
            math.floor(critic_start_ratio * total_steps) if config.lambda_disc > 0 else math.inf
        )
        # The adversarial weight of the latest training step (lambda_disc until the adaptive
        # weight is first computed); validation, which has no gradients, uses it.
        self.disc_weight: float | torch.Tensor = config.lambda_disc

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
        recon_term, loss, terms = self.vae_terms(x_hat, x, mu, logvar, step)
        extra = {}
        if self.config.lambda_pips > 0:
            pips = self.pips(x_hat, x)
            extra["pips"] = self.config.lambda_pips * pips
            terms["pips"] = pips.detach()
        training = torch.is_grad_enabled() and recon_term.requires_grad
        if self.discriminator_on(step):
            # The critic's weights need no gradient here: only the generator is being updated.
            self.discriminator.requires_grad_(False)
            adv = self.gan.generator(self.discriminator(x_hat).float())
            self.discriminator.requires_grad_(True)
            if training and self.config.adaptive_disc_weight:
                self.disc_weight = self.adaptive_weight(recon_term, adv)
            extra["adv"] = self.disc_weight * adv
            terms["adv"] = adv.detach()
            terms["disc_weight"] = torch.as_tensor(self.disc_weight, device=adv.device)
        if training and self.config.grad_ratio_every and step % self.config.grad_ratio_every == 0:
            terms |= self.gradient_ratios(recon_term, extra)
        for term in extra.values():  # in this order, as the reference adds them
            loss = loss + term
        terms["loss"] = loss.detach()
        return loss, terms

    def adaptive_weight(self, recon_term: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """taming's calculate_adaptive_weight: lambda_disc * clamp(||grad recon|| / (||grad adv||
        + 1e-4), 0, 1e4) at the decoder's last layer, detached (it balances the two terms; it is
        not itself trained). recon is the weighted reconstruction term alone, as the study's
        issue specifies; taming's nll also holds its perceptual term. Under torchrun each
        process takes its own batch's norms, as taming's does."""
        recon_norm, adv_norm = (self.gradient_norm(term) for term in (recon_term, adv))
        ratio = (recon_norm / (adv_norm + 1e-4)).clamp(0.0, 1e4)
        return (self.config.lambda_disc * ratio).detach()

    def gradient_norm(self, term: torch.Tensor) -> torch.Tensor:
        """||d term / d last layer||, keeping the graph for the update's own backward pass."""
        (grad,) = torch.autograd.grad(term, self.last_layer(), retain_graph=True)
        return grad.norm()

    def gradient_ratios(self, recon_term: torch.Tensor, extra: Terms) -> Terms:
        """Each weighted extra term's gradient norm at the decoder's last layer over the
        weighted reconstruction term's: how much each one steers the decoder (device tensors,
        read with the epoch's means)."""
        recon_norm = self.gradient_norm(recon_term)
        return {
            f"grad_ratio_{name}": (self.gradient_norm(term) / recon_norm).detach()
            for name, term in extra.items()
        }

    def discriminator_loss(
        self, x_hat: torch.Tensor, x: torch.Tensor, critic: nn.Module | None = None
    ) -> tuple[torch.Tensor, Terms]:
        """The critic's objective (gan_loss) on real `x` and `x_hat`, which must already be
        detached. `critic` runs D: by default the discriminator itself; under torchrun its
        DistributedDataParallel wrapper, which averages this update's gradients over ranks.
        (The generator's adversarial term needs no such wrapper: it computes no gradient for D.)"""
        critic = self.discriminator if critic is None else critic
        fake = critic(x_hat)
        real = critic(x)
        loss = self.gan.critic(real.float(), fake.float())
        return loss, {"disc": loss.detach()}
