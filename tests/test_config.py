"""Configs: the shipped files load with the reference defaults; every bad file is one clear line.

Each bad config is a copy of a shipped JSON file with one thing changed, so the tests follow the
real files. A ConfigError must name the file, the dotted field and the value on a single line,
and train.py must turn it into exit code 2 with one `error:` line and no traceback.
"""

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from utils.config import (
    DiscriminatorConfig,
    EarlyStoppingConfig,
    LossConfig,
    MLPConfig,
    ModelConfig,
    OptimizerConfig,
    OptimizerParams,
    PIPSConfig,
    TrainConfig,
    load_model_config,
    load_train_config,
)
from utils.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
MODEL_SIMPLE = CONFIGS / "model_simple_config.json"
MODEL_COMPOSITE = CONFIGS / "model_composite_config.json"
MODEL_COMPOSITE_MNIST = CONFIGS / "model_composite_mnist_config.json"
TRAIN_SIMPLE = CONFIGS / "train_simple_config.json"
TRAIN_COMPOSITE = CONFIGS / "train_composite_config.json"

LOADERS = {"model": load_model_config, "train": load_train_config}


def write_variant(tmp_path: Path, shipped: Path, mutate: Callable[[dict], None]) -> Path:
    """A copy of a shipped config with `mutate` applied, written to tmp_path."""
    with open(shipped) as f:
        data = json.load(f)
    data = copy.deepcopy(data)
    mutate(data)
    path = tmp_path / f"variant_{shipped.name}"
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    return path


