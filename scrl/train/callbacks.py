"""Hooks into a :class:`~scrl.train.Pretrainer` run, and the built-in ones every run has.

A callback sees the trainer at fixed points of :meth:`Pretrainer.run`; all ranks call every
hook, so a hook may hold a collective. The built-ins: :class:`NonFiniteGuard`,
:class:`StopOnSignal`, :class:`Checkpointing`, :class:`RoIProbe`, :class:`BoxFillWatch`,
:class:`MetricsLog`, :class:`ConsoleProgress` (in that order, before the user's).
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor

from ..box_sampler import BoxPairSampler
from ..data import open_box_dataset
from ..eval import roi_probe
from ..runtime.checkpoint import save_checkpoint
from .output_dir import backbone_file
from .preflight import LOW_VALID_SHARE
from .stop_signal import StopSignal
from .telemetry import NonFiniteWatch

if TYPE_CHECKING:
    from .pretrainer import Pretrainer

__all__ = ["BoxFillWatch", "Callback", "Checkpointing", "ConsoleProgress", "MetricsLog", "NonFiniteGuard", "RoIProbe",
           "StopOnSignal"]

_logger = logging.getLogger("scrl.train")


class Callback:
    """Override any of these hooks; each does nothing by default.

    A callback that keeps state which a resumed run must continue saves it with the trainer's
    state, not in itself (see ``docs/custom_loop.md``): a callback is made afresh by every run.

    Example:
        >>> class LossHistory(Callback):
        ...     def __init__(self):
        ...         self.losses = []
        ...     def on_step_end(self, trainer, step, logs):
        ...         self.losses.append(logs["loss"])  # a 0-dim tensor on the device: no sync
        >>> Pretrainer(config, callbacks=[LossHistory()]).run()
    """

    def on_train_start(self, trainer: "Pretrainer") -> None:
        """Everything is built and resumed; no step taken yet in this process (``trainer.state.step`` may be > 0)."""

    def on_step_end(self, trainer: "Pretrainer", step: int, logs: Mapping[str, Tensor]) -> None:
        """Optimiser step ``step`` (1-based) is done.

        Args:
            trainer: the run; ``trainer.progress`` holds the interval's means as floats at log
                steps (every ``log_every`` steps, the first and the last), ``None`` otherwise.
            step: the steps taken so far.
            logs: what ``training_step`` returned, detached 0-dim tensors on the device
                (reading one back to the host synchronises).
        """

    def on_before_checkpoint(self, trainer: "Pretrainer") -> None:
        """A checkpoint is about to be written; raise to keep the last one instead."""

    def on_checkpoint(self, trainer: "Pretrainer", path: str) -> None:
        """A checkpoint was written to ``path`` (rank 0 writes; every rank is called)."""

    def on_train_end(self, trainer: "Pretrainer", summary: Mapping[str, Any]) -> None:
        """The run trained to its end, or stopped on a signal (``summary["stopped_by"]``); see :meth:`Pretrainer.run`."""

    def teardown(self, trainer: "Pretrainer") -> None:
        """The run is over, also after an error: release what :meth:`on_train_start` took."""


class NonFiniteGuard(Callback):
    """Stop the run at the first NaN or infinite loss, before a checkpoint can keep it.

    Watched on the device every step; checked where the host reads values anyway (log steps)
    and before every checkpoint, so the last good checkpoint is never overwritten.

    Raises:
        FloatingPointError: naming the step and the last good checkpoint.
    """

    def on_train_start(self, trainer: "Pretrainer") -> None:
        self.watch = NonFiniteWatch()

    def on_step_end(self, trainer: "Pretrainer", step: int, logs: Mapping[str, Tensor]) -> None:
        self.watch.update(logs["loss"], step)
        if trainer.progress is not None:
            self.check(trainer)

    def on_before_checkpoint(self, trainer: "Pretrainer") -> None:
        self.check(trainer)

    def check(self, trainer: "Pretrainer") -> None:
        """Raise if a step so far had a non-finite loss (a collective)."""
        bad = self.watch.first_bad_step()
        if bad is not None:
            last = f"{trainer.checkpoint_path} (step {trainer.saved_at})" if trainer.saved_at is not None else "none written yet"
            raise FloatingPointError(
                f"non-finite loss at step {bad} (epoch {(bad - 1) // trainer.steps_per_epoch}); stopping. Last good checkpoint: {last}"
            )


class StopOnSignal(Callback):
    """A SIGTERM or SIGINT ends the run after the current step, all ranks at the same one (:class:`StopSignal`)."""

    def on_train_start(self, trainer: "Pretrainer") -> None:
        self.signal = StopSignal().__enter__()

    def on_step_end(self, trainer: "Pretrainer", step: int, logs: Mapping[str, Tensor]) -> None:
        if self.signal.agreed():
            trainer.should_stop = self.signal.received.name if self.signal.received else "signal on another rank"

    def teardown(self, trainer: "Pretrainer") -> None:
        if hasattr(self, "signal"):
            self.signal.__exit__(None, None, None)


class Checkpointing(Callback):
    """Save at every epoch end, every ``every`` steps (0: never in between) and at the end; export the backbone when done.

    The backbone (the online trunk under the key names of the model it comes from, in the file
    :func:`~scrl.train.output_dir.backbone_file` names: ``backbone_torchvision.pth`` for a
    torchvision trunk) is written only when the run trained to its end, not after a stop.
    """

    def __init__(self, every: int = 0) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.every = every

    def on_step_end(self, trainer: "Pretrainer", step: int, logs: Mapping[str, Tensor]) -> None:
        if (self.every and step % self.every == 0) or (trainer.state.epoch_done and trainer.saved_at != step):
            trainer.save()

    def on_train_end(self, trainer: "Pretrainer", summary: Mapping[str, Any]) -> None:
        if trainer.saved_at != trainer.state.step:
            trainer.save()
        if summary["stopped_by"] is None and trainer.main_process:
            weights = {k: v.contiguous() for k, v in trainer.model.backbone_state_dict().items()}
            save_checkpoint(weights, os.path.join(trainer.config.output_dir, backbone_file(trainer.config.arch)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(every={self.every})"


class RoIProbe(Callback):
    """RoI linear and k-NN accuracy of the online trunk on a box dataset, every ``every`` epochs and at the end (rank 0).

    Its random draws come from a forked RNG: a run with the probe trains, and resumes, exactly
    as one without it.

    Args:
        data: a box dataset (COCO ``.json``, YOLO folder, ``synthetic[:N]``; :func:`~scrl.data.open_box_dataset`).
        every: epochs between probes.
        image_size: the probe's image side (default: twice the run's view side).
    """

    def __init__(self, data: str, every: int = 1, image_size: int | None = None) -> None:
        self.data, self.every, self.image_size = data, every, image_size
        self._boxes = None

    def on_train_start(self, trainer: "Pretrainer") -> None:
        if trainer.main_process:
            self._boxes = open_box_dataset(self.data, synthetic_image_size=round(1.5 * trainer.config.image_size))

    def on_step_end(self, trainer: "Pretrainer", step: int, logs: Mapping[str, Tensor]) -> None:
        state = trainer.state
        if state.epoch_done and trainer.should_stop is None and (state.epoch + 1) % self.every == 0 and step < trainer.last_step:
            self.probe(trainer)

    def on_train_end(self, trainer: "Pretrainer", summary: Mapping[str, Any]) -> None:
        if summary["stopped_by"] is None:
            self.probe(trainer)

    def probe(self, trainer: "Pretrainer") -> None:
        """Probe now; the result goes to metrics.jsonl and the ``scrl`` logger."""
        if self._boxes is None:
            return
        c, device = trainer.config, trainer.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            metrics = roi_probe(trainer.model.trunk, self._boxes, image_size=self.image_size or 2 * c.image_size,
                                autocast_dtype=trainer.amp_dtype, channels_last=c.channels_last)
        state = trainer.state
        trainer.metrics.log({"event": "roi_probe", "step": state.step, "epoch": state.epoch} | metrics)
        _logger.info(f"roi probe at step {state.step}: linear top-1 {metrics['roi_linear_top1']:.1f} %, k-NN top-1 "
                     f"{metrics['roi_knn_top1']:.1f} % (chance {metrics['roi_chance']:.1f} %, majority {metrics['roi_majority']:.1f} %)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data={self.data!r}, every={self.every}, image_size={self.image_size})"


class BoxFillWatch(Callback):
    """Warn once when the box slots SCRL fills stay below :data:`~scrl.train.preflight.LOW_VALID_SHARE` over the first steps."""

    def __init__(self, over_steps: int = 10) -> None:
        self.over_steps = over_steps
        self._shares: list[float] | None = []

    def on_step_end(self, trainer: "Pretrainer", step: int, logs: Mapping[str, Tensor]) -> None:
        sampler = getattr(trainer.model, "sampler", None)
        if (trainer.progress is None or "valid_box_share" not in trainer.progress or self._shares is None
                or not isinstance(sampler, BoxPairSampler)):
            return
        self._shares.append(trainer.progress["valid_box_share"])
        if step >= min(self.over_steps, trainer.last_step):
            mean = sum(self._shares) / len(self._shares)
            if mean < LOW_VALID_SHARE:
                trainer.warn(
                    f"only {mean:.0%} of the box slots held a pair in the steps logged up to step {step} (below "
                    f"{LOW_VALID_SHARE:.0%}): SCRL learns from few boxes; raise image_size={trainer.config.image_size} or "
                    f"lower min_box_size={sampler.min_size:g}"
                )
            self._shares = None


class MetricsLog(Callback):
    """``metrics.jsonl`` (and TensorBoard): the start (with the run's record and settings), the warnings so far,
    each log step's record, and the end."""

    def on_train_start(self, trainer: "Pretrainer") -> None:
        c, state = trainer.config, trainer.state
        trainer.metrics.log({"event": "start", "step": state.step, "world_size": trainer.world_size, "lr": trainer.lr,
                             "total_steps": trainer.total_steps, "run": trainer.record} | {f"arg_{k}": v for k, v in c.to_dict().items()})
        for message in trainer.warnings:
            trainer.metrics.log({"event": "warning", "step": state.step, "message": message})

    def on_step_end(self, trainer: "Pretrainer", step: int, logs: Mapping[str, Tensor]) -> None:
        if trainer.progress is not None:
            trainer.metrics.log(trainer.progress)

    def on_train_end(self, trainer: "Pretrainer", summary: Mapping[str, Any]) -> None:
        stopped_by = summary["stopped_by"]
        trainer.metrics.log({
            "event": "stopped" if stopped_by else "end", "step": summary["step"], "epoch": summary["epoch"],
            "stopped_by": stopped_by, "weights_sha256": summary["weights_sha256"], "ranks_identical": summary["ranks_identical"],
            "skipped_files": len(summary["skipped_files"]),
        })


class ConsoleProgress(Callback):
    """One line at the start, at each log step and at the end, to the ``scrl.train`` logger at INFO (rank 0)."""

    def on_train_start(self, trainer: "Pretrainer") -> None:
        c = trainer.config
        if c.decode_on_device:
            augmented = "decoded, cropped and augmented on the device"
        else:
            augmented = "photometric steps on the device" if c.augment_on_device else "augmented in the workers"
        what = f"{c.method} {c.arch}" if trainer.model_from_config else f"{type(trainer.model).__name__} (given model)"
        trainer.log(
            f"{what}: {len(trainer.dataset)} images, {trainer.world_size} process(es) x {c.batch_size} = {trainer.global_batch} "
            f"per step, lr {trainer.lr:.4g}, {trainer.steps_per_epoch} steps/epoch, {trainer.total_steps} steps total (stopping "
            f"at {trainer.last_step}), views {c.image_size}px ({augmented}), amp {c.amp}, {c.workers} worker processes, "
            f"device {trainer.device}"
        )

    def on_step_end(self, trainer: "Pretrainer", step: int, logs: Mapping[str, Tensor]) -> None:
        r = trainer.progress
        if r is None:
            return
        tau = "" if r["tau"] is None else f" tau {r['tau']:.5f}"
        boxes = f" valid-boxes {r['valid_box_share']:.0%}" if "valid_box_share" in r else ""
        trainer.log(
            f"epoch {r['epoch']} step {r['step']}/{trainer.last_step} loss {r['loss']:.4f} lr {r['lr']:.4g}{tau} "
            f"{r['images_per_s']:.1f} img/s data-wait {r['data_wait_share']:.0%} eta {datetime.timedelta(seconds=round(r['eta_s']))}"
            f"{boxes} skipped {r['skipped_files']}"
        )

    def on_train_end(self, trainer: "Pretrainer", summary: Mapping[str, Any]) -> None:
        if summary["stopped_by"]:
            trainer.log(f"stopped by {summary['stopped_by']} at step {summary['step']}; checkpoint {trainer.checkpoint_path}; "
                        "the same run started again continues from it")
        else:
            trainer.log(f"finished at step {summary['step']}; checkpoint {trainer.checkpoint_path}; backbone "
                        f"{os.path.join(trainer.config.output_dir, backbone_file(trainer.config.arch))}")
