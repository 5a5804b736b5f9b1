"""Cross-view RoI retrieval: does a region look the same to the trunk in two augmented views?

Spatial consistency, measured directly: for matched box pairs sampled inside the overlap of
two augmented views of held-out images, the share of view-1 boxes whose nearest view-2 box
feature (cosine similarity, among all boxes of the batch) is their own partner.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..box_sampler import BoxPairSampler
from ..cell_centre import map_cell_geometry
from ..data.two_view import TwoViewDataset, collate_two_views
from ..roi_pool import roi_pair_pool
from ..transforms import TwoViewTransform
from ..trunk import evaluating
from .trunk_forward import forward_images, module_device

__all__ = ["RetrievalResult", "cross_view_retrieval"]


class RetrievalResult(NamedTuple):
    """Outcome of :func:`cross_view_retrieval`.

    Attributes:
        top1: percent of view-1 boxes whose nearest view-2 box is their partner.
        chance: percent a random pick would reach (mean of 1 / boxes in the batch).
        queries: number of view-1 boxes scored.
    """

    top1: float
    chance: float
    queries: int


def cross_view_retrieval(
    trunk: nn.Module,
    dataset: Dataset,
    indices: Sequence[int] | None = None,
    *,
    view_size: int = 224,
    scale: tuple[float, float] = (0.2, 1.0),
    photometric: bool = True,
    num_boxes: int = 10,
    min_size: float = 32.0,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> RetrievalResult:
    """Score cross-view retrieval of box features for the images ``indices`` of ``dataset``.

    Each image gets the two SCRL/BYOL views (:meth:`~scrl.TwoViewTransform.byol`, made by a
    :class:`~scrl.data.TwoViewDataset` seeded with ``seed``, so an image's views depend only on
    ``seed`` and its dataset index), box pairs are drawn in their overlap
    (:class:`~scrl.BoxPairSampler`, its own generator seeded with ``seed``) and pooled on the
    trunk's maps with RoIAlign where the trunk's cells are centred, as in pretraining. The trunk
    runs as given, in eval mode (its mode is restored after); pass a frozen, BatchNorm-adapted
    copy for a fair comparison. The caller's random streams are left untouched.

    Args:
        trunk: a ``Trunk`` (its ``stride`` and ``cell_offset`` place the boxes on its map), or
            any module returning a feature map (stride read off the map, cell offset measured).
        dataset: images as :class:`~scrl.data.TwoViewDataset` reads them (box datasets, whose
            items start with the image; image folders).
        indices: images to use (all when ``None``), split into batches of ``batch_size``.
        view_size: view side in pixels.
        scale: crop area range of the views.
        photometric: apply the photometric augmentations (harder, as in pretraining).
        num_boxes: box pairs per image.
        min_size: smallest box side in view pixels.
        batch_size: images whose boxes compete as candidates, >= 1.
        seed: seeds views and boxes, >= 0, so every trunk is scored on the same pairs.
        device: where to run; the trunk's device when ``None``.
        autocast_dtype: e.g. ``torch.bfloat16``.
        channels_last: feed channels-last inputs.

    Returns:
        :class:`RetrievalResult` (percentages).

    Example:
        >>> result = cross_view_retrieval(trunk, SyntheticScenes(64, seed=7), view_size=96)
        >>> result.top1, result.chance                 # doctest: +SKIP
        (11.5, 0.4)
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = module_device(trunk, device)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    views = TwoViewDataset(dataset, TwoViewTransform.byol(view_size, scale, photometric=photometric, output="uint8"), seed)
    sampler = BoxPairSampler(num_boxes=num_boxes, min_size=min_size)
    cells: tuple[int, float] | None = None
    generator = torch.Generator().manual_seed(seed)
    correct, chance, queries = 0, 0.0, 0
    with evaluating(trunk), torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = collate_two_views([views[index] for index in indices[start : start + batch_size]])
            pairs = sampler(batch.geom1, batch.geom2, generator=generator).to(device)
            map1 = forward_images(trunk, batch.view1, device, autocast_dtype, channels_last)
            map2 = forward_images(trunk, batch.view2, device, autocast_dtype, channels_last)
            if cells is None:  # where the map's cells sit, found once
                cells = map_cell_geometry(trunk, view_size, map1.shape[-1])
            p1, p2, valid = roi_pair_pool(
                map1.float(), map2.float(), pairs, spatial_scale=1.0 / cells[0], cell_offset=cells[1]
            )
            q = F.normalize(p1[valid], dim=1)
            z = F.normalize(p2[valid], dim=1)
            n = q.shape[0]
            if n == 0:
                continue
            nearest = (q @ z.T).argmax(dim=1)
            correct += int((nearest == torch.arange(n, device=nearest.device)).sum())
            chance += 1.0  # n queries with chance 1/n each
            queries += n
    if queries == 0:
        raise ValueError("no valid box pairs: views too small for min_size, or no images")
    return RetrievalResult(100.0 * correct / queries, 100.0 * chance / queries, queries)
