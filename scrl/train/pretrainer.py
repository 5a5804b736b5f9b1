"""The pretraining run: build, resume, the loop and its hooks."""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import DataError, EncodedTwoViewBatch, TwoViewBatch
from ..runtime.checkpoint import LAST_CHECKPOINT, save_checkpoint
from ..runtime.distributed import all_gather_object, cleanup, init_distributed, wrap_ddp
from ..runtime.random_streams import RandomStreams
from ..schedule import warmup_cosine
from .build import BATCH_OF_ONE, OptimizerFactory, build_dataset, build_loader, build_model, build_optimizer, lars, load_initial_weights, weights_digest
from .callbacks import (BoxFillWatch, Callback, Checkpointing, ConsoleProgress, MetricsLog, NonFiniteGuard, RoIProbe,
                        StopOnSignal)
from .config import PretrainConfig
from .device_views import DeviceViews
from .output_dir import CONFIG_FILE, claim_output_dir, lock_output_dir
from .preflight import check_boxes_fit, cpu_defaults_notice, setting_warnings
from .run_record import data_name, run_record
from .state import TrainState
from .telemetry import IntervalMeter, MetricsLogger

__all__ = ["Pretrainer", "RunWarning"]

_logger = logging.getLogger(__name__)
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


class RunWarning(UserWarning):
    """A run will do, or is doing, something other than its settings suggest (also logged to metrics.jsonl)."""


