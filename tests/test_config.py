"""Configs: the shipped files load with the reference defaults; every bad file is one clear line.

The shipped configs are the reference implementation's four files (tests/fixtures/
reference_configs) with this repo's save_dir, plus the MNIST-backbone model file. Each bad config
is a copy of a shipped JSON file with one thing changed, so the tests follow the real files. A
ConfigError must name the file, the dotted field and the value on a single line, and train.py
must turn it into exit code 2 with one `error:` line and no traceback. Files in round 1's layout
(tests/fixtures/round1_runs) are read through utils/legacy.py into the current layout.
"""

import copy
import dataclasses
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import REPO, run_main, run_script, train_argv
from training_schemes import check_scheme
from utils.config import (
    AdamParams,
    CompositeLossParams,
    CompositeOptimizerConfig,
    CompositeSchedulerConfig,
    CompositeTrainConfig,
    CriticAdamParams,
    DataConfig,
    DiscriminatorConfig,
    EarlyStoppingConfig,
    LossParams,
    MLPConfig,
    ModelConfig,
    OptimizerConfig,
    PIPSConfig,
    ScheduleParams,
    SchedulerConfig,
    TrainConfig,
    VAEConfig,
    config_from_dict,
    load_model_config,
    load_train_config,
    with_overrides,
)
from utils.errors import ConfigError, UserError
from utils.legacy import upgrade_model_config, upgrade_train_config

CONFIGS = REPO / "configs"
MODEL_SIMPLE = CONFIGS / "model_simple_config.json"
MODEL_COMPOSITE = CONFIGS / "model_composite_config.json"
MODEL_COMPOSITE_MNIST = CONFIGS / "model_composite_mnist_config.json"
TRAIN_SIMPLE = CONFIGS / "train_simple_config.json"
TRAIN_COMPOSITE = CONFIGS / "train_composite_config.json"
REFERENCE = REPO / "tests" / "fixtures" / "reference_configs"
ROUND1 = REPO / "tests" / "fixtures" / "round1_runs"

# "simple" and "composite" read a training file in that scheme's layout.
LOADERS = {
    "model": load_model_config,
    "simple": functools.partial(load_train_config, scheme="simple"),
    "composite": functools.partial(load_train_config, scheme="composite"),
}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def edit(data: dict, spec: str) -> str:
    """Change a config dict as `spec` says; returns the dotted field the change names. `a.b=JSON`
    sets a field (`a.b[1]=JSON` one list item), `a.b>c` renames b to c, `del a.b` removes b;
    changes joined by " & " are made in turn, and the last names the field."""
    for change in spec.split(" & "):
        if change.startswith("del "):
            op, path, value = "del", change[4:], None
        elif "=" in change:
            op, (path, value) = "set", change.split("=", 1)
        else:
            op, (path, value) = "rename", change.split(">")
        keys = [int(k[1:-1]) if k[0] == "[" else k for k in re.findall(r"\[\d+\]|[^.\[]+", path)]
        block = data
        for key in keys[:-1]:
            block = block[key]
        if op == "del":
            del block[keys[-1]]
        elif op == "set":
            block[keys[-1]] = json.loads(value)
        else:
            block[value] = block.pop(keys[-1])
            path = path[: len(path) - len(keys[-1])] + value
    return path


def variant(tmp_path: Path, shipped: Path, spec: str) -> Path:
    """A copy of a shipped config changed as `spec` says (see edit), written to tmp_path."""
    data = read(shipped)
    edit(data, spec)
    path = tmp_path / f"variant_{shipped.name}"
    path.write_text(json.dumps(data, indent=2))
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

VAE_DEFAULTS = VAEConfig(
    img_size=[1, 28, 28],
    latent_features=2,
    encoder=MLPConfig(hidden_features=[784, 512, 256, 128], dropout=0.1),
    decoder=MLPConfig(hidden_features=[128, 256, 512, 784], dropout=0.1),
)
CRITIC_DEFAULTS = DiscriminatorConfig(
    im_channels=1,
    hidden_channels=[32, 64, 128, 256],
    kernel_size=[4, 4, 3],
    stride=[2, 2, 1],
    padding=[1, 1, 1],
)


def check_vae_defaults(cfg: ModelConfig) -> None:
    vae = cfg.model_config
    assert isinstance(vae, VAEConfig)
    assert vae.latent_features == 2
    assert vae.img_size == [1, 28, 28]
    assert isinstance(vae.encoder, MLPConfig)
    assert isinstance(vae.decoder, MLPConfig)
    assert vae.encoder.hidden_features == [784, 512, 256, 128]
    assert vae.decoder.hidden_features == [128, 256, 512, 784]
    assert vae.encoder.dropout == 0.1
    assert vae.decoder.dropout == 0.1
    assert vae == VAE_DEFAULTS


def check_critic_defaults(cfg: ModelConfig) -> None:
    d = cfg.discriminator_config
    assert isinstance(d, DiscriminatorConfig)
    assert d.im_channels == 1
    assert d.hidden_channels == [32, 64, 128, 256]
    assert d.kernel_size == [4, 4, 3]
    assert d.stride == [2, 2, 1]
    assert d.padding == [1, 1, 1]


