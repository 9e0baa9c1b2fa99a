"""A run folder belongs to one run and one process: a checkpoint resumes only in its own folder,
an ended run is not trained on, a second train.py is refused while one runs, and pruning removes
only the run's own older checkpoints (by the step each records). train.py runs in this process
(tests/helpers.run_main: a process would spend most of these short runs starting up), except
where the test needs a process of its own: a second process holding the folder, and a child
whose file-size limit stands for a full disk."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, config_variant, make_mnist_root, run_main, train_argv
from train import HELD_LOCKS, RUN_LOCK, lock_run_folder
from training_schemes import INTERRUPT_CHECKPOINT, prune_checkpoints
from utils.errors import UserError


def simple_args(mnist, run, *flags: str, train_config="configs/train_simple_config.json"):
    """The simple scheme on the first 128 images (one step an epoch), into `run`."""
    return train_argv(
        "simple",
        "configs/model_simple_config.json",
        train_config,
        mnist,
        run,
        "--subset",
        "128",
        *flags,
    )


def contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != RUN_LOCK}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_mnist):
    """A finished 2-epoch run (a checkpoint every epoch)."""
    folder = tmp_path_factory.mktemp("finished")
    cfg = config_variant(folder, "configs/train_simple_config.json", {"save_every": 1})
    run = folder / "run"
    done = run_main(*simple_args(fake_mnist, run, "--epochs", "2", train_config=cfg))
    assert done.returncode == 0, done.stderr
    return run, cfg


def test_a_checkpoint_resumes_only_in_its_own_folder(tmp_path, fake_mnist, finished):
    run, cfg = finished
    other = tmp_path / "other"
    made = run_main(*simple_args(fake_mnist, other, "--epochs", "1", train_config=cfg))
    assert made.returncode == 0, made.stderr
    before = contents(other)
    elsewhere = str(run / "checkpoint_epoch_001.pth")
    refused = run_main(
        *simple_args(fake_mnist, other, "--epochs", "2", "--resume", elsewhere, train_config=cfg)
    )
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: {run / 'checkpoint_epoch_001.pth'}: is a checkpoint of the run in {run}, and a "
        f"checkpoint resumes in its own run folder: pass --save_dir {run} (to branch a run, copy "
        "the checkpoint into an empty folder and resume there)\n"
    )
    assert contents(other) == before


def test_a_finished_run_is_not_trained_on_unless_given_more_epochs(fake_mnist, finished):
    run, cfg = finished
    before = contents(run)
    again = run_main(
        *simple_args(fake_mnist, run, "--epochs", "2", "--resume", "auto", train_config=cfg)
    )
    assert again.returncode == 2
    assert again.stderr == (
        f"error: {run / 'checkpoint_epoch_002.pth'}: the run has finished its 2 epochs; to train "
        "it further pass --epochs N with N > 2\n"
    )
    assert contents(run) == before


def test_an_early_stopped_run_is_not_resumed(tmp_path, fake_mnist):
    # No epoch beats the first by more than the tolerance: the run stops after epoch 2 of 5.
    stopping = {"early_stopping": {"patience": 1, "tol": 1e9}, "num_epochs": 5}
    cfg = config_variant(tmp_path, "configs/train_simple_config.json", stopping)
    run = tmp_path / "run"
    first = run_main(*simple_args(fake_mnist, run, train_config=cfg))
    assert first.returncode == 0, first.stderr
    assert "early stop after epoch 2" in first.stdout
    before = contents(run)
    again = run_main(*simple_args(fake_mnist, run, "--resume", "auto", train_config=cfg))
    assert again.returncode == 2
    assert again.stderr == (
        f"error: {run / 'checkpoint_epoch_002.pth'}: the run stopped early after epoch 2 (its "
        "best weights are in best_model.pth) and has nothing left to train; start a new run in "
        "another --save_dir\n"
    )
    assert contents(run) == before


HOLDER = """
import sys, time
from pathlib import Path
from train import lock_run_folder
lock_run_folder(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_one_process_at_a_time_owns_a_run_folder(tmp_path, fake_mnist):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(UserError) as caught:
            lock_run_folder(run)
        assert str(caught.value) == (
            f"{run}: in use by another train.py (pid {holder.pid}); wait for it to end, or "
            "choose another --save_dir"
        )
        second = run_main(*simple_args(fake_mnist, run, "--epochs", "1"))
        assert second.returncode == 2
        assert second.stderr == f"error: {caught.value}\n"
        assert sorted(p.name for p in run.iterdir()) == [RUN_LOCK]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 released it: the folder is free again.
    lock_run_folder(run)
    assert (run / RUN_LOCK).read_text().strip() == str(os.getpid())
    HELD_LOCKS.pop().close()


def write_checkpoint(path, run_id, step):
    torch.save({"run_id": run_id, "step": step, "model_state_dict": {}}, path)


def test_pruning_keeps_the_newest_by_step_and_only_touches_the_runs_own_files(tmp_path):
    for epoch in (998, 999, 1000):
        write_checkpoint(tmp_path / f"checkpoint_epoch_{epoch:03d}.pth", "this", epoch)
    write_checkpoint(tmp_path / "checkpoint_epoch_001.pth", "another run", 1)
    (tmp_path / "checkpoint_epoch_005.pth").write_bytes(b"not a checkpoint")
    write_checkpoint(tmp_path / INTERRUPT_CHECKPOINT, "this", 500)
    prune_checkpoints(tmp_path, 2, "this", 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch_001.pth",
        "checkpoint_epoch_005.pth",
        "checkpoint_epoch_1000.pth",
        "checkpoint_epoch_999.pth",
    ]
    # Another run's interrupt checkpoint stays, whatever its step.
    write_checkpoint(tmp_path / INTERRUPT_CHECKPOINT, "another run", 3)
    prune_checkpoints(tmp_path, None, "this", 1000)
    assert (tmp_path / INTERRUPT_CHECKPOINT).exists()


def test_the_run_id_and_why_its_backend_was_chosen_survive_a_resume(tmp_path, fake_mnist, finished):
    run = shutil.copytree(finished[0], tmp_path / "run")
    cfg = finished[1]
    ids = {torch.load(p, weights_only=True)["run_id"] for p in run.glob("checkpoint_*.pth")}
    assert len(ids) == 1 and len(ids.pop()) == 32
    chosen = (run / "linear_backend.json").read_text()  # and why its linear backend was chosen
    assert "the run's own" not in chosen
    extended = run_main(
        *simple_args(fake_mnist, run, "--epochs", "3", "--resume", "auto", train_config=cfg)
    )
    assert extended.returncode == 0, extended.stderr
    ids = {torch.load(p, weights_only=True)["run_id"] for p in run.glob("checkpoint_*.pth")}
    assert len(ids) == 1
    assert (run / "linear_backend.json").read_text() == chosen
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert json.loads((run / "train_config.json").read_text())["num_epochs"] == 3


@pytest.mark.parametrize(
    ("save_dir", "problem"),
    [
        ("/", "is the filesystem root, not a run folder"),
        (str(REPO), "is the repository's folder, not a run folder"),
        (f"/tmp/{'x' * 300}/run", "cannot write the run folder (File name too long)"),
    ],
)
def test_a_save_dir_that_cannot_be_a_run_folder_is_one_line(save_dir, problem):
    result = run_main(*simple_args(REPO / "data", save_dir, "--epochs", "1"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {save_dir}: {problem}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert not (REPO / "final_model.pth").exists() and not (REPO / "metrics.csv").exists()


def test_a_batch_larger_than_the_training_split_is_one_line(tmp_path):
    mnist = make_mnist_root(tmp_path / "mnist", n_train=100, n_test=32)
    run = tmp_path / "run"
    args = simple_args(mnist, run, "--epochs", "1")
    del args[args.index("--subset") : args.index("--subset") + 2]
    result = run_main(*args)
    assert result.returncode == 2
    assert result.stderr == (
        "error: configs/train_simple_config.json: field 'data.train_bs' = 128 is more than the "
        "100 training images, so an epoch would take no step; lower it\n"
    )
    assert not (run / "final_model.pth").exists()


def limit_file_size() -> None:
    """In the child: writes past 300 kB fail as on a full disk (EFBIG instead of a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_older_one_stays(
    tmp_path, fake_mnist, finished
):
    run = shutil.copytree(finished[0], tmp_path / "run")
    before = contents(run)
    argv = simple_args(
        fake_mnist, run, "--epochs", "3", "--resume", "auto", train_config=finished[1]
    )
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {run / 'checkpoint_epoch_003.pth'}: cannot write checkpoint (File too large); "
        "free disk space or choose another --save_dir\n"
    )
    after = contents(run)
    assert {k: v for k, v in after.items() if k.endswith(".pth")} == {
        k: v for k, v in before.items() if k.endswith(".pth")
    }
    assert not [name for name in after if name.endswith(".tmp")]


def test_a_damaged_newest_checkpoint_is_passed_over_for_the_older_intact_one(
    tmp_path, fake_mnist, finished
):
    run = shutil.copytree(finished[0], tmp_path / "run")
    newest = run / "checkpoint_epoch_002.pth"
    damaged = bytearray(newest.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # a bit flip inside the tensors' data
    newest.write_bytes(bytes(damaged))
    (run / ".checkpoint_epoch_002.pth.abc123.tmp").write_bytes(b"left by a kill -9")
    resumed = run_main(
        *simple_args(fake_mnist, run, "--epochs", "3", "--resume", "auto", train_config=finished[1])
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"note: passing over {newest}: its content no longer matches the hash written with it "
        "(the file was damaged on disk or in a copy); use an older checkpoint\n"
    ) in resumed.stdout
    assert f"resuming {run / 'checkpoint_epoch_001.pth'} at step 1" in resumed.stdout
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert not list(run.glob(".*.tmp"))  # the unfinished write of a killed process is gone


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("scheme", "lacks 'scheme', which a resumable checkpoint holds"),
        (
            "optimizer_state_dict",
            "lacks 'optimizer_state_dict', which a simple run's checkpoint holds",
        ),
    ],
)
def test_a_hand_made_checkpoint_missing_keys_is_one_line(
    tmp_path, fake_mnist, finished, drop, message
):
    run = tmp_path / "run"
    run.mkdir()
    payload = torch.load(finished[0] / "checkpoint_epoch_001.pth", weights_only=True)
    del payload[drop], payload["content_sha256"]
    torch.save(payload, run / "checkpoint_epoch_001.pth")
    refused = run_main(
        *simple_args(fake_mnist, run, "--epochs", "2", "--resume", "auto", train_config=finished[1])
    )
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: {run / 'checkpoint_epoch_001.pth'}: {message}; resume from a checkpoint_*.pth "
        "written by this train.py\n"
    )


def test_a_missing_resume_file_names_the_resume_flag(tmp_path, fake_mnist):
    run = tmp_path / "run"
    result = run_main(*simple_args(fake_mnist, run, "--resume", str(run / "nothing.pth")))
    assert result.returncode == 2
    assert (
        result.stderr == f"error: {run / 'nothing.pth'}: no such checkpoint file; check --resume\n"
    )
