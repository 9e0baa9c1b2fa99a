"""The training loop shared by both schemes.

    simple:    beta-VAE: lambda_recon * recon + beta * KL (beta warm-up, free bits)
    composite: the same VAE + lambda_pips * PIPS + lambda_disc * PatchGAN adversarial term,
               and a discriminator trained from step int(params_d.warmup_ratio * total_steps)

One loop runs both: the scheme's loss object decides what a step computes, and the composite
scheme adds one discriminator update per step. Reading order is execution order: model, loss,
optimisers, then epochs of (train steps, validation, metrics row, checkpoint, early stopping).
train.py is the entry point; nothing here parses arguments or exits.

Under torchrun the same loop runs in every process (utils/distributed.py): the VAE and the critic
are wrapped in DistributedDataParallel, each rank takes its share of every global batch of
train_bs images, the logged terms are added up over ranks, and rank 0 alone writes and prints.
"""

import dataclasses
import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from model.discriminator import PatchDiscriminator
from model.linear_backend import Choice, choose
from model.vae import VAE
from utils.checkpoint import checkpoint_step, save_checkpoint
from utils.config import AdamParams, ModelConfig, PIPSConfig, ScheduleParams, TrainConfig
from utils.dataset import MNISTSplit, epoch_order, eval_batches, rank_share, train_batches
from utils.distributed import Cluster, parameter_fingerprint
from utils.errors import UserError
from utils.loss import BetaVAELoss, CompositeLoss, Terms
from utils.lr_schedule import warmup_cosine
from utils.metrics_csv import MetricsLog
from utils.networks import build_pips
from utils.tensorboard_log import TensorBoardLog
from utils.tracking import EarlyStopping, NonFiniteWatch, TermAverager

SCHEMES = ("simple", "composite")
LIVE_LOSS_EVERY = 25  # steps between progress-bar / TensorBoard updates (each syncs the device)
CHECK_EVERY = 50  # steps between checks for a non-finite loss (each one syncs the device)
INTERRUPT_CHECKPOINT = "checkpoint_interrupted.pth"


# The reference's checkpoint keys for the VAE's optimiser and LR schedule, by scheme; the
# composite scheme's critic adds optimizer_d_state_dict and scheduler_d_state_dict.
VAE_OPTIMISER_KEYS = {
    "simple": ("optimizer_state_dict", "scheduler_state_dict"),
    "composite": ("optimizer_g_state_dict", "scheduler_g_state_dict"),
}


def check_scheme(scheme: str, model_cfg: ModelConfig, model_path: str) -> ModelConfig:
    """The model config as `scheme` uses it: the composite scheme needs the critic, and without a
    pips_config takes the reference's perceptual loss (ImageNet VGG16), which is written in."""
    if scheme != "composite":
        return model_cfg
    if model_cfg.discriminator_config is None:
        raise UserError(
            f"{model_path}: the composite scheme needs 'discriminator_config'; see "
            "configs/model_composite_config.json, or pass --scheme simple"
        )
    return dataclasses.replace(model_cfg, pips_config=model_cfg.pips_config or PIPSConfig())


def build_loss(
    scheme: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    steps_per_epoch: int,
    total_steps: int,
) -> BetaVAELoss:
    if scheme == "simple":
        return BetaVAELoss(train_cfg.loss.params, steps_per_epoch)
    critic = PatchDiscriminator(model_cfg.discriminator_config)
    # Channels-last convolutions run faster on CPU (bench_ab.py times both); the arithmetic is
    # the same.
    return CompositeLoss(
        train_cfg.loss.params,
        steps_per_epoch,
        total_steps,
        train_cfg.optimizer.params_d.warmup_ratio,
        critic.to(memory_format=torch.channels_last),
        build_pips(model_cfg.pips_config).to(memory_format=torch.channels_last),
    )


def adam_with_schedule(
    params, adam: AdamParams, schedule: ScheduleParams | None, total_steps: int,
    fused: bool = True,
) -> tuple[torch.optim.Adam, LambdaLR | None]:  # fmt: skip
    """Adam, and its LR schedule: linear warm-up over int(warmup_ratio * total_steps) steps, then
    cosine decay towards 0 at total_steps (transformers' get_cosine_schedule_with_warmup, as the
    reference uses); None for a constant LR (`schedule` null). The caller steps the schedule after
    each update of its network.

    The fused kernel does the same arithmetic as stock Adam in one pass over all parameters, a
    fraction of stock Adam's time on the CPU (bench_ab.py times both); `fused=False` gives stock
    Adam (the reference path of bench.py and the tests).
    """
    optimizer = torch.optim.Adam(params, lr=adam.lr, weight_decay=adam.weight_decay, fused=fused)
    if schedule is None:
        return optimizer, None
    warmup = math.floor(schedule.warmup_ratio * total_steps)
    return optimizer, LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total_steps))