def config_error(loader: Callable, path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        loader(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


# ---------------------------------------------------------------------------------------------
# The shipped configs


def check_vae_defaults(cfg: ModelConfig) -> None:
    assert cfg.latent_dim == 2
    assert cfg.image_shape == [1, 28, 28]
    assert isinstance(cfg.encoder_config, MLPConfig)
    assert isinstance(cfg.decoder_config, MLPConfig)
    assert cfg.encoder_config.hidden_features == [784, 512, 256, 128]
    assert cfg.decoder_config.hidden_features == [128, 256, 512, 784]
    assert cfg.encoder_config.dropout == 0.1
    assert cfg.decoder_config.dropout == 0.1


def check_train_defaults(cfg: TrainConfig, scheme: str) -> None:
    assert cfg.num_epochs == 40
    assert cfg.seed == 42
    assert cfg.train_bs == 128
    assert cfg.val_bs == 128
    assert cfg.save_every == 5
    assert cfg.save_dir == f"checkpoints/{scheme}"
    assert Path(cfg.save_dir).parts[0] == "checkpoints"
    assert cfg.early_stopping is None
    assert cfg.tensorboard is False
    assert cfg.sync_batchnorm is False
    assert cfg.precision == "float32"
    assert cfg.linear_backend == "auto"
    assert isinstance(cfg.loss, LossConfig)
    assert cfg.loss.lambda_recon == 1.0
    assert cfg.loss.beta == 4.0
    assert cfg.loss.beta_warmup_epochs == 15.0
    assert isinstance(cfg.loss.beta_warmup_epochs, float)
    assert cfg.loss.free_bits == 0.2
    assert cfg.loss.lambda_pips == 1.0
    assert cfg.loss.lambda_disc == 0.5
    assert cfg.loss.disc_start_ratio == 0.05
    assert isinstance(cfg.optimizer, OptimizerConfig)
    g = cfg.optimizer.params_g
    assert isinstance(g, OptimizerParams)
    assert (g.lr, g.weight_decay, g.warmup_ratio) == (5e-4, 1e-5, 0.1)


def test_model_simple_config_has_reference_defaults():
    cfg = load_model_config(MODEL_SIMPLE)
    assert isinstance(cfg, ModelConfig)
    check_vae_defaults(cfg)
    assert cfg.discriminator_config is None
    assert cfg.pips_config is None


def test_model_composite_config_has_reference_defaults():
    cfg = load_model_config(MODEL_COMPOSITE)
    assert isinstance(cfg, ModelConfig)
    check_vae_defaults(cfg)
    d = cfg.discriminator_config
    assert isinstance(d, DiscriminatorConfig)
    assert d.channels == [32, 64, 128, 256]
    assert d.kernel == [4, 4, 3]
    assert d.stride == [2, 2, 1]
    assert d.padding == [1, 1, 1]
    assert cfg.pips_config == PIPSConfig(backbone="vgg16", input_size=224, weights="imagenet")


def test_model_composite_mnist_config_differs_only_in_its_backbone():
    cfg = load_model_config(MODEL_COMPOSITE_MNIST)
    reference = load_model_config(MODEL_COMPOSITE)
    assert cfg.pips_config == PIPSConfig(
        backbone="mnist_cnn",
        input_size=28,
        weights="mnist",
        weights_path="checkpoints/mnist_pips_cnn.pth",
    )
    cfg.pips_config = reference.pips_config
    assert cfg == reference


def test_unset_pips_fields_take_the_backbones_defaults():
    assert PIPSConfig() == PIPSConfig("vgg16", 224, "imagenet", None)
    assert PIPSConfig("mnist_cnn") == PIPSConfig(
        "mnist_cnn", 28, "mnist", "checkpoints/mnist_pips_cnn.pth"
    )


def test_train_simple_config_has_reference_defaults():
    cfg = load_train_config(TRAIN_SIMPLE)
    assert isinstance(cfg, TrainConfig)
    check_train_defaults(cfg, "simple")
    assert cfg.optimizer.params_d is None


def test_train_composite_config_has_reference_defaults():
    cfg = load_train_config(TRAIN_COMPOSITE)
    assert isinstance(cfg, TrainConfig)
    check_train_defaults(cfg, "composite")
    d = cfg.optimizer.params_d
    assert isinstance(d, OptimizerParams)
    assert d.lr == 5e-5
    assert d.warmup_ratio == 0.25
    assert d.weight_decay == 0.0


def test_early_stopping_block_loads(tmp_path):
    def add(d):
        d["early_stopping"] = {"patience": 3, "tol": 0.001}

    cfg = load_train_config(write_variant(tmp_path, TRAIN_SIMPLE, add))
    assert cfg.early_stopping == EarlyStoppingConfig(patience=3, tol=0.001)


def test_config_error_is_a_user_error():
    # run_cli catches UserError: a ConfigError must be one, or the CLI would show a traceback.
    assert issubclass(ConfigError, UserError)


# ---------------------------------------------------------------------------------------------
# Files that are not a config object


def test_malformed_json_names_line_and_column(tmp_path):
    text = MODEL_SIMPLE.read_text()
    anchor = '"dropout": 0.1}'
    assert anchor in text
    broken = text.replace(anchor, '"dropout": 0.1,}', 1)
    # The parser stops at the '}' after the trailing comma; compute its 1-based line and column.
    at = broken.index('"dropout": 0.1,}') + len('"dropout": 0.1,')
    line = broken.count("\n", 0, at) + 1
    column = at - broken.rfind("\n", 0, at)
    assert line == 4  # the encoder_config line of the shipped file
    path = tmp_path / "model.json"
    path.write_text(broken)
    message = config_error(load_model_config, path)
    assert f"not valid JSON at line {line} column {column}" in message


def test_truncated_file_is_invalid_json(tmp_path):
    text = TRAIN_COMPOSITE.read_text()
    path = tmp_path / "train.json"
    path.write_text(text[: len(text) // 2])
    message = config_error(load_train_config, path)
    assert "not valid JSON at line" in message
    assert " column " in message


def test_empty_file_is_invalid_json(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("")
    message = config_error(load_model_config, path)
    assert "not valid JSON at line 1 column 1" in message


def test_top_level_list_is_rejected(tmp_path):
    data = json.loads(MODEL_SIMPLE.read_text())
    path = tmp_path / "model.json"
    path.write_text(json.dumps([data]))
    message = config_error(load_model_config, path)
    assert "top level must be a JSON object" in message
    assert "got [{" in message


def test_top_level_string_is_rejected(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('"checkpoints/simple"')
    message = config_error(load_train_config, path)
    assert 'top level must be a JSON object {...}, got "checkpoints/simple"' in message


def test_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "nowhere" / "model.json"
    message = config_error(load_model_config, path)
    assert "cannot read config" in message
    assert "No such file or directory" in message


# ---------------------------------------------------------------------------------------------
# One bad field at a time: (loader, shipped file, mutation, dotted field, value as shown, problem)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def mutate(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return mutate


def _del(*keys):
    def mutate(d):
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return mutate


def _rename(*keys_and_new):
    *keys, new = keys_and_new

    def mutate(d):
        for k in keys[:-1]:
            d = d[k]
        d[new] = d.pop(keys[-1])

    return mutate


BAD_FIELDS = [
    # unknown keys, with the nearest known key suggested
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _rename("encoder_config", "dropout", "dropuot"),
        "encoder_config.dropuot",
        "0.1",
        "unknown key; did you mean 'dropout'?",
        id="unknown-dropuot",
    ),
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _rename("latent_dim", "laten_dim"),
        "laten_dim",
        "2",
        "unknown key; did you mean 'latent_dim'?",
        id="unknown-laten_dim",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _rename("loss", "free_bits", "free_bit"),
        "loss.free_bit",
        "0.2",
        "unknown key; did you mean 'free_bits'?",
        id="unknown-free_bit",
    ),
    pytest.param(
        "train",
        TRAIN_COMPOSITE,
        _rename("num_epochs", "num_epoch"),
        "num_epoch",
        "40",
        "unknown key; did you mean 'num_epochs'?",
        id="unknown-num_epoch",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE,
        _set("discriminator_config", "zzz", 7),
        "discriminator_config.zzz",
        "7",
        "unknown key; known keys: channels, kernel, stride, padding",
        id="unknown-no-near-key",
    ),
    # missing required fields (no value to show)
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _del("latent_dim"),
        "latent_dim",
        None,
        "is missing; add it (an integer)",
        id="missing-latent_dim",
    ),
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _del("decoder_config", "hidden_features"),
        "decoder_config.hidden_features",
        None,
        "is missing; add it",
        id="missing-decoder-widths",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _del("optimizer", "params_g", "lr"),
        "optimizer.params_g.lr",
        None,
        "is missing; add it (a number)",
        id="missing-lr",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _del("save_dir"),
        "save_dir",
        None,
        "is missing; add it (a string)",
        id="missing-save_dir",
    ),
    # wrong types
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _set("latent_dim", "2"),
        "latent_dim",
        '"2"',
        "must be an integer",
        id="type-string-for-int",
    ),
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _set("latent_dim", True),
        "latent_dim",
        "true",
        "must be an integer",
        id="type-bool-for-int",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("num_epochs", 40.0),
        "num_epochs",
        "40.0",
        "must be an integer",
        id="type-float-for-int",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("train_bs", "128"),
        "train_bs",
        '"128"',
        "must be an integer",
        id="type-string-batch",
    ),
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _set("encoder_config", "hidden_features", 784),
        "encoder_config.hidden_features",
        "784",
        "must be a list",
        id="type-list-expected",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE,
        _set("discriminator_config", "channels", [32, "64", 128, 256]),
        "discriminator_config.channels[1]",
        '"64"',
        "must be an integer",
        id="type-list-item",
    ),
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _set("encoder_config", None),
        "encoder_config",
        "null",
        "must be an object",
        id="type-object-expected",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("optimizer", "params_g", "lr", "5e-4"),
        "optimizer.params_g.lr",
        '"5e-4"',
        "must be a number",
        id="type-string-for-float",
    ),
    pytest.param(
        "train",
        TRAIN_COMPOSITE,
        _set("loss", "beta", False),
        "loss.beta",
        "false",
        "must be a number",
        id="type-bool-for-float",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("tensorboard", "yes"),
        "tensorboard",
        '"yes"',
        "must be true or false",
        id="type-string-for-bool",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("tensorboard", 1),
        "tensorboard",
        "1",
        "must be true or false",
        id="type-int-for-bool",
    ),
    pytest.param(
        "train",
        TRAIN_COMPOSITE,
        _set("sync_batchnorm", "true"),
        "sync_batchnorm",
        '"true"',
        "must be true or false",
        id="type-string-for-sync_batchnorm",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("precision", "fp16"),
        "precision",
        '"fp16"',
        'must be "float32" or "bfloat16" (autocast)',
        id="unknown-precision",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("linear_backend", "mkl"),
        "linear_backend",
        '"mkl"',
        'must be "auto", "aten" or "onednn"',
        id="unknown-linear_backend",
    ),
    # out of range
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _set("latent_dim", 0),
        "latent_dim",
        "0",
        "must be >= 1",
        id="range-latent_dim-0",
    ),
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _set("encoder_config", "hidden_features", [784, -512, 256, 128]),
        "encoder_config.hidden_features[1]",
        "-512",
        "must be a positive width",
        id="range-negative-width",
    ),
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _set("decoder_config", "hidden_features", [128, 256, 0, 784]),
        "decoder_config.hidden_features[2]",
        "0",
        "must be a positive width",
        id="range-zero-width",
    ),
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _set("encoder_config", "hidden_features", []),
        "encoder_config.hidden_features",
        "[]",
        "must list at least one width",
        id="range-no-widths",
    ),
    pytest.param(
        "model",
        MODEL_SIMPLE,
        _set("encoder_config", "dropout", 1.0),
        "encoder_config.dropout",
        "1.0",
        "must be in [0, 1)",
        id="range-dropout-1.0",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE,
        _set("decoder_config", "dropout", -0.1),
        "decoder_config.dropout",
        "-0.1",
        "must be in [0, 1)",
        id="range-dropout-negative",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE,
        _set("discriminator_config", "kernel", [4, 4]),
        "discriminator_config.kernel",
        "[4, 4]",
        "needs one entry per ConvLayer: len(channels) - 1 = 3 entries, got 2",
        id="range-kernel-length",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE,
        _set("discriminator_config", "stride", [2, 0, 1]),
        "discriminator_config.stride[1]",
        "0",
        "must be >= 1",
        id="range-stride-0",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE_MNIST,
        _set("pips_config", "backbone", "resnet"),
        "pips_config.backbone",
        '"resnet"',
        "must be one of vgg16, mnist_cnn",
        id="range-pips-backbone",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE_MNIST,
        _set("pips_config", "input_size", 224),
        "pips_config.input_size",
        "224",
        "must be 28 for mnist_cnn",
        id="range-mnist-cnn-input-size",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE_MNIST,
        _set("pips_config", "weights", "imagenet"),
        "pips_config.weights",
        '"imagenet"',
        "must be one of mnist for backbone mnist_cnn",
        id="range-mnist-cnn-weights",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE_MNIST,
        _set("image_shape", [3, 28, 28]),
        "image_shape",
        "[3, 28, 28]",
        "must have 1 channel for pips_config.backbone mnist_cnn",
        id="range-mnist-cnn-channels",
    ),
    pytest.param(
        "model",
        MODEL_COMPOSITE,
        _set("pips_config", "weights_path", "vgg.pth"),
        "pips_config.weights_path",
        '"vgg.pth"',
        "applies to backbone mnist_cnn only",
        id="range-vgg16-weights-path",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("optimizer", "params_g", "lr", -0.0005),
        "optimizer.params_g.lr",
        "-0.0005",
        "must be > 0",
        id="range-negative-lr",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("optimizer", "params_g", "warmup_ratio", 1.0),
        "optimizer.params_g.warmup_ratio",
        "1.0",
        "must be in [0, 1)",
        id="range-warmup-1.0",
    ),
    pytest.param(
        "train",
        TRAIN_COMPOSITE,
        _set("optimizer", "params_d", "warmup_ratio", 1.0),
        "optimizer.params_d.warmup_ratio",
        "1.0",
        "must be in [0, 1)",
        id="range-critic-warmup-1.0",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("num_epochs", 0),
        "num_epochs",
        "0",
        "must be >= 1",
        id="range-num_epochs-0",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("train_bs", 0),
        "train_bs",
        "0",
        "must be >= 1",
        id="range-train_bs-0",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("early_stopping", {"patience": 0, "tol": 0.001}),
        "early_stopping.patience",
        "0",
        "must be >= 1",
        id="range-patience-0",
    ),
    pytest.param(
        "train",
        TRAIN_COMPOSITE,
        _set("loss", "disc_start_ratio", 1.5),
        "loss.disc_start_ratio",
        "1.5",
        "must be in [0, 1]",
        id="range-disc_start_ratio",
    ),
    pytest.param(
        "train",
        TRAIN_SIMPLE,
        _set("save_dir", "  "),
        "save_dir",
        '"  "',
        "must name a folder",
        id="range-blank-save_dir",
    ),
]


