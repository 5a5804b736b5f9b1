"""Checkpoint and weight files, crash-safe, loaded with named errors.

Every file of the package (checkpoints, exported weights, their configs) is written to a
temporary file in the target folder, flushed to disk, and renamed over the old one, so at every
moment the folder holds either the previous complete file or the new complete one, never a torn
file. Keep to tensors and plain Python values, so that everything saved here loads with
``torch.load(..., weights_only=True)``. A file that cannot be read is a :class:`CheckpointError`
naming it, and :func:`strip_wrapper_prefixes` gives the weights of a wrapped model (DDP,
``torch.compile``) under the plain module's names.
"""

from __future__ import annotations

import glob
import os
import pickle
import socket
import tempfile
from typing import Any, BinaryIO, Callable, Mapping

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

__all__ = ["CheckpointError", "latest_checkpoint", "load_checkpoint", "save_checkpoint", "strip_wrapper_prefixes", "write_atomically"]

LAST_CHECKPOINT = "checkpoint_last.pth"

# Prefixes wrappers add to parameter names: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not supported on every platform/file system.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file atomically: ``write(f)`` fills a temporary file beside ``path``, which replaces it.

    The data goes to a temporary file in the same folder, is fsync'ed, and replaces ``path``
    with :func:`os.replace`; the folder is fsync'ed too. If the process dies at any point,
    ``path`` still holds the previous complete file (or does not exist yet), and a leftover
    temporary file is removed by the next write on the same host. The temporary file is named
    after the host and process writing it, so a write removes only the leftovers of processes
    that are gone, never the file another live process is writing.

    Args:
        path: destination file; its folder is created if missing.
        write: writes the content to the binary file object it is given.

    Raises:
        OSError: the file could not be written; the message names ``path`` and the cause.
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    prefix = f".tmp-{name}."
    for stale in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*")):
        if _writer_is_gone(os.path.basename(stale)[len(prefix):]):
            try:
                os.remove(stale)
            except FileNotFoundError:  # its writer's own clean-up was faster
                pass
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{socket.gethostname()}.{os.getpid()}.", dir=directory)
    try:
        # mkstemp makes the file private (0600); the run's other outputs follow the umask.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = _os_error(exc)
        if cause is not None:  # torch reports a failed write as "unexpected pos"; say what failed
            raise OSError(cause.errno, f"could not write {path}: {cause.strerror or cause}") from exc
        raise
    _fsync_dir(directory)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically with :func:`torch.save` (see :func:`write_atomically`).

    Args:
        state: a mapping of what :func:`torch.save` accepts; keep to tensors, state dicts and
            plain Python values so that :func:`load_checkpoint` can use ``weights_only=True``.
            A dict (a module's ``state_dict()`` too, with its version metadata) is saved as it
            is, another mapping as a dict.
        path: destination file; its folder is created if missing.

    Example:
        >>> save_checkpoint({"model": model.state_dict(), "step": 100}, "runs/a/checkpoint_last.pth")
    """
    write_atomically(path, lambda f: torch.save(state if isinstance(state, dict) else dict(state), f))


def _writer_is_gone(tag: str) -> bool:
    """Whether the process named in a temporary file's ``<host>.<pid>.<random>`` tag has ended.

    Only a process on this host can be checked; a file of another host, or one whose name
    carries no writer, is left alone.
    """
    host, _, pid = tag.rpartition(".")[0].rpartition(".")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error(exc: BaseException) -> OSError | None:
    """The operating-system error behind ``exc`` (torch wraps a failed write in a RuntimeError)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint: empty, torn, or something else; the message names the path."""


def load_checkpoint(path: str | os.PathLike, map_location: torch.device | str = "cpu", weights_only: bool = True) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        map_location: device for all tensors; pass each rank's own device so that no rank
            allocates memory on another rank's GPU.
        weights_only: use PyTorch's restricted unpickler (safe for untrusted files). Only
            pass ``False`` for trusted files holding arbitrary Python objects.

    Returns:
        The saved dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is empty, torn (cut short, e.g. by a crash while copying it),
            not a dict saved by :func:`torch.save`, or (with ``weights_only``) holds Python
            objects the restricted unpickler refuses; the message names the path.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except OSError:  # missing or unreadable file: the operating system's error says it best
        raise
    except pickle.UnpicklingError as exc:
        # A readable file with other Python objects in it: torch names the global it refused.
        if not (weights_only and "global" in str(exc)):
            raise CheckpointError(_unreadable(path, exc)) from exc
        refused = str(exc).split("WeightsUnpickler error:")[-1].strip().split(" was not")[0]
        raise CheckpointError(
            f"{path} holds objects that torch.load(weights_only=True) refuses ({refused}); if you trust "
            "the file, load it with weights_only=False (--unsafe-load in the example scripts)"
        ) from exc
    except Exception as exc:  # torch and pickle fail on a damaged file in many ways (EOFError, KeyError, ...)
        raise CheckpointError(_unreadable(path, exc)) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def _unreadable(path: str, exc: Exception) -> str:
    return (
        f"{path} is not a readable checkpoint ({type(exc).__name__}: {str(exc).split('. ')[0].strip(chr(39))}); "
        "it may be torn (cut short while it was written or copied) or not a file saved by torch.save"
    )


def strip_wrapper_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``state``, in its order, with the key prefixes of wrapped modules removed.

    ``DistributedDataParallel`` saves a model's weights under ``module.``, ``torch.compile``
    under ``_orig_mod.``. Leading prefixes may be nested and mixed (``module._orig_mod.``,
    ``_orig_mod.module.``: DDP around a compiled model, or the reverse); a compiled submodule
    leaves ``._orig_mod.`` inside the key (``trunk._orig_mod.body.x``). Of keys that strip to
    one name, only one is kept.

    Args:
        state: a ``state_dict`` (``{name: tensor}``), of a wrapped module or not.

    Returns:
        ``{plain name: value}``, the values themselves (not copied).

    Example:
        >>> strip_wrapper_prefixes({"module._orig_mod.trunk.body.conv1.weight": w})
        {'trunk.body.conv1.weight': w}
    """
    # The names are stripped on a {name: original key} dict: consume_prefix_in_state_dict_if_present
    # edits in place and moves renamed keys to the end, and neither may reach the caller's state.
    names = {key: key for key in state}
    while any(name.startswith(_WRAPPER_PREFIXES) for name in names):  # one level per call
        for prefix in _WRAPPER_PREFIXES:
            consume_prefix_in_state_dict_if_present(names, prefix)
    stripped = {key: name for name, key in names.items()}
    return {stripped[key].replace("._orig_mod.", "."): value for key, value in state.items() if key in stripped}


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """Path of the checkpoint to resume from in ``directory`` (``checkpoint_last.pth``), or None."""
    path = os.path.join(os.fspath(directory), LAST_CHECKPOINT)
    return path if os.path.isfile(path) else None
