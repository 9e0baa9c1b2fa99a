"""Loss terms, beta warm-up, free bits, the critic's switch-on and the LR schedule, by hand."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.discriminator import PatchDiscriminator
from model.vae import VAE
from training_schemes import adam_with_schedule
from utils.config import (
    AdamParams,
    CompositeLossParams,
    LossParams,
    PIPSConfig,
    ScheduleParams,
    load_model_config,
)
from utils.gan_losses import GAN_LOSSES
from utils.loss import BetaVAELoss, CompositeLoss, kl_per_sample, reconstruction_error
from utils.lr_schedule import warmup_cosine
from utils.networks import build_pips


def test_reconstruction_error_sums_pixels_and_averages_images():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 0.5]]]])
    # image 0: 1.0; image 1: 1 + 1 + 1 + 0.25 = 3.25; batch mean 2.125
    assert reconstruction_error(x_hat, x).item() == pytest.approx(2.125)


def test_kl_per_sample_matches_closed_form():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # sample 0: -0.5 * [(1 + 0 - 1 - 1) + (1 + ln2 - 0 - 2)] = 1 - ln2 / 2; sample 1: 0
    expected = torch.tensor([1 - math.log(2.0) / 2, 0.0])
    torch.testing.assert_close(kl_per_sample(mu, logvar), expected)


def test_free_bits_clamp_the_per_sample_total_not_each_dimension():
    loss_fn = BetaVAELoss(LossParams(free_bits=0.2, beta=1.0, warmup_epochs=0), 10)
    mu = torch.tensor([[0.5, 0.0], [1.0, 1.0]])  # per-sample KL 0.125 and 1.0
    logvar = torch.zeros(2, 2)
    x = torch.zeros(2, 1, 2, 2)
    _, terms = loss_fn.generator_loss(x, x, mu, logvar, step=0)
    # per sample: max(0.125, 0.2) = 0.2 and 1.0 -> mean 0.6 (per dimension it would be 0.7)
    assert terms["kl"].item() == pytest.approx(0.6)
    assert terms["kl_raw"].item() == pytest.approx((0.125 + 1.0) / 2)
    assert terms["loss"].item() == pytest.approx(0.6)  # recon 0, beta 1


@pytest.mark.parametrize(
    ("step", "beta"), [(0, 0.0), (1, 0.2), (7, 1.4), (19, 3.8), (20, 4.0), (500, 4.0)]
)
def test_beta_rises_by_target_over_warmup_steps_then_caps(step, beta):
    loss_fn = BetaVAELoss(LossParams(beta=4.0, warmup_epochs=2), steps_per_epoch=10)
    assert loss_fn.beta(step) == pytest.approx(beta)


def test_beta_default_schedule_after_one_epoch():
    loss_fn = BetaVAELoss(LossParams(), steps_per_epoch=468)
    assert loss_fn.beta(468) == pytest.approx(4.0 / 15)
    assert loss_fn.beta(15 * 468) == pytest.approx(4.0)


def test_generator_loss_combines_recon_and_beta_kl():
    loss_fn = BetaVAELoss(LossParams(lambda_recon=2.0, beta=4.0, warmup_epochs=1), 10)
    x = torch.zeros(1, 1, 2, 2)
    x_hat = torch.full((1, 1, 2, 2), 0.5)  # recon 4 * 0.25 = 1.0
    mu, logvar = torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2)  # KL 1.0
    loss, terms = loss_fn.generator_loss(x_hat, x, mu, logvar, step=5)  # beta 2.0
    assert loss.item() == pytest.approx(2.0 * 1.0 + 2.0 * 1.0)
    assert set(terms) == {"loss", "recon", "kl", "kl_raw"}
    assert not any(t.requires_grad for t in terms.values())


@pytest.mark.parametrize(("step", "factor"), [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0)])
def test_warmup_cosine_factor(step, factor):
    assert warmup_cosine(step, warmup=10, total=100) == pytest.approx(factor, abs=1e-12)


def test_optimizer_learning_rate_follows_the_schedule_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = adam_with_schedule(
        [param], AdamParams(lr=5e-4, weight_decay=1e-5), ScheduleParams(0.1), total_steps=200
    )
    seen = []
    for _ in range(200):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == 0.0  # step 0 of the warm-up
    assert seen[10] == pytest.approx(2.5e-4)  # half-way through 20 warm-up steps
    assert seen[20] == pytest.approx(5e-4)  # peak at the end of warm-up
    assert seen[110] == pytest.approx(2.5e-4)  # cosine half-way: (110 - 20) / 180 = 0.5
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-20)  # after the last
    assert optimizer.param_groups[0]["weight_decay"] == 1e-5


def test_a_null_schedule_keeps_the_learning_rate_constant():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = adam_with_schedule([param], AdamParams(lr=5e-5), None, total_steps=20)
    assert scheduler is None
    for _ in range(20):
        optimizer.step()
    assert optimizer.param_groups[0]["lr"] == 5e-5


@pytest.fixture(scope="module")
def composite_parts():
    torch.manual_seed(0)
    model_cfg = load_model_config("configs/model_composite_config.json")
    vae = VAE(model_cfg.model_config)
    critic = PatchDiscriminator(model_cfg.discriminator_config)
    pips = build_pips(PIPSConfig(weights="random", input_size=32))
    loss_fn = CompositeLoss(
        CompositeLossParams(),
        468,
        total_steps=18720,
        critic_start_ratio=0.05,
        discriminator=critic,
        pips=pips,
        last_layer=lambda: vae.decoder.last_layer,
    )
    return vae, critic, loss_fn


def test_critic_switches_on_at_five_percent_of_all_steps(composite_parts):
    vae, _, loss_fn = composite_parts
    assert loss_fn.disc_start == math.floor(0.05 * 18720) == 936
    x = torch.rand(4, 1, 28, 28)
    x_hat, mu, logvar = vae(x)
    _, before = loss_fn.generator_loss(x_hat, x, mu, logvar, step=935)
    _, after = loss_fn.generator_loss(x_hat, x, mu, logvar, step=936)
    assert "adv" not in before and "adv" in after
    assert after["loss"].item() == pytest.approx(
        before["loss"].item()
        + (loss_fn.beta(936) - loss_fn.beta(935)) * before["kl"].item()
        + 0.5 * after["adv"].item(),
        rel=1e-5,
    )


def test_generator_step_leaves_the_critic_without_gradients(composite_parts):
    vae, critic, loss_fn = composite_parts
    vae.zero_grad(set_to_none=True)
    critic.zero_grad(set_to_none=True)
    x = torch.rand(4, 1, 28, 28)
    x_hat, mu, logvar = vae(x)
    loss, _ = loss_fn.generator_loss(x_hat, x, mu, logvar, step=10_000)
    loss.backward()
    assert all(p.grad is None for p in critic.parameters())
    assert all(p.requires_grad for p in critic.parameters())  # restored for its own step
    assert all(p.grad is None for p in loss_fn.pips.parameters())
    assert vae.decoder.out_layer[0].weight.grad is not None


def test_discriminator_loss_is_half_the_two_bce_terms(composite_parts):
    vae, critic, loss_fn = composite_parts
    x = torch.rand(4, 1, 28, 28)
    fake = torch.rand(4, 1, 28, 28)
    loss, terms = loss_fn.discriminator_loss(fake, x)
    # Train-mode BatchNorm normalises each call by its own batch, so recomputing is exact.
    f_logits, r_logits = critic(fake).detach(), critic(x).detach()
    expected = 0.5 * (F.softplus(f_logits).mean() + F.softplus(-r_logits).mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["disc"].item() == pytest.approx(loss.item())


class Constant(nn.Module):
    """A stand-in network whose output is `value` (PIPS: a scalar; the critic: a logit map)."""

    def __init__(self, value: float, shape: tuple[int, ...] = ()):
        super().__init__()
        self.value, self.shape = value, shape

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return torch.full(self.shape, self.value) + 0 * x_hat.sum()


def stub_composite_loss(lambda_pips: float, lambda_disc: float) -> CompositeLoss:
    """A composite loss over a PIPS that always answers 0.3 and a critic whose every logit is 2,
    beta 1 from the first step, no free bits; the critic is on from step 10."""
    params = CompositeLossParams(
        beta=1.0,
        warmup_epochs=0,
        free_bits=0.0,
        lambda_recon=1.0,
        lambda_pips=lambda_pips,
        lambda_disc=lambda_disc,
    )
    return CompositeLoss(
        params,
        10,
        total_steps=100,
        critic_start_ratio=0.1,
        discriminator=Constant(2.0, (1, 1, 7, 7)),
        pips=Constant(0.3),
        last_layer=lambda: None,
    )


def hand_inputs() -> tuple[torch.Tensor, ...]:
    """x_hat, x, mu, logvar with recon 1.0 (4 pixels off by 0.5) and KL 1.0 (mu (1, 1))."""
    x = torch.zeros(1, 1, 2, 2)
    return torch.full((1, 1, 2, 2), 0.5), x, torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2)


@pytest.mark.parametrize("lambda_pips", [0.0, 2.5])
def test_composite_loss_weighs_pips_by_lambda_pips(lambda_pips):
    loss_fn = stub_composite_loss(lambda_pips=lambda_pips, lambda_disc=0.5)
    loss, terms = loss_fn.generator_loss(*hand_inputs(), step=0)  # the critic still off
    # recon 1 + beta 1 * KL 1 + lambda_pips * 0.3; at weight 0 the PIPS network is not run
    assert loss.item() == pytest.approx(2.0 + lambda_pips * 0.3)
    assert "adv" not in terms
    if lambda_pips:
        assert terms["pips"].item() == pytest.approx(0.3)
    else:
        assert "pips" not in terms


def test_the_generators_adversarial_term_asks_the_critic_for_real():
    loss_fn = stub_composite_loss(lambda_pips=1.0, lambda_disc=0.5)
    loss, terms = loss_fn.generator_loss(*hand_inputs(), step=10)
    # BCE(logit 2, target 1) = log(1 + e^-2) = 0.1269 at every patch; against target 0 it would
    # be log(1 + e^2) = 2.1269.
    adv = math.log1p(math.exp(-2.0))
    assert terms["adv"].item() == pytest.approx(adv, rel=1e-6)
    assert loss.item() == pytest.approx(2.0 + 0.3 + 0.5 * adv, rel=1e-6)


# taming-transformers' options: the hinge objective, the adaptive weight, the gradient ratios


class Affine(nn.Module):
    """A stand-in whose output is offset + slope * (sum of the input's pixels), everywhere in
    `shape`: a critic (a logit map) or a PIPS (a scalar) with a gradient known by hand."""

    def __init__(self, offset: float, slope: float, shape: tuple[int, ...] = ()):
        super().__init__()
        self.offset, self.slope, self.shape = offset, slope, shape

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return torch.full(self.shape, self.offset) + self.slope * x_hat.sum()


def test_the_hinge_critic_and_generator_by_hand():
    hinge = GAN_LOSSES["hinge"]
    real, fake = torch.full((1, 1, 7, 7), 0.5), torch.full((1, 1, 7, 7), -0.5)
    # 0.5 * (relu(1 - 0.5) + relu(1 - 0.5)) = 0.5; a critic past both margins has loss 0
    assert hinge.critic(real, fake).item() == pytest.approx(0.5)
    assert hinge.critic(real + 1, fake - 1).item() == 0.0
    assert hinge.generator(fake).item() == pytest.approx(0.5)
    bce = GAN_LOSSES["bce"]
    assert bce.critic(real, fake).item() == pytest.approx(math.log1p(math.exp(-0.5)))


def composite_on_a_weight(**options) -> tuple[CompositeLoss, nn.Parameter, tuple]:
    """A composite loss whose decoder's last layer is four pixels w = 0.5 (so x_hat = w, recon
    1 against x = 0, d recon / dw = 2w = 1 each: norm 2), PIPS 0.3 + 0.05 * sum(x_hat) (gradient
    norm 0.1), a critic whose logits are 1 + 0.1 * sum(x_hat) (hinge generator -mean D: gradient
    norm 0.2), beta 1, KL 1, the critic on from step 10."""
    w = nn.Parameter(torch.full((4,), 0.5))
    params = CompositeLossParams(
        beta=1.0,
        warmup_epochs=0,
        free_bits=0.0,
        lambda_pips=2.0,
        lambda_disc=0.5,
        gan_loss="hinge",
        **options,
    )
    loss_fn = CompositeLoss(
        params,
        10,
        total_steps=100,
        critic_start_ratio=0.1,
        discriminator=Affine(1.0, 0.1, (1, 1, 7, 7)),
        pips=Affine(0.3, 0.05),
        last_layer=lambda: w,
    )
    x_hat = w.view(1, 1, 2, 2)
    return (
        loss_fn,
        w,
        (x_hat, torch.zeros(1, 1, 2, 2), torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2)),
    )


def test_the_adaptive_weight_balances_the_adversarial_gradient_against_the_reconstructions():
    loss_fn, w, inputs = composite_on_a_weight(adaptive_disc_weight=True, grad_ratio_every=0)
    loss, terms = loss_fn.generator_loss(*inputs, step=10)
    weight = 0.5 * 2.0 / (0.2 + 1e-4)  # lambda_disc * ||grad recon|| / (||grad adv|| + 1e-4)
    assert terms["disc_weight"].item() == pytest.approx(weight, rel=1e-6)
    adv = -(1.0 + 0.1 * 2.0)  # -mean D(x_hat), sum(x_hat) = 2
    assert terms["adv"].item() == pytest.approx(adv, rel=1e-6)
    # recon 1 + KL 1 + 2 * PIPS 0.4 + weight * adv
    assert loss.item() == pytest.approx(2.0 + 2 * 0.4 + weight * adv, rel=1e-6)
    loss.backward()  # the weight is a constant: d/dw = 2w + 2 * 0.05 - weight * 0.1
    assert w.grad == pytest.approx(torch.full((4,), 1.0 + 0.1 - weight * 0.1), rel=1e-5)
    # Validation (no gradients) takes the weight of the latest training step.
    with torch.no_grad():
        _, val_terms = loss_fn.generator_loss(*inputs, step=11)
    assert val_terms["disc_weight"].item() == pytest.approx(weight, rel=1e-6)


def test_the_adaptive_weight_is_clamped_at_1e4_times_lambda_disc():
    loss_fn, _, inputs = composite_on_a_weight(adaptive_disc_weight=True, grad_ratio_every=0)
    loss_fn.discriminator.slope = 0.0  # the critic ignores the image: its gradient is 0
    _, terms = loss_fn.generator_loss(*inputs, step=10)
    assert terms["disc_weight"].item() == pytest.approx(0.5 * 1e4)


def test_without_the_adaptive_weight_lambda_disc_is_logged_as_the_weight():
    loss_fn, _, inputs = composite_on_a_weight(grad_ratio_every=0)
    loss, terms = loss_fn.generator_loss(*inputs, step=10)
    assert terms["disc_weight"].item() == 0.5
    assert loss.item() == pytest.approx(2.0 + 0.8 - 0.5 * 1.2, rel=1e-6)


def test_gradient_ratios_are_measured_every_n_steps_of_training_only():
    loss_fn, _, inputs = composite_on_a_weight(grad_ratio_every=5)
    _, terms = loss_fn.generator_loss(*inputs, step=10)
    # ||grad 2 * PIPS|| = 2 * 0.1, ||grad 0.5 * adv|| = 0.5 * 0.2, each over ||grad recon|| = 2
    assert terms["grad_ratio_pips"].item() == pytest.approx(0.1, rel=1e-6)
    assert terms["grad_ratio_adv"].item() == pytest.approx(0.05, rel=1e-6)
    _, off_step = loss_fn.generator_loss(*inputs, step=11)
    assert not any(name.startswith("grad_ratio") for name in off_step)
    with torch.no_grad():
        _, validation = loss_fn.generator_loss(*inputs, step=15)
    assert not any(name.startswith("grad_ratio") for name in validation)


def test_lambda_disc_0_never_switches_the_critic_on():
    loss_fn, _, inputs = composite_on_a_weight(grad_ratio_every=0)
    loss_fn = CompositeLoss(
        dataclasses.replace(loss_fn.config, lambda_disc=0.0),
        10,
        100,
        0.1,
        loss_fn.discriminator,
        loss_fn.pips,
        loss_fn.last_layer,
    )
    assert not loss_fn.discriminator_on(10**9)
    _, terms = loss_fn.generator_loss(*inputs, step=50)
    assert "adv" not in terms and "disc_weight" not in terms
