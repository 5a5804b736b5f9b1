"""Two-view self-supervised models with one call: ``loss, logs = model(view1, view2, geom1, geom2)``.

:class:`TwoViewModel` holds an online trunk, projector and predictor, a momentum target
(trunk + projector) and a pooling component (:mod:`scrl.pooling`) that turns the feature maps
into matched rows. :class:`SCRL` pools matched box pairs with RoIAlign (paper Sec. 3),
:class:`BYOL` pools each whole map; both are a :class:`TwoViewModel` with that pooling.

One step:
    * The online trunk sees both views in ONE call on the ``2B`` concatenated batch when the
      views have equal shapes (cheaper, and its BatchNorm statistics cover both views, as
      common BYOL practice); views of different shapes go through it one after the other.
      The target trunk does the same under ``torch.no_grad()``.
    * The pooling component gives ``2M`` online and target rows (``M`` per view) and an
      optional validity mask ``[M]``.
    * The online projector and predictor and the target projector each see the rows of both
      views in one call (``2M`` rows).
    * With a mask (SCRL), shapes stay static: invalid box slots go through the heads too. Their
      all-zero boxes pool to zero vectors, which would skew the heads' BatchNorm statistics by
      an amount that varies with the share of valid boxes, so the heads take the mask and
      normalise with statistics of the valid rows only (:class:`~scrl.MLPHead`). The loss
      (:func:`~scrl.scrl_loss`, which is :func:`~scrl.byol_loss` without a mask) and the logs
      ignore invalid rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_sampler import BoxPairSampler
from .geometry import ViewGeometry, check_view_size
from .losses import scrl_loss
from .mlp_head import MLPHead
from .momentum import MomentumTarget
from .pooling import BoxPairPool, GlobalPool
from .roi_pool import RoIPairPool, RoIPooling
from .schedule import cosine_tau
from .trunk import Trunk, as_trunk

__all__ = ["TwoViewModel", "SCRL", "BYOL"]


def _masked_collapse_std(z: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dimensions of the per-dimension std of the l2-normalised rows of ``z``.

    About ``1/sqrt(D)`` for well spread projections, 0 when they have collapsed to one point.
    """
    z = F.normalize(z.detach().float(), dim=-1)
    weight = torch.ones_like(z[:, 0]) if mask is None else mask.float()
    count = weight.sum().clamp(min=1)
    mean = (z * weight[:, None]).sum(0) / count
    var = ((z - mean).square() * weight[:, None]).sum(0) / count
    return var.sqrt().mean()


