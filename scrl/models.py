"""SCRL and BYOL as ``nn.Module``s with one shared call: ``loss, logs = model(view1, view2, geom1, geom2)``.

Both hold an online trunk, projector and predictor and a momentum target (trunk + projector),
and differ only in how they pool the feature maps: SCRL pools matched box pairs with RoIAlign
(paper Sec. 3), BYOL pools each whole map.

One step, for both:
    * The online trunk sees both views in ONE call on the ``2B`` concatenated batch when the
      views have equal shapes (cheaper, and its BatchNorm statistics cover both views, as
      common BYOL practice); views of different shapes go through it one after the other.
      The target trunk does the same under ``torch.no_grad()``.
    * The online projector and predictor and the target projector each see the rows of both
      views in one call (``2M`` rows).
    * SCRL keeps static shapes: invalid box slots go through the heads too. Their all-zero
      boxes pool to zero vectors, which would skew the heads' BatchNorm statistics by an amount
      that varies with the share of valid boxes, so the heads take the validity mask and
      normalise with statistics of the valid rows only (:class:`~scrl.MLPHead`). The loss and
      the logs ignore invalid rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_sampler import DEFAULT_CANDIDATES_PER_BOX, BoxPairSampler, SamplingMode
from .geometry import ViewGeometry
from .losses import byol_loss, scrl_loss
from .mlp_head import MLPHead
from .momentum import MomentumTarget
from .train.schedule import cosine_tau
from .roi_pool import RoIPairPool
from .trunk import Trunk, as_trunk

__all__ = ["SCRL", "BYOL"]


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


class _TwoViewModel(nn.Module):
    """What SCRL and BYOL share: trunk, heads, momentum target, the step, the target update.

    Subclasses implement :meth:`_pool` and :meth:`_loss`.
    """

    def __init__(
        self,
        trunk: nn.Module | str,
        pooled_dim_per_channel: int,
        projector_hidden: int,
        projection_dim: int,
        predictor_hidden: int | None,
        tau_base: float,
    ) -> None:
        super().__init__()
        if not 0.0 <= tau_base <= 1.0:
            raise ValueError(f"tau_base must be in [0, 1] (weight kept on the target), got {tau_base!r}")
        self.trunk: Trunk = as_trunk(trunk)
        self.projector = MLPHead(self.trunk.channels * pooled_dim_per_channel, projector_hidden, projection_dim)
        self.predictor = MLPHead(projection_dim, predictor_hidden or projector_hidden, projection_dim)
        self.target = MomentumTarget(self._online_encoder())
        self.tau_base = tau_base

    def _online_encoder(self) -> nn.ModuleDict:
        """The online modules the target follows, in the target's structure (not registered)."""
        return nn.ModuleDict({"trunk": self.trunk, "projector": self.projector})

    @staticmethod
    def _maps(trunk: nn.Module, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        if view1.shape == view2.shape:
            return trunk(torch.cat([view1, view2])).chunk(2)
        return trunk(view1), trunk(view2)

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
                the views' device if needed (keep it there to avoid a copy per step).
            geom2: batched geometry of view 2.
            generator: optional ``torch.Generator`` on the views' device for box sampling.

        Returns:
            ``(loss, logs)``: float32 scalar loss with gradient; ``logs`` maps ``"loss"``,
            ``"valid_share"`` (fraction of valid box slots, 1 for BYOL) and ``"collapse_std"``
            (per-dimension std of the l2-normalised online projections, mean over dimensions;
            about ``1/sqrt(projection_dim)`` when healthy, 0 on collapse) to detached 0-dim
            tensors on the views' device. Nothing is read back to the host.
        """
        for name, view in (("view1", view1), ("view2", view2)):
            if view.dim() != 4 or view.shape[1] != 3:
                raise ValueError(f"{name} must be a float [B, 3, H, W] image batch, got {list(view.shape)}")
        if view1.shape[0] != view2.shape[0]:
            raise ValueError(f"view1 and view2 must hold the same number of images, got {view1.shape[0]} and {view2.shape[0]}")
        target = self.target.module
        online_maps = self._maps(self.trunk, view1, view2)
        with torch.no_grad():
            target_maps = self._maps(target["trunk"], view1, view2)
        online_rows, target_rows, valid = self._pool(online_maps, target_maps, geom1, geom2, generator)
        mask = None if valid is None else torch.cat([valid, valid])
        z = self.projector(online_rows, mask)
        q1, q2 = self.predictor(z, mask).chunk(2)
        with torch.no_grad():
            z1, z2 = target["projector"](target_rows, mask).chunk(2)
        loss = self._loss(q1, z2, q2, z1, valid)
        share = torch.ones((), device=loss.device) if valid is None else valid.float().mean()
        logs = {"loss": loss.detach(), "valid_share": share, "collapse_std": _masked_collapse_std(z, mask)}
        return loss, logs

    def _pool(
        self,
        online_maps: tuple[Tensor, Tensor],
        target_maps: tuple[Tensor, Tensor],
        geom1: ViewGeometry | None,
        geom2: ViewGeometry | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(online rows [2M, F], target rows [2M, F], valid [M] or None)``, view-1 rows first."""
        raise NotImplementedError

    def _loss(self, q1: Tensor, z2: Tensor, q2: Tensor, z1: Tensor, valid: Tensor | None) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def update_target(self, step: int, total_steps: int) -> None:
        """Move the target towards the online weights after optimiser step ``step``.

        Uses ``tau = cosine_tau(step, total_steps, tau_base)``: ``xi <- tau xi + (1 - tau) theta``.

        Args:
            step: index ``k`` of the optimiser step just taken, ``0 <= k <= total_steps``.
            total_steps: ``K``, optimiser steps of the whole run.
        """
        self.target.update(self._online_encoder(), cosine_tau(step, total_steps, self.tau_base))

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """Online trunk weights; for ResNet trunks with torchvision key names (``conv1.weight``, ...).

        Load with ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` (only
        ``fc.*`` is missing).
        """
        return self.trunk.body.state_dict()

    def extra_repr(self) -> str:
        return f"tau_base={self.tau_base}"


class SCRL(_TwoViewModel):
    """Spatially Consistent Representation Learning (Roh et al., CVPR 2021).

    Samples ``num_boxes`` matched box pairs per image inside the overlap of the two views,
    pools them with RoIAlign on the online and target C5 maps, and regresses the online
    prediction of each box in one view on the target projection of the same box in the other
    view (:func:`~scrl.scrl_loss`, symmetrised, valid pairs only).

    Args:
        trunk: a :class:`~scrl.Trunk`, a torchvision ResNet, or ``"resnet18" | "resnet34" |
            "resnet50" | "resnet101"`` (random init).
        num_boxes: box pairs per image ``K`` (paper: 10).
        min_size: smallest box side in view pixels (paper: 32, one C5 cell).
        iou_threshold: greedy IoU rejection threshold (paper: 0.5); ``None`` disables it.
        box_jitter: jitter ratio of the view-2 boxes (paper ablation; 0 = off).
        box_mode: ``"uniform"`` (paper Eq. 1) or ``"grid"`` (authors' configs).
        candidates_per_box: box candidates drawn per requested box before IoU rejection (see
            :class:`~scrl.BoxPairSampler`).
        projector_hidden: hidden width of projector and predictor (paper: 4096).
        projection_dim: output width of projector and predictor (paper: 256).
        predictor_hidden: hidden width of the predictor if different from ``projector_hidden``.
        tau_base: target weight at step 0 of the cosine schedule (the paper: 0.97 for 200 and
            for 1000 epochs; the authors' released 1000-epoch config: 0.996).
        roi_aligned: ``None`` (default) pools each box where the trunk's cells are centred
            (``trunk.cell_offset``); ``True`` / ``False`` use RoIAlign's own conventions as
            Detectron2 / the authors' code do (on a torchvision ResNet 15.5 px up-left / 0.5 px
            down-right of the box centre; see :class:`~scrl.RoIPairPool`).
        roi_output_size: RoIAlign output side (paper: 1); the projector sees
            ``channels * roi_output_size**2`` features.

    Attributes:
        trunk, projector, predictor: the online network. target: :class:`~scrl.MomentumTarget`
        holding ``module["trunk"]`` and ``module["projector"]``. sampler:
        :class:`~scrl.BoxPairSampler`. roi_pool: :class:`~scrl.RoIPairPool`.

    Example:
        >>> model = SCRL("resnet50")
        >>> loss, logs = model(view1, view2, geom1, geom2)
        >>> loss.backward(); optimizer.step(); optimizer.zero_grad()
        >>> model.update_target(step, total_steps)
    """

    def __init__(
        self,
        trunk: nn.Module | str = "resnet50",
        *,
        num_boxes: int = 10,
        min_size: float = 32.0,
        iou_threshold: float | None = 0.5,
        box_jitter: float = 0.0,
        box_mode: SamplingMode = "uniform",
        candidates_per_box: int = DEFAULT_CANDIDATES_PER_BOX,
        projector_hidden: int = 4096,
        projection_dim: int = 256,
        predictor_hidden: int | None = None,
        tau_base: float = 0.97,
        roi_aligned: bool | None = None,
        roi_output_size: int = 1,
    ) -> None:
        if not isinstance(roi_output_size, int) or roi_output_size < 1:
            raise ValueError(f"roi_output_size must be an integer >= 1, got {roi_output_size!r}")
        super().__init__(trunk, roi_output_size**2, projector_hidden, projection_dim, predictor_hidden, tau_base)
        self.sampler = BoxPairSampler(num_boxes, min_size, iou_threshold, box_jitter, box_mode, candidates_per_box)
        self.roi_pool = RoIPairPool(
            self.trunk.stride, roi_output_size, aligned=roi_aligned, cell_offset=self.trunk.cell_offset
        )

    def _pool(
        self,
        online_maps: tuple[Tensor, Tensor],
        target_maps: tuple[Tensor, Tensor],
        geom1: ViewGeometry | None,
        geom2: ViewGeometry | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        batch = online_maps[0].shape[0]
        for name, geom in (("geom1", geom1), ("geom2", geom2)):
            if not isinstance(geom, ViewGeometry) or geom.crop.shape != (batch, 4):
                got = list(geom.crop.shape) if isinstance(geom, ViewGeometry) else type(geom).__name__
                raise ValueError(f"{name} must be a ViewGeometry batch with crop [B={batch}, 4], got {got}")
        device = online_maps[0].device
        pairs = self.sampler(geom1.to(device), geom2.to(device), generator=generator)
        online1, online2, valid = self.roi_pool(*online_maps, pairs)
        target1, target2, _ = self.roi_pool(*target_maps, pairs)
        return torch.cat([online1, online2]), torch.cat([target1, target2]), valid

    def _loss(self, q1: Tensor, z2: Tensor, q2: Tensor, z1: Tensor, valid: Tensor | None) -> Tensor:
        return scrl_loss(q1, z2, q2, z1, valid)


class BYOL(_TwoViewModel):
    """Bootstrap Your Own Latent (Grill et al., 2020) on the same trunk, heads and call as :class:`SCRL`.

    Pools each view's whole feature map (global average) and applies :func:`~scrl.byol_loss`;
    the geometries are accepted and ignored, so ``SCRL(...)`` and ``BYOL(...)`` swap in one line.

    Args:
        trunk: a :class:`~scrl.Trunk`, a torchvision ResNet, or a ResNet name (random init).
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
        super().__init__(trunk, 1, projector_hidden, projection_dim, predictor_hidden, tau_base)

    def _pool(
        self,
        online_maps: tuple[Tensor, Tensor],
        target_maps: tuple[Tensor, Tensor],
        geom1: ViewGeometry | None,
        geom2: ViewGeometry | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        def pool(maps: tuple[Tensor, Tensor]) -> Tensor:
            return torch.cat([m.mean(dim=(2, 3)) for m in maps])

        return pool(online_maps), pool(target_maps), None

    def _loss(self, q1: Tensor, z2: Tensor, q2: Tensor, z1: Tensor, valid: Tensor | None) -> Tensor:
        return byol_loss(q1, z2, q2, z1)
