"""The config loader, fuzzed: any file yields a valid config or one ConfigError line.

Mutations start from the shipped model file with every block (model_config, discriminator_config,
pips_config) and from both schemes' training files, each read in its own scheme.
"""

import copy
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers import REPO
from utils.config import (
    CompositeTrainConfig,
    ModelConfig,
    TrainConfig,
    load_model_config,
    load_train_config,
)
from utils.errors import ConfigError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 10**400])
    | st.floats()
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)

# kind: the shipped file mutated, and what a valid result must be.
SHIPPED = {
    "model": json.loads((REPO / "configs/model_composite_mnist_config.json").read_text()),
    "simple": json.loads((REPO / "configs/train_simple_config.json").read_text()),
    "composite": json.loads((REPO / "configs/train_composite_config.json").read_text()),
}
KINDS = list(SHIPPED)
LOADED_TYPE = {"model": ModelConfig, "simple": TrainConfig, "composite": CompositeTrainConfig}


def field_paths(tree: object, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON tree (dict keys and list indices)."""
    paths = [prefix] if prefix else []
    children = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list)
        else []
    )
    for key, child in children:
        paths += field_paths(child, (*prefix, key))
    return paths


PATHS = [(kind, p) for kind in KINDS for p in field_paths(SHIPPED[kind])]


def load_or_one_line(text: str | bytes, kind: str) -> object:
    """The config `text` holds, read as `kind`, or None after checking the error is one line."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        try:
            if kind == "model":
                return load_model_config(path)
            return load_train_config(path, kind)
        except ConfigError as e:
            message = str(e)
            assert "\n" not in message and message.startswith(f"{path}: "), message
            return None


def check_loaded(config: object, kind: str) -> None:
    assert config is None or type(config) is LOADED_TYPE[kind], config


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_shipped_file_loads_as_its_kind():
    for kind, data in SHIPPED.items():
        config = load_or_one_line(json.dumps(data), kind)
        assert type(config) is LOADED_TYPE[kind]


@fuzz
@given(value=json_values, kind=st.sampled_from(KINDS))
def test_any_json_document(value, kind):
    check_loaded(load_or_one_line(json.dumps(value), kind), kind)


@fuzz
@given(where=st.sampled_from(PATHS), value=json_values)
@example(where=("model", ("model_config", "encoder", "dropout")), value=10**400)  # beyond float
@example(where=("simple", ("seed",)), value=2**64)  # beyond torch.manual_seed's range
@example(where=("composite", ("scheduler", "params_d")), value=None)  # constant critic LR
@example(where=("composite", ("optimizer", "params_d")), value={"lr": 1e-4})  # defaults
def test_any_value_in_any_field_of_a_shipped_config(where, value):
    kind, path = where
    data = copy.deepcopy(SHIPPED[kind])
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    check_loaded(load_or_one_line(json.dumps(data), kind), kind)


@pytest.mark.parametrize(
    "kind, path", PATHS, ids=[f"{k}:{'.'.join(map(str, p))}" for k, p in PATHS]
)
def test_any_field_removed_from_a_shipped_config(kind, path):
    data = copy.deepcopy(SHIPPED[kind])
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    check_loaded(load_or_one_line(json.dumps(data), kind), kind)


@fuzz
@given(raw=st.binary(max_size=200), kind=st.sampled_from(KINDS))
def test_any_bytes(raw, kind):
    check_loaded(load_or_one_line(raw, kind), kind)
