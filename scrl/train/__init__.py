"""The engine of a pretraining run: :class:`PretrainConfig` and :class:`Pretrainer`, and the pieces they
are made of (optimiser, schedules, checkpoints, processes, stop signals, telemetry)."""

from importlib import import_module
from typing import Any

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import CPU_DEFAULTS, GPU_DEFAULTS, PRESETS, ConfigError, PretrainConfig
from .lars import LARS, lars_param_groups
from .schedule import cosine_tau, warmup_cosine, warmup_cosine_factor
from .stop_signal import StopSignal
from .telemetry import DeviceMeans, MetricsLogger, NonFiniteWatch

# The engine imports the method (models, data, evaluation), which imports its schedules from
# here: importing these on first use keeps ``import scrl`` free of that cycle.
_LAZY = {name: ".pretrainer" for name in ("Pretrainer", "RunWarning", "build_dataset", "build_model", "build_transform", "weights_digest")}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
