"""The pretraining run: data, model, LARS and its schedules, the loop, checkpoints, resume, signals, probe, export."""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import random
import time
import warnings
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..box_sampler import BoxPairSampler
from ..data import DataError, EncodedTwoViewBatch, ImageFolderDataset, ResumableSampler, SyntheticScenes, TwoViewBatch, TwoViewDataset, mix_seed
from ..data import open_box_dataset, two_view_loader
from ..eval import roi_probe
from ..lars import LARS, lars_param_groups
from ..models import BYOL, SCRL
from ..runtime.checkpoint import LAST_CHECKPOINT, CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..runtime.distributed import all_gather_object, cleanup, init_distributed, wrap_ddp
from ..runtime.folder_lock import FolderLock, FolderLockedError
from ..schedule import cosine_tau, warmup_cosine
from ..transforms import BatchPhotometric, TwoViewCrops, TwoViewTransform, ViewDecoder, normalize_images
from .config import BOX_FIELDS, FIXED_DEFAULTS, MODEL_FIELDS, ConfigError, PretrainConfig
from .output_dir import BACKBONE_FILE, RECORD_FILES, move_run_aside, run_files
from .preflight import LOW_VALID_SHARE, box_fill, setting_warnings
from .run_record import data_name, run_conflicts, run_record
from .stop_signal import StopSignal
from .telemetry import DeviceMeans, MetricsLogger, NonFiniteWatch

__all__ = ["Pretrainer", "RunWarning", "build_dataset", "build_model", "build_transform", "weights_digest"]

_logger = logging.getLogger(__name__)
RANK_STREAMS = 0x52414E4B  # "RANK": the key that marks per-rank random streams
_ROI_ALIGNED = {"exact": None, "aligned": True, "unaligned": False}
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


class RunWarning(UserWarning):
    """A run will do, or is doing, something other than its settings suggest (also logged to metrics.jsonl)."""


def build_dataset(config: PretrainConfig) -> Dataset:
    """The images of a run: the folder tree ``config.data``, or synthetic scenes 1.5x the view side.

    Raises:
        ValueError: the folder holds no image (before any worker starts).
    """
    if config.data is not None:
        return ImageFolderDataset(config.data, max_consecutive_unreadable=config.max_consecutive_unreadable)
    if config.synthetic_images is None or config.image_size is None:
        raise ValueError("build_dataset needs a resolved config (PretrainConfig.resolve) for synthetic scenes")
    return SyntheticScenes(config.synthetic_images, image_size=round(1.5 * config.image_size), seed=config.seed)


def build_transform(config: PretrainConfig) -> TwoViewTransform | TwoViewCrops:
    """The data workers' two-view transform: all augmentation, geometry only (``augment_on_device``),
    or geometry without decoding (``decode_on_device``); views of ``config.image_size``, uint8."""
    if config.decode_on_device:
        return TwoViewCrops.byol(size=config.image_size)
    photometric = "device" if config.augment_on_device else True
    return TwoViewTransform.byol(size=config.image_size, photometric=photometric, output="uint8")


def build_model(config: PretrainConfig) -> SCRL | BYOL:
    """``SCRL`` or ``BYOL`` with the trunk, heads, boxes and pooling rule of ``config`` (random init)."""
    if config.arch is None or config.tau_base is None:
        raise ValueError("build_model needs a resolved config (PretrainConfig.resolve): arch and tau_base are unset")
    heads = dict(projector_hidden=config.projector_hidden, projection_dim=config.projection_dim, tau_base=config.tau_base)
    if config.method == "scrl":
        return SCRL(config.arch, num_boxes=config.num_boxes, min_size=config.min_box_size,
                    roi_aligned=_ROI_ALIGNED[config.roi_pooling], **heads)
    return BYOL(config.arch, **heads)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters, online and target, to compare processes.

    Buffers are left out: without SyncBatchNorm (CPU runs) each process keeps its own running
    statistics, while the parameters must agree bit for bit.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _progress_line(r: Mapping[str, Any], last_step: int) -> str:
    return (
        f"epoch {r['epoch']} step {r['step']}/{last_step} loss {r['loss']:.4f} lr {r['lr']:.4g} tau {r['tau']:.5f} "
        f"{r['images_per_s']:.1f} img/s data-wait {r['data_wait_share']:.0%} eta {datetime.timedelta(seconds=round(r['eta_s']))} "
        f"valid-boxes {r['valid_box_share']:.0%} skipped {r['skipped_files']}"
    )


