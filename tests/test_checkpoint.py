"""utils/checkpoint.py: checkpoints are read as tensors and plain containers only, never as code."""

from pathlib import Path

import pytest
import torch

from utils.checkpoint import checkpoint_step, load_checkpoint
from utils.errors import CheckpointError


class WritesAMarker:
    """Unpickling this runs code: it calls exec, which writes `marker` (a planted payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.fixture
def booby_trapped(tmp_path) -> tuple[Path, Path]:
    """A checkpoint that looks like any other but holds a pickled object, and its marker."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "checkpoint_epoch_001.pth"
    torch.save(
        {"step": 7, "model_state_dict": {"w": torch.ones(2)}, "extra": WritesAMarker(marker)}, path
    )
    assert not marker.exists()
    return path, marker


def test_load_checkpoint_refuses_a_pickled_object_in_one_line_without_running_it(booby_trapped):
    path, marker = booby_trapped
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: not a readable PyTorch checkpoint (")
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_checkpoint_step_takes_a_pickled_object_for_unreadable_without_running_it(booby_trapped):
    path, marker = booby_trapped
    assert checkpoint_step(path) == -1  # not a candidate to resume from
    assert not marker.exists()
    torch.save({"step": 7}, path)
    assert checkpoint_step(path) == 7  # the same file without the object is read
