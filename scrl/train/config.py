"""Every setting of a pretraining run, the paper's presets, and the defaults per device, in one place.

Each field of :class:`PretrainConfig` declares, beside its type and default, a :class:`Setting`:
its range or choices, help text, group, and whether it belongs to the run's identity or schedule.
Everything else is made from these declarations: the checks of ``PretrainConfig(...)``, the field
lists a resumed run is compared on (:data:`IDENTITY_FIELDS`, :data:`SCHEDULE_FIELDS`), the flags
of ``examples/pretrain_imagenet.py`` (:func:`add_arguments`), the option table of
``docs/pretraining.md`` (:func:`options_markdown`), and the flat YAML file of a run's settings
(:meth:`PretrainConfig.to_yaml` / :meth:`PretrainConfig.from_yaml`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union, get_args, get_origin, get_type_hints

from ..roi_pool import RoIPooling
from ..runtime import write_atomically
from ..trunk import check_trunk_name

__all__ = [
    "add_arguments", "BOX_FIELDS", "ConfigError", "CPU_DEFAULTS", "FIXED_DEFAULTS", "GPU_DEFAULTS", "GROUPS",
    "IDENTITY_FIELDS", "MODEL_FIELDS", "options_markdown", "PRESETS", "PretrainConfig", "Range", "SCHEDULE_FIELDS",
    "Setting", "SETTINGS",
]

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

# The groups of settings, in the order the flags and the option table show them.
GROUPS: dict[str, str] = {
    "data": "what the run trains on, and how the images are loaded and augmented",
    "model": "what is trained (method, trunk, heads, boxes)",
    "optimisation": "the schedules of learning rate, weight decay and tau, and the batch they are set for",
    "run": "where and how the run goes (files, resuming, precision, logging, probing, device)",
}


class ConfigError(ValueError):
    """A setting, or a combination of settings, that the run cannot use; the message names the fields."""


@dataclass(frozen=True)
class Range:
    """The values a number may take: ``test(value)``, written as ``text`` in errors and docs."""

    test: Callable[[Any], bool]
    text: str


def _at_least(low: int) -> Range:
    return Range(lambda v: v >= low, f">= {low}")


# "not test(v)" also rejects nan, which compares false to everything.
_POSITIVE = Range(lambda v: 0 < v < math.inf, "> 0 and finite")
_NON_NEGATIVE = Range(lambda v: 0 <= v < math.inf, ">= 0 and finite")
_FRACTION = Range(lambda v: 0 <= v <= 1, "in [0, 1]")


# Checks beyond type and range, for one setting each: the message, or None.
def _trunk_name(value: str) -> str | None:
    try:
        check_trunk_name(value)
    except ValueError as err:  # the message starts with the name: "arch=" before it names the field
        return f"arch={err}; a whole model goes to Pretrainer(model=...)"
    return None


def _resume_file(value: str) -> str | None:
    if value in ("auto", "none") or os.path.isfile(value):
        return None
    return f"resume={value!r}: no such checkpoint file (use 'auto', 'none' or a path)"


def _init_file(value: str) -> str | None:
    if os.path.isfile(value):
        return None
    return f"init_from={value!r}: no such checkpoint file (give a run's checkpoint_last.pth)"


@dataclass(frozen=True)
class Setting:
    """One field of :class:`PretrainConfig`: how it is typed, checked, shown and recorded.

    Attributes:
        name: the field; its flag is :attr:`flag`, its key in a config file the name itself.
        group: a key of :data:`GROUPS`.
        help: what it does, as ``--help`` and the option table say it (other settings by their flags).
        kind: ``int``, ``float``, ``bool`` or ``str``, from the field's annotation; a float
            setting takes ints too, a ``str`` setting with ``path`` any ``os.PathLike``.
        nullable: ``None`` is allowed (the annotation has ``| None``): filled by
            :meth:`PretrainConfig.resolve`, or "off".
        default: the field's default.
        choices: the values it may take (from a ``Literal`` annotation, or given), or ``None``.
        range: the numbers it may take, or ``None``.
        check: a further test of a value of the right type and range: the error message, or
            ``None`` if the value will do (a trunk name that exists, a checkpoint file that does).
        part: ``"identity"`` (what is trained, on what) or ``"schedule"`` (what the learning
            rate, weight decay and tau follow): a resumed run must agree with its checkpoint on
            both; ``None``: may change on resume.
        model: describes the model built from the config (has no effect beside a given model).
        boxes: an SCRL box setting (has no effect with BYOL); also a model setting.
        path: a file or folder (``os.PathLike`` accepted, kept as ``str``).
        metavar: the flag's placeholder in ``--help`` and the docs (argparse's by default).
        default_text: the default as the docs say it, where the field's default does not (the
            device defaults, the presets and :data:`FIXED_DEFAULTS` are written out otherwise).
        see: a markdown pointer appended in the option table only.
    """

    name: str
    group: str
    help: str
    kind: type
    nullable: bool
    default: Any
    choices: tuple[Any, ...] | None = None
    range: Range | None = None
    check: Callable[[Any], str | None] | None = None
    part: Literal["identity", "schedule"] | None = None
    model: bool = False
    boxes: bool = False
    path: bool = False
    metavar: str | None = None
    default_text: str | None = None
    see: str = ""

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--max-steps`` for ``max_steps``."""
        return "--" + self.name.replace("_", "-")

    @property
    def types(self) -> tuple[type, ...]:
        """The Python types a value may have."""
        return {int: (int,), float: (int, float), bool: (bool,)}.get(self.kind, (str, os.PathLike) if self.path else (str,))

    def shown_default(self) -> str:
        """The default as ``--help`` and the docs write it."""
        if self.default_text is not None:
            return self.default_text
        if self.name in FIXED_DEFAULTS:
            return str(FIXED_DEFAULTS[self.name])
        if self.name in GPU_DEFAULTS or self.name in CPU_DEFAULTS:
            gpu, cpu = (table.get(self.name, "from --preset") for table in (GPU_DEFAULTS, CPU_DEFAULTS))
            return f"{gpu} on GPU, {cpu} on CPU"
        if any(self.name in preset for preset in PRESETS.values()):
            return "from --preset"
        if self.default is None or self.default is False:
            return "none" if self.default is None else "off"
        return str(self.default)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this setting alone, as a message naming the field; ``None`` if nothing."""
        name = self.name
        if value is None and self.nullable:
            return None
        if self.choices is not None:
            return None if value in self.choices else f"{name} must be one of {list(self.choices)}, got {value!r}"
        # bool is an int to Python, but True epochs or a 1.0 flag is a mistake worth naming.
        if not isinstance(value, self.types) or (isinstance(value, bool) and self.kind is not bool):
            kind = " or ".join(t.__name__ for t in self.types if t is not os.PathLike)
            return f"{name} must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {value!r}"
        if self.range is not None and not self.range.test(value):
            return f"{name} must be {self.range.text}, got {value}"
        return None if self.check is None else self.check(value)


def _setting(default: Any, group: str, help: str, **declared: Any) -> Any:
    """A dataclass field with its :class:`Setting` declaration (completed from the annotation below the class)."""
    return dataclasses.field(default=default, metadata={"setting": dict(group=group, help=help, **declared)})


Method = Literal["scrl", "byol"]
Amp = Literal["bf16", "fp16", "off"]
Device = Literal["auto", "cuda", "cpu"]

_ID, _SCHEDULE = "identity", "schedule"


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run; fields are named like the flags of ``examples/pretrain_imagenet.py``.

    Each field's range or choices, help text, group and part of the run record are declared
    beside it and collected in :data:`SETTINGS`; ``docs/pretraining.md`` ("All options") shows them
    as a table. Fields left ``None`` are filled by :meth:`resolve` once the device is known.
    Precedence: a field given here, then an explicit ``preset``, then the device defaults
    (:data:`GPU_DEFAULTS` / :data:`CPU_DEFAULTS`), then the default preset (``"1000ep"`` on a
    GPU, ``"200ep"`` on the CPU), then :data:`FIXED_DEFAULTS`. Every value is checked when the
    config is made: a :class:`ConfigError` (a ``ValueError``) names the field and its allowed
    range. Paths given as ``os.PathLike`` are kept as ``str``.

    Example:
        >>> config = PretrainConfig(epochs=1, output_dir="runs/demo")
        >>> config.resolve(on_gpu=False)[0].batch_size
        32
    """

    data: str | None = _setting(
        None, "data", "any folder tree of .jpg .jpeg .png .webp .bmp files (any letter case), e.g. ImageNet train/; "
        "labels are not used", part=_ID, path=True, metavar="PATH", default_text="synthetic scenes",
        see="see [The data pipeline](#the-data-pipeline)")
    method: Method | None = _setting(
        None, "model", "scrl or byol: the same trunk, heads and loop; only the pooling and the loss differ",
        part=_ID, model=True)
    arch: str | None = _setting(
        None, "model", "the trunk: a torchvision CNN by its builder name (resnet50, resnext50_32x4d, regnet_y_800mf, "
        "convnext_tiny, efficientnet_b0, mobilenet_v3_large, ...), timm:NAME, ultralytics:NAME.yaml (a YOLO backbone), or a name given to "
        "scrl.trunk.register_trunk", check=_trunk_name, part=_ID, model=True, see="see [trunks.md](trunks.md)")
    preset: str | None = _setting(
        None, "optimisation", "the paper's hyper-parameters (--epochs, --base-lr, --weight-decay, --tau-base); "
        "values given explicitly win", choices=tuple(PRESETS), default_text="1000ep on GPU, 200ep on CPU",
        see="see [Presets](#presets-and-the-learning-rate)")
    epochs: int | None = _setting(
        None, "optimisation", "length of the schedules", range=_at_least(1), part=_SCHEDULE)
    max_steps: int | None = _setting(
        None, "run", "stop after this many optimiser steps (the schedules still span --epochs)", range=_at_least(1),
        metavar="N")
    batch_size: int | None = _setting(
        None, "optimisation", "images per process and step (the global batch is this x processes)", range=_at_least(1))
    image_size: int | None = _setting(
        None, "data", "side of both views in pixels", range=_at_least(32), part=_ID)  # one stride-32 C5 cell
    num_boxes: int | None = _setting(
        None, "model", "box pairs per image K (SCRL)", range=_at_least(1), part=_ID, boxes=True)
    roi_pooling: RoIPooling | None = _setting(
        None, "model", "where SCRL pools each box: at the trunk's cell centres (exact), or as RoIAlign's aligned=True "
        "(Detectron2) / aligned=False (the authors' code) assume", part=_ID, boxes=True,
        see="see [geometry.md](geometry.md)")
    min_box_size: float | None = _setting(
        None, "model", "smallest box side in view pixels, in both views (SCRL; at most --image-size)", range=_POSITIVE,
        part=_ID, boxes=True)
    projector_hidden: int | None = _setting(
        None, "model", "hidden width of projector and predictor", range=_at_least(1), part=_ID, model=True)
    projection_dim: int | None = _setting(
        None, "model", "output width of projector and predictor", range=_at_least(1), part=_ID, model=True)
    base_lr: float | None = _setting(
        None, "optimisation", "learning rate per 256 images (lr = --base-lr x global batch / 256)", range=_POSITIVE,
        part=_SCHEDULE)
    weight_decay: float | None = _setting(
        None, "optimisation", "LARS weight decay (biases and normalisation parameters get none)", range=_NON_NEGATIVE,
        part=_SCHEDULE)
    tau_base: float | None = _setting(
        None, "optimisation", "target weight tau at step 0 of its cosine schedule", range=_FRACTION, part=_SCHEDULE,
        model=True)
    warmup_epochs: float | None = _setting(
        None, "optimisation", "linear learning-rate warm-up, in epochs", range=_NON_NEGATIVE, part=_SCHEDULE,
        default_text="10, at most a tenth of --epochs")
    workers: int | None = _setting(
        None, "data", "data worker processes per training process", range=_at_least(0),
        default_text=f"CPU cores per process - 1 (at most 10) on GPU, {CPU_DEFAULTS['workers']} on CPU")
    synthetic_images: int | None = _setting(
        None, "data", "size of the synthetic dataset without --data", range=_at_least(1), part=_ID)
    output_dir: str = _setting(
        "runs/pretrain", "run", "where checkpoints, metrics.jsonl, config.yaml and the exported backbone go", path=True)
    resume: str = _setting(
        "auto", "run", "auto (the checkpoint in --output-dir, if any), none (a new run), or a checkpoint path to "
        "continue", check=_resume_file, path=True, metavar="{auto,none,PATH}",
        see="see [Checkpoints](#checkpoints-resuming-stopping)")
    overwrite: bool = _setting(
        False, "run", "start a new run in an --output-dir that holds another one (or one that cannot be resumed), "
        "moving the old run's files into replaced-<time>/", see="see [What a run refuses](#what-a-run-refuses-and-why)")
    seed: int = _setting(
        0, "run", "seeds initial weights, data order, augmentations and box sampling", range=_at_least(0), part=_ID)
    amp: Amp | None = _setting(
        None, "run", "mixed precision: bf16, fp16 (with a gradient scaler) or off")
    channels_last: bool = _setting(
        False, "run", "NHWC memory format for the trunk and the views (faster convolutions on tensor cores)")
    compile: bool = _setting(
        False, "run", "torch.compile the (DDP-wrapped) model, and the augmentation with --augment-on-device")
    augment_on_device: bool = _setting(
        False, "data", "workers only decode, crop, resize and flip; colour jitter, grayscale, blur and solarize run "
        "batched on the device", see="see [On-device augmentation](#on-device-augmentation---augment-on-device)")
    decode_on_device: bool = _setting(
        False, "data", "workers only read the files and draw the views' geometry; JPEG decoding, crop, resize, flip and "
        "the photometric steps run batched on the device (implies --augment-on-device)",
        see="see [Decoding on the device](#decoding-on-the-device---decode-on-device)")
    save_every: int = _setting(
        0, "run", "also save every N optimiser steps (0: only at epoch ends, on signals and at the end)",
        range=_at_least(0), metavar="N")
    log_every: int = _setting(
        10, "run", "log line and metrics record at step 1 and every N optimiser steps", range=_at_least(1), metavar="N")
    roi_probe: str | None = _setting(
        None, "run", "box dataset for the online RoI probe: a COCO .json, a YOLO folder (e.g. "
        "../shared/data/coco128-train) or synthetic[:N] (held-out scenes)", path=True, metavar="DATA",
        default_text="off", see="see [the RoI probe](#watching-transfer-quality-the-online-roi-probe)")
    roi_probe_every: int | None = _setting(
        None, "run", "run the RoI probe every N epochs, and once at the end", range=_at_least(1), metavar="N")
    roi_probe_size: int | None = _setting(
        None, "run", "square image side for the RoI probe", range=_at_least(32), default_text="2 x --image-size")
    device: Device = _setting(
        "auto", "run", "auto (CUDA when available), cuda or cpu (cpu forces the CPU on a GPU machine)")
    max_consecutive_unreadable: int = _setting(
        64, "data", "with --data: how many undecodable files in a row are replaced by the next readable one before "
        "the run stops (the folder is then broken)", range=_at_least(1), metavar="N")
    # A run started from other weights is another run: part of the identity, so resuming it
    # needs the same weights.
    init_from: str | None = _setting(
        None, "run", "start a new run from the weights of this checkpoint (a finished run's checkpoint_last.pth): "
        "the way to continue a finished run with a longer schedule", check=_init_file, part=_ID, path=True, metavar="CKPT",
        see="see [Checkpoints](#checkpoints-resuming-stopping)")

    def __post_init__(self) -> None:
        for setting in SETTINGS.values():
            value = getattr(self, setting.name)
            if setting.path and isinstance(value, os.PathLike):
                object.__setattr__(self, setting.name, value := os.fspath(value))
            problem = setting.problem(value)
            if problem is not None:
                raise ConfigError(problem)
        if self.min_box_size is not None and self.image_size is not None and self.min_box_size > self.image_size:
            raise ConfigError(f"min_box_size must be at most image_size={self.image_size}, got {self.min_box_size}")

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

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the settings to ``path`` as a flat YAML file, atomically; :meth:`from_yaml` reads it back equal.

        Keys are the field names, grouped under comments by :data:`GROUPS`; strings are
        double-quoted, floats keep a decimal point, so any YAML reader gives the same values.

        Raises:
            OSError: the file could not be written; the message names ``path``.
        """
        text = _yaml_text(self)
        write_atomically(path, lambda f: f.write(text.encode()))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> "PretrainConfig":
        """The config of a flat YAML file of settings, with ``overrides`` (e.g. flags) taking precedence.

        The file is one ``key: value`` per line, keys being field names; comments (``#``), blank
        lines, a leading ``---``, quoted and unquoted strings, ``null`` / ``~`` / nothing,
        ``true`` / ``false``, ints and floats (``1e-6``, ``.inf``) are read as YAML reads them.
        Keys left out keep their defaults; relative paths are relative to the working directory,
        not to the file. Files written by :meth:`to_yaml` (such as the
        ``config.yaml`` of a run) read back equal.

        Raises:
            ConfigError: an unknown or repeated key, a line that is not ``key: value``, or a
                value the setting cannot take, naming the file, the line and the key; or a
                combination of settings the run cannot use.
            OSError: the file cannot be read.
        """
        path = os.fspath(path)
        values: dict[str, Any] = {}
        for line, key, value in _read_flat_yaml(path):
            where = f"{path}, line {line}, key {key!r}"
            if key not in SETTINGS:
                close = difflib.get_close_matches(key.replace("-", "_"), list(SETTINGS), n=1)
                guess = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{where}: no such setting{guess}; the keys are the fields of PretrainConfig")
            if key in values:
                raise ConfigError(f"{where}: given twice")
            problem = SETTINGS[key].problem(value)
            if problem is not None:
                raise ConfigError(f"{where}: {problem}")
            values[key] = value
        unknown = [key for key in overrides if key not in SETTINGS]
        if unknown:
            raise ConfigError(f"no such setting {unknown[0]!r}; the settings are the fields of PretrainConfig")
        for key, value in overrides.items():  # named as themselves, not as the file's
            problem = SETTINGS[key].problem(value)
            if problem is not None:
                raise ConfigError(problem)
        try:
            return cls(**{**values, **overrides})
        except ConfigError as err:
            raise ConfigError(f"{err} (with the settings of {path})") from None


def _settings() -> dict[str, Setting]:
    hints = get_type_hints(PretrainConfig)
    settings = {}
    for field in dataclasses.fields(PretrainConfig):
        hint = hints[field.name]
        args = get_args(hint) if get_origin(hint) is Union or isinstance(hint, types.UnionType) else (hint,)
        (kind,) = [arg for arg in args if arg is not type(None)]
        declared = dict(field.metadata["setting"])
        if get_origin(kind) is Literal:
            declared.setdefault("choices", get_args(kind))
            kind = str
        settings[field.name] = Setting(
            name=field.name, kind=kind, nullable=type(None) in args, default=field.default, **declared
        )
    return settings


SETTINGS: dict[str, Setting] = _settings()
"""Every field of :class:`PretrainConfig` by name, in field order."""

# What a checkpoint continues. A resumed run must agree with it on these, or be refused (see
# docs/pretraining.md, "What a run refuses, and why"): the run's identity (what is trained, on
# what) and its schedule (what the learning rate, weight decay and tau follow). The global batch
# (batch_size x processes) and the steps per epoch must agree too; everything else may change.
IDENTITY_FIELDS = tuple(name for name, s in SETTINGS.items() if s.part == "identity")
SCHEDULE_FIELDS = tuple(name for name, s in SETTINGS.items() if s.part == "schedule")
# Settings of the model built from the config, and of SCRL's boxes among them.
MODEL_FIELDS = tuple(name for name, s in SETTINGS.items() if s.model or s.boxes)
BOX_FIELDS = tuple(name for name, s in SETTINGS.items() if s.boxes)


def _in_group_order() -> list[Setting]:
    return sorted(SETTINGS.values(), key=lambda s: list(GROUPS).index(s.group))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a flag for every setting to ``parser``, one argument group per entry of :data:`GROUPS`.

    A flag left off the command line stays out of the parsed namespace, so that
    ``PretrainConfig(**vars(args))`` keeps the config's own defaults. On/off settings get
    ``--flag`` and ``--no-flag`` (to turn off what a config file turns on).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> vars(parser.parse_args(["--epochs", "3", "--no-compile"]))
        {'epochs': 3, 'compile': False}
    """
    groups = {name: parser.add_argument_group(name, description) for name, description in GROUPS.items()}
    for s in _in_group_order():
        text = f"{s.help} (default: {s.shown_default()})".replace("%", "%%")  # argparse formats help with %
        options: dict[str, Any] = dict(dest=s.name, default=argparse.SUPPRESS, help=text)
        if s.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=None if s.kind is str else s.kind, choices=s.choices, metavar=s.metavar)
        groups[s.group].add_argument(s.flag, **options)


