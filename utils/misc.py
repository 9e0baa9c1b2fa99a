"""Small helpers for the entry scripts: device choice, the LR schedule, the CLI boundary."""

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
