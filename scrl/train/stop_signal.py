"""Turn SIGTERM / SIGINT (a pre-empted or cancelled job) into a stop at the next step boundary."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

import torch
import torch.distributed as dist

from ..runtime.distributed import get_world_size

__all__ = ["StopSignal"]

_logger = logging.getLogger(__name__)


class StopSignal:
    """Context manager that records SIGTERM / SIGINT instead of dying, so a loop can save and exit.

    The first signal only sets a flag; a second one gets the signal's default behaviour (so a
    second Ctrl-C still interrupts at once). :meth:`agreed` makes all ranks of a process group
    stop at the same step even when the signal reaches them at different steps: it all-reduces
    the flag over a gloo group on the host, so it costs no device synchronisation. Handlers
    are restored on exit. Outside the main thread it installs nothing and never fires.

    Args:
        signals: the signals to catch.

    Example:
        >>> with StopSignal() as stop:
        ...     for step in range(total_steps):
        ...         training_step()
        ...         if stop.agreed():
        ...             save_checkpoint(...)
        ...             break
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._group: dist.ProcessGroup | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)
        _logger.warning(f"received {self.received.name}; stopping after the current step (send it again to abort now)")
        signal.signal(signum, self._previous.get(self.received, signal.SIG_DFL))  # type: ignore[arg-type]

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        if get_world_size() > 1:
            # A host-side group: the flag never touches the GPU stream.
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def requested(self) -> bool:
        """Whether this process received a signal."""
        return self.received is not None

    def agreed(self) -> bool:
        """Whether any rank received a signal; a collective call in a multi-process run (call it on all ranks)."""
        if self._group is None:
            return self.requested
        flag = torch.tensor([int(self.requested)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())