def check_train_defaults(cfg: TrainConfig, scheme: str) -> None:
    assert cfg.num_epochs == 40
    assert cfg.seed == 42
    assert cfg.save_dir == f"checkpoints/{scheme}"
    assert cfg.early_stopping is None
    assert cfg.data == DataConfig(train_bs=128, val_bs=128)
    assert cfg.data.train_bs == 128
    assert cfg.data.val_bs == 128
    # This repo's optional keys, absent from the shipped files, at their defaults.
    assert cfg.save_every == 5
    assert cfg.keep_checkpoints == 3
    assert cfg.tensorboard is False
    assert cfg.sync_batchnorm is False
    assert cfg.precision == "float32"
    assert cfg.linear_backend == "auto"
    p = cfg.loss.params
    assert isinstance(p, LossParams)
    assert p.beta == 4.0
    assert p.warmup_epochs == 15.0
    assert isinstance(p.warmup_epochs, float)  # the file says 15
    assert p.free_bits == 0.2
    assert p.lambda_recon == 1.0
    g = cfg.vae_optimizer
    assert isinstance(g, AdamParams)
    assert (g.lr, g.weight_decay) == (5e-4, 1e-5)
    assert cfg.vae_schedule == ScheduleParams(warmup_ratio=0.1)


def test_model_simple_config_has_reference_defaults():
    cfg = load_model_config(MODEL_SIMPLE)
    assert isinstance(cfg, ModelConfig)
    check_vae_defaults(cfg)
    assert cfg.discriminator_config is None
    assert cfg.pips_config is None


def test_model_composite_config_has_reference_defaults_and_no_pips_config():
    cfg = load_model_config(MODEL_COMPOSITE)
    assert isinstance(cfg, ModelConfig)
    check_vae_defaults(cfg)
    check_critic_defaults(cfg)
    assert cfg.pips_config is None


def test_composite_scheme_without_pips_config_uses_imagenet_vgg16():
    cfg = check_scheme("composite", load_model_config(MODEL_COMPOSITE), str(MODEL_COMPOSITE))
    assert cfg.pips_config == PIPSConfig(
        backbone="vgg16", input_size=224, weights="imagenet", weights_path=None
    )
    assert check_scheme("simple", load_model_config(MODEL_SIMPLE), "").pips_config is None


def test_composite_scheme_keeps_a_given_pips_config():
    cfg = load_model_config(MODEL_COMPOSITE_MNIST)
    assert check_scheme("composite", cfg, str(MODEL_COMPOSITE_MNIST)) == cfg


def test_model_composite_mnist_config_differs_only_in_its_pips_config():
    cfg = load_model_config(MODEL_COMPOSITE_MNIST)
    reference = load_model_config(MODEL_COMPOSITE)
    assert cfg.pips_config == PIPSConfig(
        backbone="mnist_cnn",
        input_size=28,
        weights="mnist",
        weights_path="checkpoints/mnist_pips_cnn.pth",
    )
    assert dataclasses.replace(cfg, pips_config=None) == reference
    data = read(MODEL_COMPOSITE_MNIST)
    del data["pips_config"]
    assert data == read(MODEL_COMPOSITE)


def test_unset_pips_fields_take_the_backbones_defaults():
    assert PIPSConfig() == PIPSConfig("vgg16", 224, "imagenet", None)
    assert PIPSConfig("mnist_cnn") == PIPSConfig(
        "mnist_cnn", 28, "mnist", "checkpoints/mnist_pips_cnn.pth"
    )


def test_train_simple_config_has_reference_defaults():
    cfg = load_train_config(TRAIN_SIMPLE, "simple")
    assert type(cfg) is TrainConfig
    check_train_defaults(cfg, "simple")
    assert type(cfg.loss.params) is LossParams
    assert cfg.optimizer == OptimizerConfig(params=AdamParams(lr=5e-4, weight_decay=1e-5))
    assert cfg.vae_optimizer is cfg.optimizer.params
    assert cfg.scheduler == SchedulerConfig(params=ScheduleParams(warmup_ratio=0.1))
    assert cfg.vae_schedule is cfg.scheduler.params


def test_train_composite_config_has_reference_defaults():
    cfg = load_train_config(TRAIN_COMPOSITE, "composite")
    assert type(cfg) is CompositeTrainConfig
    check_train_defaults(cfg, "composite")
    p = cfg.loss.params
    assert isinstance(p, CompositeLossParams)
    assert (p.lambda_pips, p.lambda_disc) == (1.0, 0.5)
    assert isinstance(cfg.optimizer, CompositeOptimizerConfig)
    assert cfg.vae_optimizer is cfg.optimizer.params_g
    d = cfg.optimizer.params_d
    assert isinstance(d, CriticAdamParams)
    assert d.lr == 5e-5
    assert d.warmup_ratio == 0.05
    assert d.weight_decay == 0.0
    assert isinstance(cfg.scheduler, CompositeSchedulerConfig)
    assert cfg.scheduler.params_g.warmup_ratio == 0.1
    assert cfg.scheduler.params_d.warmup_ratio == 0.25
    assert cfg.vae_schedule is cfg.scheduler.params_g


def test_optional_keys_left_out_take_the_shipped_values(tmp_path):
    strip = "del seed & del num_epochs & del early_stopping & del data & loss.params={}"
    path = variant(tmp_path, TRAIN_COMPOSITE, strip + ' & optimizer.params_d={"lr": 5e-5}')
    cfg = load_train_config(path, "composite")
    assert cfg == load_train_config(TRAIN_COMPOSITE, "composite")


def test_early_stopping_block_loads(tmp_path):
    path = variant(tmp_path, TRAIN_SIMPLE, 'early_stopping={"patience": 3, "tol": 0.001}')
    cfg = load_train_config(path, "simple")
    assert cfg.early_stopping == EarlyStoppingConfig(patience=3, tol=0.001)


def test_config_error_is_a_user_error():
    # run_cli catches UserError: a ConfigError must be one, or the CLI would show a traceback.
    assert issubclass(ConfigError, UserError)


