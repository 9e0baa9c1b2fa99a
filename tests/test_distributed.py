"""torchrun: two real processes (gloo, CPU, one thread each) train one model, on a small subset.

Each test starts `python -m torch.distributed.run --standalone` (a free port per run, so runs
never collide) and reads only what the run leaves: its output, metrics.csv and checkpoints.
"""

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from model.discriminator import PatchDiscriminator
from model.vae import VAE
from tests.helpers import (
    REPO,
    assert_png,
    config_variant,
    infer_argv,
    make_mnist_root,
    read_metrics,
    run_script,
    run_with_terminal,
    small_composite_model,
    train_argv,
)
from train import check_processes
from training_schemes import validate
from utils.checkpoint import load_checkpoint
from utils.config import load_model_config, load_train_config
from utils.dataset import load_mnist, rank_share
from utils.distributed import (
    Cluster,
    ReplicasDiverged,
    check_same_fingerprints,
    parameter_fingerprint,
)
from utils.errors import UserError
from utils.loss import BetaVAELoss

TRAIN_SIZE, BATCH, PROCESSES = 1024, 32, 2
STEPS_PER_EPOCH = TRAIN_SIZE // BATCH  # 32 steps of 2 x 16 images
# PYTHONFAULTHANDLER: a process that dies of a signal (once, a SIGABRT at a resume's end) prints
# every thread's Python stack, so the failure message says where it happened.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def torchrun_argv(*train_argv: str) -> list[str]:
    return [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(PROCESSES),
        *train_argv,
    ]


