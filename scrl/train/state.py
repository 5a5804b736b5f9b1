"""Everything a resume needs, behind one ``state_dict()`` / ``load_state_dict()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..runtime.distributed import all_gather_object
from ..runtime.random_streams import RandomStreams

__all__ = ["TrainState"]

STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "streams", "step", "epoch", "batch_in_epoch", "world_size",
              "skipped_files")


@dataclass(eq=False)
class TrainState:
    """The state of a pretraining run: the model, its optimiser, schedule and loss scaler, the random streams,
    the position in the data and the files found unreadable.

    :meth:`state_dict` of a state continued with :meth:`load_state_dict` trains on exactly as
    the state it came from: same weights, same next batch, same random draws. A checkpoint of
    :class:`~scrl.train.Pretrainer` is this state plus the run's record (what the run is).

    Attributes:
        model: the two-view model (unwrapped: no DDP, no ``torch.compile``).
        optimizer: its optimiser.
        scheduler: the learning-rate schedule, stepped once per optimiser step.
        scaler: the loss scaler (disabled unless fp16).
        streams: this process's random streams.
        steps_per_epoch: optimiser steps per epoch, to tell the position within one.
        world_size: processes of the run; each keeps its own streams.
        step: optimiser steps taken.
        epoch: the epoch being trained (0-based).
        batch_in_epoch: batches of ``epoch`` already trained on.
        skipped_files: unreadable files replaced so far, path to reason.

    Example:
        >>> state = TrainState(model, optimizer, scheduler, scaler, RandomStreams(0), steps_per_epoch=100)
        >>> saved = state.state_dict()  # after some steps
        >>> state.load_state_dict(saved)
    """

    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    streams: RandomStreams
    steps_per_epoch: int
    world_size: int = 1
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        self._named = set(self.skipped_files)

    def gather_skipped(self) -> dict[str, str]:
        """Merge the unreadable files every rank met into :attr:`skipped_files` (a collective).

        Returns:
            The files no earlier call (or the checkpoint this state continues) returned, sorted:
            each is to be named once per run.
        """
        for files in all_gather_object(self.skipped_files):
            self.skipped_files.update(files)
        new = sorted(set(self.skipped_files) - self._named)
        self._named.update(new)
        return {path: self.skipped_files[path] for path in new}

    @property
    def epoch_done(self) -> bool:
        """Whether the last step ended an epoch (:meth:`next_epoch` has not been called yet)."""
        return self.batch_in_epoch == self.steps_per_epoch

    def next_epoch(self) -> None:
        """Move the position to the start of the next epoch."""
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """The state as plain values and tensors (``torch.load(weights_only=True)`` reads it back).

        A collective under ``torch.distributed``: every rank must call it, each adds its streams.
        A state saved at the end of an epoch is saved as the start of the next.
        """
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "streams": all_gather_object(self.streams.state_dict()),
            "step": self.step,
            "epoch": self.epoch + self.epoch_done,
            "batch_in_epoch": self.batch_in_epoch % self.steps_per_epoch,
            "world_size": self.world_size,
            "skipped_files": dict(sorted(self.skipped_files.items())),
        }

    def load_state_dict(self, state: Mapping[str, Any], *, streams: bool = True) -> None:
        """Continue from a :meth:`state_dict`.

        Args:
            state: the saved state.
            streams: continue the random streams too; they are per rank, so only a state of as
                many processes can give them (otherwise leave them as they are).

        Raises:
            ValueError: ``state`` lacks a key, or holds streams of another number of processes.
        """
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"state has no {missing}")
        if streams and len(state["streams"]) != self.world_size:
            raise ValueError(f"state holds the streams of {len(state['streams'])} process(es), this run has {self.world_size}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when the run was not fp16: an fp16 continuation starts a fresh scale
            self.scaler.load_state_dict(state["scaler"])
        if streams:
            self.streams.load_state_dict(state["streams"][self.streams.rank])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.skipped_files = dict(state["skipped_files"])
        self._named = set(self.skipped_files)

    def continue_from(self, checkpoint: Mapping[str, Any], batch_size: int) -> list[str]:
        """Continue a :class:`~scrl.train.Pretrainer` checkpoint; returns what differs from an uninterrupted run, for a warning.

        With the same processes and batch size per process the run continues exactly. With
        another split of the same global batch (2 x 64 images as 1 x 128, say) every image is
        still seen once per epoch on the same schedule, but the random streams restart.

        Args:
            checkpoint: the checkpoint (this state plus ``args``, the settings it was made with).
            batch_size: this run's images per process.
        """
        saved_world, saved_batch = checkpoint["world_size"], checkpoint["args"]["batch_size"]
        same_split = (saved_world, saved_batch) == (self.world_size, batch_size)
        self.load_state_dict(checkpoint, streams=same_split)
        if same_split:
            return []
        self.streams.restart(self.step)
        return [
            f"the checkpoint was made with {saved_world} process(es) x batch_size={saved_batch}, this run has "
            f"{self.world_size} x {batch_size}: the same {self.world_size * batch_size} images per step and the same "
            "schedule, so every image is still seen once per epoch, but the box-sampling and augmentation streams "
            "restart: the weights will not match an uninterrupted run bit for bit"
        ]
