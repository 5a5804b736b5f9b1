"""Per-step schedules of BYOL / SCRL: the learning rate (linear warm-up, then cosine decay to 0) and the
target weight tau (cosine rise to 1)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["cosine_tau", "warmup_cosine", "warmup_cosine_factor"]


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``k`` (0-based).

    ``(k + 1) / W`` for ``k < W`` (so the first step already moves and step ``W - 1`` reaches
    1), then ``(1 + cos(pi * (k - W) / (K - W))) / 2``, which is 1 at ``k = W`` and 0 at
    ``k = K``; 0 after ``K``. ``W`` = ``warmup_steps``, ``K`` = ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warm-up for ``warmup_steps`` steps, then cosine decay to 0 at ``total_steps``.

    Call ``scheduler.step()`` after every optimiser step (not every epoch). Each group's
    learning rate is its initial ``lr`` times :func:`warmup_cosine_factor`.

    Args:
        optimizer: the optimiser whose groups' ``lr`` is scaled.
        warmup_steps: ``W`` in ``[0, total_steps]`` (paper: 10 epochs of steps).
        total_steps: ``K`` >= 1, the number of optimiser steps of the run.

    Returns:
        ``torch.optim.lr_scheduler.LambdaLR``.

    Example:
        >>> opt = LARS(lars_param_groups(model, weight_decay=1e-6), lr=0.45)
        >>> sched = warmup_cosine(opt, warmup_steps=100, total_steps=1000)
        >>> for step in range(1000):
        ...     ...  # forward, backward
        ...     opt.step(); sched.step()
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be an integer in [0, total_steps={total_steps}], got {warmup_steps!r}")
    return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps))


def cosine_tau(step: int, total_steps: int, base: float) -> float:
    """Target weight at step ``k``: ``tau_k = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2``.

    Rises from ``base`` at ``k = 0`` to 1 at ``k = K`` (BYOL / SCRL schedule).

    Args:
        step: ``k``, the optimiser step, ``0 <= k <= total_steps``.
        total_steps: ``K``, >= 1.
        base: ``tau_base`` in ``[0, 1]`` (the paper: 0.97; the authors' released 1000-epoch config: 0.996).

    Returns:
        ``tau_k`` in ``[base, 1]``.

    Example:
        >>> cosine_tau(0, 100, 0.99), cosine_tau(50, 100, 0.99), cosine_tau(100, 100, 0.99)
        (0.99, 0.995, 1.0)
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must be in [0, total_steps={total_steps}], got {step!r}")
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"base must be in [0, 1], got {base!r}")
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0
