"""ImageNet normalisation of image batches, 8-bit or [0, 1] floats, on whatever device they live on."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_images"]

from ..trunk import IMAGENET_MEAN, IMAGENET_STD  # the input every trunk takes


class _Constants(NamedTuple):
    """Per-channel ``[C, 1, 1]`` tensors: ``mean``, ``std`` and the 8-bit affine ``scale``, ``shift``."""

    mean: Tensor
    std: Tensor
    scale: Tensor
    shift: Tensor


@torch.compiler.assume_constant_result
def _constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> _Constants:
    """The normalisation constants on ``device``, with ``(x / 255 - mean) / std = x * scale + shift``.

    Normalising a batch on an accelerator must copy no constants from the host (a host-to-device
    copy per call would synchronise the stream): eager calls reuse cached tensors, and a
    compiled graph holds them as constants instead of tracing their construction into every call.
    """
    return _cached_constants(mean, std, device, dtype)


@lru_cache(maxsize=32)
def _cached_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> _Constants:
    """:func:`_constants`, built once per setting; ``scale`` and ``shift`` in float64, rounded once."""
    mean64 = torch.tensor(mean, dtype=torch.float64)
    std64 = torch.tensor(std, dtype=torch.float64)
    per_channel = [
        torch.tensor(mean, dtype=dtype),
        torch.tensor(std, dtype=dtype),
        (1.0 / (255.0 * std64)).to(dtype),
        (-mean64 / std64).to(dtype),
    ]
    return _Constants(*(t.to(device)[:, None, None] for t in per_channel))


def normalize_images(
    batch: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalise images per channel, ``(x - mean) / std`` on the [0, 1] scale.

    uint8 images (0..255) are scaled and normalised in one fused pass,
    ``x * (1 / (255 std)) - mean / std``, so the data loader can ship 8-bit views (4x fewer
    bytes) and the device does the arithmetic. Floating images in [0, 1] get
    ``(x - mean) / std``, the same arithmetic as ``torchvision.transforms.functional.normalize``.
    The two paths agree to float rounding (about 1e-6). The input is not modified.

    Args:
        batch: uint8 or floating ``[..., C, H, W]`` (e.g. ``[3, H, W]`` or ``[B, 3, H, W]``),
            any device.
        mean: per-channel mean of the [0, 1] images, ``C`` values.
        std: per-channel standard deviation, ``C`` values, all > 0.
        dtype: floating output dtype; floating input is converted to it first.

    Returns:
        ``dtype`` tensor of the same shape, on the same device.

    Raises:
        ValueError: naming ``batch``, ``std`` or ``dtype`` when it is out of range.

    Example:
        >>> normalize_images(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8))[0, :, 0, 0]
        tensor([2.2489, 2.4286, 2.6400])
        >>> normalize_images(torch.ones(3, 4, 4))[:, 0, 0]
        tensor([2.2489, 2.4286, 2.6400])
    """
    if batch.dtype != torch.uint8 and not batch.is_floating_point():
        raise ValueError(f"batch must be uint8 (0..255) or floating point ([0, 1]), got dtype {batch.dtype}")
    if batch.dim() < 3 or batch.shape[-3] != len(mean) or len(std) != len(mean):
        raise ValueError(
            f"batch must have shape [..., C, H, W] with C = len(mean) = len(std) = {len(mean)}, "
            f"got shape {list(batch.shape)} and {len(std)} std values"
        )
    if not all(s > 0 for s in std):
        raise ValueError(f"std must be > 0 for every channel, got {tuple(std)}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    c = _constants(tuple(map(float, mean)), tuple(map(float, std)), batch.device, dtype)
    if batch.dtype == torch.uint8:
        return torch.addcmul(c.shift, batch.to(dtype), c.scale)
    return (batch.to(dtype) - c.mean).div_(c.std)