def _allowed(s: Setting) -> str:
    if s.choices is not None:
        return ", ".join(map(str, s.choices))
    if s.kind is bool:
        return "on / off"
    if s.metavar is not None and s.metavar.startswith("{"):  # words and a placeholder, as "{auto,none,PATH}"
        return ", ".join(s.metavar[1:-1].split(","))
    if s.kind is str:
        return "path" if s.path else "name"
    return f"{s.kind.__name__} {s.range.text}" if s.range else s.kind.__name__


def _markdown(text: str) -> str:
    text = text.replace("|", "\\|").replace("<", "&lt;")
    return re.sub(r"(?<![\w`-])--[a-z][a-z0-9-]*", lambda m: f"`{m[0]}`", text)


def options_markdown() -> str:
    """The option table of ``docs/pretraining.md`` ("All options"): one table per group of settings."""
    parts = []
    for group, title in GROUPS.items():
        rows = ["| flag | values | default | meaning |", "|---|---|---|---|"]
        for s in SETTINGS.values():
            if s.group == group:
                flag = f"`{s.flag}`" if s.metavar is None or s.kind is bool else f"`{s.flag} {s.metavar}`"
                meaning = _markdown(s.help) + (f"; {s.see}" if s.see else "")
                rows.append(f"| {flag} | {_markdown(_allowed(s))} | {_markdown(s.shown_default())} | {meaning} |")
        parts.append(f"**{group}**: {title}\n\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------- flat YAML
# The subset of YAML a flat file of settings needs, read and written without a YAML library
# (the runtime dependencies are torch, torchvision, numpy and typing-extensions).
_KEY_LINE = re.compile(r"([A-Za-z_][\w-]*)[ \t]*:(?:[ \t]+(.*))?")
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_SPECIAL_FLOATS = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
# What starts a YAML structure this reader does not take, rather than read it as a string.
_INDICATORS = tuple("[]{}&*!|>%@`,?")


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ".nan" if value != value else (".inf" if value > 0 else "-.inf")
        text = repr(value)
        # YAML 1.1 readers (PyYAML) take 1e-06 for a string; 1.0e-06 is a float to every reader.
        mantissa, e, exponent = text.partition("e")
        return text if not e or "." in mantissa else f"{mantissa}.0e{exponent}"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a double-quoted YAML string


def _yaml_text(config: PretrainConfig) -> str:
    lines = ["# Settings of a pretraining run (scrl.train.PretrainConfig; docs/pretraining.md, \"All options\").",
             "# Read with PretrainConfig.from_yaml(path) or examples/pretrain_imagenet.py --config FILE."]
    for group in GROUPS:
        lines += ["", f"# {group}"]
        lines += [f"{s.name}: {_yaml_value(getattr(config, s.name))}" for s in SETTINGS.values() if s.group == group]
    return "\n".join(lines) + "\n"


def _parse_scalar(text: str) -> Any:
    """A YAML scalar (comment already removed); raises ValueError for what this reader does not take."""
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return text.lower() == "true"
    if text.startswith('"'):
        try:
            return json.loads(text)  # YAML's double-quoted strings escape as JSON's do
        except ValueError:
            raise ValueError(
                f"{text} is not one double-quoted string (write a quote inside as \\\", a backslash as \\\\)"
            ) from None
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'") or "'" in text[1:-1].replace("''", ""):
            raise ValueError("a single-quoted string must end with ' (a quote inside is written '')")
        return text[1:-1].replace("''", "'")
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text.lower() in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text.lower()]
    if text.startswith(_INDICATORS) or text.startswith("- ") or ": " in text:
        raise ValueError(f"{text!r} is not a plain value (lists, mappings and tags are not settings); quote a string")
    return text


