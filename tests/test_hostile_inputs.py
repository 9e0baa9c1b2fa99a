"""Hostile inputs to infer.py, evaluate.py and the MNIST reader (issue 18): each is one `error: `
line on stderr naming the file, flag or value and the fix, exit code 2, no traceback, and
nothing already saved is overwritten.

The scripts run on a narrow untrained VAE, the synthetic MNIST of conftest.py and an untrained
(0-epoch) evaluation CNN, so that no test trains anything: most in this process, as their
`__main__` runs them (tests/helpers.run_main), a few as real subprocesses.
"""

import json
from pathlib import Path

import pytest
import torch

from model.vae import VAE
from tests.helpers import (
    REPO,
    assert_png,
    fake_digits,
    make_mnist_root,
    run_main,
    run_script,
    write_idx,
)
from utils.checkpoint import save_checkpoint
from utils.config import load_model_config
from utils.dataset import load_mnist
from utils.errors import ConfigError, DataError
from utils.networks import make_network


def narrow_config(path: Path, **changes) -> Path:
    """The simple model config with narrow hidden layers; `changes` set model_config fields
    (encoder_hidden / decoder_hidden replace the hidden widths)."""
    spec = json.loads((REPO / "configs/model_simple_config.json").read_text())
    block = spec["model_config"]
    block["encoder"]["hidden_features"] = changes.pop("encoder_hidden", [64, 32])
    block["decoder"]["hidden_features"] = changes.pop("decoder_hidden", [32, 64])
    block.update(changes)
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, fake_mnist) -> dict[str, Path]:
    """A model config, an untrained checkpoint of it, and a 0-epoch evaluation CNN."""
    root = tmp_path_factory.mktemp("hostile")
    config = narrow_config(root / "model_config.json")
    torch.manual_seed(0)
    ckpt = root / "final_model.pth"
    save_checkpoint(
        {"model_state_dict": VAE(load_model_config(config).model_config).state_dict()}, ckpt
    )
    split = load_mnist(fake_mnist, "test", download=False)
    make_network("eval", root / "eval_net.pth", split, split, epochs=0)
    return {"config": config, "ckpt": ckpt, "eval_net": root / "eval_net.pth", "data": fake_mnist}


def infer_args(files: dict[str, Path], save_path: Path | str, *flags: str) -> list[str]:
    return [
        "infer.py",
        "--model_config",
        str(files["config"]),
        "--ckpt_path",
        str(files["ckpt"]),
        "--data_root",
        str(files["data"]),
        "--save_path",
        str(save_path),
        "--device",
        "cpu",
        *flags,
    ]


def evaluate_args(files: dict[str, Path], out: Path | str, *flags: str) -> list[str]:
    return [
        "evaluate.py",
        "--model_config",
        str(files["config"]),
        "--ckpt_path",
        str(files["ckpt"]),
        "--data_root",
        str(files["data"]),
        "--eval_net",
        str(files["eval_net"]),
        "--num_samples",
        "100",
        "--device",
        "cpu",
        "--out",
        str(out),
        *flags,
    ]


