"""The two training schemes, and the loop that trains either.

    simple:    beta-VAE: lambda_recon * recon + beta * KL (beta warm-up, free bits)
    composite: the same VAE + lambda_pips * PIPS + lambda_disc * PatchGAN adversarial term,
               and a critic trained from step int(params_d.warmup_ratio * total_steps)

`SCHEMES` maps each --scheme to its class. A scheme owns its networks, optimisers and LR
schedules: it checks the model config it needs, takes one optimisation step, reports its learning
rates, and hands over its part of the checkpoint as a `state_dict()` / `load_state_dict()` pair
(under the reference's keys). `Progress` is where the run stands (step, position, the epoch's term
sums, early stopping, metrics rows), with its own state pair. `train()` reads top to bottom: build
the scheme, restore on resume, then epochs of `run_epoch` and `finish_epoch`, checkpoints, and the
final model. train.py is the entry point; nothing here parses arguments or exits.

Under torchrun the same loop runs in every process (utils/distributed.py): the VAE and the critic
are wrapped in DistributedDataParallel, each rank takes its share of every global batch of
train_bs images, the logged terms are added up over ranks, and rank 0 alone writes and prints.
"""

import dataclasses
import itertools
import math
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from model.discriminator import PatchDiscriminator
from model.linear_backend import Choice, choose
from model.vae import VAE
from utils.checkpoint import checkpoint_fields, save_checkpoint
from utils.config import (
    AdamParams,
    ModelConfig,
    PIPSConfig,
    ScheduleParams,
    TrainConfig,
    config_from_dict,
)
from utils.dataset import MNISTSplit, epoch_order, eval_batches, rank_share, train_batches
from utils.distributed import Cluster, parameter_fingerprint
from utils.errors import CheckpointError, UserError
from utils.loss import BetaVAELoss, CompositeLoss, Terms
from utils.lr_schedule import warmup_cosine
from utils.metrics_csv import MetricsLog
from utils.networks import build_pips
from utils.tensorboard_log import TensorBoardLog
from utils.tracking import EarlyStopping, NonFiniteWatch, TermAverager

LIVE_LOSS_EVERY = 25  # steps between progress-bar / TensorBoard updates (each syncs the device)
CHECK_EVERY = 50  # steps between checks for a non-finite loss (each one syncs the device)
INTERRUPT_CHECKPOINT = "checkpoint_interrupted.pth"
# Fields that may change on resume: the run's length, where the continued run is written, and
# whether it also logs to TensorBoard (a logging choice that changes nothing in the run).
RESUMABLE_CHANGES = {"num_epochs", "save_dir", "tensorboard"}
# What every resumable checkpoint holds besides its scheme's state (`state_keys`): save() writes
# them, train() and check_resumable() read them.
RESUME_KEYS = (
    "scheme",
    "epoch",
    "step",
    "next_epoch",
    "next_batch",
    "metrics_rows",
    "train_size",
    "model_config",
    "train_config",
    "epoch_terms",
    "rng_state",
)


def adam_with_schedule(
    params,
    adam: AdamParams,
    schedule: ScheduleParams | None,
    total_steps: int,
    fused: bool = True,
) -> tuple[torch.optim.Adam, LambdaLR | None]:
    """Adam, and its LR schedule: linear warm-up over int(warmup_ratio * total_steps) steps, then
    cosine decay towards 0 at total_steps (transformers' get_cosine_schedule_with_warmup, as the
    reference uses); None for a constant LR (`schedule` null). The caller steps the schedule after
    each update of its network.

    The fused kernel does the same arithmetic as stock Adam in one pass over all parameters
    (bench_ab.py times both); `fused=False` gives stock Adam (the reference path of bench.py and
    the tests).
    """
    optimizer = torch.optim.Adam(params, lr=adam.lr, weight_decay=adam.weight_decay, fused=fused)
    if schedule is None:
        return optimizer, None
    warmup = math.floor(schedule.warmup_ratio * total_steps)
    return optimizer, LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total_steps))


