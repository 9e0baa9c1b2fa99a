"""Benchmark: the project's training epoch against the usual MNIST pipeline and the compute floor.

    python bench.py --data_root data/
    python bench.py --data_root data/ --reps 5 --out results/bench.json
    python bench.py --data_root data/ --device cuda --reps 3 --out results/bench-gpu.json

Measured in one run on one machine, so the ratios compare like with like:
1. the simple scheme's epoch (train steps + validation) through training_schemes.train, default
   configs, real MNIST, in this process set up as train.py sets up its own (keep_freed_memory),
   with the linear layers on each backend (ATen, oneDNN; model/linear_backend.py): the project's
   epoch is the one on the backend that the train config's "auto" chooses in this process;
2. the same model, loss and schedule fed the usual way: torchvision MNIST + ToTensor + DataLoader
   with 4 workers, stock Adam, a .item() per step (validation likewise), in a process of its own
   with the default allocator, as a usual script runs;
3. the compute floor: the float operations of an epoch (torch.utils.flop_counter over real
   training steps and validation), matrix products at the best float32 GEMM rate measured here
   of either library (torch.mm, oneDNN's linear op) and convolutions at the best convolution
   rate (each the fastest run, before or after the epochs);
4. the composite scheme's epoch with the MNIST perceptual backbone against its own floor (the
   backbone is trained first, under a minute, when its file is missing);
5. the simple epoch again under the opt-in bfloat16 autocast (train config "precision"), whose
   arithmetic differs: a row of its own;
6. start-up: from launching `python train.py` to its start line (data loaded, model about to take
   step 1); and infer.py's grid (load, decode, save PNG) after imports.
The simple-scheme epochs (1, 2, 5) alternate, one each, so a load that comes and goes on the
machine hits them alike. Medians are reported. Nothing here is asserted: it prints figures and
writes JSON, with the CPU's model and the instruction sets that decide its rates.

With --device cuda the epochs run on the GPU (the usual pipeline moving each batch there from its
DataLoader), the floor takes the GPU's rates (timed with torch.cuda.synchronize), the linear
layers take ATen's kernels (no backend rows), and the host-memory setting is left alone; the
JSON names the device.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.linear_backend import BACKENDS, choose, onednn_op, onednn_problem
from model.mnist_cnn import NETWORKS
from model.vae import VAE
from training_schemes import adam_with_schedule, check_scheme, train
from utils.checkpoint import save_checkpoint
from utils.cli import OneLineParser, run_cli
from utils.config import load_model_config, load_train_config, parse_settings
from utils.dataset import load_mnist
from utils.errors import UserError
from utils.loss import BetaVAELoss
from utils.memory import keep_freed_memory
from utils.networks import make_network, pips_backbone_to_make
from utils.views import grid

SIMPLE = ("configs/model_simple_config.json", "configs/train_simple_config.json")
COMPOSITE_MNIST = (
    "configs/model_composite_mnist_config.json",
    "configs/train_composite_config.json",
)
# The operations FlopCounterMode counts, by the rate that bounds them.
GEMM_OPS = {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm"}
CONV_OPS = {"aten.convolution", "aten._convolution", "aten.convolution_backward"}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default="data/", help="folder holding MNIST/raw/")
    p.add_argument("--reps", type=int, default=5, help="epochs measured per pipeline (default 5)")
    p.add_argument("--out", default="results/bench.json", help="JSON file to write")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where epochs run")
    p.add_argument("--usual_worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def project_epoch(
    configs: tuple[str, str],
    scheme: str,
    data_root: str,
    subset: int | None = None,
    val_size: int | None = None,
    precision: str = "float32",
    linear_backend: str = "aten",
    device: str = "cpu",
    settings: tuple[str, ...] = (),
) -> float:
    """Seconds of one epoch (train steps + validation) through the project's own loop on
    `device`, the VAE's linear layers on `linear_backend`, the configs changed by `settings`
    (train.py's --set); the composite scheme's with the critic on from its first step, as in
    every epoch of a run after its switch-on (and as the FLOP count counts it)."""
    model_settings, train_settings = parse_settings(list(settings), scheme)
    model_cfg = check_scheme(scheme, load_model_config(configs[0], model_settings), configs[0])
    train_cfg = load_train_config(configs[1], scheme, train_settings)
    train_cfg.num_epochs, train_cfg.precision = 1, precision
    train_cfg.linear_backend = linear_backend
    if scheme == "composite":
        train_cfg.optimizer.params_d.warmup_ratio = 0.0
    dataset = train_cfg.data.dataset
    train_set = load_mnist(data_root, "train", device, dataset=dataset)
    val_set = load_mnist(data_root, "test", device, dataset=dataset)
    if subset is not None:
        train_set.images, train_set.labels = train_set.images[:subset], train_set.labels[:subset]
    if val_size is not None:
        val_set.images, val_set.labels = val_set.images[:val_size], val_set.labels[:val_size]
    with tempfile.TemporaryDirectory() as run, contextlib.redirect_stdout(io.StringIO()):
        summary = train(
            scheme, model_cfg, train_cfg, train_set, val_set, torch.device(device), Path(run)
        )
    return summary.last_row["seconds"]


class UsualPipeline:
    """The reference point: torchvision MNIST + ToTensor + DataLoader(4 workers), stock Adam,
    a .item() per step; same model, loss and schedule as the simple scheme, on `device` (each
    batch moved there)."""

    def __init__(self, data_root: str, device: str):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        model_cfg = load_model_config(SIMPLE[0])
        train_cfg = load_train_config(SIMPLE[1], "simple")
        to_tensor = transforms.ToTensor()
        train_ds = datasets.MNIST(data_root, train=True, transform=to_tensor)
        val_ds = datasets.MNIST(data_root, train=False, transform=to_tensor)
        self.train_loader = DataLoader(
            train_ds,
            batch_size=128,
            shuffle=True,
            drop_last=True,
            num_workers=4,
            persistent_workers=True,
        )
        self.val_loader = DataLoader(val_ds, batch_size=128, num_workers=4, persistent_workers=True)
        steps = len(self.train_loader)
        self.device = torch.device(device)
        self.vae = VAE(model_cfg.model_config).to(self.device)
        self.loss_fn = BetaVAELoss(train_cfg.loss.params, steps).to(self.device)
        self.optimizer, self.scheduler = adam_with_schedule(
            self.vae.parameters(),
            train_cfg.optimizer.params,
            train_cfg.scheduler.params,
            train_cfg.num_epochs * steps,
            fused=False,
        )
        self.step = 0

    def epoch(self) -> float:
        started = time.perf_counter()
        self.vae.train()
        for x, _ in self.train_loader:
            x = x.to(self.device)
            x_hat, mu, logvar = self.vae(x)
            loss, _ = self.loss_fn.generator_loss(x_hat, x, mu, logvar, self.step)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss.item()
            self.step += 1
        self.vae.eval()
        with torch.no_grad():
            for x, _ in self.val_loader:
                x = x.to(self.device)
                x_hat, mu, logvar = self.vae(x)
                self.loss_fn.generator_loss(x_hat, x, mu, logvar, self.step)[0].item()
        return time.perf_counter() - started


def usual_worker(data_root: str, device: str) -> None:
    """The usual pipeline's own process: one epoch per line read from stdin, its seconds printed."""
    usual = UsualPipeline(data_root, device)
    for _ in sys.stdin:
        print(usual.epoch(), flush=True)


class UsualProcess(contextlib.AbstractContextManager):
    """Runs the usual pipeline's epochs, on request, in a child process (`--usual_worker`)."""

    def __init__(self, data_root: str, device: str):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--usual_worker",
                "--data_root",
                data_root,
                "--device",
                device,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def epoch(self) -> float:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the usual pipeline's process ended (exit {self.proc.wait()})")
        return float(line)

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# epoch_flops runs its counted steps at this batch size and scales them to the config's.
COUNT_BATCH = 4


def epoch_flops(
    configs: tuple[str, str],
    scheme: str,
    data_root: str,
    settings: tuple[str, ...] = (),
    train_images: int | None = None,
) -> dict[str, float]:
    """Float operations of one full epoch (of `train_images` training images, default the whole
    split), counted over real steps of the project's loop with the configs changed by
    `settings`, split into convolutions ("conv") and matrix products ("gemm").

    Every counted operation (a matrix product, a convolution, their gradients) costs the same per
    image, so the steps are counted at batches of COUNT_BATCH images and scaled to the config's
    batch: the same count as at full size, without running full-size steps under the counter.
    One run of 1 step and one of 3 steps (each validating COUNT_BATCH * 2 images) give the cost
    of a step by difference; what remains of the first is validation, scaled to the whole test
    split. The linear layers run on ATen here: FlopCounterMode has no formula for oneDNN's op,
    whose products are the same. The composite loss's gradient-ratio diagnostic is left out (it
    runs every 50th step; at the first step it would be counted as validation). The count
    depends on the operations' shapes alone, so a composite arm whose PIPS backbone file is
    missing is counted with an untrained backbone of the same layers instead of training one."""
    if scheme == "composite":
        settings = (*settings, "loss.params.grad_ratio_every=0")
    with tempfile.TemporaryDirectory() as folder:
        settings = (*settings, *stand_in_backbone_settings(configs[0], scheme, settings, folder))
        return count_epoch_flops(configs, scheme, data_root, settings, train_images)


def stand_in_backbone_settings(
    model_config: str, scheme: str, settings: tuple[str, ...], folder: str
) -> tuple[str, ...]:
    """When the arm's PIPS backbone file is missing, a setting that points the arm at an
    untrained backbone of the same layers, written into the temporary `folder` (no setting
    otherwise). Only epoch_flops's count reads that file: it passes load_network's checks as a
    trained one would, and the folder goes with the count."""
    pips = load_model_config(model_config, parse_settings(list(settings), scheme)[0]).pips_config
    missing = pips_backbone_to_make(pips)
    if missing is None:
        return ()
    stand_in = Path(folder) / missing.name
    layers = NETWORKS["pips"].build().state_dict()
    save_checkpoint({"network": "pips", "dataset": pips.weights, "state_dict": layers}, stand_in)
    return (f"pips_config.weights_path={json.dumps(str(stand_in))}",)


def count_epoch_flops(
    configs: tuple[str, str],
    scheme: str,
    data_root: str,
    settings: tuple[str, ...],
    train_images: int | None,
) -> dict[str, float]:
    """epoch_flops's count itself, once the settings point at files that exist."""
    train_cfg = load_train_config(configs[1], scheme, parse_settings(list(settings), scheme)[1])
    scale = train_cfg.data.train_bs / COUNT_BATCH
    steps_per_epoch = (
        train_images or len(load_mnist(data_root, "train", dataset=train_cfg.data.dataset))
    ) // train_cfg.data.train_bs
    val_images = len(load_mnist(data_root, "test", dataset=train_cfg.data.dataset))
    val_counted = 2 * COUNT_BATCH
    settings = (*settings, f"data.train_bs={COUNT_BATCH}", f"data.val_bs={COUNT_BATCH}")
    counts = []
    for steps in (1, 3):
        with FlopCounterMode(display=False) as counter:
            project_epoch(
                configs,
                scheme,
                data_root,
                subset=steps * COUNT_BATCH,
                val_size=val_counted,
                settings=settings,
            )
        by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
        unrated = set(by_op) - GEMM_OPS - CONV_OPS
        if unrated:
            raise RuntimeError(f"no rate measured for the counted operations {sorted(unrated)}")
        counts.append(
            {
                kind: sum(n for op, n in by_op.items() if op in ops)
                for kind, ops in (("gemm", GEMM_OPS), ("conv", CONV_OPS))
            }
        )
    flops = {}
    for kind in ("gemm", "conv"):
        per_step = (counts[1][kind] - counts[0][kind]) / 2
        val_per_image = (counts[0][kind] - per_step) / val_counted
        flops[kind] = steps_per_epoch * per_step * scale + val_images * val_per_image
    return flops


def best_float32_rate(device: str, reps: int = 5) -> dict[str, float]:
    """Best float32 rates (FLOP/s) at this thread count on `device`: square matrix products
    through each library at hand ("gemm_aten": torch.mm, MKL's sgemm on the CPU; "gemm_onednn":
    oneDNN's linear op, CPU only, where it passes its check), "gemm" the better of them, and a 3x3
    convolution ("conv": oneDNN's direct convolution on the CPU, which may use wider vector
    instructions than MKL does on a given CPU; cuDNN on CUDA).

    Each rate is taken from the fastest of `reps` runs (on CUDA each run waits for the device),
    so a moment of load elsewhere on the machine lowers no rate."""
    cuda = device == "cuda"

    def fastest(run: Callable[[], object], flops: float) -> float:
        times = []
        for _ in range(reps + 1):  # the first run warms up
            started = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        return flops / min(times[1:])

    products = {"gemm_aten": torch.mm}
    if not cuda and onednn_problem() is None:
        products["gemm_onednn"] = lambda a, b: onednn_op()(a, b, None, "none", [], "")
    rates = dict.fromkeys(products, 0.0)
    for n in (1024, 2048, 4096, 8192) if cuda else (256, 512, 1024, 2048):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        for name, product in products.items():
            rates[name] = max(rates[name], fastest(partial(product, a, b), 2 * n**3))
    rates["gemm"] = max(rates.values())
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device)
    x = torch.randn(256 if cuda else 32, 256, 16, 16, device=device)
    with torch.no_grad():
        rates["conv"] = fastest(partial(conv, x), 2 * x.numel() * 256 * 9)
    return rates