# ---------------------------------------------------------------------------------------------
# The reference implementation's own files

REFERENCE_FILES = [
    pytest.param("model_simple_config.json", "model", id="model_simple"),
    pytest.param("model_composite_config.json", "model", id="model_composite"),
    pytest.param("train_simple_config.json", "simple", id="train_simple"),
    pytest.param("train_composite_config.json", "composite", id="train_composite"),
]


@pytest.mark.parametrize("name, kind", REFERENCE_FILES)
def test_reference_file_loads_unchanged_as_the_shipped_config_but_for_save_dir(name, kind):
    reference = LOADERS[kind](REFERENCE / name)
    shipped = LOADERS[kind](CONFIGS / name)
    if kind != "model":
        assert reference.save_dir != shipped.save_dir
        reference = dataclasses.replace(reference, save_dir=shipped.save_dir)
    assert reference == shipped


@pytest.mark.parametrize("name, kind", REFERENCE_FILES)
def test_shipped_file_is_the_reference_bytes_but_for_the_save_dir_line(name, kind):
    ours = (CONFIGS / name).read_bytes()
    theirs = (REFERENCE / name).read_bytes()
    if kind == "model":
        assert ours == theirs
        return
    ours_lines, theirs_lines = ours.splitlines(keepends=True), theirs.splitlines(keepends=True)
    assert len(ours_lines) == len(theirs_lines)
    differ = [i for i, (a, b) in enumerate(zip(ours_lines, theirs_lines, strict=True)) if a != b]
    assert len(differ) == 1, differ
    (i,) = differ
    assert ours_lines[i] == f'  "save_dir": "checkpoints/{kind}",\n'.encode()
    assert theirs_lines[i].startswith(b'  "save_dir": ')


# ---------------------------------------------------------------------------------------------
# Schedulers: null is a constant learning rate; the entry itself must be there


@pytest.mark.parametrize(
    "shipped, scheme, entry",
    [
        (TRAIN_SIMPLE, "simple", "params"),
        (TRAIN_COMPOSITE, "composite", "params_g"),
        (TRAIN_COMPOSITE, "composite", "params_d"),
    ],
)
def test_null_scheduler_entry_loads_as_none(tmp_path, shipped, scheme, entry):
    path = variant(tmp_path, shipped, f"scheduler.{entry}=null")
    cfg = load_train_config(path, scheme)
    assert getattr(cfg.scheduler, entry) is None
    expected = load_train_config(shipped, scheme)
    setattr(expected.scheduler, entry, None)
    assert cfg == expected
    if entry != "params_d":
        assert cfg.vae_schedule is None


@pytest.mark.parametrize(
    "shipped, scheme, field, expected",
    [
        (TRAIN_SIMPLE, "simple", "scheduler", "is missing; add it (an object)"),
        (TRAIN_COMPOSITE, "composite", "scheduler", "is missing; add it (an object)"),
        (TRAIN_SIMPLE, "simple", "scheduler.params", "is missing; add it (an object, or null)"),
        (
            TRAIN_COMPOSITE,
            "composite",
            "scheduler.params_g",
            "is missing; add it (an object, or null)",
        ),
        (
            TRAIN_COMPOSITE,
            "composite",
            "scheduler.params_d",
            "is missing; add it (an object, or null)",
        ),
    ],
)
def test_missing_scheduler_block_or_entry_is_one_line(tmp_path, shipped, scheme, field, expected):
    path = variant(tmp_path, shipped, f"del {field}")
    message = config_error(LOADERS[scheme], path)
    assert message == f"{path}: field '{field}' {expected}"


# ---------------------------------------------------------------------------------------------
# A training file of the other scheme


@pytest.mark.parametrize(
    "shipped, scheme, other",
    [(TRAIN_SIMPLE, "composite", "simple"), (TRAIN_COMPOSITE, "simple", "composite")],
)
def test_train_file_of_the_other_scheme_names_the_scheme_that_reads_it(shipped, scheme, other):
    message = config_error(LOADERS[scheme], shipped)
    assert f"is a {other}-scheme training config" in message
    assert f"--scheme is {scheme}" in message
    assert f"pass --scheme {other}" in message
    assert f"configs/train_{scheme}_config.json" in message


def test_a_bad_field_in_the_right_scheme_is_not_called_the_other_scheme(tmp_path):
    path = variant(tmp_path, TRAIN_COMPOSITE, "loss.params.lambda_disc=-1")
    message = config_error(LOADERS["composite"], path)
    assert "-scheme" not in message
    assert message == f"{path}: field 'loss.params.lambda_disc' = -1.0 must be >= 0"


# ---------------------------------------------------------------------------------------------
# Round 1's files, upgraded on reading

_ROUND1_VAE = {
    "img_size": [1, 28, 28],
    "latent_features": 2,
    "encoder": {"hidden_features": [16, 8], "dropout": 0.1},
    "decoder": {"hidden_features": [8, 16], "dropout": 0.1},
}
ROUND1_MODEL = {
    "simple": {"model_config": _ROUND1_VAE},
    "composite": {
        "model_config": _ROUND1_VAE,
        "discriminator_config": {
            "im_channels": 1,
            "hidden_channels": [4, 8],
            "kernel_size": [4],
            "stride": [2],
            "padding": [1],
        },
        "pips_config": {
            "backbone": "vgg16",
            "input_size": 16,
            "weights": "random",
            "weights_path": None,
        },
    },
}

