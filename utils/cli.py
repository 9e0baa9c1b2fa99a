"""The entry scripts' shared flags and boundary: the --device choice, an argument parser whose
errors are one line, the one place a UserError becomes one line on stderr and exit code 2, and
how a script that study.py or compare_schemes.py started takes its stops (stop_with_runner)."""

import argparse
import os
import signal
import stat
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


# The environment variable naming the read end of the pipe a script takes its runner's stops
# from (utils/comparison.run_process).
RUNNER_PIPE = "RUNNER_PIPE"


def stop_with_runner() -> None:
    """A script that study.py or compare_schemes.py started (RUNNER_PIPE in its environment)
    stops when its runner says so or ends: each byte down the pipe is one SIGINT to this
    process (train.py checkpoints and stops; a second stops it at once), and the pipe closing,
    which the OS does however the runner ends, kill -9 included, is one SIGINT if none came. A
    RUNNER_PIPE that names no pipe here is ignored."""
    value = os.environ.pop(RUNNER_PIPE, None)
    try:
        pipe = int(value)
        if not stat.S_ISFIFO(os.fstat(pipe).st_mode):
            return
    except (TypeError, ValueError, OSError):  # unset, not a number, no such file
        return
    threading.Thread(target=_follow_runner, args=(pipe,), name="runner", daemon=True).start()


def _follow_runner(pipe: int) -> None:
    """Each byte down `pipe` is one stop; the pipe's end (its runner ended) is one if none came."""
    stops = 0
    while True:
        try:
            chunk = os.read(pipe, 64)
        except OSError:
            return
        if not chunk:
            break
        stops += len(chunk)
        for _ in chunk:
            os.kill(os.getpid(), signal.SIGINT)
    if stops == 0:
        os.kill(os.getpid(), signal.SIGINT)
