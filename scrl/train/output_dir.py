"""The files a run writes into its output folder, and moving an old run aside instead of overwriting it."""

from __future__ import annotations

import datetime
import os

from ..runtime.checkpoint import LAST_CHECKPOINT
from .telemetry import METRICS_FILE

__all__ = ["BACKBONE_FILE", "METRICS_FILE", "RECORD_FILES", "RUN_FILES", "move_run_aside", "run_files"]

BACKBONE_FILE = "backbone_torchvision.pth"
RECORD_FILES = (METRICS_FILE, "tensorboard")  # what a run has written before its first checkpoint
RUN_FILES = (LAST_CHECKPOINT, METRICS_FILE, BACKBONE_FILE, "tensorboard")


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
