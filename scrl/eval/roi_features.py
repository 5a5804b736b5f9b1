"""Box features of a frozen trunk: RoIAlign of every ground-truth box on square-resized images.

The RoI linear protocol (SCRL paper, Sec. 4.2.5) trains a classifier on the features that a
frozen trunk gives the ground-truth boxes of a detection dataset. The trunk is evaluated once
per image (:class:`~scrl.data.SquareBoxes`) and the pooled features are cached, so the
classifier trains in seconds.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..cell_centre import map_cell_geometry
from ..data.square_boxes import square_box_loader
from ..roi_pool import pool_boxes
from ..trunk import evaluating
from .trunk_forward import forward_images, module_device

__all__ = ["RoIFeatures", "extract_roi_features"]


class RoIFeatures(NamedTuple):
    """Cached box features.

    Attributes:
        features: float32 ``[B, D]``, one row per ground-truth box.
        labels: int64 ``[B]``, the box's class.
        image_index: int64 ``[B]``, the dataset index of the image the box belongs to.
    """

    features: Tensor
    labels: Tensor
    image_index: Tensor


def _stage_modules(trunk: nn.Module, stages: Sequence[str]) -> list[nn.Module]:
    root = trunk.body if isinstance(getattr(trunk, "body", None), nn.Module) else trunk
    modules = []
    for name in stages:
        try:
            modules.append(root.get_submodule(name))
        except AttributeError as err:
            names = [n for n, _ in root.named_children()]
            raise ValueError(f"stages: no module {name!r} in the trunk; top-level modules are {names}") from err
    return modules


def extract_roi_features(
    trunk: nn.Module,
    dataset: Dataset,
    indices: Sequence[int] | None = None,
    *,
    image_size: int = 800,
    stages: Sequence[str] | None = None,
    output_size: int = 1,
    batch_size: int = 16,
    num_workers: int = 0,
    hflip: bool = False,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> RoIFeatures:
    """Features of every ground-truth box, pooled with RoIAlign on the frozen trunk.

    Each image is resized to ``image_size`` x ``image_size``, normalised with ImageNet
    statistics and passed through ``trunk`` in eval mode (its mode is restored after). Boxes
    are pooled where the map's cells are centred (:func:`~scrl.roi_pool.pool_boxes`), as in
    pretraining.

    Args:
        trunk: a ``Trunk`` (uses ``trunk.stride`` and ``trunk.cell_offset``) or any module
            returning a feature map (stride read off the map size, cell offset measured).
        dataset: items ``(PIL image, boxes [M, 4] xyxy source pixels, labels [M])``.
        indices: images to use (all when ``None``).
        image_size: square side in pixels (paper: 800).
        stages: names of modules in ``trunk.body`` (e.g. ``("layer3", "layer4")``) whose
            outputs are pooled and concatenated; ``None`` pools the trunk's output (C5).
            Strides of named stages are read off their map size (nearest power of two), their
            cell offsets measured once (:func:`~scrl.cell_centre.measure_cell_offset`).
        output_size: RoIAlign bins per side (1: the box's mean feature; larger keeps the
            layout inside the box, ``D`` grows by ``output_size**2``).
        batch_size: images per forward pass.
        num_workers: DataLoader workers for decoding and resizing.
        hflip: mirror images and boxes (a cheap second set of features for training).
        device: where to run; the trunk's device when ``None``.
        autocast_dtype: e.g. ``torch.bfloat16`` for autocast on accelerators.
        channels_last: feed channels-last inputs.

    Returns:
        :class:`RoIFeatures` on the CPU: ``features`` float32 ``[B, D]`` (``D`` = channels of
        the pooled maps times ``output_size**2``), ``labels`` ``[B]``, ``image_index`` ``[B]``.

    Example:
        >>> trunk = adapted_trunk(resnet_trunk("resnet18"), ds, train_idx, image_size=256)
        >>> feats = extract_roi_features(trunk, ds, test_idx, image_size=256)
        >>> feats.features.shape                      # doctest: +SKIP
        torch.Size([812, 512])
    """
    if not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be an integer >= 1, got {output_size!r}")
    if stages is not None and not stages:
        raise ValueError("stages must name at least one module, or be None for the trunk output")
    device = module_device(trunk, device)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    captured: list[Tensor] = []
    hooks = []
    if stages is not None:
        for module in _stage_modules(trunk, stages):
            hooks.append(module.register_forward_hook(lambda _m, _i, out: captured.append(out)))
    features, labels, image_index = [], [], []
    cells: list[tuple[int, float]] = []
    try:
        with evaluating(trunk), torch.no_grad():
            for pixels, boxes, batch_labels, batch_index in square_box_loader(
                dataset, indices, image_size, batch_size=batch_size, num_workers=num_workers, hflip=hflip
            ):
                captured.clear()
                output = forward_images(trunk, pixels, device, autocast_dtype, channels_last)
                maps = captured if stages is not None else [output]
                if not cells:  # where the cells of each pooled map sit, found once
                    names = stages if stages is not None else [None]
                    cells = [map_cell_geometry(trunk, image_size, m.shape[-1], n) for m, n in zip(maps, names)]
                pooled = [
                    pool_boxes(fmap.float(), boxes, spatial_scale=1.0 / stride, output_size=output_size, cell_offset=offset)
                    for fmap, (stride, offset) in zip(maps, cells)
                ]
                features.append(torch.cat(pooled, dim=1).cpu())
                labels.append(batch_labels)
                image_index.append(batch_index)
    finally:
        for hook in hooks:
            hook.remove()
    if not features:
        raise ValueError("indices selects no images")
    return RoIFeatures(torch.cat(features), torch.cat(labels), torch.cat(image_index))
