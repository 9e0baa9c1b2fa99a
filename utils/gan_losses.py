"""The adversarial objectives a composite run can train with, in one table (the train config's
`loss.params.gan_loss` names a row; utils/config.py checks the name, utils/loss.py uses the pair).

    bce:   the reference's. Critic 0.5 * (BCE(D(x), 1) + BCE(D(x_hat), 0)); generator
           BCE(D(x_hat), 1), the non-saturating loss.
    hinge: taming-transformers' default. Critic 0.5 * (mean relu(1 - D(x)) + mean relu(1 +
           D(x_hat))); generator -mean D(x_hat).

Each takes the critic's patch logits and returns a scalar.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _bce_critic(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    )


def _bce_generator(fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _hinge_critic(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def _hinge_generator(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


@dataclass(frozen=True)
class GANLoss:
    """critic(real_logits, fake_logits) and generator(fake_logits)."""

    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: Callable[[torch.Tensor], torch.Tensor]


GAN_LOSSES = {
    "bce": GANLoss(_bce_critic, _bce_generator),
    "hinge": GANLoss(_hinge_critic, _hinge_generator),
}