@pytest.mark.parametrize("kind, shipped, mutate, field, shown, problem", BAD_FIELDS)
def test_bad_field_is_one_line_naming_file_field_and_value(
    tmp_path, kind, shipped, mutate, field, shown, problem
):
    path = write_variant(tmp_path, shipped, mutate)
    message = config_error(LOADERS[kind], path)
    located = f"{path}: field '{field}'"
    if shown is None:
        assert message.startswith(f"{located} {problem}"), message
    else:
        assert message.startswith(f"{located} = {shown} {problem}"), message


def test_long_values_are_shortened_to_keep_one_short_line(tmp_path):
    path = write_variant(tmp_path, TRAIN_SIMPLE, _set("save_dir", ["x" * 200]))
    message = config_error(load_train_config, path)
    assert f"{path}: field 'save_dir' = [\"xxx" in message
    assert "..." in message
    assert "x" * 100 not in message
    assert message.endswith("must be a string")


# ---------------------------------------------------------------------------------------------
# The CLI boundary: train.py fails at config load, before data, with exit 2 and one line


@pytest.fixture(scope="module")
def train_cli_runs(tmp_path_factory):
    """Run the three failing train.py commands side by side (each costs ~3 s of start-up)."""
    root = tmp_path_factory.mktemp("train_cli")
    bad_model = write_variant(root, MODEL_SIMPLE, _set("encoder_config", "dropout", 1.0))
    bad_train = write_variant(root, TRAIN_SIMPLE, _set("optimizer", "params_g", "lr", -0.0005))
    cases = {
        "bad_model": (
            "simple",
            bad_model,
            TRAIN_SIMPLE,
            f"error: {bad_model}: field 'encoder_config.dropout' = 1.0 must be in [0, 1)",
        ),
        "bad_train": (
            "simple",
            MODEL_SIMPLE,
            bad_train,
            f"error: {bad_train}: field 'optimizer.params_g.lr' = -0.0005 must be > 0",
        ),
        "composite_needs_critic": (
            "composite",
            MODEL_SIMPLE,
            TRAIN_COMPOSITE,
            "error: configs/model_simple_config.json: the composite scheme needs "
            "'discriminator_config'",
        ),
    }
    procs = {}
    for name, (scheme, model_cfg, train_cfg, _) in cases.items():
        save_dir = root / f"run_{name}"
        argv = [
            sys.executable,
            "train.py",
            "--scheme",
            scheme,
            "--model_config",
            str(model_cfg.relative_to(REPO) if model_cfg.is_relative_to(REPO) else model_cfg),
            "--train_config",
            str(train_cfg.relative_to(REPO) if train_cfg.is_relative_to(REPO) else train_cfg),
            "--save_dir",
            str(save_dir),
            "--data_root",
            str(root / "no_data"),
            "--device",
            "cpu",
        ]
        proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs[name] = (proc, save_dir)
    results = {}
    for name, (proc, save_dir) in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err, save_dir, cases[name][3])
    assert not (root / "no_data").exists()
    return results


