"""The declared dependencies agree, and TensorBoard is optional: without it, a run that asks
for it is refused in one line."""

import re
import sys

import pytest

from tests.helpers import REPO
from utils.errors import UserError
from utils.tensorboard_log import require_tensorboard


def _package(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def _requirements(path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {_package(line): line for line in lines if line and not line.startswith("-")}


def _project() -> dict:
    """pyproject.toml's [project] table (tomllib is in the standard library from Python 3.11)."""
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_requirements_txt_and_pyproject_list_the_same_runtime_packages():
    project = _project()
    declared = {_package(r): r for r in project["dependencies"]}
    assert declared == _requirements(REPO / "requirements.txt")
    assert "tensorboard" not in declared
    assert [_package(r) for r in project["optional-dependencies"]["tensorboard"]] == ["tensorboard"]


def test_dev_extras_and_requirements_dev_list_the_same_packages():
    project = _project()
    dev = {_package(r): r for r in project["optional-dependencies"]["dev"]}
    assert dev == _requirements(REPO / "requirements-dev.txt")


def test_missing_tensorboard_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises
    with pytest.raises(UserError) as err:
        require_tensorboard()
    assert str(err.value) == (
        "--tensorboard / the config's 'tensorboard': needs the tensorboard package "
        "(pip install tensorboard), or set it to false"
    )
