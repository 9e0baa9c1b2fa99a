"""Typed configs: JSON files become dataclasses, validated once, with the first problem in one line.

Every config class lists its fields with types and defaults and says in `check` which values are
allowed. `load_model_config` / `load_train_config` read a file, reject unknown keys (suggesting the
nearest known one), wrong types and out-of-range values, and raise `ConfigError` naming the file,
the field, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from model.backbones import BACKBONES, DEFAULT_BACKBONE, default_weights_path
from utils.dataset import DATASETS
from utils.errors import ConfigError
from utils.gan_losses import GAN_LOSSES
from utils.legacy import is_round1_train, upgrade_model_config, upgrade_train_config

T = TypeVar("T")


class _FieldProblem(Exception):
    """A bad value, located by its dotted path inside one config file."""

    def __init__(self, where: str, value: Any, problem: str):
        super().__init__(problem)
        self.where, self.value, self.problem = where, value, problem


def _need(ok: bool, where: str, value: Any, problem: str) -> None:
    if not ok:
        raise _FieldProblem(where, value, problem)


# For other JSON files read through config_from_dict (study.py's): a check that fails names the
# file and the field in one line, as the configs' own checks do.
need = _need


@dataclass
class MLPConfig:
    """Encoder or decoder: widths of the LinearLayer chain and its dropout."""

    hidden_features: list[int]
    dropout: float = 0.1

    def check(self) -> None:
        _need(
            len(self.hidden_features) > 0,
            "hidden_features",
            self.hidden_features,
            "must list at least one width, e.g. [784, 512, 256, 128]",
        )
        for i, width in enumerate(self.hidden_features):
            _need(width > 0, f"hidden_features[{i}]", width, "must be a positive width")
        _need(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1), e.g. 0.1")


@dataclass
class VAEConfig:
    """The VAE (the model file's `model_config` block): image size, latent width, both MLPs."""

    img_size: list[int]
    latent_features: int
    encoder: MLPConfig
    decoder: MLPConfig

    def check(self) -> None:
        _need(
            len(self.img_size) == 3 and all(s > 0 for s in self.img_size),
            "img_size",
            self.img_size,
            "must be [channels, height, width], e.g. [1, 28, 28]",
        )
        _need(
            self.latent_features > 0,
            "latent_features",
            self.latent_features,
            "must be >= 1, e.g. 2",
        )


@dataclass
class DiscriminatorConfig:
    """PatchGAN critic: input channels, channel widths and one (kernel, stride, padding) per
    ConvLayer between consecutive widths."""

    im_channels: int
    hidden_channels: list[int]
    kernel_size: list[int]
    stride: list[int]
    padding: list[int]

    def check(self) -> None:
        _need(self.im_channels > 0, "im_channels", self.im_channels, "must be >= 1, e.g. 1")
        _need(
            len(self.hidden_channels) > 0,
            "hidden_channels",
            self.hidden_channels,
            "must list at least one width, e.g. [32, 64, 128, 256]",
        )
        for i, width in enumerate(self.hidden_channels):
            _need(width > 0, f"hidden_channels[{i}]", width, "must be a positive width")
        layers = len(self.hidden_channels) - 1
        for name in ("kernel_size", "stride", "padding"):
            values = getattr(self, name)
            _need(
                len(values) == layers,
                name,
                values,
                f"needs one entry per ConvLayer: len(hidden_channels) - 1 = {layers} entries, "
                f"got {len(values)}",
            )
            smallest = 0 if name == "padding" else 1
            for i, v in enumerate(values):
                _need(v >= smallest, f"{name}[{i}]", v, f"must be >= {smallest}")


@dataclass
class PIPSConfig:
    """Perceptual loss backbone (this repo's addition; the reference always uses ImageNet VGG16).
    Unset fields take the backbone's defaults, and the checks its limits, from the table in
    model/backbones.py."""

    backbone: str = DEFAULT_BACKBONE
    input_size: int | None = None
    weights: str | None = None
    weights_path: str | None = None

    def __post_init__(self) -> None:
        # An unknown backbone takes the default's values; check() then names the backbone.
        spec = BACKBONES.get(self.backbone, BACKBONES[DEFAULT_BACKBONE])
        if self.input_size is None:
            self.input_size = spec.input_size
        if self.weights is None:
            self.weights = spec.weights[0]
        if self.weights_path is None and self.backbone in BACKBONES:
            self.weights_path = default_weights_path(self.backbone, self.weights)

    def check(self) -> None:
        _need(
            self.backbone in BACKBONES,
            "backbone",
            self.backbone,
            f"must be one of {', '.join(BACKBONES)}",
        )
        spec = BACKBONES[self.backbone]
        if spec.fixed_input_size:
            _need(
                self.input_size == spec.input_size,
                "input_size",
                self.input_size,
                f"must be {spec.input_size} for {self.backbone} ({spec.input_size_reason})",
            )
        else:
            _need(
                self.input_size >= spec.min_input_size,
                "input_size",
                self.input_size,
                f"must be >= {spec.min_input_size} ({spec.input_size_reason}), "
                f"e.g. {spec.input_size}",
            )
        if spec.weights_path is None:
            with_files = [name for name, s in BACKBONES.items() if s.weights_path is not None]
            _need(
                self.weights_path is None,
                "weights_path",
                self.weights_path,
                f"applies to backbone {' or '.join(with_files)} only; {spec.title}'s weights "
                f"come from {spec.weights_source}",
            )
        else:
            _need(
                self.weights_path.strip() != "",
                "weights_path",
                self.weights_path,
                f"must name a file, e.g. {default_weights_path(self.backbone, spec.weights[0])}",
            )
        _need(
            self.weights in spec.weights,
            "weights",
            self.weights,
            f"must be one of {', '.join(spec.weights)} for backbone {self.backbone}",
        )


@dataclass
class ModelConfig:
    """A model file: the VAE and, for the composite scheme, the critic and the perceptual loss
    (left out, the composite scheme uses the reference's ImageNet VGG16)."""

    model_config: VAEConfig
    discriminator_config: DiscriminatorConfig | None = None
    pips_config: PIPSConfig | None = None

    def check(self) -> None:
        channels = self.model_config.img_size[0]
        if self.discriminator_config is not None:
            _need(
                self.discriminator_config.im_channels == channels,
                "discriminator_config.im_channels",
                self.discriminator_config.im_channels,
                f"must equal the images' channels, model_config.img_size[0] = {channels}",
            )
        pips = self.pips_config
        if (
            pips is not None
            and pips.backbone in BACKBONES
            and BACKBONES[pips.backbone].grayscale_only
        ):
            _need(
                channels == 1,
                "model_config.img_size",
                self.model_config.img_size,
                f"must have 1 channel for pips_config.backbone {pips.backbone} (a grayscale CNN)",
            )


@dataclass
class LossParams:
    """The simple scheme's loss: lambda_recon * recon + beta * KL, beta rising linearly over
    warmup_epochs, each sample's KL clamped from below at free_bits."""

    beta: float = 4.0
    warmup_epochs: float = 15.0
    free_bits: float = 0.2
    lambda_recon: float = 1.0

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _IS[float](value):  # every number (weights, epochs, steps) is >= 0
                _need(value >= 0, f.name, value, "must be >= 0")


@dataclass
class CompositeLossParams(LossParams):
    """The composite scheme's loss adds lambda_pips * PIPS and lambda_disc * adversarial.

    Options from taming-transformers' LPIPSWithDiscriminator, off by default (the reference):
    adaptive_disc_weight scales the adversarial term to lambda_disc * ||grad recon|| / (||grad
    adv|| + 1e-4) at the decoder's last layer; gan_loss names the critic's objective
    (utils/gan_losses.py). grad_ratio_every: every that many steps the gradient norms of the
    extra terms at that layer are measured against the reconstruction's and logged (0: never).
    """

    lambda_pips: float = 1.0
    lambda_disc: float = 0.5
    adaptive_disc_weight: bool = False
    gan_loss: str = "bce"
    grad_ratio_every: int = 50

    def check(self) -> None:
        super().check()
        _need(
            self.gan_loss in GAN_LOSSES,
            "gan_loss",
            self.gan_loss,
            f"must be one of {', '.join(GAN_LOSSES)}",
        )


@dataclass
class LossConfig:
    params: LossParams


@dataclass
class CompositeLossConfig:
    params: CompositeLossParams


def _check_ratio(value: float, name: str, example: str) -> None:
    _need(0.0 <= value < 1.0, name, value, f"must be in [0, 1), e.g. {example}")


@dataclass
class AdamParams:
    """Adam for the VAE."""

    lr: float
    weight_decay: float = 0.0

    def check(self) -> None:
        _need(self.lr > 0, "lr", self.lr, "must be > 0, e.g. 0.0005")
        _need(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class CriticAdamParams(AdamParams):
    """Adam for the critic, and its switch-on: the critic (and the generator's adversarial term)
    starts at step int(warmup_ratio * total_steps)."""

    warmup_ratio: float = 0.05

    def check(self) -> None:
        super().check()
        _check_ratio(self.warmup_ratio, "warmup_ratio", "0.05")


@dataclass
class OptimizerConfig:
    params: AdamParams


@dataclass
class CompositeOptimizerConfig:
    params_g: AdamParams
    params_d: CriticAdamParams


@dataclass
class ScheduleParams:
    """Linear warm-up over int(warmup_ratio * total_steps) of the schedule's steps, then cosine
    decay to 0 at total_steps. The VAE's schedule steps once per training step; the critic's
    once per critic update, so it has not reached 0 when training ends."""

    warmup_ratio: float

    def check(self) -> None:
        _check_ratio(self.warmup_ratio, "warmup_ratio", "0.1")


@dataclass
class SchedulerConfig:
    """`params: null` keeps the learning rate constant."""

    params: ScheduleParams | None


@dataclass
class CompositeSchedulerConfig:
    """Either may be null: a constant learning rate for that network."""

    params_g: ScheduleParams | None
    params_d: ScheduleParams | None


@dataclass
class EarlyStoppingConfig:
    """Stop when the epoch's train loss has not dropped by more than `tol` for `patience` epochs."""

    patience: int
    tol: float = 0.0

    def check(self) -> None:
        _need(self.patience >= 1, "patience", self.patience, "must be >= 1, e.g. 5")
        _need(self.tol >= 0, "tol", self.tol, "must be >= 0, e.g. 0.001")


@dataclass
class DataConfig:
    """Batch sizes (the reference's keys) and the dataset (this repo's: a key of
    utils/dataset.DATASETS). train_bs is the global batch (split evenly over processes under
    torchrun)."""

    train_bs: int = 128
    val_bs: int = 128
    dataset: str = "mnist"

    def check(self) -> None:
        for name in ("train_bs", "val_bs"):
            _need(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1, e.g. 128")
        _need(
            self.dataset in DATASETS,
            "dataset",
            self.dataset,
            f"must be one of {', '.join(map(json.dumps, DATASETS))}",
        )


PRECISIONS = ("float32", "bfloat16")


@dataclass(kw_only=True)
class TrainConfig:
    """A simple-scheme training file: the reference's keys (seed ... data), then this repo's
    optional ones (save_every ... sync_batchnorm)."""

    seed: int = 42
    num_epochs: int = 40
    save_dir: str
    loss: LossConfig
    early_stopping: EarlyStoppingConfig | None = None
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    data: DataConfig = field(default_factory=DataConfig)
    # A resumable checkpoint every save_every epochs (and at the last); the newest
    # keep_checkpoints of them are kept (null: all).
    save_every: int = 5
    keep_checkpoints: int | None = 3
    tensorboard: bool = False
    # "bfloat16": forward passes and losses under torch.autocast (for GPUs with bfloat16 units);
    # weights, optimiser states and the logged loss terms stay float32.
    precision: str = "float32"
    # Under torchrun: normalise with the whole global batch's statistics (SyncBatchNorm, CUDA
    # only) rather than each process's share; without torchrun there is nothing to synchronise.
    sync_batchnorm: bool = False
    # The library of the VAE's linear layers on the CPU (model/linear_backend.py): "auto" times
    # ATen (MKL) against oneDNN on the model's own shapes at start-up and takes oneDNN where it
    # is clearly faster; "aten" or "onednn" fixes it. CUDA always takes ATen.
    linear_backend: str = "auto"

    @property
    def vae_optimizer(self) -> AdamParams:
        return self.optimizer.params

    @property
    def vae_schedule(self) -> ScheduleParams | None:
        return self.scheduler.params

    def check(self) -> None:
        _need(
            self.save_dir.strip() != "",
            "save_dir",
            self.save_dir,
            "must name a folder, e.g. checkpoints/simple",
        )
        _need(0 <= self.seed < 2**32, "seed", self.seed, "must be in [0, 2**32), e.g. 42")
        for name in ("num_epochs", "save_every"):
            _need(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        _need(
            self.keep_checkpoints is None or self.keep_checkpoints >= 1,
            "keep_checkpoints",
            self.keep_checkpoints,
            "must be >= 1, or null to keep every periodic checkpoint",
        )
        _need(
            self.precision in PRECISIONS,
            "precision",
            self.precision,
            'must be "float32" or "bfloat16" (autocast)',
        )
        _need(
            self.linear_backend in ("auto", "aten", "onednn"),
            "linear_backend",
            self.linear_backend,
            'must be "auto", "aten" or "onednn"',
        )


@dataclass(kw_only=True)
class CompositeTrainConfig(TrainConfig):
    """A composite-scheme training file: the simple one's keys, with a loss, optimiser and
    schedule for the generator (params_g) and the critic (params_d)."""

    loss: CompositeLossConfig
    optimizer: CompositeOptimizerConfig
    scheduler: CompositeSchedulerConfig

    @property
    def vae_optimizer(self) -> AdamParams:
        return self.optimizer.params_g

    @property
    def vae_schedule(self) -> ScheduleParams | None:
        return self.scheduler.params_g


# Each scheme's training file layout.
TRAIN_CONFIGS: dict[str, type[TrainConfig]] = {
    "simple": TrainConfig,
    "composite": CompositeTrainConfig,
}


def _type_name(tp: Any) -> str:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(inner)}, or null"
    if dataclasses.is_dataclass(tp):
        return "an object"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item):
            return "a list of objects"
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}[item]
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _is_finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


_IS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Turn a JSON value into `tp`, or raise _FieldProblem at `where`."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(value, inner, where)
    if dataclasses.is_dataclass(tp):
        _need(isinstance(value, dict), where, value, "must be an object {...}")
        return _build(tp, value, where + ".")
    if typing.get_origin(tp) is list:
        _need(isinstance(value, list), where, value, f"must be {_type_name(tp)}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    _need(_IS[tp](value), where, value, f"must be {_type_name(tp)}")
    if tp is int:
        _need(abs(value) < 2**63, where, value, "is too large; keep it below 2**63")
    if tp is float:
        _need(_is_finite(value), where, value, "must be a finite number")
    return float(value) if tp is float else value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a JSON object, checking keys, types and ranges."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(known)}"
            raise _FieldProblem(prefix + json.dumps(key)[1:-1], data[key], f"unknown key; {hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _FieldProblem(
                prefix + f.name, None, f"is missing; add it ({_type_name(hints[f.name])})"
            )
    obj = cls(**kwargs)
    try:
        if hasattr(obj, "check"):  # blocks that only group others have nothing of their own
            obj.check()
    except _FieldProblem as problem:
        problem.where = prefix + problem.where
        raise
    return obj


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object's pairs as a dict, refusing a key given twice (json keeps the last)."""
    data = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def read_json(path: str | Path) -> dict:
    """The JSON object in file `path`; a file that is not one raises one-line ConfigError."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path}: is not a regular file; point at a .json config")
    try:
        data = json.loads(path.read_text(), object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise ConfigError(
            f"{path}: key {json.dumps(e.key)} appears twice in one object; keep one"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror}); check the path") from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg}); fix the syntax"
        ) from None
    except (UnicodeDecodeError, RecursionError):
        raise ConfigError(f"{path}: not a JSON text file; point at a .json config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a JSON object {{...}}, got {_show(data)}")
    return data


def config_from_dict(
    data: dict, cls: type[T], source: str, settings: dict[str, Any] | None = None
) -> T:
    """Build `cls` from a parsed JSON object (a config file, or the copy a checkpoint keeps, where
    fields added to `cls` since it was saved take their defaults); files in round 1's layout are
    read through utils/legacy.py first. `settings` ({dotted key: value}, train.py's --set) change
    the object before it is checked, so they pass the same checks as the file. A problem raises
    one-line ConfigError naming `source`, or the --set that caused it."""
    if cls is ModelConfig:
        data = upgrade_model_config(data)
    elif issubclass(cls, TrainConfig):
        data = upgrade_train_config(data, composite=issubclass(cls, CompositeTrainConfig))
    settings = settings or {}
    for key, value in settings.items():
        data = _set_dotted(data, key, value)
    try:
        return _build(cls, data)
    except _FieldProblem as p:
        value = "" if p.value is None and "missing" in p.problem else f" = {_show(p.value)}"
        setting = next((k for k in settings if p.where == k or p.where.startswith(k + ".")), None)
        if setting is not None:
            source = f"--set {setting}={_show(settings[setting])}"
        raise ConfigError(f"{source}: field '{p.where}'{value} {p.problem}") from None


def _set_dotted(data: dict, key: str, value: Any) -> dict:
    """A copy of `data` with the field at dotted path `key` set to `value`; objects missing or
    null on the way are created."""
    head, _, rest = key.partition(".")
    if not rest:
        return {**data, head: value}
    inner = data.get(head)
    if inner is None:
        inner = {}
    if not isinstance(inner, dict):
        raise ConfigError(
            f"--set {key}=...: field '{head}' is {_show(inner)}, not an object, so it has no "
            f"field '{rest}'"
        )
    return {**data, head: _set_dotted(inner, rest, value)}


def parse_settings(texts: list[str], scheme: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """train.py's --set KEY=VALUE arguments as ({model config key: value}, {training config key:
    value}): KEY is a dotted field path whose first part says which config it changes; VALUE is
    JSON. A malformed one raises one-line ConfigError saying how to write it."""
    model_keys = [f.name for f in dataclasses.fields(ModelConfig)]
    train_keys = [f.name for f in dataclasses.fields(TRAIN_CONFIGS[scheme])]
    model, train = {}, {}
    for text in texts:
        key, equals, raw = text.partition("=")
        if not equals or any(part == "" for part in key.split(".")):
            raise ConfigError(
                f"--set {text}: write KEY=VALUE with KEY a dotted field path, e.g. "
                "--set loss.params.beta=2"
            )
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            raise ConfigError(
                f"--set {text}: the value {raw!r} is not JSON; write strings in double quotes, "
                f"e.g. --set '{key}=\"{raw}\"'"
            ) from None
        top = key.split(".")[0]
        if top not in model_keys + train_keys:
            raise ConfigError(
                f"--set {text}: '{top}' is neither a training config field "
                f"({', '.join(train_keys)}) nor a model config field ({', '.join(model_keys)})"
            )
        (model if top in model_keys else train)[key] = value
    return model, train


def load_model_config(path: str | Path, settings: dict[str, Any] | None = None) -> ModelConfig:
    return config_from_dict(read_json(path), ModelConfig, str(path), settings)


def load_train_config(
    path: str | Path, scheme: str, settings: dict[str, Any] | None = None
) -> TrainConfig:
    """The training file `path` in `scheme`'s layout. A file whose optimizer block is in the
    other scheme's layout is refused with the --scheme that reads it."""
    data = read_json(path)
    optimizer = data.get("optimizer")
    if isinstance(optimizer, dict) and optimizer and not is_round1_train(data):
        for other, cls in TRAIN_CONFIGS.items():
            names = {f.name for f in dataclasses.fields(typing.get_type_hints(cls)["optimizer"])}
            if other != scheme and optimizer.keys() <= names:
                raise ConfigError(
                    f"{path}: is a {other}-scheme training config (optimizer."
                    f"{'/'.join(sorted(names))}), but --scheme is {scheme}; pass --scheme "
                    f"{other}, or a {scheme}-scheme config such as "
                    f"configs/train_{scheme}_config.json"
                )
    return config_from_dict(data, TRAIN_CONFIGS[scheme], str(path), settings)


def with_overrides(config: T, overrides: dict[str, tuple[str, Any]]) -> T:
    """`config` with top-level fields replaced, {field: (flag, value)}, checked as a file's are;
    a bad value raises one-line ConfigError naming the flag."""
    changed = dataclasses.replace(config, **{k: v for k, (_, v) in overrides.items()})
    try:
        changed.check()
    except _FieldProblem as p:
        flag = overrides[p.where][0] if p.where in overrides else p.where
        raise ConfigError(f"{flag} {_show(p.value)}: {p.problem}") from None
    return changed


def check_same_dataset(model_cfg: ModelConfig, train_cfg: TrainConfig, model_path: str) -> None:
    """Refuse a perceptual backbone trained on another dataset than the run trains on (its
    `weights` name a dataset: the MNIST CNN's do, VGG16's ImageNet weights do not)."""
    pips, dataset = model_cfg.pips_config, train_cfg.data.dataset
    if pips is None or pips.weights not in DATASETS or pips.weights == dataset:
        return
    raise ConfigError(
        f"{model_path}: field 'pips_config.weights' = {json.dumps(pips.weights)} is the PIPS "
        f"backbone trained on {DATASETS[pips.weights].title}, but the run trains on "
        f"{DATASETS[dataset].title} (data.dataset); use a model config whose pips_config.weights "
        f"is {json.dumps(dataset)}, e.g. configs/model_composite_{dataset}_config.json"
    )


def config_json(config: Any) -> str:
    """The resolved config as the JSON text a run folder keeps."""
    return json.dumps(dataclasses.asdict(config), indent=2) + "\n"