@pytest.mark.parametrize("case", ["bad_model", "bad_train", "composite_needs_critic"])
def test_train_cli_bad_config_exits_2_with_one_line(train_cli_runs, case):
    code, out, err, save_dir, expected = train_cli_runs[case]
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert lines[0].startswith(expected), lines[0]
    assert out == ""
    assert not save_dir.exists(), f"{save_dir} was created before the config was checked"


def test_a_binary_file_given_as_config_is_one_line(tmp_path):
    path = tmp_path / "model.json"
    path.write_bytes(b"\x80\x03binary checkpoint bytes \xff")
    with pytest.raises(ConfigError, match="not a JSON text file") as err:
        load_model_config(path)
    assert "\n" not in str(err.value)


def test_an_unknown_key_with_a_newline_stays_on_one_line(tmp_path):
    path = tmp_path / "model.json"
    data = json.loads((REPO / "configs/model_simple_config.json").read_text())
    data["bad\nkey"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_model_config(path)
    assert "\n" not in str(err.value)


def test_a_list_of_the_wrong_items_is_named_in_plain_words(tmp_path):
    path = tmp_path / "model.json"
    data = json.loads((REPO / "configs/model_simple_config.json").read_text())
    data["encoder_config"]["hidden_features"] = 784
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="must be a list of integers"):
        load_model_config(path)
