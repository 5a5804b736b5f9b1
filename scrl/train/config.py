"""Every setting of a pretraining run, the paper's presets, and the defaults per device, in one place."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..trunk import check_trunk_name

__all__ = ["ConfigError", "CPU_DEFAULTS", "GPU_DEFAULTS", "IDENTITY_FIELDS", "PRESETS", "PretrainConfig", "SCHEDULE_FIELDS"]

# Hyper-parameters of the paper (SCRL, CVPR 2021: Sec. 4.1 and Table A5) and of the authors'
# released 1000-epoch config; the learning rate is per 256 images.
PRESETS: dict[str, dict[str, Any]] = {
    "200ep": dict(epochs=200, base_lr=0.45, weight_decay=1.0e-6, tau_base=0.97),
    "1000ep": dict(epochs=1000, base_lr=0.45, weight_decay=1.5e-6, tau_base=0.97),
    "1000ep-released": dict(epochs=1000, base_lr=0.2, weight_decay=1.5e-6, tau_base=0.996),
}
# The paper's setting with a GPU, and a run that finishes in about a minute per epoch on a laptop
# CPU otherwise. On the CPU, 64-px views have 2 x 2 C5 cells, and the overlap of two crops rarely
# spans a whole 32-px cell in both views (a fifth of the box slots would be filled); half-cell
# boxes fill most.
GPU_DEFAULTS: dict[str, Any] = dict(
    arch="resnet50", image_size=224, batch_size=256, amp="bf16", synthetic_images=16384, min_box_size=32.0
)
CPU_DEFAULTS: dict[str, Any] = dict(
    arch="resnet18", image_size=64, batch_size=32, amp="off", synthetic_images=512, workers=2, epochs=10, min_box_size=16.0
)
_DEFAULT_PRESET = {True: "1000ep", False: "200ep"}
# The same on every device; kept None until resolved so that a run can tell a setting given
# for nothing (num_boxes with BYOL, say) from the default.
FIXED_DEFAULTS: dict[str, Any] = dict(
    method="scrl", num_boxes=10, roi_pooling="exact", projector_hidden=4096, projection_dim=256, roi_probe_every=1
)
# What a checkpoint continues. A resumed run must agree with it on these, or be refused (see
# docs/pretraining.md, "What a run refuses, and why"): the run's identity (what is trained, on
# what) and its schedule (what the learning rate, weight decay and tau follow). The global batch
# (batch_size x processes) and the steps per epoch must agree too; everything else may change.
IDENTITY_FIELDS = (
    "method", "arch", "projector_hidden", "projection_dim", "num_boxes", "min_box_size", "roi_pooling", "image_size",
    "data", "synthetic_images", "seed",
)
SCHEDULE_FIELDS = ("epochs", "base_lr", "weight_decay", "tau_base", "warmup_epochs")
MODEL_FIELDS = ("method", "arch", "projector_hidden", "projection_dim", "num_boxes", "min_box_size", "roi_pooling", "tau_base")
BOX_FIELDS = ("num_boxes", "min_box_size", "roi_pooling")


class ConfigError(ValueError):
    """A setting, or a combination of settings, that the run cannot use; the message names the fields."""

Method = Literal["scrl", "byol"]
RoIPooling = Literal["exact", "aligned", "unaligned"]
Amp = Literal["bf16", "fp16", "off"]
Device = Literal["auto", "cuda", "cpu"]

# (field, test, allowed range as written in the error). Checked on the given values, so that an
# error names the setting rather than the learning rate, warm-up or sizes derived from it later.
_RANGES = (
    *((name, lambda v: v >= 1, ">= 1") for name in (
        "epochs", "max_steps", "batch_size", "num_boxes", "projector_hidden", "projection_dim", "log_every",
        "synthetic_images", "roi_probe_every",
    )),
    ("base_lr", lambda v: 0 < v < math.inf, "> 0 and finite"),
    ("weight_decay", lambda v: 0 <= v < math.inf, ">= 0 and finite"),
    ("tau_base", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("warmup_epochs", lambda v: 0 <= v < math.inf, ">= 0 and finite"),
    ("image_size", lambda v: v >= 32, ">= 32"),  # one stride-32 C5 cell
    ("min_box_size", lambda v: 0 < v < math.inf, "> 0 and finite"),
    ("roi_probe_size", lambda v: v >= 32, ">= 32"),
    ("save_every", lambda v: v >= 0, ">= 0"),
    ("workers", lambda v: v >= 0, ">= 0"),
    ("seed", lambda v: v >= 0, ">= 0"),
    ("max_consecutive_unreadable", lambda v: v >= 1, ">= 1"),
)
_CHOICES = {
    "method": get_args(Method),
    "roi_pooling": get_args(RoIPooling),
    "amp": get_args(Amp),
    "device": get_args(Device),
    "preset": tuple(PRESETS),
}
# The type each setting takes (checked before its range, so that 2.5 images or "3" epochs are
# named too). Settings not listed are the choices above.
_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(
        ("epochs", "max_steps", "batch_size", "image_size", "num_boxes", "projector_hidden", "projection_dim", "workers",
         "synthetic_images", "seed", "save_every", "log_every", "roi_probe_every", "roi_probe_size",
         "max_consecutive_unreadable"), (int,)),
    **dict.fromkeys(("min_box_size", "base_lr", "weight_decay", "tau_base", "warmup_epochs"), (int, float)),
    **dict.fromkeys(("channels_last", "compile", "augment_on_device", "decode_on_device", "overwrite"), (bool,)),
    **dict.fromkeys(("data", "arch", "output_dir", "resume", "roi_probe"), (str, os.PathLike)),
}
_NOT_NONE = ("output_dir", "resume", "seed", "channels_last", "compile", "augment_on_device", "decode_on_device", "overwrite", "save_every",
             "log_every", "device", "max_consecutive_unreadable")


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run; fields are named like the flags of ``examples/pretrain_imagenet.py``.

    Fields left ``None`` are filled by :meth:`resolve` once the device is known. Precedence:
    a field given here, then an explicit ``preset``, then the device defaults
    (:data:`GPU_DEFAULTS` / :data:`CPU_DEFAULTS`), then the default preset (``"1000ep"`` on a
    GPU, ``"200ep"`` on the CPU), then :data:`FIXED_DEFAULTS`. Every value is checked when the
    config is made: a :class:`ConfigError` (a ``ValueError``) names the field and its allowed range.

    Attributes:
        data: folder tree of images (e.g. ImageNet ``train/``); ``None``: synthetic scenes.
        method: ``"scrl"`` (the default) or ``"byol"``.
        arch: trunk name of :func:`scrl.trunk.create_trunk`: a torchvision CNN by its builder name
            (``resnet50``, ``convnext_tiny``, ``regnet_y_800mf``, ...), ``"timm:NAME"``, or a name given
            to :func:`scrl.trunk.register_trunk`; default resnet50 on GPU, resnet18 on CPU.
        preset: paper hyper-parameters, a key of :data:`PRESETS`.
        epochs: epochs of the schedule.
        max_steps: stop after this many optimiser steps (the schedule still spans ``epochs``).
        batch_size: images per process.
        image_size: view side in pixels, >= 32.
        num_boxes: box pairs per image ``K`` (SCRL; default 10).
        roi_pooling: where SCRL pools each box: at the trunk's cell centres (``"exact"``), or
            as RoIAlign's ``aligned=True`` (Detectron2) / ``aligned=False`` (the authors' code) assume.
            Default ``"exact"``.
        min_box_size: smallest box side in view pixels (SCRL), at most ``image_size``.
        projector_hidden, projection_dim: widths of projector and predictor (default 4096, 256).
        base_lr: learning rate per 256 images (``lr = base_lr * global batch / 256``).
        weight_decay: LARS weight decay.
        tau_base: target weight at step 0 of the cosine schedule.
        warmup_epochs: linear warm-up (default: 10, at most a tenth of ``epochs``).
        workers: data workers per process (default on GPU: CPU cores per process - 1, at most 10).
        synthetic_images: size of the synthetic dataset without ``data``.
        output_dir: where checkpoints, ``metrics.jsonl`` and the exported backbone go.
        resume: ``"auto"`` (the checkpoint in ``output_dir``, if any), ``"none"``, or a checkpoint path.
        overwrite: start a new run in an ``output_dir`` that holds another one, moving the old
            run's files aside into ``output_dir/replaced-<time>/`` (without it, such a run is refused).
        seed: seeds weights, data order, augmentations and boxes.
        amp: ``"bf16"``, ``"fp16"`` (with loss scaling) or ``"off"``.
        channels_last: NHWC memory format.
        compile: ``torch.compile`` the model.
        augment_on_device: workers only decode, crop, resize and flip; the photometric steps
            run batched on the device (:class:`~scrl.transforms.BatchPhotometric`).
        decode_on_device: workers only read the files and draw the views' geometry
            (:class:`~scrl.transforms.TwoViewCrops`); JPEG decoding, crop, resize and flip run
            batched on the device (:class:`~scrl.transforms.ViewDecoder`), and so do the
            photometric steps (implies ``augment_on_device``).
        save_every: also save every N optimiser steps (0: at epoch ends, on signals and at the end).
        log_every: log every N optimiser steps.
        roi_probe: box dataset for the online RoI probe (COCO ``.json``, YOLO folder or
            ``synthetic[:N]``); ``None``: off.
        roi_probe_every: run the probe every N epochs (and at the end; default 1).
        roi_probe_size: image side of the probe (default: twice ``image_size``).
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``.
        max_consecutive_unreadable: with ``data``, how many unreadable files in a row are
            replaced by the next readable one before the run stops (the folder is then broken).

    Example:
        >>> config = PretrainConfig(epochs=1, output_dir="runs/demo")
        >>> config.resolve(on_gpu=False)[0].batch_size
        32
    """

    data: str | None = None
    method: Method | None = None
    arch: str | None = None
    preset: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    num_boxes: int | None = None
    roi_pooling: RoIPooling | None = None
    min_box_size: float | None = None
    projector_hidden: int | None = None
    projection_dim: int | None = None
    base_lr: float | None = None
    weight_decay: float | None = None
    tau_base: float | None = None
    warmup_epochs: float | None = None
    workers: int | None = None
    synthetic_images: int | None = None
    output_dir: str = "runs/pretrain"
    resume: str = "auto"
    overwrite: bool = False
    seed: int = 0
    amp: Amp | None = None
    channels_last: bool = False
    compile: bool = False
    augment_on_device: bool = False
    decode_on_device: bool = False
    save_every: int = 0
    log_every: int = 10
    roi_probe: str | None = None
    roi_probe_every: int | None = None
    roi_probe_size: int | None = None
    device: Device = "auto"
    max_consecutive_unreadable: int = 64

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if (value is not None or name in _NOT_NONE) and value not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
        for name, types in _TYPES.items():
            value = getattr(self, name)
            # bool is an int to Python, but True epochs or a 1.0 flag is a mistake worth naming.
            wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
            if (value is not None or name in _NOT_NONE) and wrong:
                kind = " or ".join(t.__name__ for t in types if t is not os.PathLike)
                raise ConfigError(f"{name} must be {'a' if kind[0] not in 'aeiou' else 'an'} {kind}, got {value!r}")
        for name, ok, allowed in _RANGES:
            value = getattr(self, name)
            if value is not None and not ok(value):  # "not ok" also rejects nan
                raise ConfigError(f"{name} must be {allowed}, got {value}")
        if self.arch is not None:
            try:
                check_trunk_name(self.arch)
            except ValueError as err:  # the message starts with the name: "arch=" before it names the field
                raise ConfigError(f"arch={err}; a whole model goes to Pretrainer(model=...)") from None
        if self.min_box_size is not None and self.image_size is not None and self.min_box_size > self.image_size:
            raise ConfigError(f"min_box_size must be at most image_size={self.image_size}, got {self.min_box_size}")
        if self.resume not in ("auto", "none") and not os.path.isfile(self.resume):
            raise ConfigError(f"resume={self.resume!r}: no such checkpoint file (use 'auto', 'none' or a path)")

    def resolve(self, on_gpu: bool, local_world_size: int = 1) -> tuple["PretrainConfig", list[str]]:
        """This config with every ``None`` field filled; see the class docstring for the precedence.

        Args:
            on_gpu: whether the run trains on a GPU (selects the device defaults).
            local_world_size: processes on this machine; they share its CPU cores between
                their data workers.

        Returns:
            ``(resolved config, names of the fields that were filled)``.
        """
        device_defaults = dict(GPU_DEFAULTS if on_gpu else CPU_DEFAULTS)
        if on_gpu:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            device_defaults["workers"] = max(1, min(10, cores // local_world_size - 1))
        if self.preset is None:
            defaults = {**PRESETS[_DEFAULT_PRESET[on_gpu]], **device_defaults}
        else:
            defaults = {**device_defaults, **PRESETS[self.preset]}
        defaults.update(FIXED_DEFAULTS)
        filled = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        epochs = filled.get("epochs", self.epochs)
        if self.warmup_epochs is None:
            filled["warmup_epochs"] = min(10.0, epochs / 10)
        return dataclasses.replace(self, **filled), list(filled)

    def ignored_settings(self, model_given: bool = False) -> list[str]:
        """Settings given for nothing: each ``"field ... has no effect ..."``, for a warning.

        Args:
            model_given: the run trains a model given to it, not one built from these settings.
        """
        ignored = []
        if model_given:
            ignored += [f"{name} has no effect with a given model" for name in MODEL_FIELDS if getattr(self, name) is not None]
        elif self.method == "byol":
            ignored += [f"{name} has no effect with method='byol'" for name in BOX_FIELDS if getattr(self, name) is not None]
        if self.roi_probe is None:
            ignored += [f"{name} has no effect when roi_probe=None (no probe)" for name in ("roi_probe_every", "roi_probe_size")
                        if getattr(self, name) is not None]
        if self.data is not None and self.synthetic_images is not None:
            ignored.append(f"synthetic_images has no effect with data={self.data!r} (the folder's images are used)")
        return ignored

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (saved in checkpoints and ``metrics.jsonl``)."""
        return dataclasses.asdict(self)

