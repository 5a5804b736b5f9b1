"""The output folder of a run: the files it writes, holding it for one run at a time, and moving an old run aside
instead of overwriting it."""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Mapping

import torch

from ..runtime.checkpoint import LAST_CHECKPOINT, CheckpointError, latest_checkpoint, load_checkpoint
from ..runtime.distributed import all_gather_object
from ..runtime.folder_lock import FolderLock, FolderLockedError
from ..trunk import supported_archs
from .config import ConfigError, PretrainConfig
from .run_record import check_resumable
from .telemetry import METRICS_FILE

__all__ = ["BACKBONE_FILES", "CONFIG_FILE", "METRICS_FILE", "RECORD_FILES", "RUN_FILES", "claim_output_dir", "lock_output_dir",
           "backbone_file", "move_run_aside", "run_files"]

_logger = logging.getLogger(__name__)

# The online trunk at the end of a run, named for the layout its keys follow.
BACKBONE_FILES = {"torchvision": "backbone_torchvision.pth", "timm": "backbone_timm.pth",
                  "ultralytics": "backbone_ultralytics.pth", "registered": "backbone.pth"}
CONFIG_FILE = "config.yaml"
RECORD_FILES = (METRICS_FILE, "tensorboard", CONFIG_FILE)  # what a run has written before its first checkpoint
RUN_FILES = (LAST_CHECKPOINT, METRICS_FILE, *BACKBONE_FILES.values(), "tensorboard", CONFIG_FILE)


def backbone_file(arch: str) -> str:
    """The name of a run's backbone file for trunk ``arch``: its weights under the key names of the model it comes from.

    ``backbone_torchvision.pth`` for torchvision's classifiers, ``backbone_timm.pth`` for
    ``"timm:NAME"``, ``backbone_ultralytics.pth`` for ``"ultralytics:NAME.yaml"``, and
    ``backbone.pth`` for other registered trunks (their own ``backbone_state_dict()`` layout).
    """
    if arch in supported_archs():
        return BACKBONE_FILES["torchvision"]
    for layout in ("timm", "ultralytics"):
        if arch.startswith(layout + ":"):
            return BACKBONE_FILES[layout]
    return BACKBONE_FILES["registered"]


def run_files(output_dir: str | os.PathLike) -> list[str]:
    """Names of :data:`RUN_FILES` present in ``output_dir`` (empty when it holds no run)."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(os.fspath(output_dir), name))]


def move_run_aside(output_dir: str | os.PathLike) -> str:
    """Move the run files of ``output_dir`` into a new sub-folder ``replaced-<UTC time>``; returns its path.

    Nothing is deleted: the old checkpoint, metrics and backbone keep their names inside the
    sub-folder, so the old run can still be resumed from there or compared with the new one.
    """
    output_dir = os.fspath(output_dir)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    target, n = os.path.join(output_dir, f"replaced-{stamp}"), 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(output_dir, f"replaced-{stamp}-{n}")
    os.makedirs(target)
    for name in run_files(output_dir):
        os.replace(os.path.join(output_dir, name), os.path.join(target, name))
    return target


def lock_output_dir(output_dir: str, main_process: bool) -> FolderLock:
    """Hold ``output_dir`` for this run (rank 0 holds the lock); every rank stops at once if another run holds it.

    A collective under ``torch.distributed``.

    Raises:
        FolderLockedError: another live process holds the folder (named in the message).
    """
    lock, refusal = FolderLock(output_dir), None
    if main_process:
        try:
            lock.acquire()
        except FolderLockedError as exc:
            refusal = str(exc)
    refusal = all_gather_object(refusal)[0]
    if refusal is not None:
        raise FolderLockedError(f"output_dir={output_dir!r}: {refusal}")
    return lock


def claim_output_dir(
    config: PretrainConfig, record: Mapping[str, Any], *, device: torch.device, main_process: bool
) -> tuple[Mapping[str, Any] | None, str | None]:
    """The checkpoint to continue, if any, once ``config.output_dir`` is known to hold no other run.

    A collective under ``torch.distributed``: no rank writes into the folder before rank 0 has
    moved an old run aside.

    Args:
        config: the resolved config (``resume``, ``overwrite``, ``output_dir``).
        record: this run's record, which the checkpoint must match.
        device: where to load the checkpoint.
        main_process: rank 0, which moves files.

    Returns:
        ``(checkpoint, its path)``, or ``(None, None)`` for a fresh start.

    Raises:
        CheckpointError, ConfigError: the checkpoint is no checkpoint, or another run; or
            ``output_dir`` holds another run that starting here would overwrite (unless
            ``overwrite``, which moves it aside).
    """
    c = config
    own = os.path.join(c.output_dir, LAST_CHECKPOINT)
    source = {"auto": latest_checkpoint(c.output_dir), "none": None}.get(c.resume, c.resume)
    state = None
    if source is not None:
        # Everything that can refuse the checkpoint is checked here, before anything is moved.
        replaceable = c.overwrite and c.resume == "auto"  # the folder's own run, which a new run may replace
        try:
            state = load_checkpoint(source, device)
            check_resumable(state, source, record, overwrite=c.overwrite)
        except (CheckpointError, ConfigError):
            if not replaceable:
                raise
            state, source = None, None  # a new run replaces the old one, which is moved aside below
    continues_own = source is not None and os.path.isfile(own) and os.path.samefile(source, own)
    held = run_files(c.output_dir)
    if held and not continues_own:
        # Only the log of a run that died before its first checkpoint: there is nothing to resume or lose.
        never_saved = set(held) <= set(RECORD_FILES)
        if not (c.overwrite or never_saved):
            why = "resume='none' starts a new run" if c.resume == "none" else (
                "it has no checkpoint to resume" if source is None else
                f"this run resumes {source} instead (to continue the run of output_dir, use resume='auto')")
            raise ConfigError(
                f"output_dir={c.output_dir!r} holds another run ({', '.join(held)}) and {why}, which would write over "
                "it: resume it with resume='auto', choose another output_dir, or set overwrite=True to move the old "
                f"run aside into {os.path.join(c.output_dir, 'replaced-<time>')}"
            )
        if main_process:
            moved = move_run_aside(c.output_dir)
            if never_saved:
                _logger.info(f"{c.output_dir} held only the log of a run that never saved a checkpoint: starting afresh, "
                             f"the old log moved to {moved}")
            else:
                _logger.info(f"moved the previous run aside: {moved}")
    all_gather_object(None)
    return state, source
