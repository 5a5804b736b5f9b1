"""RoIAlign of boxes where the trunk's cells really look, and of matched box pairs (SCRL paper, Sec. 3.2).

``torchvision.ops.roi_align`` assumes where each feature cell is centred: ``aligned=False`` at
``i * stride`` input pixels, ``aligned=True`` at ``(i + 0.5) * stride``. A trunk's cells sit
where its layers put them, ``stride * i + cell_offset`` (:mod:`scrl.cell_centre`); a torchvision
ResNet's C5 cells are centred at ``32i + 0.5``, so ``aligned=True`` pools every box 15.5 px up
and to the left of where it is, and ``aligned=False`` 0.5 px down and to the right.
:func:`pool_boxes` samples each box at the trunk's real cell centres by default; the two
conventions stay available as ``aligned=True`` (Detectron2's RoIAlignV2) and ``aligned=False``
(RoIAlign v1, the authors' code). A model or a run names the three rules ``"exact"``,
``"aligned"`` and ``"unaligned"`` (:data:`ROI_POOLING`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from .box_sampler import BoxPairs

__all__ = ["ROI_POOLING", "RoIPairPool", "RoIPooling", "pool_boxes", "roi_pair_pool"]

RoIPooling = Literal["exact", "aligned", "unaligned"]
# Where a rule samples each box, as RoIAlign's ``aligned`` argument: "exact" at the trunk's
# real cell centres (None), "aligned" as Detectron2 (True), "unaligned" as the authors' code (False).
ROI_POOLING: dict[str, bool | None] = {"exact": None, "aligned": True, "unaligned": False}


def _check_args(output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool | None, cell_offset: float) -> None:
    if not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be an integer >= 1, got {output_size!r}")
    if not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be > 0 (feature cells per input pixel, 1/stride), got {spatial_scale!r}")
    if not isinstance(sampling_ratio, int) or sampling_ratio < -1 or sampling_ratio == 0:
        raise ValueError(f"sampling_ratio must be -1 (adaptive) or an integer >= 1, got {sampling_ratio!r}")
    if aligned not in (None, True, False):
        raise ValueError(f"aligned must be None (the cells' real centres), True or False, got {aligned!r}")
    if not isinstance(cell_offset, (int, float)) or not math.isfinite(cell_offset):
        raise ValueError(f"cell_offset must be a finite number of input pixels, got {cell_offset!r}")


def _check_map(name: str, feature_map: Tensor) -> None:
    # An integer map would be pooled in float and cast back, truncating every feature.
    if not feature_map.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype (features are interpolated), got {feature_map.dtype}")


def _check_boxes(name: str, boxes: Tensor) -> None:
    """Refuse NaN or inf coordinates, when reading them is free (on the CPU, outside ``torch.compile``).

    roi_align pools a non-finite box to zeros without an error, which looks like an empty box.
    """
    if boxes.device.type != "cpu" or torch.compiler.is_compiling():  # a read would wait for the device or break the graph
        return
    finite = torch.isfinite(boxes).reshape(-1, 4).all(dim=-1)
    if not finite.all():
        first = int((~finite).nonzero()[0])
        raise ValueError(
            f"{name} must hold finite (x0, y0, x1, y1), got {boxes.reshape(-1, 4)[first].tolist()} at flattened box {first}"
        )


def _check_inputs(feature_map: Tensor, boxes: Tensor | list[Tensor]) -> None:
    _check_map("feature_map", feature_map)
    if isinstance(boxes, Tensor):
        _check_boxes("boxes", boxes)
        return
    for n, per_image in enumerate(boxes):
        _check_boxes(f"boxes[{n}]", per_image)


def pool_boxes(
    feature_map: Tensor,
    boxes: Tensor | list[Tensor],
    *,
    spatial_scale: float = 1 / 32,
    output_size: int = 1,
    sampling_ratio: int = -1,
    aligned: bool | None = None,
    cell_offset: float = 0.5,
) -> Tensor:
    """RoIAlign of per-image boxes, sampled where the map's cells look; one row per box.

    Args:
        feature_map: float ``[N, C, h, w]`` (any memory format); cell ``i`` is centred at
            ``i / spatial_scale + cell_offset`` input pixels.
        boxes: ``(x0, y0, x1, y1)`` in input pixels (pixel-edge coordinates), either one float
            tensor ``[N, K, 4]`` or a list of ``N`` tensors ``[M_n, 4]``.
        spatial_scale: feature cells per input pixel, ``1 / stride`` (1/32 on C5).
        output_size: RoIAlign bins per side (paper: 1, the box's mean feature); bins are
            flattened channel-major.
        sampling_ratio: sample points per bin side; ``-1`` adapts to the box size (paper).
        aligned: ``None`` (default) samples at the real cell centres given by ``cell_offset``;
            ``True`` / ``False`` call ``roi_align`` with that flag as is, i.e. assume cells at
            ``(i + 0.5) * stride`` (Detectron2) or at ``i * stride`` (the authors' code), and
            ignore ``cell_offset``.
        cell_offset: where cell 0 is centred, in input pixels (0.5 for torchvision ResNets, at
            every stage; ``stride / 2`` for non-overlapping patch stems).

    Returns:
        ``[N*K, C*output_size**2]`` (or ``[sum M_n, ...]``) in ``feature_map``'s dtype; RoIAlign
        itself runs in at least float32. With adaptive sampling (``sampling_ratio=-1``) and
        ``aligned`` ``None`` or ``True``, an all-zero box (an invalid slot) pools to zeros.

    Raises:
        ValueError: an argument is out of range, ``feature_map`` has an integer dtype, or a box
            holds NaN or inf. Box values are read only while the boxes are on the CPU (and
            outside ``torch.compile``), where that costs no device synchronisation; boxes on an
            accelerator are not read.

    Example:
        >>> rows = pool_boxes(c5, [torch.tensor([[16.0, 16.0, 80.0, 112.0]])], spatial_scale=1 / 32)
    """
    _check_args(output_size, spatial_scale, sampling_ratio, aligned, cell_offset)
    _check_inputs(feature_map, boxes)
    return _pool(feature_map, boxes, spatial_scale, output_size, sampling_ratio, aligned, cell_offset)


def _pool(
    feature_map: Tensor,
    boxes: Tensor | list[Tensor],
    spatial_scale: float,
    output_size: int,
    sampling_ratio: int,
    aligned: bool | None,
    cell_offset: float,
) -> Tensor:
    """:func:`pool_boxes` on checked arguments."""
    # bf16 box coordinates would be off by up to a pixel.
    dtype = torch.promote_types(feature_map.dtype, torch.float32)
    if isinstance(boxes, Tensor):
        n, k = boxes.shape[:2]
        flat = boxes.reshape(n * k, 4).to(dtype)
        image_index = torch.arange(n, device=boxes.device, dtype=dtype).repeat_interleave(k)
    else:
        flat = torch.cat([b.reshape(-1, 4) for b in boxes]).to(feature_map.device, dtype)
        counts = torch.tensor([b.reshape(-1, 4).shape[0] for b in boxes], device=flat.device)
        image_index = torch.arange(len(boxes), device=flat.device, dtype=dtype).repeat_interleave(counts)
    if aligned is None:
        # roi_align(aligned=True) maps pixel x to cell coordinate x * scale - 0.5; shifting the
        # box first makes that (x - cell_offset) * scale, the trunk's own cell coordinate. A box
        # of any width stays as wide (aligned=False would widen boxes narrower than one cell), and
        # an all-zero box stays empty, so it still pools to zeros.
        flat = flat + (0.5 / spatial_scale - cell_offset)
    rois = torch.cat([image_index[:, None], flat], dim=1)
    pooled = roi_align(feature_map.to(dtype), rois, output_size, spatial_scale, sampling_ratio, aligned is not False)
    return pooled.flatten(1).to(feature_map.dtype)


def roi_pair_pool(
    map1: Tensor,
    map2: Tensor,
    pairs: BoxPairs,
    output_size: int = 1,
    spatial_scale: float = 1 / 32,
    sampling_ratio: int = -1,
    aligned: bool | None = None,
    cell_offset: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pool every box pair from the two views' feature maps, as matched rows.

    Row ``n*K + k`` of ``p1`` is box ``k`` of image ``n`` pooled on ``map1`` at ``pairs.boxes1``;
    the same row of ``p2`` is the same source region pooled on ``map2`` at ``pairs.boxes2``.
    Shapes are static: invalid pairs give rows too (all-zero boxes, which pool to zero vectors
    with the default adaptive sampling) and are marked in ``valid``. One image, one box and zero valid boxes all keep these shapes.

    Args:
        map1: float ``[N, C, h1, w1]``, feature map of view 1 (any memory format).
        map2: float ``[N, C, h2, w2]``, feature map of view 2.
        pairs: :class:`~scrl.BoxPairs` with ``[N, K, 4]`` ``(x0, y0, x1, y1)`` boxes in view pixels.
        output_size: RoIAlign output side, >= 1 (paper: 1).
        spatial_scale: feature cells per view pixel, ``1 / stride`` (paper: 1/32 on C5).
        sampling_ratio: sample points per bin side; ``-1`` adapts to the box size (paper).
        aligned: ``None`` samples at the real cell centres (``cell_offset``); ``True`` /
            ``False`` reproduce Detectron2's / the authors' convention (see :func:`pool_boxes`).
        cell_offset: where cell 0 of both maps is centred, in view pixels (torchvision ResNets: 0.5).

    Returns:
        ``(p1, p2, valid)``: ``p1``, ``p2`` ``[N*K, C*output_size**2]`` in the maps' dtype
        (``[N*K, C]`` for the default 1x1), ``valid`` bool ``[N*K]``.

    Raises:
        ValueError: the shapes disagree, an argument is out of range, a map has an integer
            dtype, or a box holds NaN or inf (read only while the boxes are on the CPU, as in
            :func:`pool_boxes`: boxes on an accelerator cost no device synchronisation).

    Example:
        >>> p1, p2, valid = roi_pair_pool(map1, map2, sampler(geom1, geom2))
    """
    _check_args(output_size, spatial_scale, sampling_ratio, aligned, cell_offset)
    _check_pair_inputs(map1, map2, pairs)
    for name, value in (("pairs.boxes1", pairs.boxes1), ("pairs.boxes2", pairs.boxes2)):
        _check_boxes(name, value)
    return _pool_pairs(map1, map2, pairs, (spatial_scale, output_size, sampling_ratio, aligned, cell_offset))


def _check_pair_inputs(map1: Tensor, map2: Tensor, pairs: BoxPairs) -> None:
    """Refuse maps and pairs of disagreeing shapes, and integer maps, from their metadata alone."""
    if map1.dim() != 4 or map2.dim() != 4 or map1.shape[:2] != map2.shape[:2]:
        raise ValueError(f"map1 and map2 must be [N, C, h, w] with equal N and C, got {list(map1.shape)} and {list(map2.shape)}")
    n, k = pairs.valid.shape
    if n != map1.shape[0] or pairs.boxes1.shape != (n, k, 4) or pairs.boxes2.shape != (n, k, 4):
        raise ValueError(
            f"pairs must hold [N, K, 4] boxes and [N, K] valid with N = {map1.shape[0]} images, got boxes1 "
            f"{list(pairs.boxes1.shape)}, boxes2 {list(pairs.boxes2.shape)}, valid {list(pairs.valid.shape)}"
        )
    for name, value in (("map1", map1), ("map2", map2)):
        _check_map(name, value)


def _pool_pairs(map1: Tensor, map2: Tensor, pairs: BoxPairs, settings: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`roi_pair_pool` on checked inputs; ``settings`` as :func:`_pool` takes them after the boxes."""
    p1 = _pool(map1, pairs.boxes1, *settings)
    p2 = _pool(map2, pairs.boxes2, *settings)
    return p1, p2, pairs.valid.reshape(-1)


class RoIPairPool(nn.Module):
    """Pools matched box pairs from two feature maps; see :func:`roi_pair_pool`.

    Args:
        stride: input pixels per feature cell of the maps (32 for C5); sets ``spatial_scale``.
        output_size: RoIAlign output side (paper: 1).
        sampling_ratio: ``-1`` (adaptive, paper) or sample points per bin side.
        aligned: ``None`` (default) samples every box at the cells' real centres, given by
            ``cell_offset``. ``True`` is Detectron2's convention (cells at ``(i + 0.5) * stride``;
            measured on a torchvision ResNet's C5: 15.5 px up-left of the box centre); ``False``
            the authors' (cells at ``i * stride``; 0.5 px down-right).
        cell_offset: cell ``i`` is centred at ``stride * i + cell_offset`` view pixels; 0.5 for
            torchvision ResNets (``Trunk.cell_offset`` in general).

    Example:
        >>> pool = RoIPairPool(stride=32, cell_offset=trunk.cell_offset)
        >>> p1, p2, valid = pool(map1, map2, pairs)  # [N*K, C], [N*K, C], [N*K]
    """

    def __init__(
        self, stride: int = 32, output_size: int = 1, sampling_ratio: int = -1, aligned: bool | None = None, cell_offset: float = 0.5
    ) -> None:
        super().__init__()
        if not stride > 0:
            raise ValueError(f"stride must be > 0 (input pixels per feature cell), got {stride!r}")
        _check_args(output_size, 1 / stride, sampling_ratio, aligned, cell_offset)
        self.stride = stride
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.cell_offset = float(cell_offset)

    def forward(self, map1: Tensor, map2: Tensor, pairs: BoxPairs) -> tuple[Tensor, Tensor, Tensor]:
        return roi_pair_pool(
            map1, map2, pairs, self.output_size, 1 / self.stride, self.sampling_ratio, self.aligned, self.cell_offset
        )

    def _pool_sampled(self, map1: Tensor, map2: Tensor, pairs: BoxPairs) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` for pairs a :class:`~scrl.BoxPairSampler` drew from checked geometries.

        Their boxes are finite by construction, so their values are not read: a training step
        reads no value even on the CPU.
        """
        _check_pair_inputs(map1, map2, pairs)
        settings = (1 / self.stride, self.output_size, self.sampling_ratio, self.aligned, self.cell_offset)
        return _pool_pairs(map1, map2, pairs, settings)

    def extra_repr(self) -> str:
        rule = f"cell_offset={self.cell_offset}" if self.aligned is None else f"aligned={self.aligned}"
        return f"stride={self.stride}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, {rule}"