def one_line(result, *parts: str) -> str:
    """Assert exit code 2 and exactly one `error: ` line on stderr holding each of `parts`."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# 1. infer.py --save_path


def test_a_save_path_under_a_file_is_one_line_and_the_file_stays(tmp_path, files):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    png = blocker / "grid.png"
    result = run_main(*infer_args(files, png))
    line = one_line(result, str(png), "choose another --save_path")
    assert line == (
        f"error: {png}: cannot write ({blocker} is a file, not a folder); "
        "choose another --save_path"
    )
    assert blocker.read_text() == "keep me"


def test_an_unknown_extension_is_refused_before_anything_is_read(tmp_path, files):
    """The suffix is checked with the flags: a missing checkpoint is not even looked at."""
    path = tmp_path / "grid.pngg"
    argv = infer_args(files, path)
    argv[argv.index(str(files["ckpt"]))] = str(tmp_path / "missing.pth")
    line = one_line(run_main(*argv))
    assert line == (
        f"error: --save_path {path}: cannot write '.pngg' figures; end it in .png, .pdf or .svg"
    )
    assert not path.exists()


def test_an_unwritable_save_path_is_one_line(files):
    """As root no folder can be made unwritable with chmod; /proc refuses new files to anyone,
    and so stands in for a read-only folder (the OSError path)."""
    result = run_main(*infer_args(files, "/proc/hostile_grid.png"))
    assert one_line(result).startswith("error: /proc/hostile_grid.png: cannot write (")
    assert result.stderr.rstrip().endswith("); choose another --save_path")


def test_a_save_path_without_suffix_writes_and_reports_a_png(tmp_path, files):
    result = run_script(*infer_args(files, tmp_path / "grid", "--grid_size", "3"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"grid of 3x3 -> {tmp_path / 'grid.png'}"
    assert_png(tmp_path / "grid.png")
    assert not (tmp_path / "grid").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temporary file left


def test_a_pdf_save_path_writes_a_pdf(tmp_path, files):
    result = run_main(*infer_args(files, tmp_path / "grid.PDF", "--grid_size", "3"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "grid.PDF").read_bytes()[:5] == b"%PDF-"


# 2. infer.py --mode curves on a metrics.csv that is not UTF-8


def test_curves_of_a_non_utf8_metrics_csv_is_one_line(tmp_path):
    (tmp_path / "metrics.csv").write_bytes(b"epoch,step,train_loss\n1,4,9\xff\xfe0\n")
    result = run_main(
        "infer.py",
        "--mode",
        "curves",
        "--run_dir",
        str(tmp_path),
        "--save_path",
        str(tmp_path / "curves.png"),
    )
    line = one_line(result)
    assert line == (
        f"error: {tmp_path / 'metrics.csv'}: not UTF-8 text (byte 0xff at offset 27); "
        "pass a metrics.csv written by train.py"
    )


def test_curves_of_a_row_longer_than_its_header_is_one_line(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step\n1,4\n2,8,5\n")
    result = run_main(
        "infer.py",
        "--mode",
        "curves",
        "--run_dir",
        str(tmp_path),
        "--save_path",
        str(tmp_path / "curves.png"),
    )
    one_line(result, f"{tmp_path / 'metrics.csv'}: line 3 has more cells than the header")


# 3. Weights that are not finite


@pytest.fixture(scope="module")
def nan_ckpt(files, tmp_path_factory) -> tuple[Path, str]:
    state = torch.load(files["ckpt"], weights_only=True)["model_state_dict"]
    names = [n for n, t in state.items() if t.is_floating_point()]
    first, later = names[3], names[-1]
    state[first].view(-1)[1] = float("nan")
    state[later].view(-1)[0] = float("inf")
    path = tmp_path_factory.mktemp("nan") / "diverged.pth"
    save_checkpoint({"model_state_dict": state}, path)
    return path, first


def expected_nan_line(path: Path, name: str) -> str:
    return (
        f"error: {path}: tensor '{name}' holds NaN or infinite values: the weights are not "
        "finite (training diverged); pass an earlier checkpoint"
    )


def test_evaluate_refuses_nan_weights(tmp_path, files, nan_ckpt):
    path, name = nan_ckpt
    argv = evaluate_args(files, tmp_path / "eval.json")
    argv[argv.index(str(files["ckpt"]))] = str(path)
    assert one_line(run_main(*argv)) == expected_nan_line(path, name)
    assert not (tmp_path / "eval.json").exists()


def test_infer_refuses_nan_weights_instead_of_drawing_a_blank(tmp_path, files, nan_ckpt):
    path, name = nan_ckpt
    argv = infer_args(files, tmp_path / "grid.png")
    argv[argv.index(str(files["ckpt"]))] = str(path)
    assert one_line(run_main(*argv)) == expected_nan_line(path, name)
    assert not (tmp_path / "grid.png").exists()


# 4. Sizes nothing bounded


def test_infer_grid_size_is_bounded(tmp_path, files):
    line = one_line(run_main(*infer_args(files, tmp_path / "g.png", "--grid_size", "101")))
    assert line == "error: --grid_size 101: must be at most 100; lower it, e.g. 8"


@pytest.mark.parametrize(
    ("flag", "value", "bound"),
    [("--num_samples", str(10**12), "100000"), ("--grid_size", "10000", "100")],
)
def test_evaluate_sizes_are_bounded(tmp_path, files, flag, value, bound):
    line = one_line(run_main(*evaluate_args(files, tmp_path / "e.json", flag, value)))
    assert line == f"error: {flag} {value}: must be at most {bound}; lower it"
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"latent_features": 10**12}, "model_config.latent_features"),
        ({"encoder_hidden": [64, 10**9]}, "model_config.encoder.hidden_features[1]"),
    ],
)
@pytest.mark.parametrize("script", ["infer.py", "evaluate.py"])
def test_a_model_too_big_for_memory_is_refused_before_it_is_built(
    tmp_path, files, changes, field, script
):
    config = narrow_config(tmp_path / "huge.json", **changes)
    argv = (infer_args if script == "infer.py" else evaluate_args)(files, tmp_path / "out.png")
    argv[argv.index(str(files["config"]))] = str(config)
    line = one_line(run_main(*argv), f"error: {config}: the model has ", f"lower {field}")
    assert "GiB of float32 weights" in line and "GiB of memory" in line


def test_check_fits_passes_the_shipped_configs_and_names_the_widest_field(tmp_path):
    from utils.trained_vae import check_fits

    for name in ("model_simple_config.json", "model_composite_config.json"):
        cfg = load_model_config(REPO / "configs" / name).model_config
        assert check_fits(cfg, name, copies=4) < 2**30
    huge = load_model_config(narrow_config(tmp_path / "h.json", decoder_hidden=[32, 10**10]))
    with pytest.raises(ConfigError, match=r"lower model_config\.decoder\.hidden_features\[1\]"):
        check_fits(huge.model_config, "h.json", copies=4)


# 5. MNIST files


def mnist_with_test_split(root: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    make_mnist_root(root, n_train=16, n_test=16)
    raw = root / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", images)
    write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    return raw


def bad_labels() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fake_digits(16, 3)
    labels[5] = 10
    return images, labels


@pytest.mark.parametrize(
    ("split", "file", "problem"),
    [
        (
            lambda: (torch.zeros(0, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8)),
            "t10k-images-idx3-ubyte",
            "holds no images",
        ),
        (bad_labels, "t10k-labels-idx1-ubyte", "label 10 at index 5 is not a digit 0-9"),
    ],
)
def test_an_idx_file_with_no_images_or_a_label_past_9_is_one_line(
    tmp_path, files, split, file, problem
):
    raw = mnist_with_test_split(tmp_path, *split())
    argv = evaluate_args(files, tmp_path / "e.json")
    argv[argv.index(str(files["data"]))] = str(tmp_path)
    line = one_line(run_main(*argv))
    assert line == f"error: {raw / file}: {problem}; replace it with the original MNIST file"


def test_an_unreadable_idx_file_is_one_data_error(tmp_path, monkeypatch):
    """As root no file can be made unreadable with chmod, so open() is made to refuse."""
    make_mnist_root(tmp_path, n_train=16, n_test=16)
    real_open = open

    def refusing_open(file, *args, **kwargs):
        if str(file).endswith("t10k-labels-idx1-ubyte"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    monkeypatch.setattr(Path, "read_bytes", lambda self: refusing_open(self, "rb").read())
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, "test", download=False)
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    assert str(err.value) == (
        f"{labels}: cannot read (Permission denied); let this user read it, or pass "
        "--data_root DIR whose MNIST/raw/ holds readable copies"
    )


# 6, 7. evaluate.py --out


def test_out_on_the_graded_checkpoint_is_refused_before_grading(tmp_path, files):
    ckpt = tmp_path / "final_model.pth"
    ckpt.write_bytes(files["ckpt"].read_bytes())
    argv = evaluate_args(files, ckpt)
    argv[argv.index(str(files["ckpt"]))] = str(ckpt)
    line = one_line(run_main(*argv))
    assert line == (
        f"error: --out {ckpt}: exists and is not a results file evaluate.py wrote; "
        "choose another --out (nothing was graded)"
    )
    assert ckpt.read_bytes() == files["ckpt"].read_bytes()


def test_out_on_another_json_file_is_refused_but_a_results_file_is_rewritten(tmp_path, files):
    other = tmp_path / "model_config.json"
    other.write_text(files["config"].read_text())
    one_line(run_main(*evaluate_args(files, other)), f"--out {other}: exists and is not")
    assert other.read_text() == files["config"].read_text()

    out = tmp_path / "eval.json"
    for _ in range(2):  # the second run replaces the first run's results
        result = run_main(*evaluate_args(files, out))
        assert result.returncode == 0, result.stderr
        assert json.loads(out.read_text())["num_samples"] == 100


def test_out_on_the_eval_net_to_be_made_is_refused(tmp_path, files):
    net = tmp_path / "eval_net.pth"
    argv = evaluate_args(files, net)
    argv[argv.index(str(files["eval_net"]))] = str(net)
    line = one_line(run_main(*argv))
    assert line == f"error: --out {net}: is the --eval_net file; choose another --out"
    assert not net.exists()


def test_out_under_a_file_is_refused_before_grading_and_names_out(tmp_path, files):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    out = blocker / "eval.json"
    line = one_line(run_main(*evaluate_args(files, out)))
    assert line == (
        f"error: {out}: cannot write ({blocker} is a file, not a folder); choose another --out"
    )
    assert "--save_dir" not in line


def test_a_failed_results_write_names_out(files):
    """/proc stands in for a folder that refuses new files (as root, chmod cannot make one)."""
    result = run_script(*evaluate_args(files, "/proc/hostile_eval.json"))
    line = one_line(result, "error: /proc/hostile_eval.json: cannot write (")
    assert line.endswith("); choose another --out") and "--save_dir" not in line


def test_train_refuses_a_model_too_big_for_memory_before_reading_data(tmp_path, fake_mnist):
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        "--scheme",
        "simple",
        "--model_config",
        "configs/model_simple_config.json",
        "--train_config",
        "configs/train_simple_config.json",
        "--data_root",
        str(tmp_path / "none"),
        "--save_dir",
        str(run),
        "--set",
        "model_config.latent_features=1000000000000",
    )
    assert result.returncode == 2
    line = result.stderr
    assert line.startswith("error: configs/model_simple_config.json: the model has "), line
    assert "(4 copies) but this machine has" in line
    assert line.endswith("; lower model_config.latent_features (1,000,000,000,000)\n"), line
    assert line.count("\n") == 1 and not run.exists()


def test_traverse_of_more_latent_dimensions_than_rows_it_can_draw_is_one_line(tmp_path, files):
    wide = narrow_config(tmp_path / "wide.json", latent_features=101)
    ckpt = tmp_path / "wide.pth"
    save_checkpoint(
        {"model_state_dict": VAE(load_model_config(wide).model_config).state_dict()}, ckpt
    )
    result = run_main(
        "infer.py",
        "--mode",
        "traverse",
        "--model_config",
        str(wide),
        "--ckpt_path",
        str(ckpt),
        "--save_path",
        str(tmp_path / "t.png"),
        "--device",
        "cpu",
    )
    assert one_line(result) == (
        f"error: {wide}: the model has 101 latent dimensions and traverse draws one row each, at "
        "most 100; draw it with --mode grid or samples"
    )
    assert not (tmp_path / "t.png").exists()
