"""infer.py's views on a tiny trained checkpoint, and TensorBoard logging from train.py.

One session fixture trains the simple scheme in-process for one epoch on the synthetic MNIST
(512 train / 256 test images), with narrow layers to keep it quick. grid, curves and compare run
as real subprocesses; the other views are called in-process through infer.main, which returns
how many items the view drew.
"""

import json
import struct
import sys
from pathlib import Path

import pytest
import torch

import infer
import train as train_script
from model.vae import VAE
from tests.helpers import REPO, infer_argv, run_main, run_script, train_argv
from training_schemes import train
from utils.cli import run_cli
from utils.config import load_model_config, load_train_config
from utils.dataset import load_mnist
from utils.errors import UserError

TEST_IMAGES = 256  # the fake_mnist test split

# metrics.csv of a composite run whose critic switches on in epoch 2: adversarial terms are nan
# before that, and train_disc exists without a validation twin.
COMPOSITE_METRICS = """\
epoch,step,train_loss,train_recon,train_kl,train_kl_raw,train_pips,train_adv,train_disc,\
val_loss,val_recon,val_kl,val_kl_raw,val_pips,val_adv,beta,lr_g,lr_d,seconds
1,4,90,80,5,5,3,nan,nan,60,55,4,4,2,nan,0.2,0.0005,5e-05,3.1
2,8,70,60,5,5,2,0.7,1.3,50,45,4,4,2,0.8,0.4,0.0003,4e-05,3.0
3,12,60,50,5,5,2,0.8,1.2,45,40,4,4,1.5,0.9,0.6,0.0001,2e-05,3.2
"""


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def narrow_model_config(path: Path, latent_dim: int = 2) -> Path:
    """The simple model config with narrow hidden layers (fast to train) and `latent_dim`."""
    spec = json.loads((REPO / "configs/model_simple_config.json").read_text())
    spec["model_config"]["latent_features"] = latent_dim
    spec["model_config"]["encoder"]["hidden_features"] = [64, 32]
    spec["model_config"]["decoder"]["hidden_features"] = [32, 64]
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, fake_mnist) -> Path:
    """A one-epoch simple run (final_model.pth, metrics.csv, model_config.json)."""
    run = tmp_path_factory.mktemp("views") / "tiny"
    run.mkdir()
    model_cfg = load_model_config(narrow_model_config(run / "model_config.json"))
    train_cfg = load_train_config(REPO / "configs/train_simple_config.json", "simple")
    train_cfg.num_epochs = 1
    train(
        "simple",
        model_cfg,
        train_cfg,
        load_mnist(fake_mnist, "train", download=False),
        load_mnist(fake_mnist, "test", download=False),
        torch.device("cpu"),
        run,
    )
    return run


# The CLI as a user runs it.


@pytest.fixture(scope="module")
def cli_views(tmp_path_factory, tiny_run, fake_mnist) -> tuple[Path, dict]:
    """infer.py's grid of the tiny run, curves of a composite run's metrics.csv, and the tiny run
    compared with an untrained model of another latent size: a folder, and each result."""
    root = tmp_path_factory.mktemp("cli_views")
    run = root / "composite"
    run.mkdir()
    (run / "metrics.csv").write_text(COMPOSITE_METRICS)
    config_b = narrow_model_config(root / "model_b.json", latent_dim=3)
    ckpt_b = root / "fresh" / "untrained.pth"
    ckpt_b.parent.mkdir()
    torch.save(
        {"model_state_dict": VAE(load_model_config(config_b).model_config).state_dict()}, ckpt_b
    )
    flags = ["--ckpt_path_b", str(ckpt_b), "--model_config_b", str(config_b)]
    flags += ["--data_root", str(fake_mnist), "--grid_size", "6"]
    commands = {
        "grid": ["infer.py", *infer_argv(tiny_run, root / "grid.png", "--grid_size", "5")],
        "curves": [
            "infer.py",
            "--mode",
            "curves",
            "--run_dir",
            str(run),
            "--save_path",
            str(root / "curves.png"),
        ],
        "compare": [
            "infer.py",
            *infer_argv(tiny_run, root / "compare.png", "--mode", "compare", *flags),
        ],
    }
    # The default view in a real process, the others in this one (tests/helpers.run_main).
    return root, {
        name: run_script(*argv) if name == "grid" else run_main(*argv)
        for name, argv in commands.items()
    }


