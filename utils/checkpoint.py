"""Checkpoint files: written atomically, read with `weights_only=True`, matched to a model clearly.

File keys follow the reference code (`model_state_dict`, `encoder_state_dict`, ...), so its
checkpoints load here and ours load there.
"""

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.dataset import DATASETS
from utils.errors import CheckpointError, UserError
from utils.legacy import upgrade_checkpoint


def _umask() -> int:
    """The process's umask, read on each write (a caller may change it). Linux shows it in
    /proc/self/status; elsewhere os.umask, which can only read it by setting it, sets the most
    private mask for that instant (a file another thread creates then is private, never open)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def atomic_write(path: Path, write: Any) -> None:
    """Call write(file_object) on a temporary file beside `path`, then rename it into place,
    so a crash at any instant leaves either the old file or the complete new one. The file gets
    the mode a plain open() would give it (mkstemp's temporary file is private, 0o600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _WriteErrors:
    """A binary file that remembers the OSError a write raised: torch.save reports a failed write
    (a full disk, a file-size limit) as a RuntimeError about its zip writer, not the cause."""

    def __init__(self, file: Any):
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


# The payload key holding content_hash() of the rest, checked on every load: a checkpoint whose
# bytes changed on disk (bit flips, a bad copy) is refused instead of trained or drawn from.
HASH_KEY = "content_sha256"


def content_hash(value: Any) -> str:
    """SHA-256 of a checkpoint payload's content: every key, tensor (dtype, shape, bytes) and
    plain value, in order."""
    digest = hashlib.sha256()

    def add(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().contiguous()
            digest.update(f"T{item.dtype}{tuple(item.shape)}".encode())
            digest.update(item.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            digest.update(f"D{len(item)}".encode())
            for key, inner in item.items():
                digest.update(repr(key).encode())
                add(inner)
        elif isinstance(item, list | tuple):
            digest.update(f"L{len(item)}".encode())
            for inner in item:
                add(inner)
        else:
            digest.update(repr(item).encode())

    add(value)
    return digest.hexdigest()


def save_checkpoint(payload: dict[str, Any], path: Path, flag: str = "--save_dir") -> None:
    """Write `payload` (with its content hash) to `path` atomically; a failed write (the old file,
    if any, untouched) is one UserError line naming its cause and the flag (`flag`) that chooses
    another place."""
    payload = {**payload, HASH_KEY: content_hash(payload)}
    writer = None

    def save(file: Any) -> None:
        nonlocal writer
        writer = _WriteErrors(file)
        torch.save(payload, writer)

    try:
        atomic_write(path, save)
    except (OSError, RuntimeError) as e:
        cause = writer.error if writer is not None and writer.error is not None else e
        if not isinstance(cause, OSError):
            raise
        raise UserError(
            f"{path}: cannot write checkpoint ({cause.strerror}); "
            f"free disk space or choose another {flag}"
        ) from None


def load_checkpoint(
    path: str | Path, map_location: torch.device | str = "cpu", flag: str = "--ckpt_path"
) -> dict[str, Any]:
    """Read a checkpoint safely (tensors and plain containers only), in the current layout
    (utils/legacy.py upgrades round 1's); `flag` names where the path came from, for messages."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check {flag}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, foreign format: all unreadable
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}); is the file complete?"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: holds a {type(payload).__name__}, not a checkpoint dict")
    saved_hash = payload.pop(HASH_KEY, None)  # none in files written before it, or elsewhere
    if saved_hash is not None and saved_hash != content_hash(payload):
        raise CheckpointError(
            f"{path}: its content no longer matches the hash written with it (the file was "
            "damaged on disk or in a copy); use an older checkpoint"
        )
    return upgrade_checkpoint(payload)


def checkpoint_fields(path: Path, *keys: str) -> tuple[Any, ...]:
    """The values of `keys` in a checkpoint, read lazily (None for a key it lacks); all None
    when the file is not a readable checkpoint."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable file is simply not a candidate
        return (None,) * len(keys)
    if not isinstance(payload, dict):
        return (None,) * len(keys)
    return tuple(payload.get(key) for key in keys)


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was written at; -1 when the file is unreadable or records none."""
    (step,) = checkpoint_fields(path, "step")
    return step if isinstance(step, int) else -1


def vae_state_from(payload: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The VAE weights in a checkpoint: `model_state_dict`, or the encoder and decoder dicts,
    or the payload itself when it is a bare state dict."""
    if "model_state_dict" in payload:
        return payload["model_state_dict"]
    if "encoder_state_dict" in payload and "decoder_state_dict" in payload:
        return {
            **{f"encoder.{k}": v for k, v in payload["encoder_state_dict"].items()},
            **{f"decoder.{k}": v for k, v in payload["decoder_state_dict"].items()},
        }
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    raise CheckpointError(
        f"{path}: has no model_state_dict (keys: {', '.join(sorted(payload))}); "
        "pass a checkpoint written by train.py"
    )


def trained_on(payload: dict[str, Any], path: str | Path) -> str:
    """The dataset (a key of utils/dataset.DATASETS) a checkpoint's weights learnt: train.py's
    weights files name it, resumable checkpoints hold it in their train config; a checkpoint
    that says neither is MNIST's (the reference's, and this repo's before Fashion-MNIST)."""
    train_config = payload.get("train_config")
    data = train_config.get("data") if isinstance(train_config, dict) else None
    default = data.get("dataset", "mnist") if isinstance(data, dict) else "mnist"
    dataset = payload.get("dataset", default)
    if dataset not in DATASETS:
        raise CheckpointError(
            f"{path}: names dataset {dataset!r}, not one of {', '.join(DATASETS)}; pass a file "
            "this repo's scripts wrote"
        )
    return dataset


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load `state` into `module`, naming the first tensor that is missing, extra or misshapen."""
    own = module.state_dict()
    fix = "use the --model_config the checkpoint was trained with"
    for name, tensor in own.items():
        if name not in state:
            raise CheckpointError(f"{path}: lacks tensor '{name}' that the model needs; {fix}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {list(state[name].shape)} but the model "
                f"expects {list(tensor.shape)}; {fix}"
            )
    extra = [name for name in state if name not in own]
    if extra:
        raise CheckpointError(f"{path}: has tensor '{extra[0]}' that the model lacks; {fix}")
    module.load_state_dict(state)
