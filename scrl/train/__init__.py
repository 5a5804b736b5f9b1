"""The engine of a pretraining run: optimiser, schedules, checkpoints, processes, stop signals, telemetry."""

from .checkpoint import latest_checkpoint, load_checkpoint, restore_checkpoint, rng_state, save_checkpoint, set_rng_state
from .lars import LARS, lars_param_groups
from .schedule import cosine_tau, warmup_cosine, warmup_cosine_factor
from .stop_signal import StopSignal
from .telemetry import DeviceMeans, MetricsLogger, NonFiniteWatch

__all__ = [
    "cosine_tau",
    "DeviceMeans",
    "LARS",
    "lars_param_groups",
    "latest_checkpoint",
    "load_checkpoint",
    "MetricsLogger",
    "NonFiniteWatch",
    "restore_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "StopSignal",
    "warmup_cosine",
    "warmup_cosine_factor",
]