def update(optimizer: torch.optim.Adam, schedule: LambdaLR | None, loss: torch.Tensor) -> None:
    """One optimiser step on `loss`'s gradients, then its schedule's step (if it has one)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if schedule is not None:
        schedule.step()


def load_optimiser(
    optimizer: torch.optim.Adam,
    schedule: LambdaLR | None,
    optimizer_state: dict,
    schedule_state: dict | None,
) -> None:
    """Restore an optimiser and its schedule (None, with a null state, for a constant LR)."""
    optimizer.load_state_dict(optimizer_state)
    if schedule is not None:
        schedule.load_state_dict(schedule_state)


def forward_precision(device: torch.device, precision: str) -> torch.autocast:
    """The train config's precision for forward passes and losses: a bfloat16 autocast, or none.
    Backward passes and optimiser steps run outside it, on the float32 weights."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


class SimpleScheme:
    """beta-VAE. Owns the VAE (and, under torchrun, its DistributedDataParallel replica), the
    loss with its beta schedule, and the VAE's Adam and LR schedule."""

    name = "simple"
    # The reference's checkpoint keys for the VAE's optimiser and LR schedule.
    optimiser_keys = ("optimizer_state_dict", "scheduler_state_dict")

    @staticmethod
    def check_model(model_cfg: ModelConfig, model_path: str) -> ModelConfig:
        """The model config as this scheme uses it (the simple scheme ignores the critic's and
        the perceptual loss's blocks)."""
        return model_cfg

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        steps_per_epoch: int,
        cluster: Cluster,
        linear_backend: str,
    ):
        total_steps = train_cfg.num_epochs * steps_per_epoch
        self.precision, self.linear_backend = train_cfg.precision, linear_backend
        self.vae = VAE(model_cfg.model_config).to(cluster.device)
        self.vae.set_linear_backend(linear_backend)
        self.loss = self.make_loss(model_cfg, train_cfg, steps_per_epoch, total_steps)
        self.loss.to(cluster.device)
        # Every rank built the same weights from the seed; from here each draws its own dropout
        # and z.
        cluster.seed_streams()
        self.vae_replica = cluster.wrap(self.vae, train_cfg.sync_batchnorm)
        self.opt_g, self.sched_g = adam_with_schedule(
            self.vae.parameters(), train_cfg.vae_optimizer, train_cfg.vae_schedule, total_steps
        )

    def make_loss(
        self, model_cfg: ModelConfig, train_cfg: TrainConfig, steps_per_epoch: int, total_steps: int
    ) -> BetaVAELoss:
        return BetaVAELoss(train_cfg.loss.params, steps_per_epoch)

    @property
    def networks(self) -> list[nn.Module]:
        """The networks being trained (for buffer syncing and the replicas' weight check)."""
        return [self.vae]

    @property
    def train_terms(self) -> tuple[str, ...]:
        """The terms a step reports, in logging order: the generator's, its diagnostics (logged,
        never checked for being finite), then the critic's."""
        return self.loss.term_names + self.loss.diagnostic_names + self.loss.critic_term_names

    def train(self, mode: bool = True) -> None:
        self.vae.train(mode)
        self.loss.train(mode)

    def generator_step(self, x: torch.Tensor, step: int) -> tuple[Terms, torch.Tensor]:
        """The VAE's update on batch `x` at global step `step`: its detached loss terms and its
        reconstruction of `x`."""
        with forward_precision(x.device, self.precision):
            x_hat, mu, logvar = self.vae_replica(x)
            loss, terms = self.loss.generator_loss(x_hat, x, mu, logvar, step)
        update(self.opt_g, self.sched_g, loss)
        return terms, x_hat

    def step(self, x: torch.Tensor, step: int) -> Terms:
        """One optimisation step on batch `x` at global step `step`; its detached loss terms."""
        return self.generator_step(x, step)[0]

    def learning_rates(self) -> dict[str, float]:
        return {"lr_g": self.opt_g.param_groups[0]["lr"]}

    def state_dict(self) -> dict:
        optimizer_key, schedule_key = self.optimiser_keys
        return {
            "model_state_dict": self.vae.state_dict(),
            "encoder_state_dict": self.vae.encoder.state_dict(),
            "decoder_state_dict": self.vae.decoder.state_dict(),
            optimizer_key: self.opt_g.state_dict(),
            schedule_key: self.sched_g.state_dict() if self.sched_g is not None else None,
        }

    @classmethod
    def state_keys(cls) -> tuple[str, ...]:
        """The checkpoint keys `load_state_dict` reads."""
        return ("model_state_dict", *cls.optimiser_keys)

    def load_state_dict(self, state: dict) -> None:
        optimizer_key, schedule_key = self.optimiser_keys
        self.vae.load_state_dict(state["model_state_dict"])
        load_optimiser(self.opt_g, self.sched_g, state[optimizer_key], state[schedule_key])


