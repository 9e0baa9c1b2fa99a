"""A/B timings of the training loop's choices, each against its alternative, side by side.

    python bench_ab.py --data_root data/
    python bench_ab.py --data_root data/ --bursts 11 --out results/bench_ab.json

Each pair alternates bursts of steps (or of PIPS forward + backward passes) in one process, so a
load that comes and goes hits both alike, and prints the medians in ms and their ratio. The
allocator pair alternates child processes instead, since the setting holds for a whole process.

    adam            fused kernel (kept)          vs stock Adam                 simple step
    dropout         nn.Dropout (kept)            vs a torch.rand < p mask      simple step
    memory format   channels-last (kept)         vs contiguous critic + PIPS   composite step
    pips distance   expanded form (kept)         vs the direct formula         PIPS fwd + bwd
    allocator       freed memory kept (kept)     vs glibc's defaults           both steps

A step is what training_schemes.train does per batch (forward, loss, backward, optimiser steps;
the critic's update included), on real MNIST batches, the critic switched on. Nothing here is
asserted: it prints figures and writes JSON.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from model.components import LinearLayer
from model.pips import build_pips, direct_distance
from model.vae import VAE
from training_schemes import adam_with_schedule, build_loss
from utils.config import load_model_config, load_train_config
from utils.dataset import load_mnist
from utils.loss import CompositeLoss
from utils.misc import keep_freed_memory, run_cli

CONFIGS = {
    "simple": ("configs/model_simple_config.json", "configs/train_simple_config.json"),
    "composite": (
        "configs/model_composite_mnist_config.json",
        "configs/train_composite_config.json",
    ),
}
BURST = {"simple": 20, "composite": 3}  # steps per burst: about 0.3 s and 0.6 s on 2 cores


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data_root", default="data/", help="folder holding MNIST/raw/")
    p.add_argument("--bursts", type=int, default=7, help="bursts per variant (default 7)")
    p.add_argument("--out", default="results/bench_ab.json", help="JSON file to write")
    p.add_argument("--child", choices=["keep", "default"], help=argparse.SUPPRESS)
    p.add_argument("--scheme", choices=list(CONFIGS), help=argparse.SUPPRESS)
    return p.parse_args()


class RandMaskDropout(nn.Dropout):
    """The dropout alternative: the same keep probability and scale, the mask from torch.rand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * ((torch.rand_like(x) >= self.p) * (1 / (1 - self.p)))


def training_step(
    scheme: str, images: torch.Tensor, fused: bool = True, channels_last: bool = True,
    rand_dropout: bool = False,
) -> Callable[[int], None]:  # fmt: skip
    """One optimisation step of `scheme` as the loop takes it, on batch `i` of `images`."""
    model_cfg = load_model_config(CONFIGS[scheme][0])
    train_cfg = load_train_config(CONFIGS[scheme][1])
    torch.manual_seed(0)
    steps_per_epoch = len(images) // train_cfg.train_bs
    total = train_cfg.num_epochs * steps_per_epoch
    vae = VAE(model_cfg)
    if rand_dropout:
        for layer in vae.modules():
            if isinstance(layer, LinearLayer):
                layer.dropout = RandMaskDropout(layer.dropout.p)
    loss_fn = build_loss(scheme, model_cfg, train_cfg, steps_per_epoch, total)
    if not channels_last:
        loss_fn.to(memory_format=torch.contiguous_format)
    opt_g, sched_g = adam_with_schedule(
        vae.parameters(), train_cfg.optimizer.params_g, total, fused=fused
    )
    critic = loss_fn.discriminator if isinstance(loss_fn, CompositeLoss) else None
    if critic is not None:
        opt_d, _ = adam_with_schedule(critic.parameters(), train_cfg.optimizer.params_d, total)
    step_on = total // 2  # past beta's warm-up and the critic's switch-on
    bs = train_cfg.train_bs

    def step(i: int) -> None:
        x = images[(i % steps_per_epoch) * bs : (i % steps_per_epoch + 1) * bs]
        x_hat, mu, logvar = vae(x)
        loss, _ = loss_fn.generator_loss(x_hat, x, mu, logvar, step_on)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        sched_g.step()
        if critic is not None:
            loss_d, _ = loss_fn.discriminator_loss(x_hat.detach(), x)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

    return step


def pips_pass(images: torch.Tensor, direct: bool) -> Callable[[int], None]:
    """PIPS forward + backward on a batch of 128 against a noisy copy, either form."""
    pips_cfg = load_model_config(CONFIGS["composite"][0]).pips_config
    pips = build_pips(pips_cfg).to(memory_format=torch.channels_last)  # as build_loss makes it
    torch.manual_seed(0)
    x = images[:128]
    x_hat = (x + 0.2 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)

    def one_pass(_: int) -> None:
        (direct_distance(pips, x_hat, x) if direct else pips(x_hat, x)).backward()

    return one_pass


def alternate(variants: dict[str, Callable[[int], None]], burst: int, bursts: int) -> dict:
    """Median ms per call of each variant over alternating bursts (one warm-up burst each)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(bursts + 1):
        for name, run in variants.items():
            started = time.perf_counter()
            for i in range(burst):
                run(i)
            if rep > 0:
                times[name].append((time.perf_counter() - started) / burst * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def child(scheme: str, allocator: str, data_root: str) -> None:
    """--child: median ms per step of `scheme` in this process, with or without kept memory."""
    if allocator == "keep":
        keep_freed_memory()
    images = load_mnist(data_root, "train").images
    print(alternate({scheme: training_step(scheme, images)}, BURST[scheme], 3)[scheme])


def allocator_pair(scheme: str, data_root: str, runs: int) -> dict:
    """Median ms per step over alternating child processes, freed memory kept and not."""
    times: dict[str, list[float]] = {"keep": [], "default": []}
    for _ in range(runs):
        for mode in times:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--scheme", scheme,
                 "--data_root", data_root],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            times[mode].append(float(out))
    return {mode: statistics.median(t) for mode, t in times.items()}


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.scheme, args.child, args.data_root)
        return
    images = load_mnist(args.data_root, "train").images
    pairs = {
        "adam (simple step)": alternate(
            {"fused": training_step("simple", images),
             "stock": training_step("simple", images, fused=False)},
            BURST["simple"], args.bursts),
        "dropout (simple step)": alternate(
            {"nn.Dropout": training_step("simple", images),
             "rand mask": training_step("simple", images, rand_dropout=True)},
            BURST["simple"], args.bursts),
        "memory format (composite step)": alternate(
            {"channels-last": training_step("composite", images),
             "contiguous": training_step("composite", images, channels_last=False)},
            BURST["composite"], args.bursts),
        "pips distance (fwd + bwd)": alternate(
            {"expanded": pips_pass(images, direct=False),
             "direct": pips_pass(images, direct=True)},
            10, args.bursts),
    }  # fmt: skip
    for scheme in CONFIGS:
        pairs[f"allocator ({scheme} step)"] = allocator_pair(scheme, args.data_root, runs=5)

    print(f"{'pair':32} {'kept':>22} {'alternative':>22}  ratio")
    for pair, medians in pairs.items():
        (kept, a), (other, b) = medians.items()
        print(f"{pair:32} {kept:>12} {a:6.2f} ms {other:>12} {b:6.2f} ms  {b / a:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "bursts": args.bursts, "ms": pairs}, indent=2) + "\n")  # fmt: skip
    print(f"-> {out}")


if __name__ == "__main__":
    run_cli(main)
