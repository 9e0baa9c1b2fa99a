"""Stray or broken torchrun variables end in one line and exit 2, within RENDEZVOUS_TIMEOUT
seconds when peers never come, instead of a traceback or a 30-minute wait."""

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, train_argv

RANK0 = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
RANK1 = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
FIX = (
    "start every process with torchrun, or unset WORLD_SIZE and RANK to train in one process "
    "(RENDEZVOUS_TIMEOUT sets the wait)"
)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def train_with_env(
    tmp_path, mnist, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess, float]:
    """train.py in a real process whose environment is this one without any torchrun variable,
    plus `env`; and how long it took."""
    torchrun = {
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
    base = {k: v for k, v in os.environ.items() if k not in torchrun}
    argv = train_argv(
        "simple",
        "configs/model_simple_config.json",
        "configs/train_simple_config.json",
        mnist,
        tmp_path / "run",
        "--subset",
        "128",
        "--epochs",
        "1",
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **env},
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"WORLD_SIZE": "abc"},
            "WORLD_SIZE is 'abc': it must be a whole number of processes "
            ">= 1 (torchrun sets it); unset it to train in one process",
        ),
        (
            {**RANK0, "RANK": "x"},
            "WORLD_SIZE is 2 but RANK is 'x'; start several processes with "
            "torchrun, or unset WORLD_SIZE to train in one process",
        ),
        (
            RANK0,
            "WORLD_SIZE is 2 but MASTER_ADDR is unset; start several processes with torchrun "
            "(it sets both), or unset WORLD_SIZE to train in one process",
        ),
    ],
)
def test_broken_torchrun_variables_are_one_line(tmp_path, fake_mnist, env, line):
    result, _ = train_with_env(tmp_path, fake_mnist, env)
    assert result.returncode == 2
    assert result.stderr == f"error: {line}\n"


def test_a_process_whose_peers_never_come_stops_within_the_rendezvous_timeout(tmp_path, fake_mnist):
    port = free_port()
    master = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RENDEZVOUS_TIMEOUT": "2"}
    alone, seconds = train_with_env(tmp_path, fake_mnist, {**RANK0, **master})
    assert alone.returncode == 2
    assert alone.stderr.startswith(
        f"error: rank 0: the 2 processes did not all meet at 127.0.0.1:{port} within 2 s ("
    ), alone.stderr
    assert alone.stderr.endswith(f"); {FIX}\n") and alone.stderr.count("\n") == 1
    assert seconds < 60

    no_master, seconds = train_with_env(tmp_path, fake_mnist, {**RANK1, **master})
    assert no_master.returncode == 2
    assert (
        no_master.stderr == f"error: rank 1: nothing answers at 127.0.0.1:{port} after 2 s; {FIX}\n"
    )
    assert seconds < 60