class CompositeScheme(SimpleScheme):
    """The simple scheme's VAE + PIPS + a PatchGAN critic with its own Adam and LR schedule. The
    critic learns from its switch-on step; its schedule counts critic updates, as the reference's
    does."""

    name = "composite"
    optimiser_keys = ("optimizer_g_state_dict", "scheduler_g_state_dict")

    @staticmethod
    def check_model(model_cfg: ModelConfig, model_path: str) -> ModelConfig:
        """The composite scheme needs the critic, and without a pips_config takes the
        reference's perceptual loss (ImageNet VGG16), which is written in."""
        if model_cfg.discriminator_config is None:
            raise UserError(
                f"{model_path}: the composite scheme needs 'discriminator_config'; see "
                "configs/model_composite_config.json, or pass --scheme simple"
            )
        return dataclasses.replace(model_cfg, pips_config=model_cfg.pips_config or PIPSConfig())

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        steps_per_epoch: int,
        cluster: Cluster,
        linear_backend: str,
    ):
        super().__init__(model_cfg, train_cfg, steps_per_epoch, cluster, linear_backend)
        self.pips_config = model_cfg.pips_config
        self.critic = self.loss.discriminator
        self.critic_replica = cluster.wrap(self.critic, train_cfg.sync_batchnorm)
        self.opt_d, self.sched_d = adam_with_schedule(
            self.critic.parameters(),
            train_cfg.optimizer.params_d,
            train_cfg.scheduler.params_d,
            train_cfg.num_epochs * steps_per_epoch,
        )
        # Checkpoints record which perceptual weights the run trains against, so that a resume
        # against another backbone file (made again, or replaced) is refused, not silently mixed.
        self.pips_fingerprint = parameter_fingerprint([self.loss.pips])

    def make_loss(
        self, model_cfg: ModelConfig, train_cfg: TrainConfig, steps_per_epoch: int, total_steps: int
    ) -> CompositeLoss:
        # Channels-last convolutions run faster on CPU (bench_ab.py times both); the arithmetic
        # is the same.
        return CompositeLoss(
            train_cfg.loss.params,
            steps_per_epoch,
            total_steps,
            train_cfg.optimizer.params_d.warmup_ratio,
            PatchDiscriminator(model_cfg.discriminator_config).to(
                memory_format=torch.channels_last
            ),
            build_pips(model_cfg.pips_config).to(memory_format=torch.channels_last),
            lambda: self.vae.decoder.last_layer,
        )

    @property
    def networks(self) -> list[nn.Module]:
        return [self.vae, self.critic]

    def step(self, x: torch.Tensor, step: int) -> Terms:
        """The VAE's update, then from its switch-on the critic's on the same reconstructions;
        the critic's terms join the generator's."""
        terms, x_hat = self.generator_step(x, step)
        if self.loss.discriminator_on(step):
            with forward_precision(x.device, self.precision):
                loss_d, critic_terms = self.loss.discriminator_loss(
                    x_hat.detach(), x, self.critic_replica
                )
            update(self.opt_d, self.sched_d, loss_d)
            terms.update(critic_terms)
        return terms

    def learning_rates(self) -> dict[str, float]:
        return {**super().learning_rates(), "lr_d": self.opt_d.param_groups[0]["lr"]}

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "discriminator_state_dict": self.critic.state_dict(),
            "optimizer_d_state_dict": self.opt_d.state_dict(),
            "scheduler_d_state_dict": self.sched_d.state_dict() if self.sched_d else None,
            "pips_fingerprint": self.pips_fingerprint,
        }

    @classmethod
    def state_keys(cls) -> tuple[str, ...]:
        return (
            *super().state_keys(),
            "discriminator_state_dict",
            "optimizer_d_state_dict",
            "scheduler_d_state_dict",
        )

    def load_state_dict(self, state: dict) -> None:
        """Also refuses a run that trained against other PIPS weights (checkpoints written
        before the fingerprint existed carry none and are taken as they are)."""
        saved = state.get("pips_fingerprint")
        if saved is not None and saved != self.pips_fingerprint:
            pips = self.pips_config
            source = pips.weights_path or f"the {pips.backbone} backbone ({pips.weights} weights)"
            raise UserError(
                f"{source}: the PIPS backbone's weights are not those this run trained against "
                f"(fingerprint {self.pips_fingerprint}, the checkpoint's {saved}); put that file "
                "back, or start a new run"
            )
        super().load_state_dict(state)
        self.critic.load_state_dict(state["discriminator_state_dict"])
        load_optimiser(
            self.opt_d,
            self.sched_d,
            state["optimizer_d_state_dict"],
            state["scheduler_d_state_dict"],
        )


