"""A frozen copy of a trunk for evaluation: wrappers removed, SyncBatchNorm made plain, no gradients."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..runtime.distributed import unwrap_module

__all__ = ["frozen_copy"]


def _plain_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``SyncBatchNorm`` in ``module`` by a ``BatchNorm2d`` with the same parameters and buffers.

    An evaluation runs on one process; SyncBatchNorm in train mode (BatchNorm adaptation) would
    wait for the other ranks.
    """
    if isinstance(module, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        state = module.state_dict()
        plain.load_state_dict(state)
        return plain.to(next(iter(state.values())).device) if state else plain
    for name, child in module.named_children():
        setattr(module, name, _plain_batchnorm(child))
    return module


def frozen_copy(trunk: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """A deep copy of ``trunk`` in eval mode without gradients, SyncBatchNorm made plain BatchNorm.

    DDP and ``torch.compile`` wrappers are removed (:func:`~scrl.runtime.unwrap_module`);
    the original is never touched.

    Args:
        trunk: the trunk, possibly wrapped, possibly with ``SyncBatchNorm`` layers.
        device: where to put the copy; where the original is when ``None``.

    Returns:
        The copy (eval mode, ``requires_grad=False``).
    """
    copied = _plain_batchnorm(copy.deepcopy(unwrap_module(trunk)))
    copied.requires_grad_(False).eval()
    return copied.to(device) if device is not None else copied