def check_same_backbone(saved: str | None, current: str, model_cfg: ModelConfig) -> None:
    """Refuse to resume a composite run against PIPS weights other than those it trained with
    (`saved`: their fingerprint in the checkpoint; None in checkpoints written before it was)."""
    if saved is not None and saved != current:
        pips = model_cfg.pips_config
        source = pips.weights_path or f"the {pips.backbone} backbone ({pips.weights} weights)"
        raise UserError(
            f"{source}: the PIPS backbone's weights are not those this run trained against "
            f"(fingerprint {current}, the checkpoint's {saved}); put that file back, or start a "
            "new run"
        )


def forward_precision(device: torch.device, precision: str) -> torch.autocast:
    """The train config's precision for forward passes and losses: a bfloat16 autocast, or none.
    Backward passes and optimiser steps run outside it, on the float32 weights."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def linear_backend_choice(
    train_cfg: TrainConfig, vae: VAE, batch: int, device: torch.device, resume: dict | None
) -> Choice:
    """The backend of the VAE's linear layers for a run on `device` at `batch` rows per step: on
    resume the one its checkpoint records (ATen in checkpoints from before the choice existed),
    so that it continues with the same arithmetic; else the train config's, resolved."""
    saved = resume.get("linear_backend", "aten") if resume is not None else None
    return choose(train_cfg.linear_backend, vae, batch, device, saved)


@dataclass
class Learners:
    """What an optimisation step updates: the VAE and, in the composite scheme, the critic, each
    as the module to call (under torchrun its DistributedDataParallel wrapper), with its Adam and
    LR schedule (None: a constant LR)."""

    vae: nn.Module
    opt_g: torch.optim.Adam
    sched_g: LambdaLR | None
    critic: nn.Module | None = None
    opt_d: torch.optim.Adam | None = None
    sched_d: LambdaLR | None = None

    def __post_init__(self):
        if (self.critic is None) != (self.opt_d is None) or (
            self.critic is None and self.sched_d is not None
        ):
            raise ValueError("Learners: the critic, its Adam and its schedule come together")


def optimisation_step(
    learners: Learners, loss_fn: BetaVAELoss, x: torch.Tensor, step: int, precision: str
) -> Terms:
    """One batch `x` at global step `step`: the generator's update, then (composite scheme) from
    its switch-on step the critic's. Each schedule steps after its own network's update, so the
    critic's counts critic updates, as the reference's does. Returns the step's detached loss
    terms, the critic's from its switch-on."""
    with forward_precision(x.device, precision):
        x_hat, mu, logvar = learners.vae(x)
        loss, terms = loss_fn.generator_loss(x_hat, x, mu, logvar, step)
    learners.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    learners.opt_g.step()
    if learners.sched_g is not None:
        learners.sched_g.step()
    if isinstance(loss_fn, CompositeLoss) and loss_fn.discriminator_on(step):
        with forward_precision(x.device, precision):
            loss_d, critic_terms = loss_fn.discriminator_loss(x_hat.detach(), x, learners.critic)
        learners.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        learners.opt_d.step()
        if learners.sched_d is not None:
            learners.sched_d.step()
        terms.update(critic_terms)
    return terms


@torch.inference_mode()
def validate(
    vae: VAE, loss_fn: BetaVAELoss, val_set: MNISTSplit, batch_size: int, step: int,
    cluster: Cluster,
) -> dict[str, float]:  # fmt: skip
    """Generator loss terms over the whole validation split, eval mode (decodes mu). Under
    torchrun each rank takes every world_size-th batch and the sums are added up over ranks."""
    vae.eval()
    loss_fn.eval()
    averager = TermAverager()
    batches = eval_batches(val_set, batch_size)
    for x, _ in itertools.islice(batches, cluster.rank, None, cluster.world_size):
        x_hat, mu, logvar = vae(x)
        averager.add(loss_fn.generator_loss(x_hat, x, mu, logvar, step)[1], weight=len(x))
    return cluster.sum_terms(averager, loss_fn.term_names).means(loss_fn.term_names)


class StopRequest:
    """Set by train.py's SIGINT / SIGTERM handlers; the loop checks it after each whole step."""

    def __init__(self):
        self.signal: int | None = None


