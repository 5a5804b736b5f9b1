"""What a checkpoint continues: a run's identity and schedule, and how a resumed run must agree with them.

A checkpoint records what was trained, on what (the identity: method, trunk, heads, boxes, view
size, data and its image count, seed, the model's parameter names and shapes) and what its
learning rate, weight decay and tau follow (the schedule: epochs, base LR, weight decay, tau,
warm-up, the global batch and the steps per epoch). A run that resumes it must agree on all of
these; anything else (workers, precision, logging, probing, where the run stops) may change.
See docs/pretraining.md, "What a run refuses, and why".
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

from torch import Tensor, nn

from ..runtime.checkpoint import CheckpointError

from .config import BOX_FIELDS, IDENTITY_FIELDS, MODEL_FIELDS, SCHEDULE_FIELDS, ConfigError, PretrainConfig
from .state import STATE_KEYS

__all__ = ["check_resumable", "data_name", "model_signature", "run_conflicts", "run_record"]

def model_signature(model: nn.Module) -> str:
    """A short digest of the model's state-dict names, shapes and dtypes (not its values)."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
    return h.hexdigest()[:16]


def run_record(
    config: PretrainConfig,
    model: nn.Module,
    *,
    data: str,
    images: int,
    world_size: int,
    steps_per_epoch: int,
    model_from_config: bool,
) -> dict[str, Any]:
    """The identity and schedule of a run, as its checkpoint stores them.

    Args:
        config: the resolved config.
        model: the model the run trains.
        data: what the images are: a folder's absolute path, ``"synthetic"``, or the class
            name of a dataset given to the run.
        images: how many images the dataset holds.
        world_size: processes of the run.
        steps_per_epoch: optimiser steps per epoch.
        model_from_config: whether ``model`` was built from ``config`` (otherwise its own
            class and parameters identify it, and the config's model settings do not).

    Returns:
        ``{"identity": {...}, "schedule": {...}}`` of plain values.
    """
    skipped = set() if model_from_config else set(MODEL_FIELDS)
    if config.method == "byol":
        skipped |= set(BOX_FIELDS)
    if data != "synthetic":
        skipped.add("synthetic_images")
    identity: dict[str, Any] = {name: getattr(config, name) for name in IDENTITY_FIELDS if name not in skipped}
    identity["data"] = data
    identity["images"] = images
    if not model_from_config:  # what the config would say of a model built from it
        identity["model"] = type(model).__name__
        for name in ("sampler", "roi_pool"):
            if isinstance(getattr(model, name, None), nn.Module):
                identity[name] = repr(getattr(model, name))
    identity["parameter layout"] = model_signature(model)
    schedule: dict[str, Any] = {name: getattr(config, name) for name in SCHEDULE_FIELDS}
    schedule["tau_base"] = getattr(model, "tau_base", config.tau_base)
    schedule["images per step (batch_size x processes)"] = config.batch_size * world_size
    schedule["steps_per_epoch"] = steps_per_epoch
    return {"identity": identity, "schedule": schedule}


def run_conflicts(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Each way in which ``current`` is not the run ``saved`` records, as ``"field: saved ..., now ..."``.

    Fields recorded on one side only follow from one that differs (box settings exist for SCRL,
    not BYOL), so they are not listed again.
    """
    conflicts = []
    for part in ("identity", "schedule"):
        before, now = saved.get(part, {}), current[part]
        conflicts += [f"{name}: {before[name]!r} in the checkpoint, {now[name]!r} now"
                      for name in before if name in now and before[name] != now[name]]
    return conflicts


def data_name(config: PretrainConfig, dataset_given: bool, dataset: Any) -> str:
    """What :func:`run_record` calls the images of a run."""
    if dataset_given:
        return type(dataset).__name__
    return os.path.abspath(config.data) if config.data is not None else "synthetic"


def check_resumable(checkpoint: Mapping[str, Any], source: str, record: Mapping[str, Any], *, overwrite: bool) -> None:
    """Raise unless ``checkpoint`` is a training checkpoint of the run ``record`` describes.

    Args:
        checkpoint: the loaded file.
        source: how errors name it (its path).
        record: this run's :func:`run_record`.
        overwrite: whether the run may move an old run aside (said in the advice).

    Raises:
        CheckpointError: it is no training checkpoint (a backbone export, an earlier format).
        ConfigError: it is another run; the message lists each field that differs.
    """
    missing = [key for key in (*STATE_KEYS, "args", "run") if key not in checkpoint]
    if missing and set(missing) <= {"run", "streams"}:
        raise CheckpointError(
            f"{source} was written by an earlier version of scrl, which did not record what the run is and its random "
            "streams: it cannot be resumed safely; start a new run (in this output_dir with overwrite=True, which moves "
            "it aside), or start one from its weights with init_from"
        )
    if missing:
        looks_like = " (it holds only weights, like a backbone export)" if all(isinstance(v, Tensor) for v in checkpoint.values()) else ""
        raise CheckpointError(f"{source} is not a training checkpoint of scrl.train{looks_like}: it has no {missing}")
    conflicts = run_conflicts(checkpoint["run"], record)
    if conflicts:
        retry = "" if overwrite else ", or in this one with overwrite=True, which moves the old run aside"
        raise ConfigError(
            f"cannot resume {source}: it is another run ({'; '.join(conflicts)}). Resume it with its own settings, or "
            f"start a new run in another output_dir{retry}"
        )
