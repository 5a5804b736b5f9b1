"""How a two-view model turns its feature maps into matched rows for the heads: globally (BYOL) or per box pair (SCRL).

A pooling component maps the online and the target feature maps of both views to
:class:`PooledPairs`: row ``m`` of view 1 and row ``m`` of view 2 show the same content, the
online rows get gradients, and an optional mask marks which rows are real. Both components
share one call, ``pool(online_maps, target_maps, geom1, geom2, generator)``, and declare
``features_per_channel``, the projector input features they give per trunk channel, so
:class:`~scrl.models.TwoViewModel` takes either and the two methods swap in one line.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .box_sampler import BoxPairSampler
from .geometry import ViewGeometry
from .roi_pool import ROI_POOLING, RoIPairPool, RoIPooling
from .trunk import Trunk

__all__ = ["PooledPairs", "GlobalPool", "BoxPairPool"]


class PooledPairs(NamedTuple):
    """Matched rows of both views, view-1 rows first.

    Attributes:
        online: float ``[2M, F]``, online rows: ``online[:M]`` from view 1, ``online[M:]`` from
            view 2; row ``m`` and row ``M + m`` show the same content.
        target: float ``[2M, F]``, the target network's rows in the same order.
        valid: bool ``[M]``, which pairs are real (the same for both views); ``None`` when
            every row is, which keeps the heads on plain BatchNorm and the loss on a plain mean.
    """

    online: Tensor
    target: Tensor
    valid: Tensor | None


class GlobalPool(nn.Module):
    """BYOL's pooling: the mean of each view's whole feature map, one row per image (``M = B``).

    Every image is its own pair, so there is no mask. The call takes the geometries and the
    generator only to share :class:`BoxPairPool`'s signature: the whole map needs neither, so
    they are ignored and may be ``None``.

    Example:
        >>> pool = GlobalPool()
        >>> rows = pool((m1, m2), (t1, t2))  # maps [B, C, h, w] of views 1 and 2
        >>> rows.online.shape, rows.valid  # ([2B, C], None)
    """

    features_per_channel = 1

    def forward(
        self,
        online_maps: tuple[Tensor, Tensor],
        target_maps: tuple[Tensor, Tensor],
        geom1: ViewGeometry | None = None,
        geom2: ViewGeometry | None = None,
        generator: torch.Generator | None = None,
    ) -> PooledPairs:
        """Average every map over its cells.

        Args:
            online_maps: ``(map1, map2)``, float ``[B, C, h1, w1]`` and ``[B, C, h2, w2]``.
            target_maps: the target trunk's maps of the same views.
            geom1, geom2, generator: ignored.

        Returns:
            :class:`PooledPairs` with ``online``, ``target`` ``[2B, C]`` and ``valid=None``.
        """

        def pool(maps: tuple[Tensor, Tensor]) -> Tensor:
            return torch.cat([m.mean(dim=(2, 3)) for m in maps])

        return PooledPairs(pool(online_maps), pool(target_maps), None)


class BoxPairPool(nn.Module):
    """SCRL's pooling: ``K`` matched box pairs per image, RoIAligned on both views' maps (``M = B * K``).

    ``sampler`` draws the boxes once per call from the views' geometries; ``roi_pool`` pools
    them on the online and on the target maps, so both networks see the same boxes. Shapes are
    static: invalid slots give rows too and are masked out by ``valid``.

    Args:
        sampler: draws the box pairs (:class:`~scrl.BoxPairSampler`).
        roi_pool: pools them (:class:`~scrl.RoIPairPool`); its stride and cell offset must be
            those of the trunk whose maps it pools (:meth:`for_trunk` builds it so).

    Attributes:
        sampler, roi_pool: the two parts, as given.
        features_per_channel: ``roi_pool.output_size ** 2``.

    Example:
        >>> pool = BoxPairPool.for_trunk(trunk, BoxPairSampler(num_boxes=10, min_size=32))
        >>> rows = pool((m1, m2), (t1, t2), geom1, geom2)
        >>> rows.online.shape, rows.valid.shape  # ([2 * B * 10, C], [B * 10])
    """

    def __init__(self, sampler: BoxPairSampler, roi_pool: RoIPairPool) -> None:
        super().__init__()
        if not isinstance(sampler, BoxPairSampler):
            raise ValueError(f"sampler must be a BoxPairSampler, got {type(sampler).__name__}")
        if not isinstance(roi_pool, RoIPairPool):
            raise ValueError(f"roi_pool must be a RoIPairPool, got {type(roi_pool).__name__}")
        self.sampler = sampler
        self.roi_pool = roi_pool

    @classmethod
    def for_trunk(
        cls, trunk: Trunk, sampler: BoxPairSampler, output_size: int = 1, roi_pooling: RoIPooling = "exact"
    ) -> "BoxPairPool":
        """Pool ``sampler``'s boxes on ``trunk``'s maps, at its stride and cell centres.

        Args:
            trunk: the :class:`~scrl.Trunk` whose maps are pooled.
            sampler: draws the box pairs.
            output_size: RoIAlign output side, >= 1 (paper: 1).
            roi_pooling: ``"exact"`` samples where the trunk's cells are centred; ``"aligned"`` /
                ``"unaligned"`` use RoIAlign's own conventions, ``aligned=True`` / ``False``
                (see :class:`~scrl.RoIPairPool`).

        Raises:
            ValueError: ``trunk`` is no :class:`~scrl.Trunk`, or ``roi_pooling`` names no rule.
        """
        if not isinstance(trunk, Trunk):
            raise ValueError(f"trunk must be a Trunk (it declares stride and cell_offset), got {type(trunk).__name__}")
        if roi_pooling not in ROI_POOLING:
            raise ValueError(f"roi_pooling must be one of {', '.join(map(repr, ROI_POOLING))}, got {roi_pooling!r}")
        aligned = ROI_POOLING[roi_pooling]
        return cls(sampler, RoIPairPool(trunk.stride, output_size, aligned=aligned, cell_offset=trunk.cell_offset))

    @property
    def features_per_channel(self) -> int:
        return self.roi_pool.output_size**2

    def forward(
        self,
        online_maps: tuple[Tensor, Tensor],
        target_maps: tuple[Tensor, Tensor],
        geom1: ViewGeometry | None,
        geom2: ViewGeometry | None,
        generator: torch.Generator | None = None,
    ) -> PooledPairs:
        """Sample box pairs from the geometries and pool them on both networks' maps.

        Args:
            online_maps: ``(map1, map2)``, float ``[B, C, h1, w1]`` and ``[B, C, h2, w2]``.
            target_maps: the target trunk's maps of the same views.
            geom1, geom2: batched :class:`~scrl.ViewGeometry` of the views, batch shape ``[B]``;
                moved to the maps' device if needed.
            generator: optional ``torch.Generator`` on the maps' device for the box draws.

        Returns:
            :class:`PooledPairs`: ``online``, ``target`` ``[2*B*K, C * output_size**2]``, box
            ``k`` of image ``n`` in row ``n*K + k`` of each half; ``valid`` bool ``[B*K]``.
        """
        batch = online_maps[0].shape[0]
        for name, geom in (("geom1", geom1), ("geom2", geom2)):
            if not isinstance(geom, ViewGeometry) or geom.crop.shape != (batch, 4):
                got = list(geom.crop.shape) if isinstance(geom, ViewGeometry) else type(geom).__name__
                raise ValueError(f"{name} must be a ViewGeometry batch with crop [B={batch}, 4], got {got}")
        device = online_maps[0].device
        pairs = self.sampler(geom1.to(device), geom2.to(device), generator=generator)
        online1, online2, valid = self.roi_pool._pool_sampled(*online_maps, pairs)
        target1, target2, _ = self.roi_pool._pool_sampled(*target_maps, pairs)
        return PooledPairs(torch.cat([online1, online2]), torch.cat([target1, target2]), valid)
