"""Host memory: keep freed blocks for reuse rather than returning them to the OS."""

import ctypes

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