_VIEW_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _maps(trunk: nn.Module, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
    if view1.shape == view2.shape:
        return trunk(torch.cat([view1, view2])).chunk(2)
    return trunk(view1), trunk(view2)


class TwoViewModel(nn.Module):
    """Online trunk and heads regressing a momentum target across two views, on rows given by a pooling component.

    The online prediction of each row of one view regresses the target projection of the
    matching row of the other view (:func:`~scrl.scrl_loss`, symmetrised, valid rows only).

    Args:
        trunk: a :class:`~scrl.Trunk`, a torchvision classifier of a supported family, or a name
            :func:`~scrl.trunk.create_trunk` builds (``"resnet50"``, ``"convnext_tiny"``,
            ``"timm:NAME"``, one given to :func:`~scrl.trunk.register_trunk`; random init).
        pool: the pooling component, an ``nn.Module`` with an integer attribute
            ``features_per_channel >= 1`` (the projector sees ``trunk.channels *
            features_per_channel`` features) and the call ``pool(online_maps, target_maps,
            geom1, geom2, generator)`` -> :class:`~scrl.pooling.PooledPairs`:
            :class:`~scrl.pooling.GlobalPool` (BYOL) or :class:`~scrl.pooling.BoxPairPool` (SCRL).
        projector_hidden: hidden width of projector and predictor, >= 1 (paper: 4096).
        projection_dim: output width of projector and predictor, >= 1 (paper: 256).
        predictor_hidden: hidden width of the predictor if different from ``projector_hidden``.
        tau_base: target weight at step 0 of the cosine schedule, in ``[0, 1]``.

    Attributes:
        trunk, projector, predictor: the online network. target: :class:`~scrl.MomentumTarget`
        holding ``module["trunk"]`` and ``module["projector"]``. pool: the pooling component.

    Example:
        >>> trunk = resnet_trunk("resnet50")
        >>> model = TwoViewModel(trunk, BoxPairPool.for_trunk(trunk, BoxPairSampler()), tau_base=0.97)
        >>> loss, logs = model(view1, view2, geom1, geom2)
        >>> loss.backward(); optimizer.step(); optimizer.zero_grad()
        >>> model.update_target(step, total_steps)
    """

    def __init__(
        self,
        trunk: nn.Module | str,
        pool: nn.Module,
        *,
        projector_hidden: int = 4096,
        projection_dim: int = 256,
        predictor_hidden: int | None = None,
        tau_base: float = 0.996,
    ) -> None:
        super().__init__()
        if not 0.0 <= tau_base <= 1.0:
            raise ValueError(f"tau_base must be in [0, 1] (weight kept on the target), got {tau_base!r}")
        features = getattr(pool, "features_per_channel", None)
        if not isinstance(pool, nn.Module) or not isinstance(features, int) or features < 1:
            raise ValueError(
                f"pool must be an nn.Module with an integer features_per_channel >= 1 (GlobalPool, BoxPairPool), "
                f"got {type(pool).__name__} with features_per_channel={features!r}"
            )
        self.trunk: Trunk = as_trunk(trunk)
        self.pool = pool
        self.projector = MLPHead(self.trunk.channels * features, projector_hidden, projection_dim)
        self.predictor = MLPHead(projection_dim, predictor_hidden or projector_hidden, projection_dim)
        self.target = MomentumTarget(self._online_encoder())
        self.tau_base = tau_base

    def _online_encoder(self) -> nn.ModuleDict:
        """The online modules the target follows, in the target's structure (not registered)."""
        return nn.ModuleDict({"trunk": self.trunk, "projector": self.projector})

    def forward(
        self,
        view1: Tensor,
        view2: Tensor,
        geom1: ViewGeometry | None = None,
        geom2: ViewGeometry | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One training forward pass on a batch of view pairs.

        Args:
            view1: float ``[B, 3, H1, W1]`` normalised images of view 1 (any memory format).
            view2: float ``[B, 3, H2, W2]`` normalised images of view 2.
            geom1: batched :class:`~scrl.ViewGeometry` of view 1 (batch shape ``[B]``); moved to
                the views' device if needed (keep it there to avoid a copy per step). Needed
                by box pooling; global pooling ignores it. Its recorded view size must be the
                views' (checked while it is on the CPU; see :func:`~scrl.geometry.check_view_size`).
            geom2: batched geometry of view 2.
            generator: optional ``torch.Generator`` on the views' device for box sampling.

        Returns:
            ``(loss, logs)``: float32 scalar loss with gradient; ``logs`` maps ``"loss"``,
            ``"valid_box_share"`` (fraction of valid rows, 1 without a mask) and ``"collapse_std"``
            (per-dimension std of the l2-normalised online projections, mean over dimensions;
            about ``1/sqrt(projection_dim)`` when healthy, 0 on collapse) to detached 0-dim
            tensors on the views' device. Nothing is read back to the host.
        """
        for name, view, geom in (("view1", view1, geom1), ("view2", view2, geom2)):
            if view.dim() != 4 or view.shape[1] != 3:
                raise ValueError(f"{name} must be a float [B, 3, H, W] image batch, got {list(view.shape)}")
            if view.dtype not in _VIEW_DTYPES:
                raise ValueError(
                    f"{name} must be float32, float16 or bfloat16 (normalised images; the trunk's own dtype under "
                    f"autocast), got {view.dtype}; normalise uint8 views with scrl.transforms.normalize_images, cast "
                    "float64 ones to float32"
                )
            if geom is not None:
                check_view_size(view, geom, name)
        if view1.shape[0] != view2.shape[0]:
            raise ValueError(f"view1 and view2 must hold the same number of images, got {view1.shape[0]} and {view2.shape[0]}")
        target = self.target.module
        online_maps = _maps(self.trunk, view1, view2)
        with torch.no_grad():
            target_maps = _maps(target["trunk"], view1, view2)
        rows = self.pool(online_maps, target_maps, geom1, geom2, generator)
        mask = None if rows.valid is None else torch.cat([rows.valid, rows.valid])
        z = self.projector(rows.online, mask)
        q1, q2 = self.predictor(z, mask).chunk(2)
        with torch.no_grad():
            z1, z2 = target["projector"](rows.target, mask).chunk(2)
        loss = scrl_loss(q1, z2, q2, z1, rows.valid)
        share = torch.ones((), device=loss.device) if rows.valid is None else rows.valid.float().mean()
        logs = {"loss": loss.detach(), "valid_box_share": share, "collapse_std": _masked_collapse_std(z, mask)}
        return loss, logs

    @torch.no_grad()
    def update_target(self, step: int, total_steps: int) -> float:
        """Move the target towards the online weights after optimiser step ``step``.

        Uses ``tau = cosine_tau(step, total_steps, tau_base)``: ``xi <- tau xi + (1 - tau) theta``.

        Args:
            step: index ``k`` of the optimiser step just taken, ``0 <= k <= total_steps``.
            total_steps: ``K``, optimiser steps of the whole run.

        Returns:
            The ``tau`` applied.
        """
        tau = cosine_tau(step, total_steps, self.tau_base)
        self.target.update(self._online_encoder(), tau)
        return tau

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """Online trunk weights under the key names of the model the trunk comes from.

        For a torchvision trunk they load into ``torchvision.models.get_model(arch)`` with
        ``strict=False`` (only the classifier, ``fc.*`` or ``classifier.*``, is missing); for a
        ``"timm:NAME"`` trunk into ``timm.create_model(NAME)`` likewise.
        """
        return self.trunk.backbone_state_dict()

    def extra_repr(self) -> str:
        return f"tau_base={self.tau_base}"


class SCRL(TwoViewModel):
    """Spatially Consistent Representation Learning (Roh et al., CVPR 2021).

    A :class:`TwoViewModel` with :class:`~scrl.pooling.BoxPairPool`: samples ``num_boxes``
    matched box pairs per image inside the overlap of the two views, pools them with RoIAlign
    on the online and target C5 maps, and regresses the online prediction of each box in one
    view on the target projection of the same box in the other view (valid pairs only).

    Args:
        trunk: a :class:`~scrl.Trunk`, a torchvision classifier of a supported family, or a name
            :func:`~scrl.trunk.create_trunk` builds (``"resnet50"``, ``"convnext_tiny"``,
            ``"timm:NAME"``, one given to :func:`~scrl.trunk.register_trunk`; random init).
        sampler: the :class:`~scrl.BoxPairSampler` to use; ``None`` builds
            ``BoxPairSampler(**sampler_options)``. Give one or the other, not both.
        roi_pooling: ``"exact"`` (default) pools each box where the trunk's cells are centred
            (``trunk.cell_offset``); ``"aligned"`` / ``"unaligned"`` use RoIAlign's own
            conventions, ``aligned=True`` / ``False``, as Detectron2 / the authors' code do (on a
            torchvision ResNet 15.5 px up-left / 0.5 px down-right of the box centre; see
            :class:`~scrl.RoIPairPool`). The same names as ``PretrainConfig.roi_pooling``.
        roi_output_size: RoIAlign output side, >= 1 (paper: 1); the projector sees
            ``channels * roi_output_size**2`` features.
        projector_hidden: hidden width of projector and predictor (paper: 4096).
        projection_dim: output width of projector and predictor (paper: 256).
        predictor_hidden: hidden width of the predictor if different from ``projector_hidden``.
        tau_base: target weight at step 0 of the cosine schedule (the paper: 0.97 for 200 and
            for 1000 epochs; the authors' released 1000-epoch config: 0.996).
        **sampler_options: :class:`~scrl.BoxPairSampler`'s arguments under its own names and
            defaults, checked by it: ``num_boxes`` (paper: 10), ``min_size`` (paper: 32 view
            pixels), ``iou_threshold`` (paper: 0.5; ``None`` disables it), ``jitter``, ``mode``
            (``"uniform"``, paper Eq. 1, or ``"grid"``), ``candidates_per_box``.

    Attributes:
        trunk, projector, predictor, target, pool: as in :class:`TwoViewModel`.
        sampler: the :class:`~scrl.BoxPairSampler` (``pool.sampler``).
        roi_pool: the :class:`~scrl.RoIPairPool` at the trunk's stride (``pool.roi_pool``).

    Example:
        >>> model = SCRL("resnet50", num_boxes=10, min_size=32)
        >>> loss, logs = model(view1, view2, geom1, geom2)
        >>> loss.backward(); optimizer.step(); optimizer.zero_grad()
        >>> model.update_target(step, total_steps)
    """

    def __init__(
        self,
        trunk: nn.Module | str = "resnet50",
        *,
        sampler: BoxPairSampler | None = None,
        roi_pooling: RoIPooling = "exact",
        roi_output_size: int = 1,
        projector_hidden: int = 4096,
        projection_dim: int = 256,
        predictor_hidden: int | None = None,
        tau_base: float = 0.97,
        **sampler_options: Any,
    ) -> None:
        if sampler is not None and sampler_options:
            raise ValueError(
                f"give either sampler or sampler options, not both; got sampler and {', '.join(sorted(sampler_options))}"
            )
        if not isinstance(roi_output_size, int) or roi_output_size < 1:
            raise ValueError(f"roi_output_size must be an integer >= 1, got {roi_output_size!r}")
        if sampler is None:
            sampler = BoxPairSampler(**sampler_options)
        trunk = as_trunk(trunk)
        pool = BoxPairPool.for_trunk(trunk, sampler, roi_output_size, roi_pooling)
        super().__init__(
            trunk, pool, projector_hidden=projector_hidden, projection_dim=projection_dim,
            predictor_hidden=predictor_hidden, tau_base=tau_base,
        )

    @property
    def sampler(self) -> BoxPairSampler:
        return self.pool.sampler

    @property
    def roi_pool(self) -> RoIPairPool:
        return self.pool.roi_pool


class BYOL(TwoViewModel):
    """Bootstrap Your Own Latent (Grill et al., 2020) on the same trunk, heads and call as :class:`SCRL`.

    A :class:`TwoViewModel` with :class:`~scrl.pooling.GlobalPool`: each view's whole feature
    map is averaged and the loss is :func:`~scrl.byol_loss`. Global pooling needs no
    geometries, so they may be omitted; given, they are ignored, and ``SCRL(...)`` and
    ``BYOL(...)`` swap in one line.

    Args:
        trunk: a :class:`~scrl.Trunk`, a torchvision classifier of a supported family, or a name
            :func:`~scrl.trunk.create_trunk` builds (``"resnet50"``, ``"convnext_tiny"``,
            ``"timm:NAME"``, one given to :func:`~scrl.trunk.register_trunk`; random init).
        projector_hidden: hidden width of projector and predictor (paper: 4096).
        projection_dim: output width of projector and predictor (paper: 256).
        predictor_hidden: hidden width of the predictor if different from ``projector_hidden``.
        tau_base: target weight at step 0 of the cosine schedule.

    Example:
        >>> model = BYOL("resnet50")
        >>> loss, logs = model(view1, view2)  # geometries optional
    """

    def __init__(
        self,
        trunk: nn.Module | str = "resnet50",
        *,
        projector_hidden: int = 4096,
        projection_dim: int = 256,
        predictor_hidden: int | None = None,
        tau_base: float = 0.996,
    ) -> None:
        super().__init__(
            trunk, GlobalPool(), projector_hidden=projector_hidden, projection_dim=projection_dim,
            predictor_hidden=predictor_hidden, tau_base=tau_base,
        )