def _without_comment(text: str) -> str:
    """``text`` up to a ``#`` that starts a comment (at the start or after a blank, outside quotes)."""
    quote, i = None, 0
    while i < len(text):
        char = text[i]
        if quote is not None:
            if quote == '"' and char == "\\":
                i += 1  # an escaped character does not end the string
            elif char == quote and quote == "'" and text[i + 1 : i + 2] == "'":
                i += 1  # '' is a quote inside a single-quoted string
            elif char == quote:
                quote = None
        elif char in "\"'" and (i == 0 or text[i - 1] in " \t"):
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
        i += 1
    return text.rstrip()


def _read_flat_yaml(path: str) -> list[tuple[int, str, Any]]:
    """``(line number, key, value)`` of each ``key: value`` line of the file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    entries = []
    seen_content = False
    for number, raw in enumerate(text.lstrip("\ufeff").split("\n"), start=1):
        line = _without_comment(raw.rstrip("\r"))
        if not line.strip():
            continue
        if line.strip() == "---" and not seen_content:
            seen_content = True
            continue
        seen_content = True
        match = _KEY_LINE.fullmatch(line)
        if match is None:
            raise ConfigError(f"{path}, line {number}: {raw.strip()!r} is not a 'key: value' line (a flat file of "
                              "settings, one per line, keys at the start of the line)")
        key = match[1]
        try:
            value = _parse_scalar((match[2] or "").strip())
        except ValueError as err:
            raise ConfigError(f"{path}, line {number}, key {key!r}: {err}") from None
        entries.append((number, key, value))
    return entries
