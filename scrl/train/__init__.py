"""The engine of a pretraining run: :class:`PretrainConfig` and :class:`Pretrainer`, the state a resume
continues (:class:`TrainState`), the hooks into a run (:class:`Callback` and the built-in ones), and the
optimiser and schedules of a run."""

from ..lars import LARS, lars_param_groups
from ..runtime.checkpoint import CheckpointError
from ..schedule import cosine_tau, warmup_cosine
from .build import build_dataset, build_model, build_transform, lars
from .callbacks import BoxFillWatch, Callback, Checkpointing, ConsoleProgress, MetricsLog, NonFiniteGuard, RoIProbe, StopOnSignal
from .config import CPU_DEFAULTS, GPU_DEFAULTS, PRESETS, ConfigError, PretrainConfig
from .pretrainer import Pretrainer, RunWarning
from .state import TrainState

__all__ = [
    "BoxFillWatch",
    "build_dataset",
    "build_model",
    "build_transform",
    "Callback",
    "CheckpointError",
    "Checkpointing",
    "ConfigError",
    "ConsoleProgress",
    "cosine_tau",
    "CPU_DEFAULTS",
    "GPU_DEFAULTS",
    "LARS",
    "lars",
    "lars_param_groups",
    "MetricsLog",
    "NonFiniteGuard",
    "PRESETS",
    "PretrainConfig",
    "Pretrainer",
    "RoIProbe",
    "RunWarning",
    "StopOnSignal",
    "TrainState",
    "warmup_cosine",
]