SCHEMES: dict[str, type[SimpleScheme]] = {"simple": SimpleScheme, "composite": CompositeScheme}


def check_scheme(scheme: str, model_cfg: ModelConfig, model_path: str) -> ModelConfig:
    """The model config as `scheme` uses it (see each scheme's `check_model`)."""
    return SCHEMES[scheme].check_model(model_cfg, model_path)


def linear_backend_choice(
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    batch: int,
    device: torch.device,
    resume: dict | None,
) -> Choice:
    """The backend of the VAE's linear layers for a run on `device` at `batch` rows per step: on
    resume the one its checkpoint records (ATen in checkpoints from before the choice existed),
    so that it continues with the same arithmetic; else the train config's, resolved. (Timing
    the backends draws from its own generator, not the global one.)"""
    saved = resume.get("linear_backend", "aten") if resume is not None else None
    return choose(train_cfg.linear_backend, VAE(model_cfg.model_config), batch, device, saved)


class Progress:
    """Where a run stands and what it has recorded: the global step, the next epoch and batch,
    the current epoch's term sums, early stopping, and the metrics rows (written to
    metrics.csv by rank 0). `state_dict()` / `load_state_dict()` are its part of the checkpoint;
    the term sums differ between ranks and travel with each rank's RNG state (`rank_state`)."""

    def __init__(self, metrics: MetricsLog, stopper: EarlyStopping | None):
        self.metrics, self.stopper = metrics, stopper
        self.step, self.next_epoch, self.next_batch = 0, 1, 0
        self.epoch_terms = TermAverager()
        # Names the run in its checkpoints, so that pruning removes only files it wrote itself.
        self.run_id = uuid.uuid4().hex

    def should_stop(self, epoch: int, train_loss: float, vae: VAE) -> bool:
        return self.stopper is not None and self.stopper.should_stop(epoch, train_loss, vae)

    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "next_epoch": self.next_epoch,
            "next_batch": self.next_batch,
            "metrics_rows": list(self.metrics.rows),
            "run_id": self.run_id,
        }
        if self.stopper is not None:
            state["early_stopping"] = self.stopper.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step, self.next_epoch = state["step"], state["next_epoch"]
        self.next_batch, self.metrics.rows = state["next_batch"], list(state["metrics_rows"])
        self.run_id = state.get("run_id", self.run_id)  # none in checkpoints from before it
        if self.stopper is not None:
            self.stopper.load_state_dict(state["early_stopping"])

    def rank_state(self, device: torch.device) -> dict:
        """What differs between ranks and decides what happens next: RNG, partial term sums."""
        state = {"epoch_terms": self.epoch_terms.state_dict(), "rng_state": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda_rng_state"] = torch.cuda.get_rng_state(device)
        return state

    def load_rank_state(self, state: dict, device: torch.device) -> None:
        self.epoch_terms.load_state_dict(state["epoch_terms"])
        torch.set_rng_state(state["rng_state"])
        if device.type == "cuda" and "cuda_rng_state" in state:
            torch.cuda.set_rng_state(state["cuda_rng_state"], device)


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


@dataclass
class Run:
    """What the parts of the loop share: the scheme being trained and its progress, the configs,
    the data, the processes, the run folder, and the optional live views."""

    scheme: SimpleScheme
    progress: Progress
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    train_set: MNISTSplit
    val_set: MNISTSplit
    cluster: Cluster
    save_dir: Path
    stop: StopRequest
    board: TensorBoardLog | None
    watch: NonFiniteWatch
    show_bar: bool
    live_loss: bool  # read the loss every LIVE_LOSS_EVERY steps (a collective under torchrun)
    last_good: str = "none yet"  # the newest checkpoint written, for error messages
    epoch_started: float = 0.0


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
    linear layers run on `linear_backend` (None: chosen here, as train.py chooses it).

    On the CPU a resumed run ends bit-identical to the same run left alone: the checkpoint holds
    the weights, optimisers, schedulers, RNG state (every rank's), position in the epoch, the
    epoch's partial term sums (every rank's), early-stopping state and the metrics rows so far.
    """
    cluster = cluster or Cluster(device)
    if linear_backend is None:  # rank 0's choice, for every rank
        batch = train_cfg.data.train_bs // cluster.world_size
        choice = (
            linear_backend_choice(train_cfg, model_cfg, batch, device, resume)
            if cluster.is_main
            else None
        )
        linear_backend = cluster.broadcast(choice).backend
    torch.manual_seed(train_cfg.seed)
    steps_per_epoch = len(train_set) // train_cfg.data.train_bs
    learner = SCHEMES[scheme](model_cfg, train_cfg, steps_per_epoch, cluster, linear_backend)
    run = start_run(learner, model_cfg, train_cfg, train_set, val_set, cluster, save_dir, stop)
    progress = run.progress
    if resume is not None:
        with cluster.agreed():
            learner.load_state_dict(resume)
        progress.load_state_dict(resume)
        progress.load_rank_state(
            resume["rank_states"][cluster.rank] if cluster.distributed else resume, device
        )
    epoch, stopped_early = progress.next_epoch - 1, False
    for epoch in range(progress.next_epoch, train_cfg.num_epochs + 1):
        run_epoch(run, epoch)
        row = finish_epoch(run, epoch)
        stopped_early = cluster.main_decides(
            progress.should_stop(epoch, row["train_loss"], learner.vae)
        )
        if epoch % train_cfg.save_every == 0 or epoch == train_cfg.num_epochs or stopped_early:
            save(run, save_dir / f"checkpoint_epoch_{epoch:03d}.pth", epoch)
            if cluster.is_main:
                prune_checkpoints(
                    save_dir, train_cfg.keep_checkpoints, progress.run_id, progress.step
                )
        if stopped_early:
            save_best_model(run, epoch)
            break
        signum = cluster.agreed_signal(run.stop.signal)
        if signum is not None and epoch < train_cfg.num_epochs:
            raise interrupt(run, signum, epoch)
    final_path = save_final_model(run, epoch)
    last_row = progress.metrics.rows[-1] if progress.metrics.rows else {}
    return RunSummary(epoch, progress.step, stopped_early, final_path, last_row)


def start_run(
    learner: SimpleScheme,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_set: MNISTSplit,
    val_set: MNISTSplit,
    cluster: Cluster,
    save_dir: Path,
    stop: StopRequest | None,
) -> Run:
    """The run's shared parts at step 0: progress with its metrics columns and early stopping,
    the non-finite watch, and (rank 0) the progress bar and TensorBoard when wanted."""
    loss = learner.loss
    columns = [
        "epoch",
        "step",
        *(f"train_{t}" for t in learner.train_terms),
        *(f"val_{t}" for t in loss.term_names),
        "beta",
        *learner.learning_rates(),
        "seconds",
    ]
    stopping = train_cfg.early_stopping
    stopper = EarlyStopping(stopping.patience, stopping.tol) if stopping else None
    progress = Progress(MetricsLog(save_dir / "metrics.csv", columns), stopper)
    board = (
        TensorBoardLog(save_dir, model_cfg, train_cfg)
        if train_cfg.tensorboard and cluster.is_main
        else None
    )
    show_bar = cluster.is_main and sys.stderr.isatty()
    # Reading the live loss is a collective under torchrun, so every rank follows rank 0's need.
    live_loss = cluster.main_decides(show_bar or board is not None)
    watch = NonFiniteWatch(loss.term_names + loss.critic_term_names, cluster.device)
    return Run(
        learner,
        progress,
        model_cfg,
        train_cfg,
        train_set,
        val_set,
        cluster,
        save_dir,
        stop or StopRequest(),
        board,
        watch,
        show_bar,
        live_loss,
    )


def run_epoch(run: Run, epoch: int) -> None:
    """The epoch's optimisation steps from where the run stands in it. A signal stops the run
    after the step it arrived in, with a resumable checkpoint (`Interrupted`)."""
    progress, cluster, cfg = run.progress, run.cluster, run.train_cfg
    run.epoch_started = time.perf_counter()
    first_batch = progress.next_batch
    if first_batch == 0:
        progress.epoch_terms = TermAverager()
    run.scheme.train()
    steps_per_epoch = len(run.train_set) // cfg.data.train_bs
    rank_bs = cfg.data.train_bs // cluster.world_size
    order = epoch_order(len(run.train_set), cfg.seed, epoch, cluster.device)
    share = rank_share(order, cfg.data.train_bs, cluster.rank, cluster.world_size)
    batches = train_batches(run.train_set.images, rank_bs, share[first_batch * rank_bs :])
    bar = tqdm(
        batches,
        total=steps_per_epoch,
        initial=first_batch,
        leave=False,
        desc=f"epoch {epoch}/{cfg.num_epochs}",
        disable=not run.show_bar,
    )
    for batch_index, x in enumerate(bar, start=first_batch):
        terms = run.scheme.step(x, progress.step)
        progress.epoch_terms.add(terms)
        run.watch.observe(terms, progress.step)
        progress.step += 1
        if progress.step % CHECK_EVERY == 0:
            check_finite(run)
        if progress.step % LIVE_LOSS_EVERY == 0 and run.live_loss:
            show_live_loss(run, bar, terms)
        signum = cluster.agreed_signal(run.stop.signal)
        if signum is not None and batch_index + 1 < steps_per_epoch:
            progress.next_epoch, progress.next_batch = epoch, batch_index + 1
            raise interrupt(run, signum, epoch - 1)


def show_live_loss(run: Run, bar: tqdm, terms: Terms) -> None:
    """The step's loss terms (averaged over ranks) on the progress bar and in TensorBoard."""
    values = run.cluster.mean(torch.stack(list(terms.values()))).tolist()
    live = dict(zip(terms, values, strict=True))
    bar.set_postfix(loss=f"{live['loss']:.3f}")
    if run.board is not None:
        step, lr_g = run.progress.step, run.scheme.learning_rates()["lr_g"]
        run.board.add_step(step, live, run.scheme.loss.beta(step), lr_g)


def finish_epoch(run: Run, epoch: int) -> dict[str, float]:
    """Validate, and record the epoch's row (metrics.csv, TensorBoard, one printed line)."""
    learner, progress, cluster, cfg = run.scheme, run.progress, run.cluster, run.train_cfg
    check_finite(run)
    cluster.sync_buffers(learner.networks)
    with forward_precision(cluster.device, cfg.precision):
        val_terms = validate(
            learner.vae, learner.loss, run.val_set, cfg.data.val_bs, progress.step, cluster
        )
    train_means = cluster.sum_terms(progress.epoch_terms, learner.train_terms).means(
        learner.train_terms
    )
    row = {
        "epoch": epoch,
        "step": progress.step,
        **{f"train_{k}": v for k, v in train_means.items()},
        **{f"val_{k}": v for k, v in val_terms.items()},
        "beta": learner.loss.beta(progress.step),
        **learner.learning_rates(),
        "seconds": time.perf_counter() - run.epoch_started,
    }
    with cluster.agreed():
        if cluster.is_main:
            progress.metrics.append(row)
            if run.board is not None:
                run.board.add_epoch(row, learner.vae, run.val_set)
            print(epoch_summary(row, cfg.num_epochs), flush=True)
    progress.next_epoch, progress.next_batch = epoch + 1, 0
    return row


@torch.inference_mode()
def validate(
    vae: VAE,
    loss_fn: BetaVAELoss,
    val_set: MNISTSplit,
    batch_size: int,
    step: int,
    cluster: Cluster,
) -> dict[str, float]:
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


def check_finite(run: Run) -> None:
    """Stop every rank, without saving, once any rank has seen a non-finite loss term."""
    with run.cluster.agreed():
        run.watch.check(run.last_good)


def save(run: Run, path: Path, epoch_done: int) -> None:
    """Write everything that decides what happens next, after checking it is finite and, under
    torchrun, that every replica holds the same weights; rank 0 writes. The checkpoint holds rank
    0's modules and state at the top level, as one process writes it; under torchrun also the
    world size, every rank's state and the weights' fingerprint."""
    learner, progress, cluster = run.scheme, run.progress, run.cluster
    check_finite(run)
    rank_states = cluster.gather(progress.rank_state(cluster.device))
    fingerprint = cluster.same_weights(learner.networks, progress.step)
    with cluster.agreed():
        if cluster.is_main:
            payload = {
                "scheme": learner.name,
                "epoch": epoch_done,
                "loss": progress.metrics.last("train_loss"),
                "beta": learner.loss.beta(progress.step),
                "train_size": len(run.train_set),
                "linear_backend": learner.linear_backend,
                "model_config": dataclasses.asdict(run.model_cfg),
                "train_config": dataclasses.asdict(run.train_cfg),
                **progress.state_dict(),
                **learner.state_dict(),
                **rank_states[0],
            }
            if cluster.distributed:
                payload.update(
                    world_size=cluster.world_size,
                    rank_states=rank_states,
                    replica_fingerprint=fingerprint,
                )
            save_checkpoint(payload, path)
    run.last_good = str(path)


def check_resumable(
    payload: dict,
    path: Path,
    scheme: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_size: int,
    config_paths: tuple[str, str],
    cluster: Cluster,
) -> None:
    """Refuse a checkpoint that cannot continue this run: weights only, another run folder's,
    other settings, another number of processes, or a run that has ended."""
    if "next_epoch" not in payload:
        raise CheckpointError(
            f"{path}: holds weights only (no training state); resume from a "
            "checkpoint_*.pth written by this train.py"
        )
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"{path}: lacks '{missing[0]}', which a resumable checkpoint holds; resume from a "
            "checkpoint_*.pth written by this train.py"
        )
    own_folder = path.resolve().parent
    if own_folder != Path(train_cfg.save_dir).resolve():
        raise UserError(
            f"{path}: is a checkpoint of the run in {own_folder}, and a checkpoint resumes in "
            f"its own run folder: pass --save_dir {own_folder} (to branch a run, copy the "
            "checkpoint into an empty folder and resume there)"
        )
    if payload["scheme"] != scheme:
        raise UserError(
            f"{path}: is a {payload['scheme']} run; resume it with --scheme {payload['scheme']}"
        )
    missing = [key for key in SCHEMES[scheme].state_keys() if key not in payload]
    if missing:
        raise CheckpointError(
            f"{path}: lacks '{missing[0]}', which a {scheme} run's checkpoint holds; resume from "
            "a checkpoint_*.pth written by this train.py"
        )
    check_same_configs(payload, path, (model_cfg, train_cfg), config_paths)
    if payload["train_size"] != train_size:
        raise UserError(
            f"--subset: the run trained on {payload['train_size']} images, this call on "
            f"{train_size}; pass --subset {payload['train_size']}"
        )
    processes = payload.get("world_size", 1)
    if processes != cluster.world_size:
        raise UserError(
            f"{path}: the run trained in {processes} processes, this call has "
            f"{cluster.world_size}; resume it with {processes} (torchrun's --nnodes x "
            "--nproc_per_node, or a plain python train.py for 1)"
        )
    check_unfinished(payload, path, train_cfg)


