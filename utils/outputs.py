"""Files the scripts write for the user (figures, results): checked before the work that fills
them, and written whole or not at all, a failure being one line that names the flag to change."""

from pathlib import Path

from utils.checkpoint import atomic_write
from utils.errors import UserError


def blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor folder of `path` when it is not a folder (a file stands
    where a folder must be made), else None."""
    for ancestor in path.parents:
        if ancestor.exists():
            return None if ancestor.is_dir() else ancestor
    return None


def check_output_path(path: Path, flag: str) -> None:
    """Refuse, before any work, an output path that cannot be written: one under a file, or
    an existing folder."""
    blocker = blocking_file(path)
    if blocker is not None:
        raise UserError(
            f"{path}: cannot write ({blocker} is a file, not a folder); choose another {flag}"
        )
    if path.is_dir():
        raise UserError(f"{path}: cannot write (it is a folder); choose another {flag}")


def write_output(path: Path, data: bytes, flag: str) -> None:
    """Write `data` to `path` atomically (utils.checkpoint.atomic_write: the old file, if any,
    stays until the new one is complete); a failure is one UserError line naming `flag`."""
    check_output_path(path, flag)
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        blocker = blocking_file(path)
        cause = f"{blocker} is a file, not a folder" if blocker else e.strerror or type(e).__name__
        raise UserError(f"{path}: cannot write ({cause}); choose another {flag}") from None
