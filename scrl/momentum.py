"""The momentum (EMA) target network of BYOL / SCRL (its cosine schedule: :func:`scrl.schedule.cosine_tau`).

Naming: ``tau`` is the weight KEPT on the target, ``xi <- tau * xi + (1 - tau) * theta``
(paper notation); some frameworks call ``1 - tau`` "momentum".
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MomentumTarget"]


class MomentumTarget(nn.Module):
    """An exponential moving average of an online module, used as the BYOL / SCRL target.

    Starts as an exact deep copy of ``online`` (same weights and buffers), takes no gradients
    and is updated in place by :meth:`update`. It stays in training mode whatever ``.train()`` /
    ``.eval()`` its parent receives: as in BYOL, the target's BatchNorm layers use the
    statistics of the current batch.

    Args:
        online: the module to follow; copied once here.

    Attributes:
        module: the target copy. Call it directly or through this module.

    Example:
        >>> encoder = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        >>> target = MomentumTarget(encoder)
        >>> # ... optimiser step on encoder ...
        >>> target.update(encoder, tau=0.99)  # xi <- 0.99 xi + 0.01 theta
        >>> with torch.no_grad():
        ...     z = target(torch.randn(4, 8))
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        if not isinstance(online, nn.Module):
            raise ValueError(f"online must be an nn.Module, got {type(online).__name__}")
        self.module = copy.deepcopy(online)
        self.module.requires_grad_(False)
        self.train(True)

    def train(self, mode: bool = True) -> "MomentumTarget":
        """Keep training mode regardless of ``mode``: the target uses batch statistics (BYOL)."""
        return super().train(True)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the target copy under ``torch.no_grad()``."""
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, online: nn.Module, tau: float) -> None:
        """``xi <- tau * xi + (1 - tau) * theta`` for every parameter; buffers are copied.

        One fused pass of ``torch._foreach_lerp_`` (``xi + (1 - tau)(theta - xi)``) and
        ``torch._foreach_copy_``, with no host-device sync.

        Args:
            online: module with the same structure as the one this target was built from.
            tau: weight kept on the target, in ``[0, 1]`` (1 freezes it, 0 copies ``online``).
        """
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1] (weight kept on the target), got {tau!r}")
        targets, sources = self._pairs(self.module.parameters(), online.parameters(), "parameters")
        if targets:
            torch._foreach_lerp_(targets, sources, 1.0 - tau)
        targets, sources = self._pairs(self.module.buffers(), online.buffers(), "buffers")
        if targets:
            torch._foreach_copy_(targets, sources)

    @staticmethod
    def _pairs(targets: Any, sources: Any, what: str) -> tuple[list[Tensor], list[Tensor]]:
        targets, sources = list(targets), [s.detach() for s in sources]
        if len(targets) != len(sources) or any(t.shape != s.shape for t, s in zip(targets, sources)):
            raise ValueError(f"online must have the same {what} (count and shapes) as the target's module")
        return targets, sources
