"""train.py's --set KEY=VALUE: parsed, routed to the training or the model config, checked as the
file is, and recorded in the run folder; and the one line for a run shorter than beta's warm-up."""

import json
import os

import pytest

from tests.helpers import REPO, run_main, run_script
from train import short_warmup
from utils.config import load_model_config, load_train_config, parse_settings
from utils.errors import ConfigError

SIMPLE_TRAIN = REPO / "configs/train_simple_config.json"
COMPOSITE_TRAIN = REPO / "configs/train_composite_config.json"
COMPOSITE_MODEL = REPO / "configs/model_composite_config.json"


def test_settings_are_routed_by_their_first_key_and_read_as_json():
    model, train = parse_settings(
        [
            "loss.params.beta=2",
            "model_config.latent_features=16",
            'save_dir="runs/b2"',
            "scheduler.params=null",
            'pips_config.backbone="mnist_cnn"',
        ],
        "simple",
    )
    assert model == {"model_config.latent_features": 16, "pips_config.backbone": "mnist_cnn"}
    assert train == {"loss.params.beta": 2, "save_dir": "runs/b2", "scheduler.params": None}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("loss.params.beta", "--set loss.params.beta: write KEY=VALUE with KEY a dotted field"),
        ("=2", "--set =2: write KEY=VALUE"),
        ("loss..beta=2", "--set loss..beta=2: write KEY=VALUE"),
        (
            "save_dir=runs/b2",
            "--set save_dir=runs/b2: the value 'runs/b2' is not JSON; write "
            "strings in double quotes, e.g. --set 'save_dir=\"runs/b2\"'",
        ),
        ("betta=2", "--set betta=2: 'betta' is neither a training config field (seed, "),
    ],
)
def test_a_malformed_setting_is_one_line_saying_how_to_write_it(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_settings([text], "simple")
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_settings_change_the_file_before_its_checks():
    cfg = load_train_config(
        SIMPLE_TRAIN, "simple", {"loss.params.beta": 2, "scheduler.params": None, "seed": 7}
    )
    assert (cfg.loss.params.beta, cfg.scheduler.params, cfg.seed) == (2.0, None, 7)
    assert (
        cfg.loss.params.free_bits == load_train_config(SIMPLE_TRAIN, "simple").loss.params.free_bits
    )
    # A block the file leaves out is created (the default model files have no pips_config).
    model = load_model_config(COMPOSITE_MODEL, {"pips_config.backbone": "mnist_cnn"})
    assert (model.pips_config.backbone, model.pips_config.input_size) == ("mnist_cnn", 28)
    composite = load_train_config(COMPOSITE_TRAIN, "composite", {"optimizer.params_d.lr": 1e-5})
    assert composite.optimizer.params_d.lr == 1e-5


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"loss.params.beta": -1},
            "--set loss.params.beta=-1: field 'loss.params.beta' = -1.0 must be >= 0",
        ),
        ({"seed": -5}, "--set seed=-5: field 'seed' = -5 must be in [0, 2**32)"),
        (
            {"data.train_bs": "64"},
            '--set data.train_bs="64": field \'data.train_bs\' = "64" must be an integer',
        ),
        (
            {"loss.params.betta": 2},
            "--set loss.params.betta=2: field 'loss.params.betta' = 2 "
            "unknown key; did you mean 'beta'?",
        ),
        (
            {"seed.x": 1},
            "--set seed.x=...: field 'seed' is 42, not an object, so it has no field 'x'",
        ),
    ],
)
def test_a_bad_setting_fails_its_check_naming_the_setting(settings, message):
    with pytest.raises(ConfigError) as caught:
        load_train_config(SIMPLE_TRAIN, "simple", settings)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_file_problem_is_still_named_by_the_file(tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps({**json.loads(SIMPLE_TRAIN.read_text()), "num_epochs": 0}))
    with pytest.raises(ConfigError) as caught:
        load_train_config(bad, "simple", {"loss.params.beta": 2})
    assert str(caught.value).startswith(f"{bad}: field 'num_epochs' = 0 must be >= 1")


@pytest.mark.parametrize(
    ("epochs", "line"),
    [
        (
            10,
            "note: num_epochs 10 < loss.params.warmup_epochs 15, so beta ends at 2.67 of 4 "
            "(the warm-up counts epochs; --epochs does not shorten it)",
        ),
        (15, None),
        (40, None),
    ],
)
def test_a_run_shorter_than_beta_warmup_says_so(epochs, line):
    cfg = load_train_config(SIMPLE_TRAIN, "simple", {"num_epochs": epochs})
    assert short_warmup(cfg) == line


def test_train_records_settings_in_the_run_folder_and_refuses_a_bad_one(tmp_path, fake_mnist):
    common = [
        "train.py",
        "--scheme",
        "simple",
        "--model_config",
        "configs/model_simple_config.json",
        "--train_config",
        "configs/train_simple_config.json",
        "--data_root",
        str(fake_mnist),
        "--subset",
        "128",
        "--device",
        "cpu",
        "--set",
        "num_epochs=1",
        "--set",
        "model_config.latent_features=3",
    ]
    run = tmp_path / "run"
    done = run_main(*common, "--set", f'save_dir="{run}"', "--set", "loss.params.beta=2")
    assert done.returncode == 0, done.stderr
    saved_train = json.loads((run / "train_config.json").read_text())
    saved_model = json.loads((run / "model_config.json").read_text())
    assert (saved_train["num_epochs"], saved_train["loss"]["params"]["beta"]) == (1, 2.0)
    assert saved_train["save_dir"] == str(run)
    assert saved_model["model_config"]["latent_features"] == 3
    assert "note: num_epochs 1 < loss.params.warmup_epochs 15, so beta ends at 0.133 of 2" in (
        done.stdout
    )

    refused = tmp_path / "refused"
    failed = run_main(*common, "--set", f'save_dir="{refused}"', "--set", "loss.params.beta=-1")
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        "error: --set loss.params.beta=-1: field 'loss.params.beta' = -1.0 must be >= 0"
    ], failed.stderr
    assert not refused.exists()


def test_a_key_given_twice_is_refused_not_silently_the_last(tmp_path):
    path = tmp_path / "train.json"
    text = SIMPLE_TRAIN.read_text()
    path.write_text(text.replace('"seed": 42,', '"seed": 42, "seed": 7,', 1))
    assert '"seed": 7' in path.read_text()
    with pytest.raises(ConfigError) as caught:
        load_train_config(path, "simple")
    assert str(caught.value) == f'{path}: key "seed" appears twice in one object; keep one'


def test_a_fifo_as_config_is_refused_at_once_not_waited_on(tmp_path, fake_mnist):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    result = run_script(
        "train.py",
        "--scheme",
        "simple",
        "--model_config",
        str(fifo),
        "--train_config",
        "configs/train_simple_config.json",
        "--data_root",
        str(fake_mnist),
        "--save_dir",
        str(tmp_path / "run"),
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {fifo}: is not a regular file; point at a .json config\n"
