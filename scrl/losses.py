"""The BYOL regression loss on image vectors and its SCRL form on matched box pairs.

For an online prediction ``q`` and a target projection ``z`` the loss is the squared
distance of the l2-normalised vectors, ``||q/||q|| - z/||z|| ||^2 = 2 - 2 cos(q, z)``.
SCRL averages it over the valid box pairs and sums the two directions (paper Eq. 2-3):
``L = mean_valid(2 - 2 cos(q1, z2)) + mean_valid(2 - 2 cos(q2, z1))``. Summing, not averaging,
the directions matters: averaging halves the gradient. BYOL's loss is the same with every row
valid, so :func:`scrl_loss` takes ``valid=None`` for it and :func:`byol_loss` is that call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["scrl_loss", "byol_loss", "regression_loss"]


def regression_loss(q: Tensor, z: Tensor) -> Tensor:
    """Per-row ``2 - 2 cos(q, z)`` in float32; ``z`` is a constant (stop-gradient).

    Args:
        q: float ``[..., D]`` online predictions.
        z: float ``[..., D]`` target projections.

    Returns:
        float32 ``[...]`` in ``[0, 4]``; a zero vector counts as orthogonal to everything.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=-1)
        z = F.normalize(z.detach().float(), dim=-1)
        return 2 - 2 * (q * z).sum(-1)


def _check_pairs(q1: Tensor, z2: Tensor, q2: Tensor, z1: Tensor) -> None:
    if not (q1.shape == z2.shape == q2.shape == z1.shape) or q1.dim() < 1:
        raise ValueError(
            f"q1, z2, q2, z1 must share one shape [..., D], got {list(q1.shape)}, {list(z2.shape)}, "
            f"{list(q2.shape)}, {list(z1.shape)}"
        )


def _where_valid(rows: Tensor, valid: Tensor) -> Tensor:
    """``rows`` with every invalid row replaced by zeros (not multiplied by them: NaN * 0 is NaN)."""
    return torch.where(valid[..., None], rows, 0)


def scrl_loss(q1: Tensor, z2: Tensor, q2: Tensor, z1: Tensor, valid: Tensor | None) -> Tensor:
    """SCRL loss over matched box pairs, masked to the valid pairs and symmetrised.

    ``L = sum_m v_m l(q1_m, z2_m) / max(1, sum_m v_m) + sum_m v_m l(q2_m, z1_m) / max(1, sum_m v_m)``
    with ``l(q, z) = 2 - 2 cos(q, z)`` and ``v`` the validity mask. Computed in float32 even
    under ``torch.autocast``; no host-device sync. Invalid rows are selected away
    (``torch.where``) before the loss is computed, so nothing in them, NaN or inf included,
    reaches the loss or its gradient: their gradient is exactly 0.

    The loss is exactly 0 in the empty cases: no valid pair (an all-False ``valid``) and no
    row at all (``M = 0``, with or without ``valid``). It still depends on every row of ``q1``
    and ``q2``, so all online parameters receive (zero) gradients and DistributedDataParallel
    does not wait for missing ones.

    Args:
        q1: float ``[M, D]``, online predictions of the view-1 boxes.
        z2: float ``[M, D]``, target projections of the same boxes in view 2 (no gradient).
        q2: float ``[M, D]``, online predictions of the view-2 boxes.
        z1: float ``[M, D]``, target projections of the view-1 boxes (no gradient).
        valid: bool ``[M]``, which rows are real box pairs; ``None`` when all are (the BYOL
            loss, a plain mean over the rows).

    Returns:
        float32 scalar in ``[0, 8]``.

    Example:
        >>> q = torch.randn(4, 8)
        >>> scrl_loss(q, q, q, q, torch.tensor([True, True, False, False]))
        tensor(0.)
    """
    _check_pairs(q1, z2, q2, z1)
    if valid is None:
        per_pair = regression_loss(q1, z2) + regression_loss(q2, z1)
        # The mean of no rows would be NaN.
        return per_pair.sum() / max(1, per_pair.numel())
    if valid.shape != q1.shape[:-1] or valid.dtype != torch.bool:
        raise ValueError(f"valid must be None or bool {list(q1.shape[:-1])}, got {valid.dtype} {list(valid.shape)}")
    q1, z2, q2, z1 = (_where_valid(rows, valid) for rows in (q1, z2, q2, z1))
    # The zeroed rows still give a loss of 4 each; select it away as well.
    per_pair = torch.where(valid, regression_loss(q1, z2) + regression_loss(q2, z1), 0)
    return per_pair.sum() / valid.sum().clamp(min=1)


def byol_loss(q1: Tensor, z2: Tensor, q2: Tensor, z1: Tensor) -> Tensor:
    """BYOL loss on image-level vectors: ``mean(2 - 2 cos(q1, z2)) + mean(2 - 2 cos(q2, z1))``.

    The same as ``scrl_loss(q1, z2, q2, z1, None)``: every row is a pair. With no row
    (``B = 0``) the loss is exactly 0, not the NaN of an empty mean.

    Args:
        q1, q2: float ``[B, D]``, online predictions of view 1 / view 2.
        z2, z1: float ``[B, D]``, target projections of view 2 / view 1 (no gradient).

    Returns:
        float32 scalar in ``[0, 8]``.

    Example:
        >>> q = torch.randn(4, 8)
        >>> byol_loss(q, -q, q, -q)
        tensor(8.)
    """
    return scrl_loss(q1, z2, q2, z1, None)
