"""Training in several processes under torchrun: DistributedDataParallel over NCCL or gloo.

    torchrun --standalone --nproc_per_node 2 train.py ...

torchrun starts one process per device and tells each its place through the environment
(WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE). `join` reads it, starts the process group (NCCL
on CUDA, gloo on the CPU) and hands back the `Cluster` that the loop asks to wrap its modules, to
agree on stopping and on errors, and to add up logged terms over ranks. Without torchrun, or with
one process, `join` gives a one-process Cluster whose methods talk to no one and change nothing,
so `python train.py` runs exactly as before.
"""

import gc
import hashlib
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils._pytree import tree_map

from utils.errors import UserError
from utils.tracking import TermAverager

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# How long the processes wait for each other at start-up before one line ends them (torchrun
# starts its processes together; a stray WORLD_SIZE without peers would otherwise wait 30 min).
RENDEZVOUS_TIMEOUT = "RENDEZVOUS_TIMEOUT"
DEFAULT_RENDEZVOUS_SECONDS = 120


class ReplicasDiverged(UserError):
    """Two ranks hold different weights, which DistributedDataParallel should make impossible."""


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (one process when world_size is 1)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    # A gloo group for the small agreements (stop flags, errors, RNG states) that live on the CPU:
    # under NCCL they then neither wait for the GPU nor make it wait. None: the default group.
    control: Any = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints."""
        return self.rank == 0

    def launcher(self) -> str:
        """The command that starts train.py again with as many processes."""
        if not self.distributed:
            return "python"
        nodes = self.world_size // self.local_world_size
        if nodes == 1:
            return f"torchrun --standalone --nproc_per_node {self.local_world_size}"
        return (
            f"torchrun --nnodes {nodes} --nproc_per_node {self.local_world_size} "
            "--rdzv_backend c10d --rdzv_endpoint HOST:PORT"
        )

    def wrap(self, module: nn.Module, sync_batchnorm: bool) -> nn.Module:
        """`module` under DistributedDataParallel, its BatchNorm layers first made SyncBatchNorm
        (in place) when asked; `module` itself in one process. The wrapper shares the module's
        parameters, so optimisers and checkpoints keep using the module."""
        if not self.distributed:
            return module
        if sync_batchnorm:
            nn.SyncBatchNorm.convert_sync_batchnorm(module)
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def seed_streams(self) -> None:
        """Give each rank its own stream of dropout masks and z draws. Every rank draws the same
        world_size seeds from its generator (seeded alike by the run's seed) and takes its own."""
        if self.distributed:
            seeds = torch.randint(2**62, (self.world_size,))
            torch.manual_seed(int(seeds[self.rank]))

    def agreed_signal(self, signum: int | None) -> int | None:
        """The stop signal any rank has received (the highest number), so every rank stops after
        the same step; one tiny CPU all-reduce per call."""
        if not self.distributed:
            return signum
        flag = torch.tensor([signum or 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        return int(flag) or None

    def main_decides(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank: a decision only rank 0 can make, or must make alone."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)])
        dist.broadcast(value, src=0, group=self.control)
        return bool(value)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of each rank's `values` (on the training device)."""
        if not self.distributed:
            return values
        total = values.clone()
        dist.all_reduce(total)
        return total / self.world_size

    def sum_terms(self, averager: TermAverager, names: tuple[str, ...]) -> TermAverager:
        """Every rank's sums and weights of `names` added up in one all-reduce: the means over
        all ranks' images. A term no rank reported stays absent."""
        if not self.distributed:
            return averager
        zero = torch.zeros((), device=self.device)
        sums = torch.stack([averager.sums.get(name, zero) for name in names])
        weights = torch.tensor(
            [float(averager.weights.get(name, 0)) for name in names], device=self.device
        )
        both = torch.cat([sums, weights])
        dist.all_reduce(both)
        total = TermAverager()
        for name, value, weight in zip(
            names, both[: len(names)], both[len(names) :].tolist(), strict=True
        ):
            if weight > 0:
                total.sums[name], total.weights[name] = value, int(weight)
        return total

    def sync_buffers(self, modules: Iterable[nn.Module]) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP does so at
        each forward; doing it before validation and checkpoints makes the replicas whole."""
        if self.distributed:
            for module in modules:
                for buffer in module.buffers():
                    dist.broadcast(buffer, src=0)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (any picklable object), in rank order, on every rank. Tensors
        travel through the CPU, so each arrives where the receiver can hold it."""
        if not self.distributed:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, tree_map(_to_cpu, value), group=self.control)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object, tensors through the CPU) on every rank."""
        if not self.distributed:
            return value
        box = [tree_map(_to_cpu, value)]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    @contextmanager
    def agreed(self) -> Iterator[None]:
        """Every rank leaves the block the same way, once all have reached its end: when the
        block raises a UserError on any rank, it raises on every rank (the lowest failing rank's
        message, printed by rank 0 alone); otherwise every rank goes on. Also a barrier, so rank
        0 can write a file in the block that the others read after it."""
        if not self.distributed:
            yield
            return
        own = None
        try:
            yield
        except UserError as error:
            own = error
        messages = self.gather(None if own is None else str(own))
        failed = [rank for rank, message in enumerate(messages) if message is not None]
        if failed:
            first = failed[0]
            error = own if first == self.rank else UserError(f"rank {first}: {messages[first]}")
            error.quiet = not self.is_main
            raise error

    def same_weights(self, modules: Iterable[nn.Module], step: int) -> str | None:
        """The replicas' common parameter fingerprint, after checking every rank holds the same
        one; ReplicasDiverged on every rank when not. None in one process (nothing to compare)."""
        if not self.distributed:
            return None
        prints = self.gather(parameter_fingerprint(modules))
        with self.agreed():  # every rank finds the same; rank 0 alone says it
            check_same_fingerprints(prints, step)
        return prints[0]


def _to_cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, torch.Tensor) else value


def parameter_fingerprint(modules: Iterable[nn.Module]) -> str:
    """A hash of the bytes of every parameter of `modules`, in order: two replicas share it
    exactly when their weights are bit-identical (barring a hash collision)."""
    digest = hashlib.blake2b(digest_size=16)
    for module in modules:
        for param in module.parameters():
            digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def check_same_fingerprints(prints: list[str], step: int) -> None:
    """Raise ReplicasDiverged naming the first rank whose fingerprint differs from rank 0's."""
    for rank, fingerprint in enumerate(prints):
        if fingerprint != prints[0]:
            raise ReplicasDiverged(
                f"step {step}: rank {rank}'s weights differ from rank 0's (fingerprint "
                f"{fingerprint} vs {prints[0]}), so no checkpoint was written; resume from the "
                "last checkpoint and report this"
            )


def _env_int(name: str, world_size: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise UserError(
            f"WORLD_SIZE is {world_size} but {name} is {os.environ.get(name, 'unset')!r}; start "
            "several processes with torchrun, or unset WORLD_SIZE to train in one process"
        ) from None


def _world_size() -> int:
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise UserError(
            f"WORLD_SIZE is {text!r}: it must be a whole number of processes >= 1 (torchrun "
            "sets it); unset it to train in one process"
        )
    return int(text)


def rendezvous_seconds() -> int:
    """How long the processes wait for each other at start-up: RENDEZVOUS_TIMEOUT seconds."""
    text = os.environ.get(RENDEZVOUS_TIMEOUT, str(DEFAULT_RENDEZVOUS_SECONDS))
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{RENDEZVOUS_TIMEOUT} is {text!r}: it must be a whole number of seconds")
    return int(text)


def _meet(rank: int, world_size: int) -> dist.Store:
    """The store the processes meet at (MASTER_ADDR:MASTER_PORT, as torchrun sets them), once
    all have joined; a process still alone after rendezvous_seconds() stops with one line."""
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UserError(
            f"WORLD_SIZE is {world_size} but {missing[0]} is unset; start several processes "
            "with torchrun (it sets both), or unset WORLD_SIZE to train in one process"
        )
    host, port, seconds = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], rendezvous_seconds()
    where = f"{host}:{port}"
    fix = (
        "start every process with torchrun, or unset WORLD_SIZE and RANK to train in one "
        f"process ({RENDEZVOUS_TIMEOUT} sets the wait)"
    )
    if rank != 0 and not _reachable(host, port, seconds):
        raise UserError(f"rank {rank}: nothing answers at {where} after {seconds} s; {fix}")
    try:
        store, _, _ = next(
            dist.rendezvous("env://", rank, world_size, timeout=timedelta(seconds=seconds))
        )
    except (RuntimeError, ValueError) as e:  # DistStoreError and DistNetworkError included
        cause = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"rank {rank}: the {world_size} processes did not all meet at {where} within "
            f"{seconds} s ({cause}); {fix}"
        ) from None
    return store


def _reachable(host: str, port: str, seconds: int) -> bool:
    """Whether something accepts connections at host:port within `seconds` (probed with a plain
    socket first, so that an absent master is one line, not the store client's retry log)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def leave_finished_rank() -> NoReturn:
    """End this torchrun process, its run finished and every file it wrote closed, with exit
    code 0 and without the interpreter's finalization. With the DDP modules freed before the
    process group (join), a rank still aborted now and then after a finished run (SIGABRT,
    "terminate called without an active exception", no Python frame left): most likely a C++
    thread of torch's distributed layer destroyed while joinable, in the exit's static
    destructors. Nothing of the run needs them; stdout and stderr are flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@contextmanager
def join(device: torch.device) -> Iterator[Cluster]:
    """The Cluster that torchrun's environment describes, its process group started (NCCL on
    CUDA, each process on device cuda:LOCAL_RANK; gloo on the CPU) and ended on leaving; a
    one-process Cluster on `device` without torchrun or with one process."""
    world_size = _world_size()
    if world_size == 1:
        yield Cluster(device)
        return
    rank, local_rank, local_world_size = (_env_int(name, world_size) for name in TORCHRUN_ENV)
    store = _meet(rank, world_size)
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if local_world_size > visible:
            raise UserError(
                f"torchrun starts {local_world_size} processes on this node but {visible} CUDA "
                f"devices are visible; use --nproc_per_node {visible} or fewer"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl", store=store, rank=rank, world_size=world_size, device_id=device
        )
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        control = dist.new_group(backend="gloo") if device.type == "cuda" else None
        yield Cluster(device, rank, world_size, local_world_size, control)
    finally:
        # The run's DDP modules sit in reference cycles and hold the process group: free them
        # while everything is alive, not in the interpreter's finalization (a finished rank
        # then skips that altogether: leave_finished_rank).
        gc.collect()
        dist.destroy_process_group()
