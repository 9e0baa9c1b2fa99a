"""The entry scripts' shared flags and boundary: the --device choice, an argument parser whose
errors are one line, and the one place a UserError becomes one line on stderr and exit code 2."""

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

import torch

from utils.errors import Terminated, UserError


def pick_device(name: str) -> torch.device:
    """ "auto" means CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser with a bad flag reported as one line, `error: ...; see <script> --help`,
    and exit code 2 (argparse's own report is the usage block and the error)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see python {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def run_cli(main: Callable[[], None]) -> None:
    """The one place an entry script turns a UserError into one line on stderr and exit code 2,
    and Ctrl-C outside a training loop (which checkpoints on its own) into one line and 130
    (SIGTERM, where the script turns it into Terminated: 143). Every file the scripts write is
    written whole or not at all, so an interruption leaves nothing half-written."""
    try:
        stop_with_runner()
        main()
    except UserError as e:
        if not e.quiet:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Terminated:
        print("error: stopped by SIGTERM; no file was left half-written", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); no file was left half-written", file=sys.stderr)
        sys.exit(130)


# The environment variable naming the pipe through which a script learns its runner has ended.
RUNNER_PIPE = "RUNNER_PIPE"


def stop_with_runner() -> None:
    """A script that study.py or compare_schemes.py started (utils/comparison.run_process: it
    runs in a session of its own, RUNNER_PIPE in its environment) gets one SIGINT when that
    runner ends, kill -9 included, and stops as on Ctrl-C (train.py checkpoints) rather than
    going on with no one waiting for it. The runner holds the pipe's other end, which the OS
    closes on any exit; a thread here waits for that."""
    pipe = os.environ.pop(RUNNER_PIPE, None)
    if pipe is None:
        return

    def wait_for_the_runner() -> None:
        with contextlib.suppress(OSError):
            os.read(int(pipe), 1)  # returns when the runner's end closes
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=wait_for_the_runner, name="runner", daemon=True).start()
