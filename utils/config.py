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

from utils.errors import ConfigError

T = TypeVar("T")

# The weights each perceptual backbone can use: VGG16's ImageNet file (or random, smoke tests
# only), or the MNIST CNN that model/mnist_cnn.py defines and the project trains itself.
PIPS_WEIGHTS = {"vgg16": ("imagenet", "random"), "mnist_cnn": ("mnist",)}
MNIST_CNN_INPUT = 28


class _FieldProblem(Exception):
    """A bad value, located by its dotted path inside one config file."""

    def __init__(self, where: str, value: Any, problem: str):
        super().__init__(problem)
        self.where, self.value, self.problem = where, value, problem


def _need(ok: bool, where: str, value: Any, problem: str) -> None:
    if not ok:
        raise _FieldProblem(where, value, problem)


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
class DiscriminatorConfig:
    """PatchGAN critic: channel widths and one (kernel, stride, padding) per ConvLayer."""

    channels: list[int]
    kernel: list[int]
    stride: list[int]
    padding: list[int]

    def check(self) -> None:
        _need(
            len(self.channels) > 0,
            "channels",
            self.channels,
            "must list at least one width, e.g. [32, 64, 128, 256]",
        )
        for i, width in enumerate(self.channels):
            _need(width > 0, f"channels[{i}]", width, "must be a positive width")
        layers = len(self.channels) - 1
        for name in ("kernel", "stride", "padding"):
            values = getattr(self, name)
            _need(
                len(values) == layers,
                name,
                values,
                f"needs one entry per ConvLayer: len(channels) - 1 = {layers} entries, "
                f"got {len(values)}",
            )
            smallest = 0 if name == "padding" else 1
            for i, v in enumerate(values):
                _need(v >= smallest, f"{name}[{i}]", v, f"must be >= {smallest}")


@dataclass
class PIPSConfig:
    """Perceptual loss backbone. Unset fields take the backbone's defaults: vgg16 224 / "imagenet"
    (the file must be in torch's hub cache); mnist_cnn 28 / "mnist" / its default weights_path."""

    backbone: str = "vgg16"
    input_size: int | None = None
    weights: str | None = None
    weights_path: str | None = None

    def __post_init__(self) -> None:
        mnist = self.backbone == "mnist_cnn"
        if self.input_size is None:
            self.input_size = MNIST_CNN_INPUT if mnist else 224
        if self.weights is None:
            self.weights = "mnist" if mnist else "imagenet"
        if mnist and self.weights_path is None:
            self.weights_path = "checkpoints/mnist_pips_cnn.pth"

    def check(self) -> None:
        _need(
            self.backbone in PIPS_WEIGHTS,
            "backbone",
            self.backbone,
            f"must be one of {', '.join(PIPS_WEIGHTS)}",
        )
        if self.backbone == "vgg16":
            _need(
                self.input_size >= 16,
                "input_size",
                self.input_size,
                "must be >= 16 (VGG16's four pooling stages), e.g. 224",
            )
            _need(
                self.weights_path is None,
                "weights_path",
                self.weights_path,
                "applies to backbone mnist_cnn only; VGG16's weights come from torch's hub cache",
            )
        else:
            _need(
                self.input_size == MNIST_CNN_INPUT,
                "input_size",
                self.input_size,
                f"must be {MNIST_CNN_INPUT} for mnist_cnn (its linear head is sized for 28x28)",
            )
            _need(
                self.weights_path.strip() != "",
                "weights_path",
                self.weights_path,
                "must name a file, e.g. checkpoints/mnist_pips_cnn.pth",
            )
        allowed = PIPS_WEIGHTS[self.backbone]
        _need(
            self.weights in allowed,
            "weights",
            self.weights,
            f"must be one of {', '.join(allowed)} for backbone {self.backbone}",
        )


@dataclass
class ModelConfig:
    """The VAE and, for the composite scheme, the discriminator and perceptual loss."""

    latent_dim: int
    encoder_config: MLPConfig
    decoder_config: MLPConfig
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    discriminator_config: DiscriminatorConfig | None = None
    pips_config: PIPSConfig | None = None

    def check(self) -> None:
        _need(self.latent_dim > 0, "latent_dim", self.latent_dim, "must be >= 1, e.g. 2")
        _need(
            len(self.image_shape) == 3 and all(s > 0 for s in self.image_shape),
            "image_shape",
            self.image_shape,
            "must be [channels, height, width], e.g. [1, 28, 28]",
        )
        if self.pips_config is not None and self.pips_config.backbone == "mnist_cnn":
            _need(
                self.image_shape[0] == 1,
                "image_shape",
                self.image_shape,
                "must have 1 channel for pips_config.backbone mnist_cnn (a grayscale CNN)",
            )


