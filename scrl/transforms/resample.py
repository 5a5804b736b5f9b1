"""Antialiased crop-and-resize of decoded images on any device, computed as PIL computes it.

``PIL.Image.resize(size, BICUBIC, box=crop)``, which makes the worker-side views, is a separable
filter: a horizontal pass over the source rows, rounded to 8 bits, then a vertical pass. Each
output pixel ``u`` is a weighted sum of the source pixels around ``x0 + (u + 0.5) * scale``;
when the view shrinks the crop (``scale > 1``) the filter is widened by ``scale``, which is the
antialiasing. Here each pass is one matrix product with the same weights (a banded ``[out, in]``
matrix per view), so any float crop box is exact, the filter reads the pixels just outside the
box as PIL's does, and a mirrored view is the same matrix with its rows reversed.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode

__all__ = ["RESAMPLE_FILTERS", "resample_crops", "resample_weights"]


def _triangle(x: Tensor) -> Tensor:
    return (1 - x.abs()).clamp_min(0)


def _cubic(x: Tensor) -> Tensor:
    a = -0.5  # PIL's (and torchvision's antialiased) bicubic
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, 0.0))


# PIL's filters (Resample.c), as functions of the distance in source pixels at scale 1.
RESAMPLE_FILTERS = {InterpolationMode.BILINEAR: _triangle, InterpolationMode.BICUBIC: _cubic}


def resample_weights(
    start: Tensor, stop: Tensor, out_size: int, in_size: int, interpolation: InterpolationMode = InterpolationMode.BICUBIC
) -> Tensor:
    """PIL's resampling weights along one axis: source edges ``[start, stop)`` onto ``out_size`` pixels.

    Args:
        start: float ``[...]``, each crop's first edge on this axis, in source pixels
            (pixel-edge convention; float64 for PIL's double precision).
        stop: float ``[...]``, each crop's last edge.
        out_size: output pixels on this axis, >= 1.
        in_size: source pixels on this axis, >= 1.
        interpolation: ``BILINEAR`` or ``BICUBIC``.

    Returns:
        float32 ``[..., out_size, in_size]``; each row sums to 1 (the filter
        renormalised over the source pixels inside the image, as PIL does at its borders).
    """
    kernel = RESAMPLE_FILTERS[interpolation]
    scale = (stop - start) / out_size
    widen = scale.clamp_min(1.0)[..., None, None]  # antialiasing: the filter spans `scale` source px per output px
    centre = start[..., None] + (torch.arange(out_size, dtype=start.dtype, device=start.device) + 0.5) * scale[..., None]
    x = torch.arange(in_size, dtype=start.dtype, device=start.device)
    # Positions in the crop's double precision, the filter in float32 (its values need no more).
    # PIL's window, source pixels int(centre - support + 0.5) to int(centre + support + 0.5), is
    # exactly where the filter is non-zero, and the source pixels that exist are the columns here.
    weights = kernel(((x + 0.5 - centre[..., None]) / widen).float())
    total = weights.sum(-1, keepdim=True)
    return torch.where(total != 0, weights / total, weights)


def _round_to_uint8_range(values: Tensor) -> Tensor:
    # PIL rounds half up (it adds half a unit before its fixed-point shift), then clips to 8 bits.
    return values.add_(0.5).floor_().clamp_(0, 255)


def resample_crops(
    image: Tensor,
    crops: Tensor,
    flipped: Tensor,
    size: Sequence[int],
    interpolation: InterpolationMode = InterpolationMode.BICUBIC,
) -> Tensor:
    """Views of decoded images: each crop box resampled to ``size`` with antialiasing, then mirrored where asked.

    The result equals ``PIL.Image.resize((w, h), interpolation, box=crop)`` (then
    ``FLIP_LEFT_RIGHT``) up to the order of the two passes: this is PIL's classic order,
    horizontal first; a Pillow that runs the vertical pass first for a crop rounds its
    intermediate rows differently, which changes about 1 % of the values by a level and, next
    to edges that clip, a few by several (measured in ``tests/test_view_decoder.py``).

    Args:
        image: uint8 ``[..., C, H, W]``, one image or a batch of images of one size, on any device.
        crops: float ``[..., V, 4]``, ``V`` views of each image: ``(x0, y0, x1, y1)`` in source
            pixels, pixel-edge convention; fractional edges are exact.
        flipped: bool ``[..., V]``, mirror the view left-right after resizing.
        size: ``(height, width)`` of the views.
        interpolation: ``BICUBIC`` (the SCRL/BYOL views) or ``BILINEAR``.

    Returns:
        uint8 ``[..., V, C, height, width]`` on ``image``'s device.

    Example:
        >>> image = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8)
        >>> crops = torch.tensor([[46.0, 63.0, 300.0, 250.0], [0.0, 0.0, 500.0, 375.0]], dtype=torch.float64)
        >>> resample_crops(image, crops, torch.tensor([False, True]), (224, 224)).shape
        torch.Size([2, 3, 224, 224])
    """
    if image.dtype != torch.uint8 or image.dim() < 3:
        raise ValueError(f"image must be a uint8 [..., C, H, W] tensor, got {image.dtype} {list(image.shape)}")
    if crops.shape[:-2] != image.shape[:-3] or crops.shape[-1] != 4 or flipped.shape != crops.shape[:-1]:
        raise ValueError(
            f"crops must be [..., V, 4] and flipped [..., V] with the image's leading shape {list(image.shape[:-3])}, "
            f"got {list(crops.shape)} and {list(flipped.shape)}"
        )
    if interpolation not in RESAMPLE_FILTERS:
        raise ValueError(f"interpolation must be one of {[m.name for m in RESAMPLE_FILTERS]}, got {interpolation!r}")
    height, width = int(size[0]), int(size[1])
    if min(height, width) < 1:
        raise ValueError(f"size must be (height, width) >= 1 pixel, got {tuple(size)}")
    source_height, source_width = image.shape[-2:]
    crops = crops.to(torch.float64)
    across = resample_weights(crops[..., 0], crops[..., 2], width, source_width, interpolation)
    across = torch.where(flipped[..., None, None], across.flip(-2), across)  # a mirrored view reads its columns backwards
    down = resample_weights(crops[..., 1], crops[..., 3], height, source_height, interpolation)
    # Full float32 products of 8-bit values and weights are exact to far below one level; bf16
    # autocast or TF32 would be off by up to a few levels, so both are switched off here.
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(image.device.type, enabled=False):
            rows = image.float().unsqueeze(-4) @ across.transpose(-1, -2).unsqueeze(-3)  # [..., V, C, H, width]
            views = down.unsqueeze(-3) @ _round_to_uint8_range(rows)
    finally:
        torch.set_float32_matmul_precision(precision)
    return _round_to_uint8_range(views).to(torch.uint8)
