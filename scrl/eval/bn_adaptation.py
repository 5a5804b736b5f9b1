"""BatchNorm statistics re-estimated on the evaluation images, on a frozen copy of the trunk."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.square_boxes import square_box_loader
from .frozen import frozen_copy
from .trunk_forward import forward_images, module_device

__all__ = ["adapted_trunk"]


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def adapted_trunk(
    trunk: nn.Module,
    dataset: Dataset,
    indices: Sequence[int] | None = None,
    *,
    image_size: int = 800,
    batch_size: int = 16,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> nn.Module:
    """A frozen copy of ``trunk`` whose BatchNorm statistics are re-estimated on ``dataset``.

    The paper's RoI protocol starts BatchNorm's running statistics over on the evaluation
    data, to adapt to its unseen distribution (Table 10 footnote, appendix B). Here they are
    reset and re-estimated as exact averages over the given images at ``image_size`` (BN
    momentum ``None``), with the weights frozen; the copy is returned in eval mode.

    Args:
        trunk: the trunk (``Trunk``, or any module mapping ``[B, 3, H, W]`` to a feature map).
        dataset: box dataset (only the images are used).
        indices: images to adapt on (all when ``None``); use the training split only.
        image_size: square side the images are resized to, as for feature extraction.
        batch_size: images per forward pass, >= 2 (BatchNorm needs a batch).
        num_workers: DataLoader workers.
        device: where to run; the trunk's device when ``None``.
        autocast_dtype: e.g. ``torch.bfloat16`` to run under autocast on that device.
        channels_last: feed channels-last inputs.

    Returns:
        The adapted copy (eval mode, ``requires_grad=False``).
    """
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2 for BatchNorm statistics, got {batch_size!r}")
    indices = list(range(len(dataset))) if indices is None else list(indices)
    device = module_device(trunk, device)
    copied = frozen_copy(trunk, device)
    norms = _batchnorms(copied)
    if not norms:
        return copied
    if len(indices) < 2:
        raise ValueError(f"BatchNorm adaptation needs at least 2 images, got {len(indices)}")
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: every image counts equally
        bn.train()
    loader = square_box_loader(dataset, indices, image_size, batch_size=batch_size, num_workers=num_workers)
    with torch.no_grad():
        for pixels, _, _, _ in loader:
            if pixels.shape[0] < 2:  # a last batch of one image has no batch statistics
                continue
            forward_images(copied, pixels, device, autocast_dtype, channels_last)
    copied.eval()
    return copied
