"""The BYOL projector / predictor: Linear -> BatchNorm1d -> ReLU -> Linear.

SCRL feeds the heads a static ``[N*K]`` set of box rows of which only the valid ones are real
boxes; the invalid ones pool all-zero boxes. Their rows would pull the hidden BatchNorm's batch
statistics towards a constant vector, by an amount that changes with the share of valid boxes.
:class:`MLPHead` therefore takes an optional row mask and then normalises with statistics of
the masked-in rows only, computed with masked sums (no host sync, static shapes). Masked-out
rows are normalised with the same statistics and are expected to be ignored downstream.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["MLPHead"]


def _sum_over_processes(x: Tensor, bn: nn.Module) -> Tensor:
    """Differentiable all-reduce sum for a ``SyncBatchNorm`` in a multi-process run, else ``x``."""
    if isinstance(bn, nn.SyncBatchNorm) and dist.is_available() and dist.is_initialized():
        # Imported here: ``import scrl`` loads nothing of scrl.runtime.
        from .runtime.distributed import get_world_size

        if get_world_size(bn.process_group) > 1:
            from torch.distributed.nn.functional import all_reduce

            return all_reduce(x, group=bn.process_group or dist.group.WORLD)
    return x


def _masked_batch_norm(x: Tensor, mask: Tensor, bn: nn.BatchNorm1d) -> Tensor:
    """Training-mode ``bn(x)`` with batch statistics over the rows where ``mask`` is true.

    Two-pass mean and biased variance in float32 over the masked rows (summed over processes
    for a ``SyncBatchNorm``); the running statistics move by ``bn.momentum`` towards the mean
    and the unbiased variance, and stay put when no row is masked in.
    """
    x32 = x.float()
    weight = mask.to(torch.float32)[:, None]
    stats = _sum_over_processes(torch.cat([(x32 * weight).sum(0), weight.sum(0)]), bn)
    count = stats[-1]
    mean = stats[:-1] / count.clamp(min=1)
    centred = x32 - mean
    var = _sum_over_processes((centred.square() * weight).sum(0), bn) / count.clamp(min=1)
    y = centred * torch.rsqrt(var + bn.eps)
    if bn.affine:
        y = y * bn.weight + bn.bias
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.float()
            # A Python-scalar momentum stays a kernel argument (no host-to-device copy).
            momentum = torch.where(count > 0, momentum, 0.0).to(bn.running_mean.dtype)
            unbiased = var * count / (count - 1).clamp(min=1)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
    return y.to(x.dtype)


class MLPHead(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear, the BYOL projector and predictor.

    Args:
        in_dim: input features, >= 1.
        hidden_dim: hidden features, >= 1 (paper: 4096).
        out_dim: output features, >= 1 (paper: 256). No BatchNorm and no bias on the output, as
            in BYOL's heads and the authors' ``TwoLayerLinearHead``.

    Attributes:
        fc1, bn, fc2: the layers. ``bn`` is a plain ``nn.BatchNorm1d`` (``SyncBatchNorm``
            conversion works as usual; masked statistics are then summed over processes).

    Example:
        >>> head = MLPHead.projector(2048)  # 2048 -> 4096 -> 256
        >>> head(torch.randn(20, 2048)).shape
        torch.Size([20, 256])
        >>> valid = torch.rand(20) > 0.3
        >>> head(torch.randn(20, 2048), mask=valid).shape  # BN statistics from valid rows
        torch.Size([20, 256])
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=False)

    @classmethod
    def projector(cls, in_dim: int = 2048, hidden_dim: int = 4096, out_dim: int = 256) -> "MLPHead":
        """The paper's projector g: ``in_dim`` (2048 for a ResNet-50 C5) -> 4096 -> 256."""
        return cls(in_dim, hidden_dim, out_dim)

    @classmethod
    def predictor(cls, dim: int = 256, hidden_dim: int = 4096) -> "MLPHead":
        """The paper's predictor q: 256 -> 4096 -> 256 (input and output size ``dim``)."""
        return cls(dim, hidden_dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Map ``x`` ``[M, in_dim]`` to ``[M, out_dim]``.

        Args:
            x: float ``[M, in_dim]``.
            mask: optional bool ``[M]``; in training mode the hidden BatchNorm takes its batch
                statistics from these rows only. Ignored in eval mode (running statistics).
        """
        h = self.fc1(x)
        if mask is not None and self.bn.training:
            if mask.shape != x.shape[:1]:
                raise ValueError(f"mask must be bool [M] with M = {x.shape[0]} rows, got {list(mask.shape)}")
            h = _masked_batch_norm(h, mask, self.bn)
        else:
            h = self.bn(h)
        return self.fc2(self.relu(h))
