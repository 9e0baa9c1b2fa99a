"""User-facing errors: raised deep in the code, printed as one line by the entry scripts."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, bad flag); its message is one line."""

    # Set on the ranks of a torchrun job other than 0 when every rank raises the same error
    # (utils/distributed.py), so that rank 0 alone prints it.
    quiet = False


class ConfigError(UserError):
    """A JSON config that is malformed, has an unknown key, a wrong type or a value out of range."""


class DataError(UserError):
    """MNIST files that are missing or not valid IDX files."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


def first_line(error: BaseException) -> str:
    """What went wrong, for a one-line message: the first line of the exception's reason
    (URLError) or message, else its type name."""
    text = str(getattr(error, "reason", "") or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM to a script that turns it into this (utils/comparison.forward_stop_signals): it
    stops as on Ctrl-C, with SIGTERM's exit code 143 (utils/cli.run_cli)."""