def startup_seconds(data_root: str, device: str, reps: int = 3) -> float:
    """Median seconds from launching train.py to its start line, just before the first step."""
    times = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as run:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "train.py",
                    "--scheme",
                    "simple",
                    "--model_config",
                    SIMPLE[0],
                    "--train_config",
                    SIMPLE[1],
                    "--data_root",
                    data_root,
                    "--save_dir",
                    run + "/r",
                    "--epochs",
                    "1",
                    "--subset",
                    "128",
                    "--device",
                    device,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            while " scheme on " not in proc.stdout.readline():
                pass
            times.append(time.perf_counter() - started)
            proc.communicate()
    return statistics.median(times)


def grid_seconds(device: str, reps: int = 5) -> float:
    """Median seconds of infer.py's grid view after imports: load, decode, draw, save the PNG."""
    with tempfile.TemporaryDirectory() as folder:
        ckpt = Path(folder) / "model.pth"
        torch.save(
            {"model_state_dict": VAE(load_model_config(SIMPLE[0]).model_config).state_dict()}, ckpt
        )
        args = argparse.Namespace(
            model_config=SIMPLE[0], ckpt_path=str(ckpt), grid_size=8, title=None
        )
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            grid(args, torch.device(device), Path(folder) / "grid.png")
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def cpu() -> dict:
    """The CPU's model name and which of CPU_FLAGS it has (Linux; the platform's name elsewhere)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    present = set(flags.group(1).split()) if flags else set()
    return {
        "model": model.group(1) if model else platform.processor() or platform.machine(),
        "flags": [f for f in CPU_FLAGS if f in present],
    }


def make_pips_backbone_if_missing(data_root: str, device: str = "cpu") -> None:
    """Train the composite scheme's MNIST PIPS backbone (on `device`) first when its file is
    missing, as train.py would at the start of a composite run."""
    path = pips_backbone_to_make(load_model_config(COMPOSITE_MNIST[0]).pips_config)
    if path is not None:
        print(f"{path}: missing; training it first (under a minute on 2 cores)", flush=True)
        make_network(
            "pips",
            path,
            load_mnist(data_root, "train", device),
            load_mnist(data_root, "test", device),
        )


def main() -> None:
    args = parse_args()
    if args.usual_worker:
        usual_worker(args.data_root, args.device)
        return
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    allocator_kept = not cuda and keep_freed_memory()
    machine = cpu()
    device_name = torch.cuda.get_device_name() if cuda else machine["model"]
    print(
        f"machine: {machine['model']} ({', '.join(machine['flags'])}), {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; epochs on "
        f"{args.device} ({device_name})"
    )
    make_pips_backbone_if_missing(args.data_root, args.device)
    rates_before = best_float32_rate(args.device)
    # The simple epoch on each linear backend at hand; the project's is the one "auto" takes.
    auto = choose(
        "auto",
        VAE(load_model_config(SIMPLE[0]).model_config),
        load_train_config(SIMPLE[1], "simple").data.train_bs,
        torch.device(args.device),
    )
    print(f"linear backend (auto): {auto.backend} ({auto.why})", flush=True)
    backends = ("aten",) if cuda or onednn_problem() else BACKENDS
    epoch = partial(project_epoch, SIMPLE, "simple", args.data_root, device=args.device)
    ours, theirs, ours_bf16 = {backend: [] for backend in backends}, [], []
    with UsualProcess(args.data_root, args.device) as usual:
        for backend in backends:  # warm-up
            epoch(subset=1280, linear_backend=backend)
        epoch(subset=1280, precision="bfloat16")
        usual.epoch()
        for rep in range(args.reps):
            for backend in backends:
                ours[backend].append(epoch(linear_backend=backend))
            theirs.append(usual.epoch())
            ours_bf16.append(epoch(precision="bfloat16", linear_backend=auto.backend))
            print(
                f"  rep {rep + 1}: project "
                + ", ".join(f"{b} {ours[b][-1]:.2f} s" for b in backends)
                + f", usual {theirs[-1]:.2f} s, project bfloat16 {ours_bf16[-1]:.2f} s",
                flush=True,
            )
    by_backend = {backend: statistics.median(times) for backend, times in ours.items()}
    results = {
        "device": args.device,
        "device_name": device_name,
        "cpu": machine,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "reps": args.reps,
        "keep_freed_memory": allocator_kept,
        "linear_backend": auto.backend,
        "linear_backend_why": auto.why,
        "simple_epoch_s_by_backend": by_backend,
        "simple_epoch_s": by_backend[auto.backend],
        "usual_epoch_s": statistics.median(theirs),
        "simple_bf16_epoch_s": statistics.median(ours_bf16),
        "simple_epoch_flop": epoch_flops(SIMPLE, "simple", args.data_root),
    }
    composite = [
        project_epoch(
            COMPOSITE_MNIST,
            "composite",
            args.data_root,
            linear_backend=auto.backend,
            device=args.device,
        )
        for _ in range(args.reps)
    ]
    results["composite_epoch_s"] = statistics.median(composite)
    results["composite_epoch_flop"] = epoch_flops(COMPOSITE_MNIST, "composite", args.data_root)
    rates_after = best_float32_rate(args.device)
    for kind in rates_before:
        results[f"{kind}_gflops"] = max(rates_before[kind], rates_after[kind]) / 1e9
    for scheme in ("simple", "composite"):
        flops = results[f"{scheme}_epoch_flop"]
        results[f"{scheme}_floor_s"] = sum(
            flops[kind] / (1e9 * results[f"{kind}_gflops"]) for kind in flops
        )
        results[f"{scheme}_over_floor"] = (
            results[f"{scheme}_epoch_s"] / results[f"{scheme}_floor_s"]
        )
    results["speedup_vs_usual"] = results["usual_epoch_s"] / results["simple_epoch_s"]
    results["bf16_speedup_vs_usual"] = results["usual_epoch_s"] / results["simple_bf16_epoch_s"]
    results["startup_s"] = startup_seconds(args.data_root, args.device)
    results["infer_grid_s"] = grid_seconds(args.device)

    print(
        f"\nsimple epoch (project)    {results['simple_epoch_s']:7.2f} s   median of "
        f"{args.reps}, linear layers on {auto.backend} (auto)"
    )
    for backend, seconds in by_backend.items():
        print(
            f"  linear layers on {backend:7} {seconds:7.2f} s   "
            f"{results['usual_epoch_s'] / seconds:.2f}x the usual way"
        )
    print(
        f"simple epoch (usual way)  {results['usual_epoch_s']:7.2f} s   "
        f"project is {results['speedup_vs_usual']:.2f}x faster"
    )
    print(
        f"simple epoch, bfloat16    {results['simple_bf16_epoch_s']:7.2f} s   "
        f"{results['bf16_speedup_vs_usual']:.2f}x faster than the usual way (opt-in "
        "precision, other arithmetic)"
    )
    gemm = ", ".join(
        f"{kind[5:]} {results[f'{kind}_gflops']:.0f}"
        for kind in rates_before
        if kind.startswith("gemm_")
    )
    print(
        f"best float32 rates        GEMM {results['gemm_gflops']:.0f} GFLOP/s ({gemm}), "
        f"convolution {results['conv_gflops']:.0f} GFLOP/s"
    )
    print(
        f"simple floor              {results['simple_floor_s']:7.2f} s   "
        f"project is {results['simple_over_floor']:.2f}x the floor"
    )
    print(
        f"composite epoch (MNIST)   {results['composite_epoch_s']:7.2f} s   "
        f"{results['composite_over_floor']:.2f}x its floor of "
        f"{results['composite_floor_s']:.2f} s"
    )
    print(f"start-up to first step    {results['startup_s']:7.2f} s")
    print(f"infer.py grid             {results['infer_grid_s']:7.2f} s   after imports")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    run_cli(main)
