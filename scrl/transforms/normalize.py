"""ImageNet normalisation of 8-bit image batches, on whatever device they live on."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_uint8"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=32)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Per-channel ``scale``, ``shift`` ``[C, 1, 1]`` with ``(x / 255 - mean) / std = x * scale + shift``.

    Cached so that normalising a batch on an accelerator copies no constants from the host
    (a host-to-device copy per call would synchronise the stream).
    """
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(device=device, dtype=dtype)
    shift = (-mean_t / std_t).to(device=device, dtype=dtype)
    return scale[:, None, None], shift[:, None, None]


def normalize_uint8(
    batch: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Scale 8-bit images to [0, 1] and normalise them per channel, in one pass.

    Equals ``torchvision.transforms.functional.normalize(batch / 255, mean, std)``. Meant for
    views made with ``uint8=True``: the data loader ships 4x fewer bytes and the device does
    the arithmetic.

    Args:
        batch: uint8 ``[..., C, H, W]`` (e.g. ``[B, 3, H, W]``), any device.
        mean: per-channel mean of the [0, 1] images, ``C`` values.
        std: per-channel standard deviation, ``C`` values, all > 0.
        dtype: floating output dtype.

    Returns:
        ``dtype`` tensor of the same shape and device.

    Example:
        >>> normalize_uint8(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8))[0, :, 0, 0]
        tensor([2.2489, 2.4286, 2.6400])
    """
    if batch.dtype != torch.uint8:
        raise ValueError(f"batch must be a uint8 tensor [..., C, H, W], got dtype {batch.dtype}")
    if batch.dim() < 3 or batch.shape[-3] != len(mean) or len(std) != len(mean):
        raise ValueError(
            f"batch must have shape [..., C, H, W] with C = len(mean) = len(std) = {len(mean)}, "
            f"got shape {list(batch.shape)} and {len(std)} std values"
        )
    if not all(s > 0 for s in std):
        raise ValueError(f"std must be > 0 for every channel, got {tuple(std)}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    scale, shift = _affine(tuple(map(float, mean)), tuple(map(float, std)), batch.device, dtype)
    return torch.addcmul(shift, batch.to(dtype), scale)