def test_grid_is_the_default_view(cli_views):
    root, results = cli_views
    png = root / "grid.png"
    result = results["grid"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"grid of 5x5 -> {png}"
    assert png_size(png) == (700, 740)


def test_curves_of_a_composite_run_with_nan_terms(cli_views):
    root, results = cli_views
    png = root / "curves.png"
    result = results["curves"]
    assert result.returncode == 0, result.stderr
    # train and val of loss, recon, kl, kl_raw, pips, adv; train_disc; beta; lr_g and lr_d
    assert result.stdout.startswith("16 curves over 3 epochs")
    assert png_size(png) == (1320, 980)


def test_the_grid_is_drawn_in_the_reference_orientation_and_its_axes_say_so(tiny_run):
    """The reference's grid has z[1] = -3 in its top row; the tick labels read that way."""
    from utils import views

    vae = views.load_vae(
        str(tiny_run / "model_config.json"), str(tiny_run / "final_model.pth"), torch.device("cpu")
    )
    fig = views.new_figure(4, 4)
    ax = fig.subplots()
    views.draw_latent_grid(ax, vae, 5)
    bottom, top = ax.get_ylim()
    left, right = ax.get_xlim()
    assert top < -3 < 3 < bottom and left < -3 < 3 < right
    assert "rising downwards" in ax.get_ylabel() and "rising to the right" in ax.get_xlabel()
    picture = torch.as_tensor(ax.images[0].get_array().data)  # (5 * 28, 5 * 28, 3)
    corners = {(0, 0): (-3.0, -3.0), (0, 4): (3.0, -3.0), (4, 0): (-3.0, 3.0)}
    for (row, col), z in corners.items():
        cell = picture[row * 28 : (row + 1) * 28, col * 28 : (col + 1) * 28, 0]
        expected = views.decode(vae, torch.tensor([z]))[0, 0]
        torch.testing.assert_close(cell, expected)
    views.plt.close(fig)


def test_compare_two_checkpoints_of_different_latent_sizes(cli_views):
    root, results = cli_views
    png = root / "compare.png"
    result = results["compare"]
    assert result.returncode == 0, result.stderr
    assert "A: tiny/final_model.pth vs B: fresh/untrained.pth" in result.stdout
    assert png_size(png) == (1200, 1270)


# In-process: the remaining views, their counts and sizes, and the one-line errors.


def test_traverse_sweeps_every_dimension(tmp_path, tiny_run, fake_mnist):
    png = tmp_path / "traverse.png"
    assert infer.main(infer_argv(tiny_run, png, "--mode", "traverse", "--grid_size", "7")) == 2 * 7
    assert png_size(png) == (745, 300)
    flags = ["--data_root", str(fake_mnist), "--image_index", str(TEST_IMAGES - 1)]
    assert infer.main(infer_argv(tiny_run, png, "--mode", "traverse", *flags)) == 2 * 8


def test_recon_shows_the_chosen_test_images(tmp_path, tiny_run, fake_mnist):
    png = tmp_path / "recon.png"
    flags = ["--data_root", str(fake_mnist), "--grid_size", "6", "--image_index", "3"]
    assert infer.main(infer_argv(tiny_run, png, "--mode", "recon", *flags)) == 6
    assert png_size(png) == (780, 310)
    # Near the end of the split there are fewer images to show.
    flags[-1] = str(TEST_IMAGES - 2)
    assert infer.main(infer_argv(tiny_run, png, "--mode", "recon", *flags)) == 2


def test_samples_are_seeded(tmp_path, tiny_run):
    first, again, other = (tmp_path / f"{name}.png" for name in ("a", "b", "c"))
    assert infer.main(infer_argv(tiny_run, first, "--mode", "samples", "--seed", "3")) == 64
    infer.main(infer_argv(tiny_run, again, "--mode", "samples", "--seed", "3"))
    infer.main(infer_argv(tiny_run, other, "--mode", "samples", "--seed", "4"))
    assert png_size(first) == (700, 740)
    assert first.read_bytes() == again.read_bytes() != other.read_bytes()


def test_scatter_plots_every_test_image_once(tmp_path, tiny_run, fake_mnist):
    png = tmp_path / "scatter.png"
    flags = ["--mode", "scatter", "--data_root", str(fake_mnist)]
    assert infer.main(infer_argv(tiny_run, png, *flags)) == TEST_IMAGES
    assert png_size(png) == (840, 700)


def test_curves_of_a_real_run(tmp_path, tiny_run):
    png = tmp_path / "curves.png"
    count = infer.main(["--mode", "curves", "--run_dir", str(tiny_run), "--save_path", str(png)])
    assert count == 4 * 2 + 2  # loss, recon, kl, kl_raw for train and val; beta; lr_g
    assert png_size(png) == (1320, 680)


def test_default_save_paths_name_the_run_and_view(tiny_run):
    args = infer.parse_args(["--mode", "recon", "--ckpt_path", "runs/a/final_model.pth"])
    assert infer.default_save_path(args) == Path("samples/a_final_model_recon.png")
    args = infer.parse_args(
        ["--mode", "compare", "--ckpt_path", "a/x.pth", "--ckpt_path_b", "b/y.pth"]
    )
    assert infer.default_save_path(args) == Path("samples/a_x_vs_b_y_compare.png")
    args = infer.parse_args(["--mode", "curves", "--run_dir", str(tiny_run)])
    assert infer.default_save_path(args) == Path("samples/tiny_curves.png")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mode", "curves"], "--mode curves needs --run_dir"),
        (["--mode", "curves", "--run_dir", "{run}/.."], "has no metrics.csv"),
        (["--mode", "compare", "{ckpt}"], "--mode compare needs --ckpt_path_b"),
        (["--mode", "samples"], "--mode samples needs --model_config and --ckpt_path"),
        (["{ckpt}", "--grid_size", "0"], "--grid_size 0: must be >= 1"),
        (["{ckpt}", "--mode", "traverse", "--image_index", "-1"], "--image_index -1"),
        (
            ["{ckpt}", "--mode", "traverse", "--image_index", "256", "--data_root", "{data}"],
            "--image_index 256: the test split has 256 images; use 0 to 255",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_run, fake_mnist, capsys, flags, message):
    ckpt = ["--model_config", str(tiny_run / "model_config.json")]
    ckpt += ["--ckpt_path", str(tiny_run / "final_model.pth")]
    argv = []
    for flag in flags:
        argv += ckpt if flag == "{ckpt}" else [flag.format(run=tiny_run, data=fake_mnist)]
    argv += ["--save_path", str(tmp_path / "never.png"), "--device", "cpu"]
    with pytest.raises(UserError, match="^[^\n]*$"):
        infer.main(argv)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: infer.main(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "never.png").exists()


def test_tensorboard_logs_scalars_and_images(tmp_path, fake_mnist, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Batches of 16: 32 steps, so the every-25-steps scalars appear once.
    config = json.loads((REPO / "configs/train_simple_config.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps({**config, "data": {"train_bs": 16}}))
    run = tmp_path / "run"
    model = narrow_model_config(tmp_path / "model.json")
    argv = train_argv(
        "simple", model, tmp_path / "train.json", fake_mnist, run, "--epochs", "1", "--tensorboard"
    )
    monkeypatch.setattr(sys, "argv", argv)
    train_script.main()

    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"epoch/val_loss", "epoch/train_recon", "epoch/lr_g"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("step/loss")] == [25]
    assert {"samples", "reconstructions"} <= set(tags["images"])
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [1]
    assert json.loads((run / "train_config.json").read_text())["tensorboard"] is True


@pytest.mark.parametrize(
    ("n", "channels", "per_row"), [(10, 1, 4), (3, 1, 8), (16, 3, 4), (1, 1, 1)]
)
def test_tile_matches_torchvisions_make_grid_without_padding(n, channels, per_row):
    from torchvision.utils import make_grid

    from utils.views import tile

    images = torch.rand(n, channels, 5, 7, generator=torch.Generator().manual_seed(n))
    expected = make_grid(images, nrow=per_row, padding=0).permute(1, 2, 0)
    assert torch.equal(tile(images, per_row), expected)