@dataclass
class LossConfig:
    """Weights of the loss terms and their schedules (beta warm-up, free bits, critic start)."""

    lambda_recon: float = 1.0
    beta: float = 4.0
    beta_warmup_epochs: float = 15.0
    free_bits: float = 0.2
    lambda_pips: float = 1.0
    lambda_disc: float = 0.5
    disc_start_ratio: float = 0.05

    def check(self) -> None:
        for name in (
            "lambda_recon",
            "beta",
            "beta_warmup_epochs",
            "free_bits",
            "lambda_pips",
            "lambda_disc",
        ):
            _need(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        _need(
            0.0 <= self.disc_start_ratio <= 1.0,
            "disc_start_ratio",
            self.disc_start_ratio,
            "must be in [0, 1], e.g. 0.05",
        )


@dataclass
class OptimizerParams:
    """Adam settings and the warm-up share of the warm-up + cosine schedule."""

    lr: float
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0

    def check(self) -> None:
        _need(self.lr > 0, "lr", self.lr, "must be > 0, e.g. 0.0005")
        _need(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _need(
            0.0 <= self.warmup_ratio < 1.0,
            "warmup_ratio",
            self.warmup_ratio,
            "must be in [0, 1), e.g. 0.1",
        )


@dataclass
class OptimizerConfig:
    params_g: OptimizerParams
    params_d: OptimizerParams | None = None

    def check(self) -> None:
        pass


@dataclass
class EarlyStoppingConfig:
    """Stop when the epoch's train loss has not dropped by more than `tol` for `patience` epochs."""

    patience: int
    tol: float = 0.0

    def check(self) -> None:
        _need(self.patience >= 1, "patience", self.patience, "must be >= 1, e.g. 5")
        _need(self.tol >= 0, "tol", self.tol, "must be >= 0, e.g. 0.001")


PRECISIONS = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    save_dir: str
    loss: LossConfig
    optimizer: OptimizerConfig
    num_epochs: int = 40
    seed: int = 42
    train_bs: int = 128
    val_bs: int = 128
    save_every: int = 5
    keep_checkpoints: int | None = 3
    early_stopping: EarlyStoppingConfig | None = None
    tensorboard: bool = False
    # Under torchrun: normalise with the whole global batch's statistics (SyncBatchNorm, CUDA
    # only) rather than each process's share; without torchrun there is nothing to synchronise.
    sync_batchnorm: bool = False
    # "bfloat16": forward passes and losses under torch.autocast (for GPUs with bfloat16 units);
    # weights, optimiser states and the logged loss terms stay float32.
    precision: str = "float32"
    # The library of the VAE's linear layers on the CPU (model/linear_backend.py): "auto" times
    # ATen (MKL) against oneDNN on the model's own shapes at start-up and takes oneDNN where it
    # is clearly faster; "aten" or "onednn" fixes it. CUDA always takes ATen.
    linear_backend: str = "auto"

    def check(self) -> None:
        _need(
            self.save_dir.strip() != "",
            "save_dir",
            self.save_dir,
            "must name a folder, e.g. checkpoints/simple",
        )
        _need(self.seed >= 0, "seed", self.seed, "must be >= 0, e.g. 42")
        for name in ("num_epochs", "train_bs", "val_bs", "save_every"):
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


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "an object"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
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
        obj.check()
    except _FieldProblem as problem:
        problem.where = prefix + problem.where
        raise
    return obj


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_config(path: str | Path, cls: type[T]) -> T:
    """Read JSON file `path` into dataclass `cls`; any problem raises one-line ConfigError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
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
    return config_from_dict(data, cls, str(path))


def config_from_dict(data: dict, cls: type[T], source: str) -> T:
    """Build `cls` from a parsed JSON object (a config file, or the copy a checkpoint keeps, where
    fields added to `cls` since it was saved take their defaults); a problem raises one-line
    ConfigError naming `source`."""
    try:
        return _build(cls, data)
    except _FieldProblem as p:
        value = "" if p.value is None and "missing" in p.problem else f" = {_show(p.value)}"
        raise ConfigError(f"{source}: field '{p.where}'{value} {p.problem}") from None


def load_model_config(path: str | Path) -> ModelConfig:
    return load_config(path, ModelConfig)


def load_train_config(path: str | Path) -> TrainConfig:
    return load_config(path, TrainConfig)


def config_json(config: Any) -> str:
    """The resolved config as the JSON text a run folder keeps."""
    return json.dumps(dataclasses.asdict(config), indent=2) + "\n"
