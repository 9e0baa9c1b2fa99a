"""The entry scripts' shared flags and boundary: the --device choice, and the one place a
UserError becomes one line on stderr and exit code 2."""

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


def run_cli(main: Callable[[], None]) -> None:
    """The one place an entry script turns a UserError into one line on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        if not e.quiet:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
