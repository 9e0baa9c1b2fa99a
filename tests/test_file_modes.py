"""Files the code writes get the mode the umask gives a plain open(), not mkstemp's private
0o600."""

import os
import stat

import pytest
import torch

from utils.checkpoint import save_checkpoint
from utils.outputs import write_output


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    save_checkpoint({"w": torch.zeros(2)}, tmp_path / "ckpt.pth")
    write_output(tmp_path / "config.json", b"{}\n", "--save_dir")
    assert stat.S_IMODE((tmp_path / "ckpt.pth").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == mode
    assert os.umask(mask) == mask  # the write left the umask as it found it
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