class Pretrainer:
    """One pretraining run of SCRL or BYOL, on one process or under ``torchrun`` (DDP).

    :meth:`run` builds everything (process group, data, model, optimiser with the warm-up +
    cosine schedule, random streams), resumes from the last checkpoint if asked, trains, and
    exports. A run writes to ``config.output_dir``: ``checkpoint_last.pth`` (atomically; at
    epoch ends, every ``save_every`` steps, on SIGTERM / SIGINT and at the end), which resumes
    bit-exactly with any number of data workers; ``config.yaml``, the resolved settings;
    ``metrics.jsonl``; and at the end ``backbone_torchvision.pth``, the online trunk.

    Extend a run without losing resume: pass an ``optimizer`` factory, override
    :meth:`training_step`, add :class:`~scrl.train.Callback` s. Their random draws belong in
    ``self.state.streams`` (named generators, checkpointed).

    Args:
        config: the settings; ``None`` fields are filled for the device (:meth:`PretrainConfig.resolve`).
        dataset: your own dataset of images instead of ``config.data``: items are PIL images,
            or tuples whose first element is one (box datasets). It is wrapped in a
            :class:`~scrl.data.TwoViewDataset` with the paper's views at ``config.image_size``.
        model: your own :class:`~scrl.SCRL` / :class:`~scrl.BYOL` (any module with their call,
            ``update_target`` and ``backbone_state_dict``) instead of the one ``config`` describes.
        optimizer: ``param_groups -> torch.optim.Optimizer``; the groups are
            :func:`~scrl.lars.lars_param_groups` of the model, each with ``lr`` (``base_lr`` x
            global batch / 256) and ``weight_decay`` (0 for norms and biases). The warm-up +
            cosine schedule scales whatever it returns. Default: :func:`~scrl.train.build.lars`.
        callbacks: run after the built-in ones (:meth:`default_callbacks`), in order.

    Attributes (set by :meth:`run`):
        config: the resolved config. model: the two-view model (unwrapped). state: the
        :class:`TrainState`. device, rank, world_size, main_process. steps_per_epoch,
        total_steps, last_step: the schedule. progress: the interval's means at log steps.

    Example:
        >>> summary = Pretrainer(PretrainConfig(epochs=1, output_dir="runs/demo")).run()
        >>> summary["step"], summary["stopped_by"]
        (16, None)
    """

    def __init__(self, config: PretrainConfig, *, dataset: Dataset | None = None, model: nn.Module | None = None,
                 optimizer: OptimizerFactory | None = None, callbacks: Iterable[Callback] = ()) -> None:
        if not isinstance(config, PretrainConfig):
            raise TypeError(f"config must be a PretrainConfig, got {type(config).__name__}")
        if optimizer is not None and not callable(optimizer):
            raise TypeError(f"optimizer must be a callable param_groups -> torch.optim.Optimizer, got {type(optimizer).__name__}")
        callbacks = list(callbacks)
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be scrl.train.Callback instances, got {type(callback).__name__}")
        self.config, self._dataset, self._model, self._optimizer = config, dataset, model, optimizer
        self.user_callbacks = callbacks
        self.warnings: list[str] = []
        self.metrics = MetricsLogger(config.output_dir, enabled=False)  # opened once the folder is claimed
        self.main_process, self.progress, self.should_stop, self.saved_at = True, None, None, None
        self._ran = False

    # ------------------------------------------------------------------------------ building
    def _build(self, info: Any) -> None:
        given = self.config
        self.rank, self.world_size, self.device = info.rank, info.world_size, info.device
        self.main_process, on_gpu = self.rank == 0, self.device.type == "cuda"
        self.config, filled = given.resolve(on_gpu, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        c = self.config
        if not on_gpu:
            self.log(cpu_defaults_notice(c, filled, model_given=self._model is not None, dataset_given=self._dataset is not None))
        self.amp_dtype = _AMP_DTYPES[c.amp]
        self.global_batch = c.batch_size * self.world_size
        self.lr = c.base_lr * self.global_batch / 256
        self.checkpoint_path = os.path.join(c.output_dir, LAST_CHECKPOINT)
        torch.backends.cudnn.benchmark = on_gpu

        images = self._dataset if self._dataset is not None else build_dataset(c)
        self.dataset, self.sampler, self.loader = build_loader(c, images, self.world_size, self.rank, pin_memory=on_gpu)
        self.steps_per_epoch = len(self.sampler) // c.batch_size
        self.total_steps = c.epochs * self.steps_per_epoch
        self.warmup_steps = min(self.total_steps, round(c.warmup_epochs * self.steps_per_epoch))
        self.last_step = min(self.total_steps, c.max_steps or self.total_steps)

        self.model_from_config = self._model is None
        model = build_model(c) if self._model is None else self._model
        sync_bn = self.world_size > 1 and on_gpu  # SyncBatchNorm needs a GPU: on CPU each process uses its own statistics
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif c.batch_size == 1:
            self.warn(BATCH_OF_ONE)
        if c.init_from is not None:
            load_initial_weights(model, c.init_from)
        memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        optimizer = build_optimizer(self.model, self._optimizer or lars, lr=self.lr, weight_decay=c.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=c.amp == "fp16")
        self.state = TrainState(self.model, optimizer, warmup_cosine(optimizer, self.warmup_steps, self.total_steps), scaler,
                                RandomStreams(c.seed, rank=self.rank, device=self.device), self.steps_per_epoch, self.world_size)
        self.train_model = wrap_ddp(self.model, self.device, sync_buffers=not sync_bn)
        if c.compile:
            self.train_model = torch.compile(self.train_model)
        self.views = DeviceViews(c.image_size, self.device, augment=c.augment_on_device, decode=c.decode_on_device,
                                 compile=c.compile, memory_format=memory_format)

        self.record = run_record(c, self.model, data=data_name(c, self._dataset is not None, images), images=len(self.dataset),
                                 world_size=self.world_size, steps_per_epoch=self.steps_per_epoch,
                                 model_from_config=self.model_from_config)
        for message in [*setting_warnings(given, c, model_given=not self.model_from_config, on_gpu=on_gpu,
                                          warmup_steps=self.warmup_steps, total_steps=self.total_steps),
                        *check_boxes_fit(self.dataset, getattr(self.model, "sampler", None), c)]:
            self.warn(message)
        self.callbacks = self.default_callbacks() + self.user_callbacks

    def default_callbacks(self) -> list[Callback]:
        """The built-in callbacks of a run of ``self.config``; override to change them."""
        c = self.config
        probe = [RoIProbe(c.roi_probe, c.roi_probe_every, c.roi_probe_size)] if c.roi_probe else []
        return [NonFiniteGuard(), StopOnSignal(), Checkpointing(c.save_every), *probe, BoxFillWatch(), MetricsLog(),
                ConsoleProgress()]

    # ------------------------------------------------------------------------------ messages
    def warn(self, message: str) -> None:
        """A :class:`RunWarning` (rank 0), kept for metrics.jsonl."""
        if self.main_process:
            warnings.warn(message, RunWarning, stacklevel=2)
            self.warnings.append(message)
            self.metrics.log({"event": "warning", "step": self.state.step if hasattr(self, "state") else 0, "message": message})

    def log(self, message: str) -> None:
        """A line at INFO to the ``scrl`` logger (rank 0); the library installs no handler."""
        if self.main_process and message:
            _logger.info(message)

    def name_skipped(self) -> None:
        """Name the unreadable files no line named yet (a collective): on the console and as a ``skipped_files`` event."""
        new = self.state.gather_skipped()
        if new:
            self.metrics.log({"event": "skipped_files", "step": self.state.step, "files": new})
            for path, reason in new.items():
                self.log(f"skipped unreadable file: {path} ({reason})")

    # ------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Write the checkpoint (the state plus the run record) atomically; a collective (rank 0 writes)."""
        self._call("on_before_checkpoint")
        self.name_skipped()
        checkpoint = self.state.state_dict() | {"args": self.config.to_dict(), "run": self.record}
        if self.main_process:
            save_checkpoint(checkpoint, self.checkpoint_path)
        self.saved_at = self.state.step
        self._call("on_checkpoint", self.checkpoint_path)

    # ------------------------------------------------------------------------------ the step
    def training_step(self, batch: TwoViewBatch | EncodedTwoViewBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one batch already on the device; override to change it (the optimiser step follows).

        Returns:
            ``(loss, logs)``: a scalar with gradient, and 0-dim tensors to log by name (their
            interval means reach metrics.jsonl); nothing is read back to the host.
        """
        view1, view2, skipped = self.views(batch, generator=self.state.streams["augment"])
        self.state.skipped_files.update(skipped)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.train_model(view1, view2, batch.geom1, batch.geom2, generator=self.state.streams["boxes"])

    def _optimize(self, loss: Tensor) -> None:
        s = self.state
        self.lr_of_step = s.optimizer.param_groups[0]["lr"]
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.scheduler.step()
        self.tau_of_step = self.model.update_target(s.step, self.total_steps)
        s.step += 1

    # ------------------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Build, resume (per ``config.resume``), train to ``max_steps`` or the end of the schedule, save, probe and export.

        Returns:
            ``{"step", "epoch", "stopped_by" (signal name or None), "weights_sha256" (this
            rank's parameters), "ranks_identical", "skipped_files" (sorted paths)}``.
        """
        if self._ran:
            raise RuntimeError("a Pretrainer runs once; to continue, make a new one with the same config (it resumes)")
        self._ran, self.callbacks, lock = True, [], None
        owns_process_group = not (dist.is_available() and dist.is_initialized())
        try:
            self._build(init_distributed(None if self.config.device == "auto" else self.config.device))
            lock = lock_output_dir(self.config.output_dir, self.main_process)
            checkpoint, source = claim_output_dir(self.config, self.record, device=self.device, main_process=self.main_process)
            if checkpoint is not None:
                for message in self.state.continue_from(checkpoint, batch_size=self.config.batch_size):
                    self.warn(message)
                self.saved_at, s = self.state.step, self.state
                self.log(f"resumed from {source}: step {s.step}, epoch {s.epoch}, batch {s.batch_in_epoch} of the epoch")
            self.metrics = MetricsLogger(self.config.output_dir, enabled=self.main_process)
            if self.main_process:
                self.config.to_yaml(os.path.join(self.config.output_dir, CONFIG_FILE))
            self._call("on_train_start")
            self._train()
            summary = self._summary()
            self._call("on_train_end", summary)
            return summary
        finally:
            try:
                self._call("teardown")
            finally:  # a callback failing on the way out must not keep the folder locked
                self.metrics.close()
                if lock is not None:
                    lock.release()
                if owns_process_group:
                    cleanup()

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _train(self) -> None:
        s, c = self.state, self.config
        meter = IntervalMeter()
        self.train_model.train()
        while s.step < self.last_step and self.should_stop is None:
            self.sampler.set_epoch(s.epoch, start=s.batch_in_epoch * c.batch_size)
            batches = iter(self.loader)
            while s.batch_in_epoch < self.steps_per_epoch and s.step < self.last_step and self.should_stop is None:
                started = time.perf_counter()
                try:
                    batch = next(batches).to(self.device, non_blocking=True)
                except DataError as err:  # a broken folder, met in a data worker
                    raise DataError.from_worker(err) from None
                data_wait = time.perf_counter() - started
                loss, logs = self.training_step(batch)
                self._optimize(loss)
                s.batch_in_epoch += 1
                s.skipped_files.update(batch.skipped)
                logs = {**logs, "loss": loss.detach()}  # the loss optimised, whatever training_step made of it
                meter.add(logs, data_wait)
                log_step = s.step % c.log_every == 0 or s.step in (1, self.last_step)
                self.progress = self._progress(meter.read()) if log_step else None
                self._call("on_step_end", s.step, logs)
            if s.epoch_done:
                s.next_epoch()

    def _progress(self, interval: Mapping[str, Any]) -> dict[str, Any]:
        s, steps, seconds = self.state, interval["steps"], interval["seconds"]
        self.name_skipped()
        record = {"step": s.step, "epoch": s.epoch, **interval["means"], "lr": self.lr_of_step, "tau": self.tau_of_step,
                  "images_per_s": steps * self.global_batch / seconds, "data_wait_share": interval["data_wait"] / seconds,
                  "eta_s": (self.last_step - s.step) * seconds / steps, "skipped_files": len(s.skipped_files)}
        if self.device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return record

    def _summary(self) -> dict[str, Any]:
        digests, s = all_gather_object(weights_digest(self.model)), self.state
        _logger.info(f"rank {self.rank}: weights sha256 {digests[self.rank]}")  # every rank: they can be compared
        return {"step": s.step, "epoch": s.epoch, "stopped_by": self.should_stop, "weights_sha256": digests[self.rank],
                "ranks_identical": len(set(digests)) == 1, "skipped_files": sorted(s.skipped_files)}
