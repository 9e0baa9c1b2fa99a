"""Shared test fixtures: small MNIST-format IDX files written by the tests themselves, and the
real MNIST where there is one. (Helpers that are not fixtures: tests/helpers.py.)"""

import os
import sys
from pathlib import Path

import pytest

# The repo root on the path, so that `tests.helpers` and the repo's modules import under a bare
# `pytest` too (python -m pytest puts the working folder there itself).
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers import make_mnist_root, real_mnist_root  # noqa: E402


def pytest_configure(config):
    """Under pytest-xdist (pyproject.toml's addopts: one worker per core) each worker runs its
    tests, and the scripts they start, on one thread, so the workers share the cores instead of
    fighting over them. The few tests that need a given thread count set it themselves."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory) -> Path:
    return make_mnist_root(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The real MNIST root: $MNIST_ROOT (.ci/run sets it when ../shared/data exists), else the
    repo's data/ when it holds MNIST/raw/. Without either the real-data tests are reported as
    skipped, never as passed."""
    root = real_mnist_root(os.environ)
    if root is None:
        pytest.skip(
            "no real MNIST: set MNIST_ROOT to a folder holding MNIST/raw/, or put it in data/"
        )
    return root


@pytest.fixture(scope="session")
def real_fashion_mnist() -> Path:
    """The real Fashion-MNIST root: $FASHION_MNIST_ROOT (.ci/run sets it when
    ../shared/data/FashionMNIST exists), else the repo's data/ when it holds FashionMNIST/raw/.
    Without either the real-data tests are reported as skipped, never as passed."""
    root = os.environ.get("FASHION_MNIST_ROOT")
    if not root and (REPO_ROOT / "data" / "FashionMNIST" / "raw").is_dir():
        root = str(REPO_ROOT / "data")
    if not root:
        pytest.skip(
            "no real Fashion-MNIST: set FASHION_MNIST_ROOT to a folder holding FashionMNIST/raw/"
            " (or the four files, plain or .gz), or put it in data/"
        )
    return Path(root)