def check_same_configs(
    payload: dict, path: Path, configs: tuple[ModelConfig, TrainConfig], paths: tuple[str, str]
) -> None:
    """Refuse configs that differ from the run's in anything but RESUMABLE_CHANGES."""
    names = ("model_config", "train_config")
    for name, config, config_path in zip(names, configs, paths, strict=True):
        saved = config_from_dict(payload[name], type(config), f"{path} ({name})")
        found = first_difference(dataclasses.asdict(saved), dataclasses.asdict(config))
        if found:
            field, saved, current = found
            raise UserError(
                f"{config_path}: field '{field}' is {current!r} but the run used {saved!r}; "
                "only the epoch count may change on resume"
            )


def check_unfinished(payload: dict, path: Path, train_cfg: TrainConfig) -> None:
    """Refuse to continue a run that has ended: stopped early (its early-stopping state says so),
    or through all of this call's epochs."""
    stopping, stopper = train_cfg.early_stopping, payload.get("early_stopping")
    if stopping and stopper and stopper["bad_epochs"] >= stopping.patience:
        raise UserError(
            f"{path}: the run stopped early after epoch {payload['epoch']} (its best weights are "
            "in best_model.pth) and has nothing left to train; start a new run in another "
            "--save_dir"
        )
    if payload["next_epoch"] > train_cfg.num_epochs:
        raise UserError(
            f"{path}: the run has finished its {payload['epoch']} epochs; to train it further "
            f"pass --epochs N with N > {payload['epoch']}"
        )