_ROUND1_TRAIN_COMMON = {
    "seed": 7,
    "num_epochs": 2,
    "early_stopping": None,
    "data": {"train_bs": 128, "val_bs": 128},
    "save_every": 1,
    "keep_checkpoints": None,
    "tensorboard": False,
    "precision": "float32",
    "sync_batchnorm": False,
}
ROUND1_TRAIN = {
    "simple": {
        **_ROUND1_TRAIN_COMMON,
        "save_dir": "/tmp/legacy/runs/simple",
        "loss": {
            "params": {"beta": 4.0, "warmup_epochs": 1.0, "free_bits": 0.2, "lambda_recon": 1.0}
        },
        "optimizer": {"params": {"lr": 0.0005, "weight_decay": 1e-05}},
        "scheduler": {"params": {"warmup_ratio": 0.1}},
    },
    "composite": {
        **_ROUND1_TRAIN_COMMON,
        "save_dir": "/tmp/legacy/runs/composite",
        "loss": {
            "params": {
                "beta": 4.0,
                "warmup_epochs": 1.0,
                "free_bits": 0.2,
                "lambda_recon": 1.0,
                "lambda_pips": 1.0,
                "lambda_disc": 0.5,
            }
        },
        "optimizer": {
            "params_g": {"lr": 0.0005, "weight_decay": 1e-05},
            "params_d": {"lr": 5e-05, "weight_decay": 0.0, "warmup_ratio": 0.25},
        },
        "scheduler": {"params_g": {"warmup_ratio": 0.1}, "params_d": {"warmup_ratio": 0.25}},
    },
}


@pytest.mark.parametrize("scheme", ["simple", "composite"])
def test_round1_model_file_loads_as_written_by_hand_in_the_new_layout(scheme):
    path = ROUND1 / scheme / "model_config.json"
    assert "latent_dim" in read(path)  # still the round-1 layout
    assert upgrade_model_config(read(path)) == ROUND1_MODEL[scheme]
    assert load_model_config(path) == config_from_dict(ROUND1_MODEL[scheme], ModelConfig, "hand")


@pytest.mark.parametrize("scheme", ["simple", "composite"])
def test_round1_train_file_loads_in_its_schemes_layout_as_written_by_hand(scheme):
    path = ROUND1 / scheme / "train_config.json"
    assert "train_bs" in read(path)  # still the round-1 layout
    composite = scheme == "composite"
    assert upgrade_train_config(read(path), composite=composite) == ROUND1_TRAIN[scheme]
    cls = CompositeTrainConfig if composite else TrainConfig
    cfg = load_train_config(path, scheme)
    assert type(cfg) is cls
    assert cfg == config_from_dict(ROUND1_TRAIN[scheme], cls, "hand")


def _round1_distinct(d: dict) -> None:
    """Round 1's composite training file with every value that moves made distinct."""
    d["loss"]["beta_warmup_epochs"] = 3.0
    d["loss"]["disc_start_ratio"] = 0.3
    d["loss"]["lambda_disc"] = 0.7
    d["optimizer"]["params_g"]["warmup_ratio"] = 0.15
    d["optimizer"]["params_d"]["warmup_ratio"] = 0.2
    d["train_bs"], d["val_bs"] = 64, 32


def test_round1_train_keys_move_to_their_new_places_in_the_composite_scheme():
    data = read(ROUND1 / "composite" / "train_config.json")
    _round1_distinct(data)
    upgraded = upgrade_train_config(data, composite=True)
    assert upgraded["loss"] == {
        "params": {
            "beta": 4.0,
            "warmup_epochs": 3.0,  # loss.beta_warmup_epochs
            "free_bits": 0.2,
            "lambda_recon": 1.0,
            "lambda_pips": 1.0,
            "lambda_disc": 0.7,
        }
    }
    assert upgraded["optimizer"] == {
        "params_g": {"lr": 0.0005, "weight_decay": 1e-05},
        # loss.disc_start_ratio: the critic's switch-on
        "params_d": {"lr": 5e-05, "weight_decay": 0.0, "warmup_ratio": 0.3},
    }
    assert upgraded["scheduler"] == {
        "params_g": {"warmup_ratio": 0.15},  # optimizer.params_g.warmup_ratio
        "params_d": {"warmup_ratio": 0.2},  # optimizer.params_d.warmup_ratio
    }
    assert upgraded["data"] == {"train_bs": 64, "val_bs": 32}
    assert "train_bs" not in upgraded and "val_bs" not in upgraded


def test_round1_train_keys_move_to_their_new_places_in_the_simple_scheme():
    data = read(ROUND1 / "composite" / "train_config.json")
    _round1_distinct(data)
    upgraded = upgrade_train_config(data, composite=False)
    # The critic's keys, which the simple scheme ignored in round 1, are dropped.
    assert upgraded["loss"] == {
        "params": {"beta": 4.0, "warmup_epochs": 3.0, "free_bits": 0.2, "lambda_recon": 1.0}
    }
    assert upgraded["optimizer"] == {"params": {"lr": 0.0005, "weight_decay": 1e-05}}
    assert upgraded["scheduler"] == {"params": {"warmup_ratio": 0.15}}
    assert upgraded["data"] == {"train_bs": 64, "val_bs": 32}


def test_round1_model_keys_move_to_their_new_places():
    data = read(ROUND1 / "composite" / "model_config.json")
    data["image_shape"] = [3, 32, 32]
    data["latent_dim"] = 5
    data["discriminator_config"] = {
        "channels": [8, 16, 32],
        "kernel": [4, 3],
        "stride": [2, 1],
        "padding": [1, 0],
    }
    assert upgrade_model_config(data) == {
        "model_config": {
            "img_size": [3, 32, 32],  # image_shape
            "latent_features": 5,  # latent_dim
            "encoder": data["encoder_config"],
            "decoder": data["decoder_config"],
        },
        "discriminator_config": {
            "im_channels": 3,  # image_shape[0]
            "hidden_channels": [8, 16, 32],  # channels
            "kernel_size": [4, 3],  # kernel
            "stride": [2, 1],
            "padding": [1, 0],
        },
        "pips_config": data["pips_config"],
    }


