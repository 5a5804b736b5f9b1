"""The engine of a pretraining run: :class:`PretrainConfig` and :class:`Pretrainer`, and the pieces they
are made of (stop signals, telemetry; the optimiser and schedules from :mod:`scrl.lars` and
:mod:`scrl.schedule`, checkpoints and processes from :mod:`scrl.runtime`)."""

from ..lars import LARS, lars_param_groups
from ..runtime.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..schedule import cosine_tau, warmup_cosine, warmup_cosine_factor
from .config import CPU_DEFAULTS, GPU_DEFAULTS, PRESETS, ConfigError, PretrainConfig
from .pretrainer import Pretrainer, RunWarning, build_dataset, build_model, build_transform, weights_digest
from .stop_signal import StopSignal
from .telemetry import DeviceMeans, MetricsLogger, NonFiniteWatch

__all__ = [
    "build_dataset",
    "build_model",
    "build_transform",
    "CheckpointError",
    "ConfigError",
    "cosine_tau",
    "CPU_DEFAULTS",
    "DeviceMeans",
    "GPU_DEFAULTS",
    "LARS",
    "lars_param_groups",
    "latest_checkpoint",
    "load_checkpoint",
    "MetricsLogger",
    "NonFiniteWatch",
    "PRESETS",
    "PretrainConfig",
    "Pretrainer",
    "rng_state",
    "RunWarning",
    "save_checkpoint",
    "set_rng_state",
    "StopSignal",
    "warmup_cosine",
    "warmup_cosine_factor",
    "weights_digest",
]

