"""Training metrics as JSON lines (always) and TensorBoard scalars (when tensorboard is installed)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from ..runtime.distributed import get_world_size

__all__ = ["METRICS_FILE", "MetricsLogger", "DeviceMeans", "IntervalMeter", "NonFiniteWatch"]

_logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

def _multi_process() -> bool:
    return get_world_size() > 1


class DeviceMeans:
    """Running means of per-step scalar tensors, kept on their device until read.

    :meth:`add` only launches an addition (no host-device synchronisation), so a training
    loop can record every step and pay for one read-back per logging interval.

    Example:
        >>> means = DeviceMeans()
        >>> for step in range(10):
        ...     loss, logs = model(view1, view2, geom1, geom2)
        ...     means.add(logs)  # {"loss": 0-dim tensor, ...}
        >>> means.read()  # mean over the 10 steps (and over all processes)
        {"loss": 3.21, "valid_box_share": 0.48, "collapse_std": 0.06}
    """

    def __init__(self) -> None:
        self._keys: tuple[str, ...] | None = None
        self._sum: Tensor | None = None
        self.count = 0

    def add(self, values: Mapping[str, Tensor]) -> None:
        """Accumulate one step's 0-dim tensors; every call between two reads must use the same keys."""
        keys = tuple(values)
        if self._keys is not None and keys != self._keys:
            raise ValueError(f"values must have the keys {self._keys}, got {keys}")
        row = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        self._keys, self._sum = keys, row if self._sum is None else self._sum + row
        self.count += 1

    def read(self, all_ranks: bool = True) -> dict[str, float]:
        """Means since the last read (averaged over processes with ``all_ranks``, a collective); resets."""
        if self._sum is None:
            return {}
        total, count = self._sum, self.count
        if all_ranks and _multi_process():
            total = total.clone()
            dist.all_reduce(total)
            count *= get_world_size()
        means = dict(zip(self._keys, (total / count).tolist()))
        self._keys, self._sum, self.count = None, None, 0
        return means


class IntervalMeter:
    """What a logging interval measured: the means of the step logs, the steps, the seconds and the time spent waiting for data.

    Example:
        >>> meter = IntervalMeter()
        >>> meter.add(logs, data_wait=0.01)  # every step, no synchronisation
        >>> meter.read()  # at a log step: one read-back, and the next interval starts
        {'means': {'loss': 3.2, ...}, 'steps': 10, 'seconds': 4.1, 'data_wait': 0.3}
    """

    def __init__(self) -> None:
        self.means = DeviceMeans()
        self._restart()

    def _restart(self) -> None:
        self.started, self.steps, self.data_wait = time.perf_counter(), 0, 0.0

    def add(self, logs: Mapping[str, Tensor], data_wait: float) -> None:
        """Count one step: its logs (0-dim tensors) and the seconds it waited for its batch."""
        self.means.add(logs)
        self.steps += 1
        self.data_wait += data_wait

    def read(self) -> dict[str, Any]:
        """The interval so far (means over processes: a collective), and start the next one."""
        record = {"means": self.means.read(), "steps": self.steps, "seconds": time.perf_counter() - self.started,
                  "data_wait": self.data_wait}
        self._restart()
        return record


class NonFiniteWatch:
    """Remembers the first step at which a monitored value was NaN or infinite, on the device.

    Example:
        >>> watch = NonFiniteWatch()
        >>> watch.update(loss, step)  # every step, no synchronisation
        >>> if (bad := watch.first_bad_step()) is not None:  # at logging/saving time
        ...     raise FloatingPointError(f"non-finite loss at step {bad}")
    """

    def __init__(self) -> None:
        self._first: Tensor | None = None

    def update(self, value: Tensor, step: int) -> None:
        """Record ``step`` if ``value`` is not finite and no earlier step was."""
        bad = ~torch.isfinite(value.detach()).all()
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.int64, device=value.device)
        self._first = torch.where(bad & (self._first < 0), step, self._first)

    def first_bad_step(self, all_ranks: bool = True) -> int | None:
        """The first non-finite step (the earliest over processes with ``all_ranks``, a collective), or None."""
        first = -1 if self._first is None else int(self._first.item())
        if all_ranks and _multi_process():
            # MIN over ranks of the step, with "none" encoded as a huge step.
            none = torch.iinfo(torch.int64).max
            flag = torch.tensor([none if first < 0 else first], dtype=torch.int64, device=self._device())
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            first = -1 if int(flag.item()) == none else int(flag.item())
        return None if first < 0 else first

    def _device(self) -> torch.device:
        if self._first is not None:
            return self._first.device
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


@functools.cache
def _say_tensorboard_is_missing() -> None:
    """Once per process: a run asked for TensorBoard events that cannot be written."""
    _logger.info("TensorBoard is not installed (pip install tensorboard): metrics go to metrics.jsonl only")


class MetricsLogger:
    """Appends one JSON object per call to ``<output_dir>/metrics.jsonl``.

    Numbers also go to TensorBoard (``<output_dir>/tensorboard``) when
    ``torch.utils.tensorboard`` can be imported; otherwise the ``scrl`` logger says so at INFO,
    once per process. Only the
    process that should write (rank 0) enables the logger; a disabled logger does nothing, so
    calling code needs no rank checks. The file is opened in append mode, so a resumed run
    continues the same file, and flushed after every line, so it is readable while training.

    Args:
        output_dir: folder of the run (created if missing).
        enabled: write anything at all.
        tensorboard: also write TensorBoard events when available.

    Example:
        >>> logger = MetricsLogger("runs/a")
        >>> logger.log({"step": 10, "loss": 3.2, "skipped_files": []})
        >>> logger.close()
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = os.path.join(os.fspath(output_dir), METRICS_FILE)
        self.enabled = enabled
        self._file = None
        self._writer = None
        if not enabled:
            return
        os.makedirs(os.fspath(output_dir), exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                _say_tensorboard_is_missing()
            else:
                self._writer = SummaryWriter(os.path.join(os.fspath(output_dir), "tensorboard"))

    def log(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` (JSON-serialisable; non-finite floats become ``null``).

        Its integer ``"step"`` entry, if present, is the TensorBoard x-axis; every other
        numeric entry becomes a scalar named after its key.
        """
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._writer is not None:
            step = record.get("step")
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close the files (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