def torchrun(
    *train_argv: str, env: dict[str, str] = ONE_THREAD, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """train.py (or the script first in `train_argv`) under torchrun in real processes, one
    thread each, as CI runs it."""
    return subprocess.run(
        [sys.executable, *torchrun_argv(*train_argv)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    return make_mnist_root(tmp_path_factory.mktemp("mnist"), n_train=TRAIN_SIZE, n_test=256)


@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    # The linear backend set (not "auto", whose timing may choose differently in two runs that
    # are compared bit for bit); aten where oneDNN's op fails its check.
    return config_variant(
        tmp_path_factory.mktemp("cfg"),
        "configs/train_simple_config.json",
        {
            "data.train_bs": BATCH,
            "save_every": 1,
            "keep_checkpoints": None,
            "linear_backend": "onednn",
        },
    )


def simple_argv(mnist: Path, train_config: Path, run: Path, *extra: str) -> list[str]:
    return train_argv(
        "simple",
        "configs/model_simple_config.json",
        train_config,
        mnist,
        run,
        "--epochs",
        "2",
        *extra,
    )


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, mnist, train_config) -> tuple[Path, str]:
    """An uninterrupted two-process run of 2 epochs, and what it printed."""
    run = tmp_path_factory.mktemp("runs") / "whole"
    result = torchrun(*simple_argv(mnist, train_config, run))
    assert result.returncode == 0, result.stdout + result.stderr
    return run, result.stdout


def metrics_rows(run: Path) -> list[dict[str, str]]:
    return read_metrics(run, seconds=False)


@given(
    batches=st.integers(0, 6),
    world_size=st.integers(1, 8),
    per_rank=st.integers(1, 5),
    leftover=st.integers(0, 40),
    seed=st.integers(0, 2**31),
)
def test_rank_shares_are_disjoint_and_make_up_the_full_batches(
    batches, world_size, per_rank, leftover, seed
):
    batch_size = world_size * per_rank
    n = batches * batch_size + leftover % batch_size  # a partial last batch, dropped
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shares = [rank_share(order, batch_size, rank, world_size) for rank in range(world_size)]
    assert all(len(share) == batches * per_rank for share in shares)
    # Batch by batch, the ranks' slices in rank order are the batch one process would take.
    for b in range(batches):
        rebuilt = torch.cat([share[b * per_rank : (b + 1) * per_rank] for share in shares])
        assert torch.equal(rebuilt, order[b * batch_size : (b + 1) * batch_size])
    taken = torch.cat(shares)
    assert len(set(taken.tolist())) == len(taken)  # disjoint
    assert set(taken.tolist()) == set(order[: batches * batch_size].tolist())  # covering
    assert torch.equal(rank_share(order, batch_size, 0, 1), order[: n // batch_size * batch_size])


def test_a_diverged_replica_is_named_and_fails_the_check():
    vae = VAE(load_model_config(REPO / "configs/model_simple_config.json").model_config)
    before = parameter_fingerprint([vae])
    with torch.no_grad():
        weight = vae.encoder.mu.weight
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(1.0))  # one ulp
    after = parameter_fingerprint([vae])
    assert after != before
    check_same_fingerprints([before, before], 8)
    with pytest.raises(ReplicasDiverged) as err:
        check_same_fingerprints([before, before, after], 8)
    assert str(err.value) == (
        f"step 8: rank 2's weights differ from rank 0's (fingerprint {after} vs {before}), so no "
        "checkpoint was written; resume from the last checkpoint and report this"
    )


def test_two_processes_train_one_model_that_infer_loads(tmp_path, mnist, two_process_run):
    run, stdout = two_process_run
    # Rank 0 alone prints; train_bs is the global batch, so the steps are one process's.
    assert stdout.count("simple scheme on 2 cpu processes (each 16 of every 32 images)") == 1
    assert stdout.count("epoch 1/2 ") == 1 and stdout.count("finished 2 epochs (64 steps)") == 1
    rows = metrics_rows(run)
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "32"), ("2", "64")]

    last = load_checkpoint(run / "checkpoint_epoch_002.pth")
    assert last["world_size"] == 2 and len(last["rank_states"]) == 2
    ranks = last["rank_states"]
    # Each rank took its share of every one of the epoch's steps, with its own random stream.
    assert [r["epoch_terms"]["weights"]["loss"] for r in ranks] == [STEPS_PER_EPOCH] * 2
    assert not torch.equal(ranks[0]["rng_state"], ranks[1]["rng_state"])
    # Every rank checked its weights against rank 0's before this file was written: the
    # fingerprint they agreed on is that of the weights saved here, and of the final model.
    model_cfg = load_model_config(run / "model_config.json")
    vae = VAE(model_cfg.model_config)
    vae.load_state_dict(last["model_state_dict"])
    assert last["replica_fingerprint"] == parameter_fingerprint([vae])
    final = torch.load(run / "final_model.pth", weights_only=True)["model_state_dict"]
    assert all(torch.equal(final[k], v) for k, v in last["model_state_dict"].items())

    # Validation was split over the ranks by batches: one process scoring the saved model on
    # the whole test split finds the same terms, so the shards covered it exactly once.
    train_cfg = load_train_config(run / "train_config.json", "simple")
    val_set = load_mnist(mnist, "test")
    loss_fn = BetaVAELoss(train_cfg.loss.params, STEPS_PER_EPOCH)
    alone = validate(vae, loss_fn, val_set, train_cfg.data.val_bs, 64, Cluster(torch.device("cpu")))
    for name, value in alone.items():
        assert float(rows[1][f"val_{name}"]) == pytest.approx(value, rel=2e-5), name

    png = tmp_path / "grid.png"
    shown = subprocess.run(
        [sys.executable, "infer.py", *infer_argv(run, png)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert_png(png)


def test_interrupted_two_process_run_resumes_bit_identical(
    tmp_path, mnist, train_config, two_process_run
):
    reference, _ = two_process_run
    run = tmp_path / "run"
    proc, received = run_with_terminal(
        torchrun_argv(*simple_argv(mnist, train_config, run)), env=ONE_THREAD
    )
    # Ctrl-C reaches torchrun, which forwards it to both processes, once rank 0's bar shows
    # epoch 2 a few steps in.
    pattern = re.compile(rf"epoch 2/2:.*?\b([0-9]+)/{STEPS_PER_EPOCH}\b")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(2 <= int(n) <= STEPS_PER_EPOCH - 8 for n in pattern.findall("".join(received))):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    time.sleep(0.2)
    terminal = "".join(received)
    stopped = [line for line in terminal.splitlines() if "SIGINT: stopped in epoch 2" in line]
    assert len(stopped) == 1, terminal  # rank 0 alone reports
    assert "resume with: torchrun --standalone --nproc_per_node 2 train.py" in stopped[0]
    assert stopped[0].rstrip().endswith("--resume auto")

    interrupted = load_checkpoint(run / "checkpoint_interrupted.pth")
    assert interrupted["next_epoch"] == 2 and 2 <= interrupted["next_batch"] < STEPS_PER_EPOCH
    assert interrupted["world_size"] == 2 and not (run / "final_model.pth").exists()

    resumed = torchrun(*simple_argv(mnist, train_config, run, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming {run / 'checkpoint_interrupted.pth'}" in resumed.stdout
    a = torch.load(run / "final_model.pth", weights_only=True)["model_state_dict"]
    b = torch.load(reference / "final_model.pth", weights_only=True)["model_state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics_rows(run) == metrics_rows(reference)


def test_composite_critic_is_wrapped_too_and_early_stopping_ends_every_rank(tmp_path, mnist):
    model_path = small_composite_model(tmp_path)
    # A tolerance no epoch can beat: epoch 1 is the best, epoch 2 uses up patience 1.
    train_path = config_variant(
        tmp_path,
        "configs/train_composite_config.json",
        {"data.train_bs": BATCH, "early_stopping": {"patience": 1, "tol": 1e9}},
    )
    run = tmp_path / "run"
    result = torchrun(
        *train_argv(
            "composite", model_path, train_path, mnist, run, "--epochs", "4", "--subset", "128"
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("early stop after epoch 2") == 1
    assert result.stdout.count("finished 2 epochs (8 steps)") == 1
    rows = metrics_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # 4 steps an epoch, 16 planned: the critic is on from step floor(0.05 * 16) = 0.
    assert all(math.isfinite(float(rows[1][f"train_{t}"])) for t in ("adv", "disc"))
    assert torch.load(run / "best_model.pth", weights_only=True)["epoch"] == 1
    ckpt = load_checkpoint(run / "checkpoint_epoch_002.pth")
    model_cfg = load_model_config(run / "model_config.json")
    vae, critic = VAE(model_cfg.model_config), PatchDiscriminator(model_cfg.discriminator_config)
    vae.load_state_dict(ckpt["model_state_dict"])
    critic.load_state_dict(ckpt["discriminator_state_dict"])
    assert ckpt["replica_fingerprint"] == parameter_fingerprint([vae, critic])


def test_a_run_of_two_processes_resumes_only_with_two(
    tmp_path, mnist, train_config, two_process_run
):
    reference, _ = two_process_run
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / "checkpoint_epoch_001.pth", run)
    alone = run_script(*simple_argv(mnist, train_config, run, "--resume", "auto"))
    assert alone.returncode == 2
    assert alone.stderr == (
        f"error: {run / 'checkpoint_epoch_001.pth'}: the run trained in 2 processes, this call "
        "has 1; resume it with 2 (torchrun's --nnodes x --nproc_per_node, or a plain python "
        "train.py for 1)\n"
    )


def test_a_global_batch_that_does_not_split_is_one_line(tmp_path, mnist):
    cfg = config_variant(tmp_path, "configs/train_simple_config.json", {"data.train_bs": 33})
    result = torchrun(*simple_argv(mnist, cfg, tmp_path / "run"))
    assert result.returncode != 0
    # Both processes refuse; rank 0 alone says why, and nothing was written.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {cfg}: field 'data.train_bs' = 33 does not split evenly over 2 processes "
        "(train_bs is the global batch); make it a multiple of 2 or start another number of "
        "processes"
    ]
    assert not (tmp_path / "run").exists()


def test_sync_batchnorm_is_refused_on_the_cpu_under_torchrun(tmp_path):
    path = config_variant(tmp_path, "configs/train_simple_config.json", {"sync_batchnorm": True})
    train_cfg = load_train_config(path, "simple")
    check_processes(train_cfg, Cluster(torch.device("cpu")), str(path))  # one process: no-op
    with pytest.raises(UserError) as err:
        check_processes(train_cfg, Cluster(torch.device("cpu"), world_size=2), str(path))
    assert str(err.value) == (
        f"{path}: field 'sync_batchnorm' = true needs CUDA devices (PyTorch's SyncBatchNorm runs "
        "on GPUs only); set it to false to train on the CPU"
    )


def test_a_finished_rank_leaves_without_the_interpreters_exit(tmp_path, mnist, train_config):
    """After a finished run each rank ends with exit code 0 before the interpreter's exit, whose
    C++ destructors now and then aborted a rank (utils/distributed.leave_finished_rank): an exit
    handler registered in each rank never runs, while the run's files are all there."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import atexit, os\n"
        "if 'LOCAL_RANK' in os.environ:  # torchrun's ranks, not the launcher\n"
        "    atexit.register(print, 'rank', os.environ['LOCAL_RANK'], 'ran its exit', flush=True)\n"
    )
    env = {**ONE_THREAD, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    run = tmp_path / "run"
    argv = simple_argv(mnist, train_config, run, "--epochs", "1")
    result = torchrun(*argv, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished 1 epochs" in result.stdout
    assert "ran its exit" not in result.stdout + result.stderr
    assert (run / "final_model.pth").is_file() and (run / "metrics.csv").is_file()


PROBE = """
import gc, sys
import torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from utils.distributed import join

destroy = dist.destroy_process_group


def count_then_destroy():
    ddp = torch.nn.parallel.DistributedDataParallel
    alive = sum(isinstance(o, ddp) for o in gc.get_objects())
    print(f"rank {dist.get_rank()}: {alive} DDP modules alive", flush=True)
    destroy()


dist.destroy_process_group = count_then_destroy
gc.disable()  # no collection by chance: cycles stay until something collects them
with join(torch.device("cpu")):
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
    model(torch.ones(1, 2)).sum().backward()
    del model
"""


def test_no_ddp_module_outlives_the_process_group(tmp_path):
    """join frees the run's DDP modules (held in reference cycles) before it destroys the
    process group, rather than leaving them to the interpreter's exit."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    result = torchrun(str(probe), str(REPO), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = sorted(line for line in result.stdout.splitlines() if "DDP modules alive" in line)
    assert lines == ["rank 0: 0 DDP modules alive", "rank 1: 0 DDP modules alive"], result.stdout