class Pretrainer:
    """One pretraining run of SCRL or BYOL, on one process or under ``torchrun`` (DDP).

    Construction sets everything up (process group, data, model, LARS with warm-up + cosine
    schedule, per-rank random streams); :meth:`run` resumes from the last checkpoint if asked,
    trains, and exports. A run writes to ``config.output_dir``:

    * ``checkpoint_last.pth`` (atomically; at epoch ends, every ``save_every`` steps, on
      SIGTERM / SIGINT and at the end), which resumes bit-exactly: the same weights as an
      uninterrupted run, with any number of data workers;
    * ``metrics.jsonl``: one JSON object per log line, RoI-probe result and start / end event;
    * ``backbone_torchvision.pth`` at the end: the online trunk under torchvision's key names.

    A non-finite loss stops the run with a ``FloatingPointError`` naming the step and the last
    good checkpoint, which is never overwritten by a bad state. Unreadable image files are
    replaced, reported once and kept in the checkpoint.

    Args:
        config: the settings; ``None`` fields are filled for the device (:meth:`PretrainConfig.resolve`).
        dataset: your own dataset of images instead of ``config.data``: items are PIL images,
            or tuples whose first element is one (box datasets). It is wrapped in a
            :class:`~scrl.data.TwoViewDataset` with the paper's views at ``config.image_size``.
        model: your own :class:`~scrl.SCRL` / :class:`~scrl.BYOL` (any module with their call,
            ``update_target`` and ``backbone_state_dict``) instead of the one ``config`` describes.

    Attributes:
        config: the resolved config. model: the model (unwrapped). device, rank, world_size.
        steps_per_epoch, total_steps: the schedule. step, epoch: where the run is.

    Example:
        >>> summary = Pretrainer(PretrainConfig(epochs=1, output_dir="runs/demo")).run()
        >>> summary["step"], summary["stopped_by"]
        (16, None)
    """

    def __init__(self, config: PretrainConfig, dataset: Dataset | None = None, model: nn.Module | None = None) -> None:
        if not isinstance(config, PretrainConfig):
            raise TypeError(f"config must be a PretrainConfig, got {type(config).__name__}")
        self._owns_process_group = not (dist.is_available() and dist.is_initialized())
        info = init_distributed(None if config.device == "auto" else config.device)
        try:
            self._setup(config, info, dataset, model)
        except BaseException:
            self._cleanup()
            raise

    # ------------------------------------------------------------------------------ setup
    def _setup(self, config: PretrainConfig, info: Any, dataset: Dataset | None, model: nn.Module | None) -> None:
        self.rank, self.world_size, self.device = info.rank, info.world_size, info.device
        self.main_process = self.rank == 0
        on_gpu = self.device.type == "cuda"
        given = config
        self.config, filled = config.resolve(on_gpu, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        config = self.config
        if not on_gpu:
            unused = set(FIXED_DEFAULTS) | (set(MODEL_FIELDS) if model is not None else set())
            unused |= set(BOX_FIELDS) if model is None and config.method == "byol" else set()
            unused |= {"synthetic_images"} if config.data is not None or dataset is not None else set()
            picked = " ".join(f"{n}={getattr(config, n)}" for n in filled if n not in unused)
            if picked:
                self._log(f"no GPU: using CPU defaults {picked} (set any of them explicitly to override)")
        self._warnings: list[str] = []
        self._ran = False
        self.logger = MetricsLogger(config.output_dir, enabled=False)  # opened by run(), once the folder is claimed
        self.amp_dtype = _AMP_DTYPES[config.amp]
        self.global_batch = config.batch_size * self.world_size
        self.lr = config.base_lr * self.global_batch / 256
        torch.backends.cudnn.benchmark = on_gpu

        self._build_data(dataset)
        self._build_model(model)
        self._seed_rank_streams()
        self._record = run_record(
            config, self.model, data=data_name(config, dataset is not None, self.dataset.dataset), images=len(self.dataset),
            world_size=self.world_size, steps_per_epoch=self.steps_per_epoch, model_from_config=self._model_from_config,
        )
        for message in setting_warnings(given, config, model_given=not self._model_from_config, on_gpu=on_gpu,
                                        warmup_steps=self.warmup_steps, total_steps=self.total_steps):
            self._warn(message)
        self._check_boxes_fit()
        self.augment = None
        self.decoder = ViewDecoder(config.image_size) if config.decode_on_device else None
        if config.augment_on_device or config.decode_on_device:
            self.augment = [BatchPhotometric(view=1).to(self.device), BatchPhotometric(view=2).to(self.device)]
            if config.compile:  # dozens of elementwise passes over the batch, fused into a few kernels
                self.augment = [torch.compile(op) for op in self.augment]

        self.checkpoint_path = os.path.join(config.output_dir, LAST_CHECKPOINT)
        self._folder_lock = FolderLock(config.output_dir)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.skipped_files: dict[str, str] = {}
        self._reported: set[str] = set()
        self._saved_at: int | None = None
        self._valid_shares: list[float] | None = []  # None once the share has been judged
        self._probe_data = None
        if config.roi_probe and self.main_process:
            self._probe_data = open_box_dataset(config.roi_probe, synthetic_image_size=round(1.5 * config.image_size))

    def _build_data(self, dataset: Dataset | None) -> None:
        """Views made in the workers, sharded and resumable; the schedule's lengths follow from them."""
        config = self.config
        on_gpu = self.device.type == "cuda"
        self.dataset = TwoViewDataset(dataset if dataset is not None else build_dataset(config), build_transform(config),
                                      seed=config.seed)
        self.sampler = ResumableSampler(
            self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=config.seed, drop_last=True
        )
        self.loader = two_view_loader(self.dataset, self.sampler, config.batch_size, config.workers, pin_memory=on_gpu)
        self.steps_per_epoch = len(self.sampler) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{len(self.dataset)} images give no full batch of batch_size={config.batch_size} per process on "
                f"{self.world_size} process(es): lower batch_size={config.batch_size} or add images"
            )
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = min(self.total_steps, round(config.warmup_epochs * self.steps_per_epoch))
        self.last_step = min(self.total_steps, config.max_steps or self.total_steps)

    def _build_model(self, model: nn.Module | None) -> None:
        """The model on the device (SyncBatchNorm across GPUs), LARS with its schedule, the loss scaler, DDP."""
        config = self.config
        on_gpu = self.device.type == "cuda"
        self._model_from_config = model is None
        if model is None:
            torch.manual_seed(config.seed)  # identical initial weights on every rank
            model = build_model(config)
        # SyncBatchNorm needs a GPU; on CPU each process normalises with its own batch statistics.
        sync_bn = self.world_size > 1 and on_gpu
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # trunk, heads and target alike
        elif config.batch_size == 1:
            self._warn(
                "batch_size=1 per process without SyncBatchNorm (it needs several GPUs): BatchNorm normalises each view "
                "over a batch of one image and the heads' BatchNorm over the two views of that image, statistics too poor "
                "to train on; raise batch_size"
            )
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.optimizer = LARS(lars_param_groups(self.model, config.weight_decay), lr=self.lr, momentum=0.9, eta=0.001)
        self.scheduler = warmup_cosine(self.optimizer, self.warmup_steps, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.train_model = wrap_ddp(self.model, self.device, sync_buffers=not sync_bn)
        if config.compile:
            self.train_model = torch.compile(self.train_model)

    def _seed_rank_streams(self, *salt: int) -> None:
        """Per-rank random streams: box sampling and photometric augmentation on the device, and the global ones."""
        # torch.compile cannot trace a Generator argument (graph breaks), so compiled runs draw
        # boxes and augmentation parameters from the global device RNG, which is checkpointed as
        # well. Four keys per seed keep these streams apart from the workers' per-sample
        # (seed, epoch, index) ones.
        def rank_seed(stream: int) -> int:
            return mix_seed(self.config.seed, RANK_STREAMS, self.rank, stream, *salt)

        self.generators = {
            "boxes": torch.Generator(self.device).manual_seed(rank_seed(1)),
            "augment": torch.Generator(self.device).manual_seed(rank_seed(5)),
        }
        self._box_rng = None if self.config.compile else self.generators["boxes"]
        self._augment_rng = None if self.config.compile else self.generators["augment"]
        torch.manual_seed(rank_seed(2))
        np.random.seed(rank_seed(3) % 2**32)
        random.seed(rank_seed(4))

    def _check_boxes_fit(self) -> None:
        """Refuse a run whose box pairs cannot fit in its views; warn when few do."""
        sampler = getattr(self.model, "sampler", None)
        if not isinstance(sampler, BoxPairSampler):
            return
        share, pairs = box_fill(self.dataset, sampler, seed=self.config.seed)
        size = self.config.image_size
        where = f"min_box_size={sampler.min_size:g} px boxes in image_size={size} px views"
        remedy = f"raise image_size={size} or lower min_box_size={sampler.min_size:g}"
        if share == 0:
            raise ConfigError(
                f"no box pair fits: {where} (none in {pairs} view pairs of the images, cropped as in training), so SCRL "
                f"would train on nothing; {remedy}"
            )
        if share < LOW_VALID_SHARE:
            self._warn(
                f"only {share:.0%} of the box slots hold a pair with {where} ({pairs} view pairs sampled; below "
                f"{LOW_VALID_SHARE:.0%}, SCRL learns from few boxes); {remedy}"
            )

    def _warn(self, message: str) -> None:
        """Warn (rank 0) and keep the message for metrics.jsonl."""
        if self.main_process:
            warnings.warn(message, RunWarning, stacklevel=2)
            self._warnings.append(message)
            if self.logger.enabled:
                self.logger.log({"event": "warning", "step": self.step, "message": message})

    def _log(self, message: str) -> None:
        """Log ``message`` (rank 0) at INFO to the ``scrl`` logger; the library installs no handler."""
        if self.main_process:
            _logger.info(message)

    def _cleanup(self) -> None:
        if self._owns_process_group:
            cleanup()

    # ------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: model, optimiser, schedule, loss scaler, position, every rank's RNG streams, skipped files, config.

        A collective under ``torchrun``: every rank must call it (each contributes its streams).
        """
        self._gather_skipped()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch + (self.batch_in_epoch == self.steps_per_epoch),
            "batch_in_epoch": self.batch_in_epoch % self.steps_per_epoch,
            "rng": all_gather_object(rng_state(self.generators)),
            "world_size": self.world_size,
            "skipped_files": dict(sorted(self.skipped_files.items())),
            "args": self.config.to_dict(),
            "run": self._record,
        }

    def load_state_dict(self, state: Mapping[str, Any], source: str = "the checkpoint") -> None:
        """Continue from a checkpoint made by :meth:`state_dict`, if it is this run.

        The checkpoint must record the same identity and schedule as this run
        (:mod:`scrl.train.run_record`). With the same processes and batch size the run then
        continues exactly (data order, views, boxes and weights as uninterrupted). With another
        split of the same global batch (say 2 x 64 images as 1 x 128) it continues with every
        image still seen once per epoch and the same schedule, but the box-sampling and
        augmentation streams restart, so the weights cannot match an uninterrupted run bit for
        bit; a warning says so.

        Args:
            state: the checkpoint.
            source: how errors name it (its path).

        Raises:
            CheckpointError: ``state`` is not a checkpoint of a run (a backbone export, say).
            ConfigError: it is another run; the message lists each field that differs.
        """
        self._check_resumable(state, source)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when the run was not fp16: an fp16 resume then starts a fresh scale
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.skipped_files = dict(state["skipped_files"])
        self._reported = set(self.skipped_files)
        saved_world, saved_batch = state["world_size"], state["args"]["batch_size"]
        if (saved_world, saved_batch) == (self.world_size, self.config.batch_size):
            set_rng_state(state["rng"][self.rank], self.generators)
        else:
            self._seed_rank_streams(self.step)
            self._warn(
                f"the checkpoint was made with {saved_world} process(es) x batch_size={saved_batch}, this run has "
                f"{self.world_size} x {self.config.batch_size}: the same {self.global_batch} images per step and the same "
                "schedule, so every image is still seen once per epoch, but the box-sampling and augmentation streams "
                "restart: the weights will not match an uninterrupted run bit for bit"
            )
        self._saved_at = self.step

    def _check_resumable(self, state: Mapping[str, Any], source: str) -> None:
        """Raise unless ``state`` is a checkpoint of this run (see :meth:`load_state_dict`)."""
        missing = [key for key in _CHECKPOINT_KEYS if key not in state]
        if missing == ["run"]:
            raise CheckpointError(
                f"{source} was written by an earlier version of scrl, which did not record what the run is: it cannot "
                "be resumed safely; start a new run (in this output_dir with overwrite=True, which moves it aside)"
            )
        if missing:
            looks_like = " (it holds only weights, like a backbone export)" if all(isinstance(v, Tensor) for v in state.values()) else ""
            raise CheckpointError(f"{source} is not a training checkpoint of scrl.train{looks_like}: it has no {missing}")
        conflicts = run_conflicts(state["run"], self._record)
        if conflicts:
            retry = "" if self.config.overwrite else ", or in this one with overwrite=True, which moves the old run aside"
            raise ConfigError(
                f"cannot resume {source}: it is another run ({'; '.join(conflicts)}). Resume it with its own settings, or "
                f"start a new run in another output_dir{retry}"
            )

    def save(self) -> None:
        """Write :meth:`state_dict` to ``checkpoint_last.pth`` atomically (rank 0 writes; every rank must call it)."""
        state = self.state_dict()
        if self.main_process:
            save_checkpoint(state, self.checkpoint_path)
        self._saved_at = self.step

    def _lock_output_dir(self) -> None:
        """Rank 0 holds ``output_dir`` for the whole run; every rank stops at once if another run holds it.

        Raises:
            FolderLockedError: another live process holds the folder (named in the message).
        """
        refusal = None
        if self.main_process:
            try:
                self._folder_lock.acquire()
            except FolderLockedError as exc:
                refusal = str(exc)
        refusal = all_gather_object(refusal)[0]
        if refusal is not None:
            raise FolderLockedError(f"output_dir={self.config.output_dir!r}: {refusal}")

    def _claim_output_dir(self) -> tuple[Mapping[str, Any] | None, str | None]:
        """The checkpoint to continue, if any, once ``output_dir`` is known to hold no other run.

        Returns:
            ``(checkpoint, its path)``, or ``(None, None)`` for a fresh start.

        Raises:
            ConfigError: the checkpoint is another run, or ``output_dir`` holds another run that
                starting here would overwrite (unless ``overwrite``, which moves it aside).
        """
        c = self.config
        source = {"auto": self.checkpoint_path if os.path.isfile(self.checkpoint_path) else None, "none": None}.get(c.resume, c.resume)
        state = None
        if source is not None:
            # Everything that can refuse the checkpoint is checked here, before anything is moved.
            replaceable = c.overwrite and c.resume == "auto"  # the folder's own run, which a new run may replace
            try:
                state = load_checkpoint(source, self.device)
                self._check_resumable(state, source)
            except (CheckpointError, ConfigError):
                if not replaceable:
                    raise
                state, source = None, None  # a new run replaces the old one, which is moved aside below
        continues_own = source is not None and os.path.isfile(self.checkpoint_path) and os.path.samefile(source, self.checkpoint_path)
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
            if self.main_process:
                moved = move_run_aside(c.output_dir)
                if never_saved:
                    self._log(f"{c.output_dir} held only the log of a run that never saved a checkpoint: starting afresh, "
                              f"the old log moved to {moved}")
                else:
                    self._log(f"moved the previous run aside: {moved}")
        all_gather_object(None)  # no rank may write into output_dir before the old run is moved aside
        return state, source

    # ------------------------------------------------------------------------------ bookkeeping
    def _gather_skipped(self) -> list[str]:
        """Merge the unreadable files every rank met (a collective) and name the new ones, once per run.

        Rank 0 prints each new file and logs them to metrics.jsonl as one ``skipped_files`` event,
        wherever the gathering happens (a log step or a checkpoint), so no name is lost whatever
        the log cadence or the number of workers.

        Returns:
            The files named now, sorted.
        """
        for files in all_gather_object(self.skipped_files):
            self.skipped_files.update(files)
        new = sorted(set(self.skipped_files) - self._reported)
        self._reported.update(new)
        if new:
            self.logger.log({"event": "skipped_files", "step": self.step, "files": {path: self.skipped_files[path] for path in new}})
            for path in new:
                self._log(f"skipped unreadable file: {path} ({self.skipped_files[path]})")
        return new

    def _check_finite(self) -> None:
        bad = self._watch.first_bad_step()
        if bad is not None:
            last_good = f"{self.checkpoint_path} (step {self._saved_at})" if self._saved_at is not None else "none written yet"
            raise FloatingPointError(
                f"non-finite loss at step {bad} (epoch {(bad - 1) // self.steps_per_epoch}); stopping. Last good checkpoint: {last_good}"
            )

    def _run_roi_probe(self) -> None:
        """RoI linear + k-NN accuracy of the online trunk on ``config.roi_probe`` (rank 0), logged to metrics.jsonl."""
        if self._probe_data is None:
            return
        # Forked RNG: probing must not change the training's random streams, so a run with the
        # probe trains exactly as one without it (and resumes exactly).
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            metrics = roi_probe(self.model.trunk, self._probe_data, image_size=self.config.roi_probe_size or 2 * self.config.image_size,
                                autocast_dtype=self.amp_dtype, channels_last=self.config.channels_last)
        self.logger.log({"event": "roi_probe", "step": self.step, "epoch": self.epoch} | metrics)
        self._log(f"roi probe at step {self.step}: linear top-1 {metrics['roi_linear_top1']:.1f} %, k-NN top-1 "
                  f"{metrics['roi_knn_top1']:.1f} % (chance {metrics['roi_chance']:.1f} %, majority {metrics['roi_majority']:.1f} %)")

    # ------------------------------------------------------------------------------ the step
    def _device_views(self, batch: TwoViewBatch | EncodedTwoViewBatch) -> tuple[Tensor, Tensor]:
        """The batch's views as normalised float views: decoded first with ``decode_on_device``, the photometric
        steps too with ``augment_on_device``."""
        if isinstance(batch, EncodedTwoViewBatch):
            decoded = self.decoder(batch.images, batch.geom1, batch.geom2, batch.paths)
            self.skipped_files.update(decoded.skipped)
            view1, view2 = decoded.view1, decoded.view2
        else:
            view1, view2 = batch.view1, batch.view2
        if self.augment is not None:
            view1 = self.augment[0](view1, generator=self._augment_rng)
            view2 = self.augment[1](view2, generator=self._augment_rng)
        else:
            view1, view2 = normalize_images(view1), normalize_images(view2)
        return view1.contiguous(memory_format=self.memory_format), view2.contiguous(memory_format=self.memory_format)

    def train_step(self, batch: TwoViewBatch | EncodedTwoViewBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """One optimiser step on a batch already on the device, and the target update; nothing is read back to the host.

        Returns:
            ``(loss, logs)`` as the model returns them (detached 0-dim tensors in ``logs``).
        """
        view1, view2 = self._device_views(batch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss, logs = self.train_model(view1, view2, batch.geom1, batch.geom2, generator=self._box_rng)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.model.update_target(self.step, self.total_steps)
        self.step += 1
        return loss, logs

    # ------------------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Resume (per ``config.resume``), train to ``max_steps`` or the end of the schedule, save, probe and export.

        A SIGTERM or SIGINT ends the run at the next step with a checkpoint (all ranks agree on
        the step); the backbone is exported only when the run finished.

        Returns:
            ``{"step", "epoch", "stopped_by" (signal name or None), "weights_sha256" (this
            rank's parameters), "skipped_files" (sorted paths)}``.
        """
        if self._ran:
            raise RuntimeError("a Pretrainer runs once; to continue, make a new one with the same config (it resumes)")
        self._ran = True
        try:
            self._lock_output_dir()
            state, source = self._claim_output_dir()
            if state is not None:
                self.load_state_dict(state, source)
                self._log(f"resumed from {source}: step {self.step}, epoch {self.epoch}, batch {self.batch_in_epoch} of the epoch")
            self.logger = MetricsLogger(self.config.output_dir, enabled=self.main_process)
            self._log_start()
            stopped_by = self._train()
            return self._finish(stopped_by)
        finally:
            self.logger.close()
            self._folder_lock.release()
            self._cleanup()

    def _log_start(self) -> None:
        c = self.config
        if c.decode_on_device:
            augmented = "decoded, cropped and augmented on the device"
        else:
            augmented = "photometric steps on the device" if c.augment_on_device else "augmented in the workers"
        what = f"{c.method} {c.arch}" if self._model_from_config else f"{type(self.model).__name__} (given model)"
        self._log(
            f"{what}: {len(self.dataset)} images, {self.world_size} process(es) x {c.batch_size} = {self.global_batch} per step, "
            f"lr {self.lr:.4g}, {self.steps_per_epoch} steps/epoch, {self.total_steps} steps total (stopping at {self.last_step}), "
            f"views {c.image_size}px ({augmented}), amp {c.amp}, {c.workers} worker processes, device {self.device}"
        )
        self.logger.log({"event": "start", "step": self.step, "world_size": self.world_size, "lr": self.lr,
                         "total_steps": self.total_steps, "run": self._record} | {f"arg_{k}": v for k, v in c.to_dict().items()})
        for message in self._warnings:
            self.logger.log({"event": "warning", "step": self.step, "message": message})

    def _train(self) -> str | None:
        """The loop; returns the name of the signal that stopped it, or None."""
        c = self.config
        self._watch, means = NonFiniteWatch(), DeviceMeans()
        interval_start, data_wait, interval_steps = time.perf_counter(), 0.0, 0
        stopped_by = None
        with StopSignal() as stop:
            self.train_model.train()
            while self.step < self.last_step and stopped_by is None:
                self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * c.batch_size)
                batches = iter(self.loader)
                while self.batch_in_epoch < self.steps_per_epoch and self.step < self.last_step:
                    t0 = time.perf_counter()
                    try:
                        batch = next(batches).to(self.device, non_blocking=True)
                    except DataError as err:  # a broken folder, met in a data worker
                        raise DataError.from_worker(err) from None
                    data_wait += time.perf_counter() - t0
                    lr = self.optimizer.param_groups[0]["lr"]
                    loss, logs = self.train_step(batch)
                    self.batch_in_epoch, interval_steps = self.batch_in_epoch + 1, interval_steps + 1
                    self._watch.update(loss, self.step)
                    means.add(logs)
                    self.skipped_files.update(batch.skipped)

                    if self.step % c.log_every == 0 or self.step in (1, self.last_step):
                        elapsed = time.perf_counter() - interval_start
                        self._log_progress(means, lr, interval_steps, elapsed, data_wait)
                        interval_start, data_wait, interval_steps = time.perf_counter(), 0.0, 0
                    if stop.agreed():
                        stopped_by = stop.received.name if stop.received else "signal on another rank"
                        break
                    if c.save_every and self.step % c.save_every == 0:
                        self._check_finite()
                        self.save()
                if self.batch_in_epoch == self.steps_per_epoch:
                    self._check_finite()
                    if self._saved_at != self.step:
                        self.save()
                    if stopped_by is None and (self.epoch + 1) % c.roi_probe_every == 0 and self.step < self.last_step:
                        self._run_roi_probe()
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return stopped_by

    def _log_progress(self, means: DeviceMeans, lr: float, interval_steps: int, elapsed: float, data_wait: float) -> None:
        self._check_finite()
        stats = means.read()
        self._gather_skipped()
        record = {
            "step": self.step, "epoch": self.epoch, "loss": stats["loss"], "lr": lr,
            "tau": cosine_tau(self.step - 1, self.total_steps, self._record["schedule"]["tau_base"]),
            "images_per_s": interval_steps * self.global_batch / elapsed, "data_wait_share": data_wait / elapsed,
            "eta_s": (self.last_step - self.step) * elapsed / interval_steps, "valid_box_share": stats["valid_share"],
            "collapse_std": stats["collapse_std"], "skipped_files": len(self.skipped_files),
        }
        if self.device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.logger.log(record)
        self._log(_progress_line(record, self.last_step))
        self._watch_valid_share(stats["valid_share"])

    def _watch_valid_share(self, share: float) -> None:
        """Warn once when the box slots SCRL fills stay below :data:`LOW_VALID_SHARE` over the first steps."""
        if not isinstance(getattr(self.model, "sampler", None), BoxPairSampler) or self._valid_shares is None:
            return
        self._valid_shares.append(share)
        if self.step >= min(10, self.last_step):
            mean = sum(self._valid_shares) / len(self._valid_shares)
            if mean < LOW_VALID_SHARE:
                self._warn(
                    f"only {mean:.0%} of the box slots held a pair in the steps logged up to step {self.step} (below "
                    f"{LOW_VALID_SHARE:.0%}): SCRL learns from few boxes; raise image_size={self.config.image_size} or lower "
                    f"min_box_size={self.model.sampler.min_size:g}"
                )
            self._valid_shares = None

    def _finish(self, stopped_by: str | None) -> dict[str, Any]:
        self._check_finite()
        if self._saved_at != self.step:
            self.save()
        if stopped_by is None:
            self._run_roi_probe()
        digests = all_gather_object(weights_digest(self.model))
        _logger.info(f"rank {self.rank}: weights sha256 {digests[self.rank]}")  # every rank: they can be compared
        backbone_path = os.path.join(self.config.output_dir, BACKBONE_FILE)
        if self.main_process and stopped_by is None:
            save_checkpoint({k: v.contiguous() for k, v in self.model.backbone_state_dict().items()}, backbone_path)
        self.logger.log({
            "event": "stopped" if stopped_by else "end", "step": self.step, "epoch": self.epoch, "stopped_by": stopped_by,
            "weights_sha256": digests[0], "ranks_identical": len(set(digests)) == 1, "skipped_files": len(self.skipped_files),
        })
        if stopped_by:
            self._log(f"stopped by {stopped_by} at step {self.step}; checkpoint {self.checkpoint_path}; resume with --resume auto")
        else:
            self._log(f"finished at step {self.step}; checkpoint {self.checkpoint_path}; backbone {backbone_path}")
        return {"step": self.step, "epoch": self.epoch, "stopped_by": stopped_by, "weights_sha256": digests[self.rank],
                "skipped_files": sorted(self.skipped_files)}


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "epoch", "batch_in_epoch", "rng", "world_size",
                    "skipped_files", "args", "run")
