"""A/B timings of the training loop's choices, each against its alternative, side by side, and
where a step's time goes.

    python bench_ab.py --data_root data/
    python bench_ab.py --data_root data/ --bursts 11 --out results/bench_ab.json

Each pair alternates bursts of steps in one process, so a load that comes and goes hits both
alike, and prints the medians in ms per step and their ratio. The host-memory pair alternates
child processes instead (the setting holds for a whole process) and also counts page faults.

    linear backend  oneDNN's linear op           vs ATen's (MKL on the CPU)    simple step
                    (kept: whichever "auto" takes in this process)
    adam            fused kernel (kept)          vs stock Adam                 simple step
    dropout         nn.Dropout (kept)            vs a torch.rand >= p mask     simple step
    compile         eager VAE (kept)             vs torch.compile(vae)         simple step
    memory format   channels-last (kept)         vs contiguous critic + PIPS   composite step
    pips distance   expanded form (kept)         vs the direct formula         composite step
    host memory     freed memory kept (kept)     vs glibc's defaults           both steps

A step is the scheme's `step` (training_schemes.SCHEMES), what the training loop does per batch
(forward, loss, backward, optimiser and scheduler steps, the critic's update included), on real
MNIST batches, past beta's warm-up with the critic on, its linear layers on the backend that the
train config's "auto" chooses in this process (the linear-backend pair takes each explicitly,
the host-memory children ATen; the pair is left out where oneDNN's op fails its check); this
process keeps freed memory as train.py does. Then the torch profiler splits one step of each
scheme into matrix products, convolutions, dropout masks, Adam and the rest.
Nothing here is asserted: it prints figures and writes JSON.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench import COMPOSITE_MNIST, SIMPLE, cpu, make_pips_backbone_if_missing
from model.components import LinearLayer
from model.linear_backend import choose, onednn_problem
from model.pips import direct_distance
from model.vae import VAE
from training_schemes import SCHEMES, adam_with_schedule, check_scheme
from utils.cli import OneLineParser, run_cli
from utils.config import load_model_config, load_train_config
from utils.dataset import load_mnist
from utils.distributed import Cluster
from utils.loss import CompositeLoss
from utils.memory import keep_freed_memory

CONFIGS = {"simple": SIMPLE, "composite": COMPOSITE_MNIST}
BURST = {"simple": 20, "composite": 3}  # steps per burst: about 0.3 s and 0.6 s on 2 cores
ALLOCATOR_RUNS = 5  # child processes per allocator variant and scheme
# Profiler operations by what they do; everything else is "the rest".
OP_KINDS = {
    "matrix products": {"aten::mm", "aten::addmm", "mkldnn::_linear_pointwise"},
    "convolutions": {"aten::mkldnn_convolution", "aten::convolution_backward"},
    "dropout masks": {"aten::bernoulli_"},
    "Adam": {"aten::_fused_adam_"},
}


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    scheme: str,
    images: torch.Tensor,
    fused: bool = True,
    channels_last: bool = True,
    rand_dropout: bool = False,
    direct_pips: bool = False,
    compiled: bool = False,
    linear_backend: str = "aten",
) -> Callable[[int], None]:
    """A function of `i` that takes the scheme's optimisation step (`step` of its class in
    training_schemes.SCHEMES) on batch `i % steps_per_epoch` of `images`, as the loop takes it or
    with one alternative switched in, at a step past beta's warm-up and (composite) the critic's
    switch-on."""
    model_cfg = check_scheme(scheme, load_model_config(CONFIGS[scheme][0]), CONFIGS[scheme][0])
    train_cfg = load_train_config(CONFIGS[scheme][1], scheme)
    torch.manual_seed(0)
    bs = train_cfg.data.train_bs
    steps_per_epoch = len(images) // bs
    total = train_cfg.num_epochs * steps_per_epoch
    learner = SCHEMES[scheme](
        model_cfg, train_cfg, steps_per_epoch, Cluster(torch.device("cpu")), linear_backend
    )
    vae, loss_fn = learner.vae, learner.loss
    if rand_dropout:
        for layer in vae.modules():
            if isinstance(layer, LinearLayer):
                layer.dropout = RandMaskDropout(layer.dropout.p)
    if not channels_last:
        loss_fn.to(memory_format=torch.contiguous_format)
    if direct_pips:
        loss_fn.pips.forward = partial(direct_distance, loss_fn.pips)
    if not fused:
        learner.opt_g, learner.sched_g = adam_with_schedule(
            vae.parameters(), train_cfg.vae_optimizer, train_cfg.vae_schedule, total, fused=False
        )
    if compiled:
        learner.vae_replica = torch.compile(vae)
    step_on = total // 2
    critic_off = isinstance(loss_fn, CompositeLoss) and not loss_fn.discriminator_on(step_on)
    if loss_fn.beta(step_on) != train_cfg.loss.params.beta or critic_off:
        raise RuntimeError(f"step {step_on} is not past beta's warm-up and the critic's start")

    def step(i: int) -> None:
        x = images[(i % steps_per_epoch) * bs : (i % steps_per_epoch + 1) * bs]
        learner.step(x, step_on)

    return step


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


def child(scheme: str, allocator: str, data_root: str, bursts: int) -> None:
    """--child: this process's median ms per step of `scheme` and minor page faults per step,
    with or without kept memory, as one JSON line."""
    if allocator == "keep":
        keep_freed_memory()
    step = training_step(scheme, load_mnist(data_root, "train").images)
    for i in range(BURST[scheme]):  # the first steps fault their memory in, kept or not
        step(i)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ms = alternate({scheme: step}, BURST[scheme], bursts)[scheme]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"ms": ms, "faults": faults / ((bursts + 1) * BURST[scheme])}))


def allocator_pair(scheme: str, data_root: str, bursts: int) -> tuple[dict, dict]:
    """Median ms per step, and page faults per step, over alternating child processes."""
    runs: dict[str, list[dict]] = {"keep": [], "default": []}
    for _ in range(ALLOCATOR_RUNS):
        for mode, results in runs.items():
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    "--scheme",
                    scheme,
                    "--data_root",
                    data_root,
                    "--bursts",
                    str(bursts),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results.append(json.loads(out))
    return tuple(
        {mode: statistics.median(r[key] for r in results) for mode, results in runs.items()}
        for key in ("ms", "faults")
    )


def time_breakdown(step: Callable[[int], None], steps: int = 10) -> dict[str, float]:
    """ms per step of each kind in OP_KINDS and of the rest, from the torch profiler's self times
    (after a warm-up of the same length)."""
    for i in range(steps):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
    ms = {kind: 0.0 for kind in (*OP_KINDS, "the rest")}
    for event in prof.key_averages():
        kind = next((k for k, ops in OP_KINDS.items() if event.key in ops), "the rest")
        ms[kind] += event.self_cpu_time_total / 1e3 / steps
    return ms


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.scheme, args.child, args.data_root, args.bursts)
        return
    keep_freed_memory()
    make_pips_backbone_if_missing(args.data_root)
    images = load_mnist(args.data_root, "train").images
    auto = choose(
        "auto",
        VAE(load_model_config(SIMPLE[0]).model_config),
        load_train_config(SIMPLE[1], "simple").data.train_bs,
        torch.device("cpu"),
    )
    print(f"linear backend (auto): {auto.backend} ({auto.why})", flush=True)
    simple, composite = (
        partial(training_step, s, images, linear_backend=auto.backend)
        for s in ("simple", "composite")
    )
    pairs = {}
    if onednn_problem() is None:
        pairs["linear backend (simple step)"] = alternate(
            {"onednn": simple(linear_backend="onednn"), "aten": simple(linear_backend="aten")},
            BURST["simple"],
            args.bursts,
        )
    pairs |= {
        "adam (simple step)": alternate(
            {"fused": simple(), "stock": simple(fused=False)}, BURST["simple"], args.bursts
        ),
        "dropout (simple step)": alternate(
            {"nn.Dropout": simple(), "rand mask": simple(rand_dropout=True)},
            BURST["simple"],
            args.bursts,
        ),
        "memory format (composite step)": alternate(
            {"channels-last": composite(), "contiguous": composite(channels_last=False)},
            BURST["composite"],
            args.bursts,
        ),
        "pips distance (composite step)": alternate(
            {"expanded": composite(), "direct": composite(direct_pips=True)},
            BURST["composite"],
            args.bursts,
        ),
    }
    try:  # compiling needs a C++ compiler, which a machine may lack
        pairs["compile (simple step)"] = alternate(
            {"eager": simple(), "torch.compile": simple(compiled=True)},
            BURST["simple"],
            args.bursts,
        )
    except Exception as error:  # any failure only leaves this pair out
        print(f"compile pair left out: {type(error).__name__}: {error}".splitlines()[0])
    faults = {}
    for scheme in CONFIGS:
        pairs[f"host memory ({scheme} step)"], faults[scheme] = allocator_pair(
            scheme, args.data_root, args.bursts
        )
    breakdown = {
        scheme: time_breakdown(build())
        for scheme, build in (("simple", simple), ("composite", composite))
    }

    print(f"{'pair':32} {'kept':>22} {'alternative':>22}  ratio")
    for pair, medians in pairs.items():
        (kept, a), (other, b) = medians.items()
        print(f"{pair:32} {kept:>12} {a:6.2f} ms {other:>12} {b:6.2f} ms  {b / a:.2f}x")
    for scheme, counts in faults.items():
        print(
            f"minor page faults per {scheme} step: kept {counts['keep']:.0f}, "
            f"defaults {counts['default']:.0f}"
        )
    for scheme, ms in breakdown.items():
        parts = ", ".join(f"{kind} {t:.1f}" for kind, t in ms.items())
        print(f"{scheme} step, {sum(ms.values()):.1f} ms (profiled): {parts}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "cpu": cpu(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "linear_backend": auto.backend,
                "linear_backend_why": auto.why,
                "bursts": args.bursts,
                "burst_steps": BURST,
                "allocator_runs": ALLOCATOR_RUNS,
                "ms": pairs,
                "page_faults_per_step": faults,
                "profiled_ms_per_step": breakdown,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"-> {out}")


if __name__ == "__main__":
    run_cli(main)
