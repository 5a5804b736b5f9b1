"""Running a trunk outside its training loop: its device and one forward.

Every evaluation (BatchNorm adaptation, box features, cross-view retrieval) feeds images to a
trunk the same way: 8-bit (or [0, 1] float) pixels moved to the device, ImageNet-normalised
there with :func:`~scrl.transforms.normalize_images`, optionally channels-last and under
autocast. These helpers are that one way.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from ..transforms import normalize_images

__all__ = ["forward_images", "module_device"]


def module_device(module: nn.Module, device: torch.device | str | None = None) -> torch.device:
    """The device to run ``module`` on: ``device`` when given, else where its parameters live.

    Args:
        module: any module; one without parameters runs on the CPU.
        device: an explicit choice (``"cuda:1"``, a ``torch.device``), or ``None``.

    Returns:
        A ``torch.device``.
    """
    if device is not None:
        return torch.device(device)
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def forward_images(
    trunk: nn.Module,
    pixels: Tensor,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """``trunk`` applied to ImageNet-normalised ``pixels`` on ``device``.

    The caller chooses the mode (train or eval) and the gradient context; nothing here changes
    them.

    Args:
        trunk: a module mapping ``[B, 3, H, W]`` to its output (a feature map ``[B, C, h, w]``).
        pixels: uint8 ``[B, 3, H, W]`` in 0..255, or floating in [0, 1], on any device
            (pinned host memory copies asynchronously).
        device: where ``trunk`` lives.
        autocast_dtype: e.g. ``torch.bfloat16`` to run under autocast on ``device``; ``None``
            runs without autocast, in float32.
        channels_last: feed the input in channels-last memory format.

    Returns:
        Whatever ``trunk`` returns, on ``device``.
    """
    x = normalize_images(pixels.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    with context:
        return trunk(x)