class Interrupted(Exception):
    """The run stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signum: int, checkpoint: Path, epoch: int, step: int):
        super().__init__(f"signal {signum}")
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step


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
    resume: dict | None = None,
    stop: StopRequest | None = None,
    cluster: Cluster | None = None,
    linear_backend: str | None = None,
) -> RunSummary:
    """Train one run into `save_dir`, or continue one from the checkpoint payload `resume`;
    under torchrun, this process's part of it (`cluster`; default: one process). The VAE's
    linear layers run on `linear_backend` (train.py's `linear_backend_choice`; None: chosen here).

    On the CPU a resumed run ends bit-identical to the same run left alone: the checkpoint holds
    the weights, optimisers, schedulers, RNG state (every rank's), position in the epoch, the
    epoch's partial term sums (every rank's), early-stopping state and the metrics rows so far.
    """
    cluster = cluster or Cluster(device)
    torch.manual_seed(train_cfg.seed)
    vae = VAE(model_cfg.model_config).to(device)
    # train_bs is the global batch: the step count, and with it every schedule, is the same for
    # any number of processes.
    train_bs = train_cfg.data.train_bs
    steps_per_epoch = len(train_set) // train_bs
    rank_bs = train_bs // cluster.world_size
    if linear_backend is None:  # rank 0's choice, for every rank
        choice = linear_backend_choice(train_cfg, vae, rank_bs, device, resume) if (
            cluster.is_main) else None  # fmt: skip
        linear_backend = cluster.broadcast(choice).backend
    vae.set_linear_backend(linear_backend)
    total_steps = train_cfg.num_epochs * steps_per_epoch
    loss_fn = build_loss(scheme, model_cfg, train_cfg, steps_per_epoch, total_steps).to(device)
    # Every rank built the same weights from the seed; from here each draws its own dropout and z.
    cluster.seed_streams()
    vae_replica = cluster.wrap(vae, train_cfg.sync_batchnorm)
    opt_g, sched_g = adam_with_schedule(
        vae.parameters(), train_cfg.vae_optimizer, train_cfg.vae_schedule, total_steps
    )
    opt_g_key, sched_g_key = VAE_OPTIMISER_KEYS[scheme]
    critic = loss_fn.discriminator if isinstance(loss_fn, CompositeLoss) else None
    networks, critic_learner = [vae], ()
    if critic is not None:
        networks.append(critic)
        opt_d, sched_d = adam_with_schedule(
            critic.parameters(), train_cfg.optimizer.params_d, train_cfg.scheduler.params_d,
            total_steps,
        )  # fmt: skip
        critic_learner = (cluster.wrap(critic, train_cfg.sync_batchnorm), opt_d, sched_d)
        # Checkpoints record which perceptual weights the run trains against, so that a resume
        # against another backbone file (made again, or replaced) is refused, not silently mixed.
        pips_print = parameter_fingerprint([loss_fn.pips])
    learners = Learners(vae_replica, opt_g, sched_g, *critic_learner)

    train_terms = loss_fn.term_names + loss_fn.critic_term_names
    columns = ["epoch", "step", *(f"train_{t}" for t in train_terms),
               *(f"val_{t}" for t in loss_fn.term_names), "beta", "lr_g",
               *(["lr_d"] if critic is not None else []), "seconds"]  # fmt: skip
    metrics = MetricsLog(save_dir / "metrics.csv", columns)
    stopper = EarlyStopping(train_cfg.early_stopping.patience, train_cfg.early_stopping.tol) if (
        train_cfg.early_stopping) else None  # fmt: skip
    board = TensorBoardLog(save_dir, model_cfg, train_cfg) if (
        train_cfg.tensorboard and cluster.is_main) else None  # fmt: skip
    watch = NonFiniteWatch(train_terms, device)
    averager = TermAverager()
    stop = stop or StopRequest()
    step, next_epoch, next_batch = 0, 1, 0
    last_good = "none yet"

    if resume is not None:
        vae.load_state_dict(resume["model_state_dict"])
        load_optimiser(opt_g, sched_g, resume[opt_g_key], resume[sched_g_key])
        if critic is not None:
            with cluster.agreed():
                check_same_backbone(resume.get("pips_fingerprint"), pips_print, model_cfg)
            critic.load_state_dict(resume["discriminator_state_dict"])
            load_optimiser(opt_d, sched_d, resume["optimizer_d_state_dict"],
                           resume["scheduler_d_state_dict"])  # fmt: skip
        if stopper is not None:
            stopper.load_state_dict(resume["early_stopping"])
        metrics.rows = list(resume["metrics_rows"])
        step, next_epoch, next_batch = resume["step"], resume["next_epoch"], resume["next_batch"]
        own = resume["rank_states"][cluster.rank] if cluster.distributed else resume
        averager.load_state_dict(own["epoch_terms"])
        torch.set_rng_state(own["rng_state"])
        if device.type == "cuda" and "cuda_rng_state" in own:
            torch.cuda.set_rng_state(own["cuda_rng_state"], device)

    def check_finite() -> None:
        """Stop every rank, without saving, once any rank has seen a non-finite loss term."""
        with cluster.agreed():
            watch.check(last_good)

    def rank_state() -> dict:
        """What differs between ranks and decides what happens next: RNG, partial term sums."""
        state = {"epoch_terms": averager.state_dict(), "rng_state": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda_rng_state"] = torch.cuda.get_rng_state(device)
        return state

    def save(path: Path, epoch_done: int, epoch_next: int, batch_next: int) -> None:
        """Write everything that decides what happens next (after checking it is finite and,
        under torchrun, that every replica holds the same weights); rank 0 writes."""
        nonlocal last_good
        check_finite()
        rank_states = cluster.gather(rank_state())
        fingerprint = cluster.same_weights(networks, step)
        with cluster.agreed():
            if cluster.is_main:
                save_checkpoint(checkpoint(epoch_done, epoch_next, batch_next, rank_states,
                                           fingerprint), path)  # fmt: skip
        last_good = str(path)

    def checkpoint(epoch_done: int, epoch_next: int, batch_next: int, rank_states: list[dict],
                   fingerprint: str | None) -> dict:  # fmt: skip
        """The checkpoint: rank 0's modules and state at the top level, as one process writes
        it; under torchrun also the world size, every rank's state and the weights' fingerprint."""
        payload = {
            "scheme": scheme, "epoch": epoch_done, "step": step, "loss": metrics.last("train_loss"),
            "beta": loss_fn.beta(step), "next_epoch": epoch_next, "next_batch": batch_next,
            "train_size": len(train_set), "linear_backend": linear_backend,
            "model_config": dataclasses.asdict(model_cfg),
            "train_config": dataclasses.asdict(train_cfg),
            "model_state_dict": vae.state_dict(),
            "encoder_state_dict": vae.encoder.state_dict(),
            "decoder_state_dict": vae.decoder.state_dict(),
            opt_g_key: opt_g.state_dict(),
            sched_g_key: sched_g.state_dict() if sched_g is not None else None,
            "epoch_terms": rank_states[0]["epoch_terms"],
            "metrics_rows": list(metrics.rows),
            "rng_state": rank_states[0]["rng_state"],
        }  # fmt: skip
        if device.type == "cuda":
            payload["cuda_rng_state"] = rank_states[0]["cuda_rng_state"]
        if cluster.distributed:
            payload.update(world_size=cluster.world_size, rank_states=rank_states,
                           replica_fingerprint=fingerprint)  # fmt: skip
        if critic is not None:
            payload.update(
                discriminator_state_dict=critic.state_dict(),
                optimizer_d_state_dict=opt_d.state_dict(),
                scheduler_d_state_dict=sched_d.state_dict() if sched_d is not None else None,
                pips_fingerprint=pips_print,
            )
        if stopper is not None:
            payload["early_stopping"] = stopper.state_dict()
        return payload

    def interrupt(signum: int, epoch_done: int, epoch_next: int, batch_next: int) -> Interrupted:
        path = save_dir / INTERRUPT_CHECKPOINT
        save(path, epoch_done, epoch_next, batch_next)
        return Interrupted(signum, path, epoch_next, step)

    show_bar = cluster.is_main and sys.stderr.isatty()
    # Reading the live loss is a collective under torchrun, so every rank follows rank 0's need.
    live_loss = cluster.main_decides(show_bar or board is not None)
    epoch, stopped_early, row = next_epoch - 1, False, metrics.rows[-1] if metrics.rows else {}
    for epoch in range(next_epoch, train_cfg.num_epochs + 1):
        started = time.perf_counter()
        first_batch = next_batch if epoch == next_epoch else 0
        if first_batch == 0:
            averager = TermAverager()
        vae.train()
        loss_fn.train()
        order = epoch_order(len(train_set), train_cfg.seed, epoch, device)
        share = rank_share(order, train_bs, cluster.rank, cluster.world_size)
        batches = train_batches(train_set.images, rank_bs, share[first_batch * rank_bs :])
        bar = tqdm(batches, total=steps_per_epoch, initial=first_batch, leave=False,
                   desc=f"epoch {epoch}/{train_cfg.num_epochs}", disable=not show_bar)  # fmt: skip
        for batch_index, x in enumerate(bar, start=first_batch):
            terms = optimisation_step(learners, loss_fn, x, step, train_cfg.precision)
            averager.add(terms)
            watch.observe(terms, step)
            step += 1
            if step % CHECK_EVERY == 0:
                check_finite()
            if step % LIVE_LOSS_EVERY == 0 and live_loss:
                values = cluster.mean(torch.stack(list(terms.values()))).tolist()
                live = dict(zip(terms, values, strict=True))
                bar.set_postfix(loss=f"{live['loss']:.3f}")
                if board is not None:
                    board.add_step(step, live, loss_fn.beta(step), opt_g.param_groups[0]["lr"])
            signum = cluster.agreed_signal(stop.signal)
            if signum is not None and batch_index + 1 < steps_per_epoch:
                raise interrupt(signum, epoch - 1, epoch, batch_index + 1)

        check_finite()
        cluster.sync_buffers(networks)
        with forward_precision(device, train_cfg.precision):
            val_terms = validate(vae, loss_fn, val_set, train_cfg.data.val_bs, step, cluster)
        train_means = cluster.sum_terms(averager, train_terms).means(train_terms)
        row = {"epoch": epoch, "step": step,
               **{f"train_{k}": v for k, v in train_means.items()},
               **{f"val_{k}": v for k, v in val_terms.items()},
               "beta": loss_fn.beta(step), "lr_g": opt_g.param_groups[0]["lr"]}  # fmt: skip
        if critic is not None:
            row["lr_d"] = opt_d.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - started
        with cluster.agreed():
            if cluster.is_main:
                metrics.append(row)
                if board is not None:
                    board.add_epoch(row, vae, val_set)
                print(epoch_summary(row, train_cfg.num_epochs), flush=True)

        stopped_early = cluster.main_decides(
            stopper is not None and stopper.should_stop(epoch, row["train_loss"], vae)
        )
        if epoch % train_cfg.save_every == 0 or epoch == train_cfg.num_epochs or stopped_early:
            save(save_dir / f"checkpoint_epoch_{epoch:03d}.pth", epoch, epoch + 1, 0)
            if cluster.is_main:
                prune_checkpoints(save_dir, train_cfg.keep_checkpoints, step)
        if stopped_early:
            with cluster.agreed():
                if cluster.is_main:
                    save_checkpoint({"model_state_dict": stopper.best_state,
                                     "epoch": stopper.best_epoch, "loss": stopper.best_loss},
                                    save_dir / "best_model.pth")  # fmt: skip
                    print(f"early stop after epoch {epoch}: train loss has not improved by more "
                          f"than {stopper.tol} for {stopper.patience} epochs; best epoch "
                          f"{stopper.best_epoch} -> {save_dir / 'best_model.pth'}",
                          flush=True)  # fmt: skip
            break
        signum = cluster.agreed_signal(stop.signal)
        if signum is not None and epoch < train_cfg.num_epochs:
            raise interrupt(signum, epoch, epoch + 1, 0)

    final_path = save_dir / "final_model.pth"
    with cluster.agreed():
        if cluster.is_main:
            if board is not None:
                board.close()
            save_checkpoint({"model_state_dict": vae.state_dict(), "epoch": epoch, "step": step,
                             "scheme": scheme}, final_path)  # fmt: skip
    return RunSummary(epoch, step, stopped_early, final_path, row)


def load_optimiser(
    optimizer: torch.optim.Adam, schedule: LambdaLR | None, optimizer_state: dict,
    schedule_state: dict | None,
) -> None:  # fmt: skip
    """Restore an optimiser and its schedule (None, with a null state, for a constant LR)."""
    optimizer.load_state_dict(optimizer_state)
    if schedule is not None:
        schedule.load_state_dict(schedule_state)


def prune_checkpoints(save_dir: Path, keep: int | None, step: int) -> None:
    """Keep the newest `keep` periodic checkpoints (all when None); drop an older interrupt one."""
    periodic = sorted(save_dir.glob("checkpoint_epoch_*.pth"))
    for old in periodic[:-keep] if keep else []:
        old.unlink()
    interrupted = save_dir / INTERRUPT_CHECKPOINT
    if interrupted.exists() and checkpoint_step(interrupted) < step:
        interrupted.unlink()


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
