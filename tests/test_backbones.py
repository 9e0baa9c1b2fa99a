"""The backbone table (model/backbones.py) is the one place a perceptual backbone is described:
the config's defaults, the network loaders and the MNIST network's default file come from it,
and model/ reads nothing from utils/ but config types."""

import ast
import subprocess
import sys

import pytest
from torch import nn

from model.backbones import BACKBONES, DEFAULT_BACKBONE, default_weights_path
from model.mnist_cnn import NETWORKS
from tests.helpers import REPO
from utils.config import PIPSConfig
from utils.networks import BACKBONE_LAYERS, build_pips


@pytest.mark.parametrize("name", list(BACKBONES))
def test_unset_config_fields_take_the_tables_defaults(name):
    spec = BACKBONES[name]
    config = PIPSConfig(name)
    config.check()
    assert (config.input_size, config.weights, config.weights_path) == (
        spec.input_size,
        spec.weights[0],
        default_weights_path(name, spec.weights[0]),
    )


def test_every_backbone_has_a_loader_and_the_default_is_one_of_them():
    assert BACKBONE_LAYERS.keys() == BACKBONES.keys()
    assert PIPSConfig().backbone == DEFAULT_BACKBONE in BACKBONES


def test_the_pips_network_defaults_to_the_backbones_file_of_each_dataset():
    for weights, path in (
        ("mnist", "checkpoints/mnist_pips_cnn.pth"),
        ("fashion_mnist", "checkpoints/fashion_mnist_pips_cnn.pth"),
    ):
        assert NETWORKS["pips"].default_path(weights) == path
        assert PIPSConfig(backbone="mnist_cnn", weights=weights).weights_path == path
    assert (
        NETWORKS["eval"].default_path("fashion_mnist") == "checkpoints/fashion_mnist_eval_net.pth"
    )


def test_slices_are_consecutive_and_cover_the_cut_layers():
    for spec in BACKBONES.values():
        starts, ends = zip(*spec.slices, strict=True)
        assert starts[0] == 0 and list(starts[1:]) == list(ends[:-1])


def test_vgg16_slices_cut_the_layers_the_table_lists():
    pips = build_pips(PIPSConfig(weights="random", input_size=32))
    bounds = BACKBONES["vgg16"].slices
    assert [len(s) for s in pips.slices] == [end - start for start, end in bounds]
    assert all(isinstance(s, nn.Sequential) for s in pips.slices)
    assert pips.imagenet and pips.input_size == 32


def _imports(path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module)
    return names


def test_model_imports_only_torch_the_standard_library_model_and_config_types():
    allowed = {"torch", "torchvision", "model", "__future__"} | set(sys.stdlib_module_names)
    for path in sorted((REPO / "model").glob("*.py")):
        for name in _imports(path):
            assert name.split(".")[0] in allowed or name == "utils.config", (path.name, name)


def test_evaluate_and_the_loading_helpers_do_not_import_matplotlib():
    code = "import sys, evaluate, utils.trained_vae; assert 'matplotlib' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
