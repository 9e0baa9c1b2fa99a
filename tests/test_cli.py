"""The entry scripts' boundary (utils/cli.py): a bad flag is one line and exit 2, whatever the
script; Ctrl-C before training starts is one line and exit 130, with nothing half-written."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.helpers import REPO, make_mnist_root, run_main, run_script
from utils import cli


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["train.py", "--model_config", "m.json", "--train_config", "t.json", "--epochs", "0"],
            "error: argument --epochs: must be >= 1, got 0; see python train.py --help",
        ),
        (
            ["train.py", "--scheme", "gan"],
            "error: argument --scheme: invalid choice: 'gan' (choose from 'simple', 'composite'); "
            "see python train.py --help",
        ),
        (
            ["infer.py", "--bogus"],
            "error: unrecognized arguments: --bogus; see python infer.py --help",
        ),
        (
            ["evaluate.py"],
            "error: pass --model_config and --ckpt_path (grade a checkpoint), or "
            "--images FILE alone (grade images); see python evaluate.py --help",
        ),
        (
            ["evaluate.py", "--images", "a.pt", "--ckpt_path", "b.pth"],
            "error: pass --model_config and --ckpt_path (grade a checkpoint), or --images FILE "
            "alone (grade images); see python evaluate.py --help",
        ),
        (
            ["make_networks.py", "--network", "x"],
            "error: argument --network: invalid choice: 'x' "
            "(choose from 'pips', 'eval', 'both'); see python "
            "make_networks.py --help",
        ),
        (
            ["study.py"],
            "error: the following arguments are required: study; see python study.py --help",
        ),
        (
            ["study.py", "studies/smoke.json", "--workers", "0"],
            "error: --workers 0: must be >= 1; see python study.py --help",
        ),
        (
            ["compare_schemes.py", "--seeds"],
            "error: argument --seeds: expected at least one "
            "argument; see python compare_schemes.py --help",
        ),
    ],
)
def test_a_bad_flag_is_one_line_in_every_script(argv, line):
    # In this process, as the script's __main__ runs it: argparse's exit is the script's.
    result = run_main(*argv)
    assert result.returncode == 2
    assert result.stderr == line + "\n"


def test_a_bad_flag_is_one_line_in_a_real_process():
    result = run_script("infer.py", "--bogus")
    assert (result.returncode, result.stderr) == (
        2,
        "error: unrecognized arguments: --bogus; see python infer.py --help\n",
    )


def interactive_signals() -> None:
    """In the child before it runs: SIGINT as a terminal's shell leaves it (default action,
    unblocked), whatever the test process running it inherited or set (the whole suite under
    pytest-xdist left the child deaf to it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_while_the_perceptual_network_trains_is_one_line(tmp_path):
    """The composite scheme on the MNIST backbone first trains that network; Ctrl-C there (before
    the training loop, which checkpoints on its own) leaves no weights file, half or whole. The
    training split is big enough (4,096 images in the network's half, 128 steps) that the signal
    lands while the network trains, even on a machine busy with other work."""
    fake_mnist = make_mnist_root(tmp_path / "mnist", n_train=8192, n_test=64)
    model = tmp_path / "model.json"
    weights = tmp_path / "pips.pth"
    source = (REPO / "configs/model_composite_mnist_config.json").read_text()
    model.write_text(source.replace("checkpoints/mnist_pips_cnn.pth", str(weights)))
    assert str(weights) in model.read_text()
    proc = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            "--scheme",
            "composite",
            "--model_config",
            str(model),
            "--train_config",
            "configs/train_composite_config.json",
            "--data_root",
            str(fake_mnist),
            "--save_dir",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interactive_signals,
    )
    first = proc.stdout.readline()
    assert first.startswith("training the PIPS backbone CNN"), first
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr == "error: interrupted (Ctrl-C); no file was left half-written\n"
    assert not weights.exists()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(("stops", "sigints"), [(0, 1), (1, 1), (2, 2)])
def test_a_script_takes_one_sigint_per_stop_from_its_runner_and_one_when_it_ends(stops, sigints):
    """utils/cli's stop line: each byte the runner writes is one SIGINT; the pipe's end (the
    runner gone, kill -9 included) is one more only when no stop came before it."""
    received = []
    saved = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"\0" * stops)
        os.close(write_end)
        cli._follow_runner(read_end)
    finally:
        signal.signal(signal.SIGINT, saved)
        os.close(read_end)
    assert received == [signal.SIGINT] * sigints


@pytest.mark.parametrize("value", ["x", "999", "regular file"])
def test_a_runner_pipe_that_names_no_pipe_is_ignored(tmp_path, monkeypatch, value):
    """RUNNER_PIPE set by hand (not a number, a closed descriptor, a file's) starts no watcher."""
    with open(tmp_path / "f", "w") as f:
        monkeypatch.setenv(cli.RUNNER_PIPE, str(f.fileno()) if value == "regular file" else value)
        cli.stop_with_runner()
    assert cli.RUNNER_PIPE not in os.environ
    assert "runner" not in [t.name for t in threading.enumerate()]
