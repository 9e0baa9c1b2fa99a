"""The config loader, fuzzed: any file yields a valid config or one ConfigError line."""

import copy
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from utils.config import ModelConfig, TrainConfig, load_model_config, load_train_config
from utils.errors import ConfigError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([0, -1, 10**400]) | st.floats()
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip

SHIPPED = {
    "model": json.loads((REPO / "configs/model_composite_config.json").read_text()),
    "train": json.loads((REPO / "configs/train_composite_config.json").read_text()),
}


def field_paths(tree: object, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON tree (dict keys and list indices)."""
    paths = [prefix] if prefix else []
    children = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(
        tree, list) else []  # fmt: skip
    for key, child in children:
        paths += field_paths(child, (*prefix, key))
    return paths


PATHS = [("model", p) for p in field_paths(SHIPPED["model"])] + [
    ("train", p) for p in field_paths(SHIPPED["train"])
]


def load_or_one_line(text: str | bytes, kind: str) -> object:
    loader = load_model_config if kind == "model" else load_train_config
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        try:
            return loader(path)
        except ConfigError as e:
            message = str(e)
            assert "\n" not in message and message.startswith(f"{path}: "), message
            return None


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(value=json_values, kind=st.sampled_from(["model", "train"]))
def test_any_json_document(value, kind):
    config = load_or_one_line(json.dumps(value), kind)
    assert config is None or isinstance(config, ModelConfig | TrainConfig)


@fuzz
@given(where=st.sampled_from(PATHS), value=json_values)
@example(where=("model", ("encoder_config", "dropout")), value=10**400)  # beyond float range
@example(where=("train", ("seed",)), value=2**64)  # beyond torch.manual_seed's range
def test_any_value_in_any_field_of_a_shipped_config(where, value):
    kind, path = where
    data = copy.deepcopy(SHIPPED[kind])
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    config = load_or_one_line(json.dumps(data), kind)
    assert config is None or isinstance(config, ModelConfig | TrainConfig)


@fuzz
@given(raw=st.binary(max_size=200), kind=st.sampled_from(["model", "train"]))
def test_any_bytes(raw, kind):
    load_or_one_line(raw, kind)
