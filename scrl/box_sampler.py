"""Sampling matched box pairs inside the overlap of two views (SCRL paper, Eq. 1).

Every box is drawn in source-image coordinates inside the exact intersection of the two
crops, so it maps into both views without clipping. Each image gets a stream of candidates,
drawn for the whole batch at once, and the paper's sequential IoU rejection runs over all
streams together, one kept box per round, with static ``[N, K]`` shapes and no host-device
synchronisation.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from .geometry import ViewGeometry

__all__ = ["BoxPairs", "BoxPairSampler", "sample_box_pairs"]

SamplingMode = Literal["uniform", "grid"]

# Candidates per requested box. The paper draws again after a rejection, up to 50 times per box;
# a shared stream of 20 * K candidates per image keeps as many boxes as that procedure at 224-px
# views and at least 0.97 of them at 96-px views, where most images are crowded
# (benchmarks/box_sampler.py measures both).
DEFAULT_CANDIDATES_PER_BOX = 20
# BoxPairSampler's settings: sample_box_pairs' arguments after the geometries, under their names.
_OPTIONS = ("num_boxes", "min_size", "iou_threshold", "jitter", "mode", "candidates_per_box")
_STRIKE_SCALE = 1e30


class BoxPairs(NamedTuple):
    """Matched boxes in two views, with static shapes.

    Attributes:
        boxes1: float ``[N, K, 4]`` ``(x0, y0, x1, y1)`` in view-1 pixels.
        boxes2: float ``[N, K, 4]`` ``(x0, y0, x1, y1)`` in view-2 pixels; row ``k`` covers the
            same source region as row ``k`` of ``boxes1``.
        valid: bool ``[N, K]``; invalid slots hold all-zero boxes and must be ignored.
    """

    boxes1: Tensor
    boxes2: Tensor
    valid: Tensor

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> "BoxPairs":
        """Move all three tensors to ``device`` (asynchronously where possible with ``non_blocking``)."""
        return BoxPairs(*(t.to(device, non_blocking=non_blocking) for t in self))


def _check_args(
    num_boxes: int, min_size: float, iou_threshold: float | None, jitter: float, mode: str, candidates_per_box: int
) -> None:
    if not isinstance(num_boxes, int) or num_boxes < 1:
        raise ValueError(f"num_boxes must be an integer >= 1, got {num_boxes!r}")
    if not min_size > 0:
        raise ValueError(f"min_size must be > 0 (view pixels), got {min_size!r}")
    if iou_threshold is not None and not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1] or None, got {iou_threshold!r}")
    if not jitter >= 0:
        raise ValueError(f"jitter must be >= 0 (a fraction of the box size), got {jitter!r}")
    if mode not in ("uniform", "grid"):
        raise ValueError(f"mode must be 'uniform' or 'grid', got {mode!r}")
    if not isinstance(candidates_per_box, int) or candidates_per_box < 1:
        raise ValueError(f"candidates_per_box must be an integer >= 1, got {candidates_per_box!r}")


def _draw_candidates(
    low: Tensor, extent: Tensor, min_extent: Tensor, num: int, mode: SamplingMode, generator: torch.Generator | None
) -> Tensor:
    """Draw ``num`` boxes per image inside ``[low, low + extent]`` with sides >= ``min_extent``.

    ``low``, ``extent``, ``min_extent`` are ``[2, N]`` (x, y) in source pixels. Returns the
    boxes coordinate-major, ``[4, N, num]`` ``(x0, y0, x1, y1)``: each image's candidates in
    draw order are contiguous, which the rounds of :func:`_first_fit` reduce over.
    """
    n = low.shape[1]
    low, extent, min_extent = low[..., None], extent[..., None], min_extent[..., None]
    room = (extent - min_extent).clamp(min=0)
    if mode == "uniform":
        # Built in place in the buffer of the uniforms: (x0, y0) <- start, (x1, y1) <- end.
        boxes = torch.rand(4, n, num, generator=generator, device=low.device, dtype=low.dtype)
        start, size = boxes[:2], boxes[2:]
        size.mul_(room).add_(min_extent)
        start.mul_(extent - size).add_(low)
        size.add_(start)
        return boxes
    # The authors' configs: split the overlap into 1..floor(extent / min) cells per axis and
    # draw the box inside one random cell.
    u = torch.rand(8, n, num, generator=generator, device=low.device, dtype=low.dtype)
    max_cells = torch.floor(extent / min_extent).clamp(min=1)
    cells = torch.minimum(torch.floor(u[:2] * max_cells) + 1, max_cells)
    cell_size = extent / cells
    cell_index = torch.minimum(torch.floor(u[2:4] * cells), cells - 1)
    size = min_extent + u[4:6] * (cell_size - min_extent).clamp(min=0)
    start = low + cell_index * cell_size + u[6:8] * (cell_size - size)
    return torch.cat([start, start + size], dim=0)


def _first_fit(candidates: Tensor, candidate_ok: Tensor, num_boxes: int, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """The paper's sequential IoU rejection over each image's stream of candidates.

    Candidate ``m`` is kept when no kept earlier candidate overlaps it by more than the
    threshold, until ``num_boxes`` are kept. Round ``k`` takes the first candidate still
    compatible with every kept box as box ``k`` (exactly the sequential rule: the candidates
    before it were rejected by boxes kept earlier), then strikes out the candidates it rejects.
    Each round costs one ``[N, M]`` pass instead of an ``[N, M, M]`` pairwise test.

    Args:
        candidates: float ``[4, N, M]``, coordinate-major candidate streams of ``N`` images.
        candidate_ok: bool ``[N, M]``, candidates eligible at all.
        num_boxes: ``K``, boxes to keep per image.
        iou_threshold: reject IoU strictly above this.

    Returns:
        ``(index, valid)``: int64 ``[N, K]`` positions in the stream of the kept boxes, in
        order, and bool ``[N, K]`` (``False`` where the stream ran out).
    """
    lo, hi = candidates[:2], candidates[2:]
    n, m = candidate_ok.shape
    # Rank m - j marks live candidate j and a value <= 0 a struck-out one, so the largest rank is
    # the first live candidate. Everything stays float32: on CPU, comparisons into bool tensors
    # and integer reductions cost several times a float op.
    live = torch.arange(m, 0, -1, device=candidates.device, dtype=candidates.dtype) * candidate_ok
    # IoU > t  <=>  inter > t / (1 + t) * (area_a + area_b), without a division.
    scaled_area = (hi - lo).prod(dim=0) * (iou_threshold / (1 + iou_threshold))
    span, scratch = torch.empty_like(lo), torch.empty_like(lo)
    margin = torch.empty_like(scaled_area)
    firsts = []
    for k in range(num_boxes):
        first = live.amax(dim=1, keepdim=True)  # [N, 1]; 0 when no candidate is left
        firsts.append(first)
        if k == num_boxes - 1:
            break
        index = (m - first.long()).clamp_(max=m - 1)
        box = candidates.gather(2, index.expand(4, n, 1))  # [4, N, 1]
        # In place in fixed buffers: on CPU, fresh allocations of this size cost as much as the
        # arithmetic.
        torch.minimum(hi, box[2:], out=span).sub_(torch.maximum(lo, box[:2], out=scratch))
        # A negative height times a width clamped at 0 stays <= 0: one clamp is enough.
        inter = span[0].clamp_(min=0).mul_(span[1])
        # margin = bound - inter >= 0 keeps a candidate. Scaled far beyond any rank and offset by
        # m, a margin >= 0 leaves the rank as it is under the minimum and a negative one strikes
        # it out (only a margin within 1e-25 px^2 of 0, far below float32 resolution, could not).
        torch.add(scaled_area, scaled_area.gather(1, index), out=margin).sub_(inter)
        torch.minimum(live, margin.mul_(_STRIKE_SCALE).add_(m), out=live)
        live.scatter_(1, index, 0)  # the kept box itself (with threshold 1 it rejects nothing)
    first = torch.cat(firsts, dim=1)
    return (m - first.long()).clamp_(max=m - 1), first > 0


def _jitter_boxes(boxes: Tensor, size_hw: Tensor, ratio: float, generator: torch.Generator | None) -> Tensor:
    """Move and rescale each box by up to ``ratio`` of its size, then keep it inside the view."""
    wh = boxes[..., 2:] - boxes[..., :2]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    u = torch.rand(*boxes.shape[:-1], 4, generator=generator, device=boxes.device, dtype=boxes.dtype) * 2 - 1
    centre = centre + u[..., :2] * ratio * wh
    wh = wh * (1 + u[..., 2:] * ratio)
    limit = size_hw.flip(-1)[:, None].to(boxes.dtype)
    lo = torch.minimum(torch.maximum(centre - wh / 2, torch.zeros_like(limit)), limit)
    hi = torch.minimum(torch.maximum(centre + wh / 2, torch.zeros_like(limit)), limit)
    return torch.cat([lo, hi], dim=-1)


def sample_box_pairs(
    geom1: ViewGeometry,
    geom2: ViewGeometry,
    num_boxes: int = 10,
    min_size: float = 32.0,
    iou_threshold: float | None = 0.5,
    jitter: float = 0.0,
    mode: SamplingMode = "uniform",
    candidates_per_box: int = DEFAULT_CANDIDATES_PER_BOX,
    generator: torch.Generator | None = None,
) -> BoxPairs:
    """Sample ``num_boxes`` matched box pairs per image inside the overlap of two views.

    Follows Eq. 1 of the SCRL paper: with ``W^, H^`` the overlap's size in source pixels,
    ``w ~ U(W_min, W^)``, ``x ~ U(0, W^ - w)`` and likewise ``h, y``, where ``W_min`` is
    ``min_size`` view pixels measured in the view that shows the overlap smallest, so every
    box is at least ``min_size`` wide and high in both views. Each image draws a stream of
    ``candidates_per_box * num_boxes`` candidates; as in the paper, a candidate whose IoU with a
    box kept before it exceeds ``iou_threshold`` is rejected and the next one is tried, until
    ``num_boxes`` are kept. The rule is applied exactly, in draw order, and never broken: when
    the stream runs out first, the remaining slots are marked invalid. (The paper allows 50
    tries per box; here the tries are shared by the image's boxes.)

    Args:
        geom1: geometry of the first views, batch shape ``[N]`` (or a single view).
        geom2: geometry of the second views, same batch shape, same device.
        num_boxes: ``K``, box pairs per image, >= 1.
        min_size: smallest box side in view pixels, > 0 (32 = one C5 cell of a ResNet).
        iou_threshold: in ``[0, 1]``; ``None`` disables rejection.
        jitter: >= 0; perturb each view-2 box's centre and size by up to this fraction of its
            size (the paper's Table 7 ablation). Jittered boxes are kept inside view 2.
        mode: ``"uniform"`` (the paper) or ``"grid"`` (the authors' configs).
        candidates_per_box: candidates drawn per requested box, >= 1. Time and memory grow
            linearly with it; the default 20 fills as many boxes as the paper's 50 tries per box
            at 224-px views.
        generator: optional ``torch.Generator`` on the geometries' device.

    Returns:
        :class:`BoxPairs` with ``[N, K, 4]`` float32 boxes (``[1, K, 4]`` for a single view).
    """
    _check_args(num_boxes, min_size, iou_threshold, jitter, mode, candidates_per_box)
    for name, geom in (("geom1", geom1), ("geom2", geom2)):
        if not isinstance(geom, ViewGeometry):  # ViewGeometry checks its fields' shapes and dtypes
            raise ValueError(f"{name} must be a ViewGeometry, got {type(geom).__name__}")
    if geom1.flipped.dim() == 0:
        geom1 = ViewGeometry(geom1.crop[None], geom1.flipped[None], geom1.size[None])
        geom2 = ViewGeometry(geom2.crop[None], geom2.flipped[None], geom2.size[None])
    if geom1.crop.shape != geom2.crop.shape:
        raise ValueError(f"geom1 and geom2 must have the same batch shape, got {list(geom1.crop.shape)} and {list(geom2.crop.shape)}")

    # Both views as one geometry of batch shape [2, N]: each step below runs once for both.
    dtype = torch.float32
    views = ViewGeometry._rewrap(
        torch.stack([geom1.crop, geom2.crop]).to(dtype),
        torch.stack([geom1.flipped, geom2.flipped]),
        torch.stack([geom1.size, geom2.size]).to(dtype),
    )
    low = views.crop[..., :2].amax(dim=0).T  # [2 (x, y), N]
    extent = views.crop[..., 2:].amin(dim=0).T - low
    min_extent = min_size / views.scale.amin(dim=0).T
    feasible = (extent >= min_extent).all(dim=0)

    num_candidates = num_boxes if iou_threshold is None else num_boxes * candidates_per_box
    candidates = _draw_candidates(low, extent, min_extent, num_candidates, mode, generator)
    if iou_threshold is None:
        first = torch.arange(num_boxes, device=feasible.device).expand(feasible.shape[0], -1)
        valid = feasible[:, None].expand(-1, num_boxes)
    else:
        candidate_ok = feasible[:, None].expand(-1, num_candidates)
        first, valid = _first_fit(candidates, candidate_ok, num_boxes, iou_threshold)
    source = candidates.permute(1, 2, 0).gather(1, first[..., None].expand(-1, -1, 4))

    boxes = views.source_to_view(source.expand(2, -1, -1, -1))  # [2, N, K, 4]
    if jitter > 0:
        boxes = torch.stack([boxes[0], _jitter_boxes(boxes[1], geom2.size, jitter, generator)])
    # Float rounding can put an edge a hair outside a view, although in exact arithmetic every
    # box lies inside both; invalid slots become zeros.
    limit = views.size.flip(-1).repeat(1, 1, 2)[:, :, None]
    boxes = torch.minimum(boxes.clamp(min=0), limit) * valid[..., None]
    return BoxPairs(boxes[0], boxes[1], valid)


class BoxPairSampler(torch.nn.Module):
    """Samples matched box pairs inside the overlap of two views; see :func:`sample_box_pairs`.

    A module without parameters, so it moves with its owner and prints its settings.

    Args:
        num_boxes: ``K``, box pairs per image (paper: 10).
        min_size: smallest box side in view pixels (paper: 32).
        iou_threshold: IoU rejection threshold in ``[0, 1]`` (paper: 0.5); ``None`` disables it.
        jitter: box jitter ratio for the ablation (paper default: off).
        mode: ``"uniform"`` (paper Eq. 1) or ``"grid"``.
        candidates_per_box: candidates drawn per box before IoU rejection.

    Example:
        >>> sampler = BoxPairSampler(num_boxes=10, min_size=32)
        >>> pairs = sampler(geom1, geom2)  # batched ViewGeometry of N views each
        >>> pairs.boxes1.shape, pairs.valid.shape
        (torch.Size([N, 10, 4]), torch.Size([N, 10]))
    """

    def __init__(
        self,
        num_boxes: int = 10,
        min_size: float = 32.0,
        iou_threshold: float | None = 0.5,
        jitter: float = 0.0,
        mode: SamplingMode = "uniform",
        candidates_per_box: int = DEFAULT_CANDIDATES_PER_BOX,
    ) -> None:
        super().__init__()
        _check_args(num_boxes, min_size, iou_threshold, jitter, mode, candidates_per_box)
        self.num_boxes = num_boxes
        self.min_size = float(min_size)
        self.iou_threshold = iou_threshold
        self.jitter = float(jitter)
        self.mode = mode
        self.candidates_per_box = candidates_per_box

    def forward(self, geom1: ViewGeometry, geom2: ViewGeometry, generator: torch.Generator | None = None) -> BoxPairs:
        return sample_box_pairs(geom1, geom2, **self._options(), generator=generator)

    def _options(self) -> dict[str, Any]:
        """The settings under :func:`sample_box_pairs`'s names."""
        return {name: getattr(self, name) for name in _OPTIONS}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self._options().items())