def test_upgrading_a_round1_dict_leaves_it_as_it_was():
    model = read(ROUND1 / "composite" / "model_config.json")
    train = read(ROUND1 / "composite" / "train_config.json")
    model_before, train_before = copy.deepcopy(model), copy.deepcopy(train)
    upgrade_model_config(model)
    upgrade_train_config(train, composite=True)
    upgrade_train_config(train, composite=False)
    assert (model, train) == (model_before, train_before)


@pytest.mark.parametrize(
    "path",
    [MODEL_SIMPLE, MODEL_COMPOSITE, MODEL_COMPOSITE_MNIST, *sorted(REFERENCE.glob("model_*.json"))],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_current_layout_model_dict_passes_through_upgrade_unchanged(path):
    data = read(path)
    assert upgrade_model_config(copy.deepcopy(data)) == data


@pytest.mark.parametrize(
    "path",
    [TRAIN_SIMPLE, TRAIN_COMPOSITE, *sorted(REFERENCE.glob("train_*.json"))],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
@pytest.mark.parametrize("composite", [False, True])
def test_current_layout_train_dict_passes_through_upgrade_unchanged(path, composite):
    data = read(path)
    assert upgrade_train_config(copy.deepcopy(data), composite=composite) == data


def test_current_layout_train_dict_without_data_block_passes_through_unchanged():
    data = read(TRAIN_SIMPLE)
    del data["data"]  # optional: the loss block's `params` still marks the current layout
    assert upgrade_train_config(copy.deepcopy(data), composite=False) == data


def test_bad_value_in_a_round1_file_is_named_at_its_new_place(tmp_path):
    path = variant(tmp_path, ROUND1 / "simple" / "train_config.json", "loss.beta_warmup_epochs=-1")
    message = config_error(LOADERS["simple"], path)
    assert message == f"{path}: field 'loss.params.warmup_epochs' = -1.0 must be >= 0"


def test_unknown_key_in_a_round1_file_is_one_line_with_a_suggestion(tmp_path):
    path = variant(tmp_path, ROUND1 / "simple" / "train_config.json", "loss.betta=4.0")
    message = config_error(LOADERS["simple"], path)
    assert message == f"{path}: field 'loss.params.betta' = 4.0 unknown key; did you mean 'beta'?"


# Round-1 files with broken blocks: one line naming the block, never a traceback.
@pytest.mark.parametrize(
    "change", ["loss=5", "loss=null", "optimizer=5", "optimizer=null", "optimizer.params_g=[1]"]
)
def test_round1_block_that_is_not_an_object_is_one_line(tmp_path, change):
    path = variant(tmp_path, ROUND1 / "composite" / "train_config.json", change)
    message = config_error(LOADERS["composite"], path)
    field, value = change.split("=")
    assert f"field '{field}' = {value} must be an object" in message


@pytest.mark.parametrize(
    "old, field",
    [
        ("loss.disc_start_ratio", "optimizer.params_d.warmup_ratio"),
        ("optimizer.params_d.warmup_ratio", "scheduler.params_d.warmup_ratio"),
    ],
)
def test_round1_composite_file_with_a_bad_critic_value_names_the_field(tmp_path, old, field):
    path = variant(tmp_path, ROUND1 / "composite" / "train_config.json", f"{old}=1.5")
    message = config_error(LOADERS["composite"], path)
    assert message.startswith(f"{path}: field '{field}' = 1.5 must be in [0, 1)"), message


def test_current_layout_loss_without_params_and_no_data_block_names_the_loss(tmp_path):
    data = read(TRAIN_SIMPLE)
    data["loss"] = data["loss"]["params"]
    del data["data"]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    message = config_error(LOADERS["simple"], path)
    assert message.startswith(f"{path}: field 'loss.beta' = 4.0 unknown key; known keys: params")


# ---------------------------------------------------------------------------------------------
# Files that are not a config object


def test_malformed_json_names_line_and_column(tmp_path):
    text = MODEL_SIMPLE.read_text()
    anchor = '"latent_features": 2,'
    assert text.count(anchor) == 1
    broken = text.replace(anchor, anchor + ",", 1)
    # The parser stops at the second comma; compute its 1-based line and column.
    at = broken.index(anchor) + len(anchor)
    line = broken.count("\n", 0, at) + 1
    column = at - broken.rfind("\n", 0, at)
    assert line == 4  # the latent_features line of the shipped file
    path = tmp_path / "model.json"
    path.write_text(broken)
    message = config_error(load_model_config, path)
    assert f"not valid JSON at line {line} column {column}" in message


def test_truncated_file_is_invalid_json(tmp_path):
    text = TRAIN_COMPOSITE.read_text()
    path = tmp_path / "train.json"
    path.write_text(text[: len(text) // 2])
    message = config_error(LOADERS["composite"], path)
    assert "not valid JSON at line" in message
    assert " column " in message


def test_empty_file_is_invalid_json(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("")
    message = config_error(load_model_config, path)
    assert "not valid JSON at line 1 column 1" in message


def test_top_level_list_is_rejected(tmp_path):
    data = read(MODEL_SIMPLE)
    path = tmp_path / "model.json"
    path.write_text(json.dumps([data]))
    message = config_error(load_model_config, path)
    assert "top level must be a JSON object" in message
    assert "got [{" in message


def test_top_level_string_is_rejected(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('"checkpoints/simple"')
    message = config_error(LOADERS["simple"], path)
    assert 'top level must be a JSON object {...}, got "checkpoints/simple"' in message


def test_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "nowhere" / "model.json"
    message = config_error(load_model_config, path)
    assert "cannot read config" in message
    assert "No such file or directory" in message


# ---------------------------------------------------------------------------------------------
# One bad field at a time: per shipped file, (the change, as `edit` reads it; what the message
# says after "<file>: field '<the field the change names>' "). A message naming another field
# than the change starts with that field, quoted.

BAD_FIELDS = {
    MODEL_SIMPLE: [
        # unknown keys, with the nearest known key suggested
        ("model_config.encoder.dropout>dropuot", "= 0.1 unknown key; did you mean 'dropout'?"),
        (
            "model_config.latent_features>latent_feature",
            "= 2 unknown key; did you mean 'latent_features'?",
        ),
        (
            "model_config.encoder>encoder_config",
            '= {"hidden_features": [784, 512, 256, 128], "dropout": 0.1} unknown key; '
            "did you mean 'encoder'?",
        ),
        # missing required fields (no value to show)
        ("del model_config", "is missing; add it (an object)"),
        ("del model_config.latent_features", "is missing; add it (an integer)"),
        ("del model_config.decoder.hidden_features", "is missing; add it (a list of integers)"),
        # wrong types
        ('model_config.latent_features="2"', '= "2" must be an integer'),
        ("model_config.latent_features=true", "= true must be an integer"),
        ("model_config.encoder.hidden_features=784", "= 784 must be a list of integers"),
        ('model_config.img_size="1x28x28"', '= "1x28x28" must be a list of integers'),
        ("model_config.encoder=null", "= null must be an object"),
        # out of range
        ("model_config.latent_features=0", "= 0 must be >= 1"),
        ("model_config.img_size=[1, 28]", "= [1, 28] must be [channels, height, width]"),
        ("model_config.img_size=[1, 0, 28]", "= [1, 0, 28] must be [channels, height, width]"),
        ("model_config.encoder.hidden_features[1]=-512", "= -512 must be a positive width"),
        ("model_config.decoder.hidden_features[2]=0", "= 0 must be a positive width"),
        ("model_config.encoder.hidden_features=[]", "= [] must list at least one width"),
        ("model_config.encoder.dropout=1.0", "= 1.0 must be in [0, 1)"),
    ],
    MODEL_COMPOSITE: [
        # unknown keys, with the nearest known key suggested
        (
            "discriminator_config>discriminator_confg",
            '= {"im_channels": 1, "hidden_channels": [32, 64, 128, 256],... unknown key; '
            "did you mean 'discriminator_config'?",
        ),
        (
            "discriminator_config.kernel_size>kernel",
            "= [4, 4, 3] unknown key; did you mean 'kernel_size'?",
        ),
        (
            "discriminator_config.zzz=7",
            "= 7 unknown key; known keys: "
            "im_channels, hidden_channels, kernel_size, stride, padding",
        ),
        # missing required fields (no value to show)
        ("del discriminator_config.im_channels", "is missing; add it (an integer)"),
        # wrong types
        ('discriminator_config.hidden_channels[1]="64"', '= "64" must be an integer'),
        # out of range
        ("model_config.decoder.dropout=-0.1", "= -0.1 must be in [0, 1)"),
        (
            "discriminator_config.kernel_size=[4, 4]",
            "= [4, 4] needs one entry per ConvLayer: len(hidden_channels) - 1 = 3 entries, got 2",
        ),
        (
            "discriminator_config.padding=[1, 1, 1, 1]",
            "= [1, 1, 1, 1] needs one entry per ConvLayer: "
            "len(hidden_channels) - 1 = 3 entries, got 4",
        ),
        ("discriminator_config.hidden_channels=[]", "= [] must list at least one width"),
        ("discriminator_config.stride[1]=0", "= 0 must be >= 1"),
        ("discriminator_config.padding[1]=-1", "= -1 must be >= 0"),
        ("discriminator_config.im_channels=0", "= 0 must be >= 1"),
        (
            "discriminator_config.im_channels=3",
            "= 3 must equal the images' channels, model_config.img_size[0] = 1",
        ),
        (
            "model_config.img_size=[3, 28, 28]",
            "'discriminator_config.im_channels' = 1 must equal the images' channels, "
            "model_config.img_size[0] = 3",
        ),
        (
            'pips_config={"backbone": "vgg16", "weights_path": "vgg.pth"}',
            "'pips_config.weights_path' = \"vgg.pth\" applies to backbone mnist_cnn only",
        ),
        (
            'pips_config={"backbone": "vgg16", "input_size": 8}',
            "'pips_config.input_size' = 8 must be >= 16",
        ),
    ],
    TRAIN_SIMPLE: [
        # unknown keys, with the nearest known key suggested
        ("loss.params.free_bits>free_bit", "= 0.2 unknown key; did you mean 'free_bits'?"),
        (
            "loss.params.warmup_epochs>beta_warmup_epochs",
            "= 15 unknown key; did you mean 'warmup_epochs'?",
        ),
        ("data.train_bs>train_batch", "= 128 unknown key; did you mean 'train_bs'?"),
        ("loss.beta=4.0", "= 4.0 unknown key; known keys: params"),
        # missing required fields (no value to show)
        ("del optimizer.params.lr", "is missing; add it (a number)"),
        ("del save_dir", "is missing; add it (a string)"),
        ("del loss.params", "is missing; add it (an object)"),
        ("del optimizer", "is missing; add it (an object)"),
        ("del scheduler.params.warmup_ratio", "is missing; add it (a number)"),
        # wrong types
        ("num_epochs=40.0", "= 40.0 must be an integer"),
        ('data.train_bs="128"', '= "128" must be an integer'),
        ('optimizer.params.lr="5e-4"', '= "5e-4" must be a number'),
        ("scheduler.params=0.1", "= 0.1 must be an object"),
        ("data=null", "= null must be an object"),
        ('tensorboard="yes"', '= "yes" must be true or false'),
        ("tensorboard=1", "= 1 must be true or false"),
        # unknown keys, with the nearest known key suggested
        ('precision="fp16"', '= "fp16" must be "float32" or "bfloat16" (autocast)'),
        # wrong types
        ("seed=9223372036854775808", "= 9223372036854775808 is too large; keep it below 2**63"),
        ("optimizer.params.lr=Infinity", "= Infinity must be a finite number"),
        # unknown keys, with the nearest known key suggested
        ('linear_backend="mkl"', '= "mkl" must be "auto", "aten" or "onednn"'),
        # out of range
        ("optimizer.params.lr=-0.0005", "= -0.0005 must be > 0"),
        ("scheduler.params.warmup_ratio=1.0", "= 1.0 must be in [0, 1)"),
        ("loss.params.beta=-4.0", "= -4.0 must be >= 0"),
        ("num_epochs=0", "= 0 must be >= 1"),
        ("seed=-1", "= -1 must be in [0, 2**32)"),
        ("data.train_bs=0", "= 0 must be >= 1"),
        ('data.dataset="cifar10"', '= "cifar10" must be one of "mnist", "fashion_mnist"'),
        (
            'early_stopping={"patience": 0, "tol": 0.001}',
            "'early_stopping.patience' = 0 must be >= 1",
        ),
        (
            'early_stopping={"patience": 3, "tol": -0.001}',
            "'early_stopping.tol' = -0.001 must be >= 0",
        ),
        ("save_every=0", "= 0 must be >= 1"),
        ("keep_checkpoints=0", "= 0 must be >= 1, or null"),
        ('save_dir="  "', '= "  " must name a folder'),
    ],
    TRAIN_COMPOSITE: [
        # unknown keys, with the nearest known key suggested
        ("num_epochs>num_epoch", "= 40 unknown key; did you mean 'num_epochs'?"),
        (
            "scheduler>schedular",
            '= {"params_g": {"warmup_ratio": 0.1}, "params_d": {"warmup_... unknown key; '
            "did you mean 'scheduler'?",
        ),
        (
            "optimizer.params_d.warmup_ratio>warmup",
            "= 0.05 unknown key; did you mean 'warmup_ratio'?",
        ),
        # missing required fields (no value to show)
        ("del optimizer.params_d.lr", "is missing; add it (a number)"),
        ("del optimizer.params_d", "is missing; add it (an object)"),
        # wrong types
        ("loss.params.beta=false", "= false must be a number"),
        ("optimizer.params_d=null", "= null must be an object"),
        ('sync_batchnorm="true"', '= "true" must be true or false'),
        # out of range
        ("optimizer.params_d.weight_decay=-1e-05", "= -1e-05 must be >= 0"),
        ("scheduler.params_d.warmup_ratio=-0.25", "= -0.25 must be in [0, 1)"),
        ("optimizer.params_d.warmup_ratio=1.5", "= 1.5 must be in [0, 1)"),
        ("loss.params.lambda_pips=-1.0", "= -1.0 must be >= 0"),
        ("seed=4294967296", "= 4294967296 must be in [0, 2**32)"),
        ("data.val_bs=-128", "= -128 must be >= 1"),
    ],
    MODEL_COMPOSITE_MNIST: [
        # out of range
        ('pips_config.backbone="resnet"', '= "resnet" must be one of vgg16, mnist_cnn'),
        ("pips_config.input_size=224", "= 224 must be 28 for mnist_cnn"),
        (
            'pips_config.weights="imagenet"',
            '= "imagenet" must be one of mnist, fashion_mnist for backbone mnist_cnn',
        ),
        ('pips_config.weights_path=" "', '= " " must name a file'),
        (
            "discriminator_config.im_channels=3 & model_config.img_size=[3, 28, 28]",
            "= [3, 28, 28] must have 1 channel for pips_config.backbone mnist_cnn",
        ),
    ],
}
KIND = {
    MODEL_SIMPLE: "model",
    MODEL_COMPOSITE: "model",
    MODEL_COMPOSITE_MNIST: "model",
    TRAIN_SIMPLE: "simple",
    TRAIN_COMPOSITE: "composite",
}


@pytest.mark.parametrize(
    "shipped, change, expected",
    [
        (shipped, change, expected)
        for shipped, rows in BAD_FIELDS.items()
        for change, expected in rows
    ],
    ids=[f"{shipped.stem}:{change}" for shipped, rows in BAD_FIELDS.items() for change, _ in rows],
)
def test_bad_field_is_one_line_naming_file_field_and_value(tmp_path, shipped, change, expected):
    path = variant(tmp_path, shipped, change)
    message = config_error(LOADERS[KIND[shipped]], path)
    field = edit(read(shipped), change)
    located = f"{path}: field " if expected.startswith("'") else f"{path}: field '{field}' "
    assert message.startswith(located + expected), message


def test_long_values_are_shortened_to_keep_one_short_line(tmp_path):
    path = variant(tmp_path, TRAIN_SIMPLE, f"save_dir={json.dumps(['x' * 200])}")
    message = config_error(LOADERS["simple"], path)
    assert f"{path}: field 'save_dir' = [\"xxx" in message
    assert "..." in message
    assert "x" * 100 not in message
    assert message.endswith("must be a string")


# ---------------------------------------------------------------------------------------------
# Command-line overrides


def test_override_out_of_range_is_one_line_naming_the_flag():
    cfg = load_train_config(TRAIN_SIMPLE, "simple")
    with pytest.raises(ConfigError) as info:
        with_overrides(cfg, {"seed": ("--seed", -5)})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--seed -5: must be in [0, 2**32)"), message
    assert cfg.seed == 42


def test_override_names_the_flag_of_the_bad_value_among_several():
    cfg = load_train_config(TRAIN_COMPOSITE, "composite")
    overrides = {"num_epochs": ("--epochs", 3), "save_dir": ("--save_dir", " ")}
    with pytest.raises(ConfigError, match=r'^--save_dir " ": must name a folder'):
        with_overrides(cfg, overrides)


@pytest.mark.parametrize(
    "shipped, scheme", [(TRAIN_SIMPLE, "simple"), (TRAIN_COMPOSITE, "composite")]
)
def test_good_override_applies_and_keeps_the_rest(shipped, scheme):
    cfg = load_train_config(shipped, scheme)
    changed = with_overrides(cfg, {"seed": ("--seed", 7), "num_epochs": ("--epochs", 3)})
    assert type(changed) is type(cfg)
    assert (changed.seed, changed.num_epochs) == (7, 3)
    assert (cfg.seed, cfg.num_epochs) == (42, 40)
    assert dataclasses.replace(changed, seed=42, num_epochs=40) == cfg


# ---------------------------------------------------------------------------------------------
# The CLI boundary: train.py fails at config load, before data, with exit 2 and one line


def _repo_relative(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


@pytest.fixture(scope="module")
def train_cli_runs(tmp_path_factory, fake_mnist):
    """The failing train.py commands: name -> (exit code, stdout, stderr, its save folder, the
    start of its one error line). The bad --seed runs in a real process, the config refusals in
    this one (tests/helpers.run_main: a process would spend its time starting up)."""
    root = tmp_path_factory.mktemp("train_cli")
    bad_model = variant(root, MODEL_SIMPLE, "model_config.encoder.dropout=1.0")
    bad_train = variant(root, TRAIN_SIMPLE, "optimizer.params.lr=-0.0005")
    # name: (--scheme, or None for the default; model config; train config; error line start)
    cases = {
        "bad_model": (
            "simple",
            bad_model,
            TRAIN_SIMPLE,
            f"error: {bad_model}: field 'model_config.encoder.dropout' = 1.0 must be in [0, 1)",
        ),
        "bad_train": (
            "simple",
            MODEL_SIMPLE,
            bad_train,
            f"error: {bad_train}: field 'optimizer.params.lr' = -0.0005 must be > 0",
        ),
        "composite_needs_critic": (
            "composite",
            MODEL_SIMPLE,
            TRAIN_COMPOSITE,
            "error: configs/model_simple_config.json: the composite scheme needs "
            "'discriminator_config'",
        ),
        "default_scheme_composite_refuses_simple_train_file": (
            None,
            MODEL_COMPOSITE,
            TRAIN_SIMPLE,
            "error: configs/train_simple_config.json: is a simple-scheme training config "
            "(optimizer.params), but --scheme is composite; pass --scheme simple",
        ),
    }
    commands = {
        name: train_argv(
            scheme,
            _repo_relative(model),
            _repo_relative(train),
            root / "no_data",
            root / f"run_{name}",
        )
        for name, (scheme, model, train, _) in cases.items()
    }
    # A bad --seed on a good command line over real files, in a folder of its own.
    (root / "seed").mkdir()
    commands["bad_seed"] = train_argv(
        "simple",
        MODEL_SIMPLE,
        TRAIN_SIMPLE,
        fake_mnist,
        root / "seed" / "run",
        "--epochs",
        "1",
        "--subset",
        "64",
        "--seed",
        "-5",
    )
    cases["bad_seed"] = (None, None, None, "error: --seed -5: must be in [0, 2**32)")
    mnist_before = sorted(p.relative_to(fake_mnist) for p in fake_mnist.rglob("*"))
    done = {
        name: run_script(*argv) if name == "bad_seed" else run_main(*argv)
        for name, argv in commands.items()
    }
    results = {
        name: (r.returncode, r.stdout, r.stderr, root / f"run_{name}", cases[name][3])
        for name, r in done.items()
    }
    assert not (root / "no_data").exists()
    assert sorted(p.relative_to(fake_mnist) for p in fake_mnist.rglob("*")) == mnist_before
    results["bad_seed"] = (*results["bad_seed"][:3], root / "seed" / "run", cases["bad_seed"][3])
    return results


def test_train_cli_bad_seed_exits_2_with_one_line_and_writes_nothing(train_cli_runs):
    code, out, err, save_dir, expected = train_cli_runs["bad_seed"]
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(expected), lines[0]
    assert out == ""
    assert list(save_dir.parent.iterdir()) == []


@pytest.mark.parametrize(
    "case",
    [
        "bad_model",
        "bad_train",
        "composite_needs_critic",
        "default_scheme_composite_refuses_simple_train_file",
    ],
)
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
    data = read(MODEL_SIMPLE)
    data["bad\nkey"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_model_config(path)
    assert "\n" not in str(err.value)