def first_difference(saved: Any, current: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """(dotted field, saved value, current value) of the first difference between two config
    dicts, ignoring the top-level RESUMABLE_CHANGES; None when they agree."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(saved.keys() | current.keys()):
            if where or key not in RESUMABLE_CHANGES:
                found = first_difference(saved.get(key), current.get(key), f"{where}{key}.")
                if found:
                    return found
        return None
    return None if saved == current else (where.rstrip("."), saved, current)


def interrupt(run: Run, signum: int, epoch_done: int) -> Interrupted:
    """Checkpoint where the run stands, as the loop's answer to signal `signum`."""
    path = run.save_dir / INTERRUPT_CHECKPOINT
    save(run, path, epoch_done)
    return Interrupted(signum, path, run.progress.next_epoch, run.progress.step)


def prune_checkpoints(save_dir: Path, keep: int | None, run_id: str, step: int) -> None:
    """Keep the newest `keep` periodic checkpoints of run `run_id` (all when None), newest by the
    step each file records, and drop its interrupt checkpoint once an older step than `step`.
    Files of other runs, or that are not checkpoints, are left alone."""
    own = {
        path: found[1]
        for path in save_dir.glob("checkpoint_*.pth")
        if (found := checkpoint_fields(path, "run_id", "step"))[0] == run_id
    }
    interrupted = save_dir / INTERRUPT_CHECKPOINT
    periodic = sorted((p for p in own if p != interrupted), key=own.get)
    for old in periodic[:-keep] if keep else []:
        old.unlink()
    if own.get(interrupted, step) < step:
        interrupted.unlink()


def save_best_model(run: Run, epoch: int) -> None:
    """On an early stop: the best epoch's weights to best_model.pth, and one line saying why."""
    stopper, path = run.progress.stopper, run.save_dir / "best_model.pth"
    with run.cluster.agreed():
        if run.cluster.is_main:
            save_checkpoint(
                {
                    "model_state_dict": stopper.best_state,
                    "epoch": stopper.best_epoch,
                    "loss": stopper.best_loss,
                    "dataset": run.train_cfg.data.dataset,
                },
                path,
            )
            print(
                f"early stop after epoch {epoch}: train loss has not improved by more than "
                f"{stopper.tol} for {stopper.patience} epochs; best epoch {stopper.best_epoch} "
                f"-> {path}",
                flush=True,
            )


def save_final_model(run: Run, epoch: int) -> Path:
    """The trained VAE's weights to final_model.pth (rank 0), closing TensorBoard."""
    path = run.save_dir / "final_model.pth"
    with run.cluster.agreed():
        if run.cluster.is_main:
            if run.board is not None:
                run.board.close()
            save_checkpoint(
                {
                    "model_state_dict": run.scheme.vae.state_dict(),
                    "epoch": epoch,
                    "step": run.progress.step,
                    "scheme": run.scheme.name,
                    "dataset": run.train_cfg.data.dataset,
                },
                path,
            )
    return path


def epoch_summary(row: dict[str, float], num_epochs: int) -> str:
    """One line per epoch: the main terms of train and validation, beta, LR and time."""
    terms = {
        prefix: " ".join(
            f"{k[len(prefix) :]} {v:.4g}"
            for k, v in row.items()
            if k.startswith(prefix) and not math.isnan(v)
        )
        for prefix in ("train_", "val_")
    }
    return (
        f"epoch {row['epoch']}/{num_epochs} step {row['step']} | train {terms['train_']} | "
        f"val {terms['val_']} | beta {row['beta']:.3g} lr_g {row['lr_g']:.3g} | "
        f"{row['seconds']:.1f} s"
    )
