"""Pooling matched box pairs from the feature maps of two views with RoIAlign (SCRL paper, Sec. 3.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from .box_sampler import BoxPairs

__all__ = ["RoIPairPool", "roi_pair_pool"]


def _check_args(output_size: int, spatial_scale: float, sampling_ratio: int) -> None:
    if not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be an integer >= 1, got {output_size!r}")
    if not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be > 0 (feature cells per input pixel, 1/stride), got {spatial_scale!r}")
    if not isinstance(sampling_ratio, int) or sampling_ratio < -1 or sampling_ratio == 0:
        raise ValueError(f"sampling_ratio must be -1 (adaptive) or an integer >= 1, got {sampling_ratio!r}")


def _pool(feature_map: Tensor, boxes: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign of ``boxes`` ``[N, K, 4]`` on ``feature_map`` ``[N, C, h, w]`` -> ``[N*K, C*output_size**2]``."""
    n, k = boxes.shape[:2]
    # RoIAlign runs in (at least) float32: bf16 box coordinates would be off by up to a pixel.
    dtype = torch.promote_types(feature_map.dtype, torch.float32)
    image_index = torch.arange(n, device=boxes.device, dtype=dtype).repeat_interleave(k)
    rois = torch.cat([image_index[:, None], boxes.reshape(n * k, 4).to(dtype)], dim=1)
    pooled = roi_align(feature_map.to(dtype), rois, output_size, spatial_scale, sampling_ratio, aligned)
    return pooled.flatten(1).to(feature_map.dtype)


def roi_pair_pool(
    map1: Tensor,
    map2: Tensor,
    pairs: BoxPairs,
    output_size: int = 1,
    spatial_scale: float = 1 / 32,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pool every box pair from the two views' feature maps, as matched rows.

    Row ``n*K + k`` of ``p1`` is box ``k`` of image ``n`` pooled on ``map1`` at ``pairs.boxes1``;
    the same row of ``p2`` is the same source region pooled on ``map2`` at ``pairs.boxes2``.
    Shapes are static: invalid pairs give rows too (all-zero boxes pool to zero vectors) and are
    marked in ``valid``. One image, one box and zero valid boxes all keep these shapes.

    Args:
        map1: float ``[N, C, h1, w1]``, feature map of view 1 (any memory format).
        map2: float ``[N, C, h2, w2]``, feature map of view 2.
        pairs: :class:`~scrl.BoxPairs` with ``[N, K, 4]`` ``(x0, y0, x1, y1)`` boxes in view pixels.
        output_size: RoIAlign output side, >= 1 (paper: 1).
        spatial_scale: feature cells per view pixel, ``1 / stride`` (paper: 1/32 on C5).
        sampling_ratio: sample points per bin side; ``-1`` adapts to the box size (paper).
        aligned: shift box corners by -0.5 cell so that pixel-edge boxes sample their true
            centres; ``False`` reproduces the authors' half-stride offset.

    Returns:
        ``(p1, p2, valid)``: ``p1``, ``p2`` ``[N*K, C*output_size**2]`` in the maps' dtype
        (``[N*K, C]`` for the default 1x1), ``valid`` bool ``[N*K]``.

    Example:
        >>> p1, p2, valid = roi_pair_pool(map1, map2, sampler(geom1, geom2))
    """
    _check_args(output_size, spatial_scale, sampling_ratio)
    if map1.dim() != 4 or map2.dim() != 4 or map1.shape[:2] != map2.shape[:2]:
        raise ValueError(f"map1 and map2 must be [N, C, h, w] with equal N and C, got {list(map1.shape)} and {list(map2.shape)}")
    n, k = pairs.valid.shape
    if n != map1.shape[0] or pairs.boxes1.shape != (n, k, 4) or pairs.boxes2.shape != (n, k, 4):
        raise ValueError(
            f"pairs must hold [N, K, 4] boxes and [N, K] valid with N = {map1.shape[0]} images, got boxes1 "
            f"{list(pairs.boxes1.shape)}, boxes2 {list(pairs.boxes2.shape)}, valid {list(pairs.valid.shape)}"
        )
    p1 = _pool(map1, pairs.boxes1, output_size, spatial_scale, sampling_ratio, aligned)
    p2 = _pool(map2, pairs.boxes2, output_size, spatial_scale, sampling_ratio, aligned)
    return p1, p2, pairs.valid.reshape(n * k)


class RoIPairPool(nn.Module):
    """Pools matched box pairs from two feature maps; see :func:`roi_pair_pool`.

    Args:
        stride: input pixels per feature cell of the maps (32 for C5); sets ``spatial_scale``.
        output_size: RoIAlign output side (paper: 1).
        sampling_ratio: ``-1`` (adaptive, paper) or sample points per bin side.
        aligned: ``True`` (default) samples box centres exactly; ``False`` as the authors' code.

    Example:
        >>> pool = RoIPairPool(stride=32)
        >>> p1, p2, valid = pool(map1, map2, pairs)  # [N*K, C], [N*K, C], [N*K]
    """

    def __init__(self, stride: int = 32, output_size: int = 1, sampling_ratio: int = -1, aligned: bool = True) -> None:
        super().__init__()
        if not stride > 0:
            raise ValueError(f"stride must be > 0 (input pixels per feature cell), got {stride!r}")
        _check_args(output_size, 1 / stride, sampling_ratio)
        self.stride = stride
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, map1: Tensor, map2: Tensor, pairs: BoxPairs) -> tuple[Tensor, Tensor, Tensor]:
        return roi_pair_pool(map1, map2, pairs, self.output_size, 1 / self.stride, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"stride={self.stride}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}"
        )
