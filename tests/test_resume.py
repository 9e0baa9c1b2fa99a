"""Never lose a run: exact resume after SIGINT / SIGTERM / kill -9, atomic checkpoint writes,
non-finite losses, refused resumes and folders."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import model.linear_backend as lb
from tests.helpers import (
    REPO,
    assert_png,
    config_variant,
    make_mnist_root,
    read_metrics,
    run_main,
    run_script,
    run_with_terminal,
    small_composite_model,
    train_argv,
)
from training_schemes import train
from utils.checkpoint import load_checkpoint
from utils.config import load_model_config, load_train_config
from utils.dataset import epoch_order, load_mnist
from utils.tracking import NonFiniteLossError

STEPS_PER_EPOCH = 32  # 4096 synthetic training images, batch 128
# The backend the runs below take for their linear layers: set in their config (not "auto",
# whose timing may choose differently in two processes), or aten where oneDNN's op fails.
BACKEND = "onednn" if lb.onednn_problem() is None else "aten"


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    return make_mnist_root(tmp_path_factory.mktemp("mnist"), n_train=4096, n_test=256)


@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    data = json.loads((REPO / "configs/train_simple_config.json").read_text())
    data.update(save_every=1, keep_checkpoints=None, linear_backend="onednn")
    path = tmp_path_factory.mktemp("cfg") / "train.json"
    path.write_text(json.dumps(data))
    return path


def train_args(mnist: Path, train_config: Path, save_dir: Path, *extra: str) -> list[str]:
    return train_argv(
        "simple",
        "configs/model_simple_config.json",
        train_config,
        mnist,
        save_dir,
        "--epochs",
        "3",
        *extra,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist, train_config) -> Path:
    run = tmp_path_factory.mktemp("runs") / "uninterrupted"
    result = run_script(*train_args(mnist, train_config, run))
    assert result.returncode == 0, result.stderr
    why = "set in the train config)" if BACKEND == "onednn" else "onednn falls back to aten: "
    assert f"; linear layers: {BACKEND} ({why}" in result.stdout.splitlines()[0]
    assert json.loads((run / "linear_backend.json").read_text())["backend"] == BACKEND
    return run


def assert_same_run(run: Path, reference: Path) -> None:
    """Final weights bit-identical; metrics.csv holds each epoch once, with the same values."""
    a = torch.load(run / "final_model.pth", weights_only=True)["model_state_dict"]
    b = torch.load(reference / "final_model.pth", weights_only=True)["model_state_dict"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    def rows(path: Path) -> list[dict[str, str]]:
        return read_metrics(path, seconds=False)

    assert [r["epoch"] for r in rows(run)] == ["1", "2", "3"]
    assert rows(run) == rows(reference)


def test_sigint_mid_epoch_then_resume_is_bit_identical(
    tmp_path, mnist, train_config, uninterrupted
):
    run = tmp_path / "run"
    proc, received = run_with_terminal(train_args(mnist, train_config, run))
    deadline = time.monotonic() + 120
    # Press Ctrl-C once the bar shows epoch 2 a few steps in.
    pattern = re.compile(rf"epoch 2/3:.*?\b([0-9]+)/{STEPS_PER_EPOCH}\b")
    while time.monotonic() < deadline:
        seen = [int(n) for n in pattern.findall("".join(received))]
        if any(2 <= n <= STEPS_PER_EPOCH - 8 for n in seen):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    time.sleep(0.2)
    terminal = "".join(received)
    assert "SIGINT: stopped in epoch 2" in terminal and "--resume auto" in terminal

    interrupted = load_checkpoint(run / "checkpoint_interrupted.pth")
    assert interrupted["next_epoch"] == 2 and 2 <= interrupted["next_batch"] < STEPS_PER_EPOCH
    assert not (run / "final_model.pth").exists()

    resumed = run_script(*train_args(mnist, train_config, run, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run / 'checkpoint_interrupted.pth'}" in resumed.stdout
    assert_same_run(run, uninterrupted)
    assert not (run / "checkpoint_interrupted.pth").exists()  # superseded, pruned


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path, mnist, train_config, uninterrupted):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, *train_args(mnist, train_config, run)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while "epoch 1/3" not in proc.stdout.readline():
        pass
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert stderr.startswith("SIGTERM: stopped") and stderr.count("\n") == 1
    resumed = run_script(*train_args(mnist, train_config, run, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run, uninterrupted)


def test_killed_run_resumes_from_its_last_epoch_checkpoint(
    tmp_path, mnist, train_config, uninterrupted
):
    # What kill -9 after epoch 1 leaves: that epoch's checkpoint (written atomically) and no more.
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(uninterrupted / "checkpoint_epoch_001.pth", run)
    resumed = run_script(*train_args(mnist, train_config, run, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"linear layers: {BACKEND} (the run's own, from its checkpoint)" in resumed.stdout
    assert_same_run(run, uninterrupted)


@pytest.mark.parametrize("setting", ["aten", "onednn", "auto"])
def test_resume_is_bit_identical_on_each_linear_backend(tmp_path, mnist, monkeypatch, setting):
    # "auto" is timed to take onednn (where its op passes its check); a resumed run takes the
    # backend its checkpoint records, without timing again.
    monkeypatch.setattr(lb, "time_backends", lambda *a: {"aten": 1.0, "onednn": 0.5})
    model_cfg = load_model_config(REPO / "configs/model_simple_config.json")
    train_cfg = load_train_config(REPO / "configs/train_simple_config.json", "simple")
    train_cfg.num_epochs, train_cfg.save_every, train_cfg.linear_backend = 2, 1, setting
    train_set, val_set = load_mnist(mnist, "train"), load_mnist(mnist, "test")
    train_set.images, train_set.labels = train_set.images[:1024], train_set.labels[:1024]
    whole = train(
        "simple", model_cfg, train_cfg, train_set, val_set, torch.device("cpu"), tmp_path / "whole"
    )
    first = load_checkpoint(tmp_path / "whole" / "checkpoint_epoch_001.pth")
    assert first["linear_backend"] == ("aten" if setting == "aten" else BACKEND)

    monkeypatch.setattr(lb, "time_backends", lambda *a: pytest.fail("timed again on resume"))
    resumed = train(
        "simple",
        model_cfg,
        train_cfg,
        train_set,
        val_set,
        torch.device("cpu"),
        tmp_path / "resumed",
        resume=first,
    )
    a = torch.load(whole.final_path, weights_only=True)["model_state_dict"]
    b = torch.load(resumed.final_path, weights_only=True)["model_state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.last_row == {**whole.last_row, "seconds": resumed.last_row["seconds"]}


def test_resume_may_extend_the_epochs_but_nothing_else(
    tmp_path, mnist, train_config, uninterrupted
):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(uninterrupted / "checkpoint_epoch_003.pth", run)
    changed = json.loads(train_config.read_text())
    changed["loss"]["params"]["free_bits"] = 0.5
    changed_path = tmp_path / "changed.json"
    changed_path.write_text(json.dumps(changed))
    refused = run_main(*train_args(mnist, changed_path, run, "--resume", "auto"))
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: {changed_path}: field 'loss.params.free_bits' is 0.5 but the run used 0.2; "
        "only the epoch count may change on resume\n"
    )
    extended = run_main(*train_args(mnist, train_config, run, "--resume", "auto", "--epochs", "4"))
    assert extended.returncode == 0, extended.stderr
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3", "4"]


def test_resume_may_switch_tensorboard_on_and_the_run_stays_the_same(
    tmp_path, mnist, train_config, uninterrupted
):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(uninterrupted / "checkpoint_epoch_002.pth", run)
    resumed = run_script(*train_args(mnist, train_config, run, "--resume", "auto", "--tensorboard"))
    assert resumed.returncode == 0, resumed.stderr
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run / "train_config.json").read_text())["tensorboard"] is True
    assert_same_run(run, uninterrupted)


def test_a_checkpoint_from_before_a_config_field_existed_resumes_with_its_default(
    tmp_path, mnist, train_config, uninterrupted
):
    # A run started before `sync_batchnorm` was added keeps no such field in its checkpoint.
    run = tmp_path / "run"
    run.mkdir()
    payload = load_checkpoint(uninterrupted / "checkpoint_epoch_002.pth")
    del payload["train_config"]["sync_batchnorm"]
    torch.save(payload, run / "checkpoint_epoch_002.pth")
    resumed = run_script(*train_args(mnist, train_config, run, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run, uninterrupted)


def test_resume_refuses_weights_only_and_missing_checkpoints(
    tmp_path, mnist, train_config, uninterrupted
):
    weights_only = run_main(
        *train_args(
            mnist, train_config, tmp_path / "a", "--resume", str(uninterrupted / "final_model.pth")
        )
    )
    assert weights_only.returncode == 2
    assert "holds weights only" in weights_only.stderr and weights_only.stderr.count("\n") == 1
    nothing = run_main(*train_args(mnist, train_config, tmp_path / "b", "--resume", "auto"))
    assert nothing.returncode == 2 and "no readable checkpoint_*.pth" in nothing.stderr


def test_periodic_checkpoints_are_pruned_to_the_newest_few(tmp_path, mnist):
    data = json.loads((REPO / "configs/train_simple_config.json").read_text())
    data.update(save_every=1, keep_checkpoints=2)
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps(data))
    result = run_main(*train_args(mnist, cfg, tmp_path / "run", "--subset", "256"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*.pth")) == [
        "checkpoint_epoch_002.pth",
        "checkpoint_epoch_003.pth",
    ]


def test_a_checkpoint_write_killed_half_way_leaves_the_old_file(tmp_path):
    path = tmp_path / "checkpoint_epoch_001.pth"
    writer = (
        "import sys, time, torch\n"
        "from pathlib import Path\n"
        "from utils.checkpoint import atomic_write, save_checkpoint\n"
        "path = Path(sys.argv[1])\n"
        "save_checkpoint({'step': 1, 'weights': torch.ones(1000)}, path)\n"
        "def slow(f):\n"
        "    torch.save({'step': 2, 'weights': torch.zeros(10**6)}, f)\n"
        "    f.truncate(f.tell() // 2)\n"
        "    f.flush()\n"
        "    print('half written', flush=True)\n"
        "    time.sleep(60)\n"
        "atomic_write(path, slow)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", writer, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "half written\n"
    proc.kill()
    proc.wait()
    payload = load_checkpoint(path)
    assert payload["step"] == 1 and torch.equal(payload["weights"], torch.ones(1000))
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint_epoch_001.pth.")
    assert not list(tmp_path.glob("checkpoint_*.pth.*"))  # never taken for a checkpoint


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, mnist, uninterrupted
):
    model_cfg = load_model_config(uninterrupted / "model_config.json")
    train_cfg = load_train_config(uninterrupted / "train_config.json", "simple")
    train_set = load_mnist(mnist, "train")
    val_set = load_mnist(mnist, "test")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(uninterrupted / "checkpoint_epoch_001.pth", run)
    before = (run / "checkpoint_epoch_001.pth").read_bytes()
    resume = load_checkpoint(run / "checkpoint_epoch_001.pth")
    # A corrupt pixel in the first batch of epoch 2 (step 32).
    first = epoch_order(len(train_set), train_cfg.seed, 2, "cpu")[0]
    train_set.images[first, 0, 5, 5] = float("nan")
    with pytest.raises(NonFiniteLossError) as err:
        train(
            "simple",
            model_cfg,
            train_cfg,
            train_set,
            val_set,
            torch.device("cpu"),
            run,
            resume=resume,
        )
    assert str(err.value).startswith("step 32: loss term 'recon' is not finite")
    assert (run / "checkpoint_epoch_001.pth").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_epoch_001.pth"]


def test_unwritable_save_folder_is_one_line(tmp_path, mnist, train_config):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_main(*train_args(mnist, train_config, blocker / "run"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {blocker / 'run'}: cannot write the run folder")
    assert result.stderr.count("\n") == 1


@pytest.fixture
def composite_args(tmp_path, mnist):
    """train.py arguments of a small composite run (a narrow critic, the MNIST CNN as PIPS at its
    initial weights in its own file, batches of 32, 8 steps an epoch) with a checkpoint every
    epoch: composite_args(run_folder, *extra)."""
    model_path = small_composite_model(tmp_path)
    train_path = config_variant(
        tmp_path, "configs/train_composite_config.json", {"save_every": 1, "data.train_bs": 32}
    )

    def args(run: Path, *extra: str) -> list[str]:
        return train_argv(
            "composite",
            model_path,
            train_path,
            mnist,
            run,
            "--epochs",
            "2",
            "--subset",
            "256",
            *extra,
        )

    return args


def test_composite_run_resumes_bit_identical(tmp_path, composite_args):
    whole = run_script(*composite_args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "whole" / "checkpoint_epoch_001.pth", resumed_dir)
    resumed = run_script(*composite_args(resumed_dir, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    for key in (
        "model_state_dict",
        "discriminator_state_dict",
        "optimizer_d_state_dict",
        "scheduler_d_state_dict",
    ):
        a = load_checkpoint(tmp_path / "whole" / "checkpoint_epoch_002.pth")[key]
        b = load_checkpoint(resumed_dir / "checkpoint_epoch_002.pth")[key]
        flat_a, flat_b = (
            torch.utils._pytree.tree_flatten(a)[0],
            torch.utils._pytree.tree_flatten(b)[0],
        )
        assert len(flat_a) == len(flat_b)
        for x, y in zip(flat_a, flat_b, strict=True):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, key


def test_composite_resume_against_another_backbone_file_is_refused(tmp_path, composite_args):
    run = tmp_path / "run"
    first = run_main(*composite_args(run, "--epochs", "1"))
    assert first.returncode == 0, first.stderr
    backbone = tmp_path / "pips_cnn_initial.pth"
    payload = load_checkpoint(backbone)
    first_weight = next(iter(payload["state_dict"]))
    payload["state_dict"][first_weight] += 0.01  # as if the backbone had been made again
    torch.save(payload, backbone)
    metrics_before = (run / "metrics.csv").read_text()

    resumed = run_main(*composite_args(run, "--resume", "auto"))
    assert resumed.returncode == 2
    assert resumed.stderr.startswith(f"error: {backbone}: the PIPS backbone's weights are not ")
    assert resumed.stderr.count("\n") == 1 and "put that file back" in resumed.stderr
    assert not (run / "checkpoint_epoch_002.pth").exists()
    assert (run / "metrics.csv").read_text() == metrics_before


# Run folders written by round 1 of this repo (tests/fixtures/round1_runs, made by commit 5fa4d5e
# on the fake MNIST of tests/helpers.py): configs in its own layout, the simple scheme's
# optimiser under "_g" keys, a critic schedule that counted global steps.
ROUND1 = REPO / "tests" / "fixtures" / "round1_runs"


def round1_args(scheme: str, run: Path, fake_mnist: Path) -> list[str]:
    folder = ROUND1 / scheme
    return train_argv(
        scheme, folder / "model_config.json", folder / "train_config.json", fake_mnist, run
    )


def test_a_round1_simple_run_resumes_bit_identical_to_how_it_ended(tmp_path, fake_mnist):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ROUND1 / "simple" / "checkpoint_epoch_001.pth", run)
    # Bit-identical needs the thread count the fixture ran with: 2 (a product summed in other
    # chunks rounds differently), whatever this test process runs with.
    two_threads = {**os.environ, "OMP_NUM_THREADS": "2"}
    resumed = run_script(
        *round1_args("simple", run, fake_mnist), "--resume", "auto", env=two_threads
    )
    assert resumed.returncode == 0, resumed.stderr
    ended = load_checkpoint(ROUND1 / "simple" / "final_model.pth")["model_state_dict"]
    now = load_checkpoint(run / "final_model.pth")["model_state_dict"]
    assert ended.keys() == now.keys() and all(torch.equal(ended[k], now[k]) for k in ended)
    with open(ROUND1 / "simple" / "metrics.csv") as f, open(run / "metrics.csv") as g:
        old, new = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in new] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in old
    ]
    # Written again with the reference's keys and configs in the current layout.
    payload = torch.load(run / "checkpoint_epoch_002.pth", weights_only=True)
    assert "optimizer_state_dict" in payload and "optimizer_g_state_dict" not in payload
    assert payload["train_config"]["data"]["train_bs"] == 128
    assert payload["model_config"]["model_config"]["latent_features"] == 2


def test_a_round1_composite_run_resumes_under_the_reference_critic_schedule(tmp_path, fake_mnist):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ROUND1 / "composite" / "checkpoint_epoch_001.pth", run)
    resumed = run_main(*round1_args("composite", run, fake_mnist), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    payload = torch.load(run / "checkpoint_epoch_002.pth", weights_only=True)
    # 2 epochs x 4 steps; the critic from step int(0.25 * 8) = 2, so 6 critic updates by the
    # end; its warm-up int(0.25 * 8) = 2 updates, then cosine over 8 - 2:
    # lr = 5e-5 * 0.5 * (1 + cos(pi * (6 - 2) / 6)) = 1.25e-5.
    assert payload["scheduler_d_state_dict"]["last_epoch"] == 6
    assert payload["optimizer_d_state_dict"]["param_groups"][0]["lr"] == pytest.approx(1.25e-5)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["lr_d"]) == pytest.approx(1.25e-5, rel=1e-5)


@pytest.mark.parametrize("scheme", ["simple", "composite"])
def test_round1_run_folders_render(tmp_path, scheme):
    png = tmp_path / "grid.png"
    argv = [
        "infer.py",
        "--model_config",
        str(ROUND1 / scheme / "model_config.json"),
        "--ckpt_path",
        str(ROUND1 / scheme / "checkpoint_epoch_001.pth"),
        "--save_path",
        str(png),
        "--device",
        "cpu",
    ]
    result = run_script(*argv)
    assert result.returncode == 0, result.stderr
    assert_png(png)
