"""Small helpers for the entry scripts: device choice, host memory, the LR schedule, the CLI
boundary."""

import ctypes
import math
import sys
from collections.abc import Callable

import torch

from utils.errors import UserError


def pick_device(name: str) -> torch.device:
    """ "auto" means CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


# glibc's mallopt() parameters (malloc.h) and the largest mmap threshold it accepts on 64 bits.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks up to 32 MiB for reuse instead of returning them to the OS.

    By default glibc hands large tensors back when they are freed, so every training step faults
    its activations in again page by page: thousands of minor page faults per composite step
    (MNIST backbone) on this project's 2-core CPU, a few % of the step (bench_ab.py counts and
    times both). The process then holds its highest memory mark for the rest of its life; blocks
    over 32 MiB (the reference VGG16's 224x224 activations) still come and go. Both limits must
    be set: a trim limit alone also fixes the mmap limit at its 128 KiB default, which made
    composite steps 2.3x slower (ad-hoc trial). Returns False, changing nothing, where the C
    library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    )


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: step / warmup during warm-up, then cosine from 1 down to 0 at `total`."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def run_cli(main: Callable[[], None]) -> None:
    """The one place an entry script turns a UserError into one line on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        if not e.quiet:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
