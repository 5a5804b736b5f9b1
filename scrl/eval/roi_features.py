"""Box features of a frozen trunk: square-resized images, RoIAlign of every ground-truth box.

The RoI linear protocol (SCRL paper, Sec. 4.2.5) trains a classifier on the features that a
frozen trunk gives the ground-truth boxes of a detection dataset. The trunk is evaluated once
per image and the pooled features are cached, so the classifier trains in seconds.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import NamedTuple, Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..cell_centre import map_cell_geometry
from ..roi_pool import pool_boxes
from ..transforms import normalize_uint8

__all__ = ["RoIFeatures", "SquareBoxes", "adapted_trunk", "extract_roi_features", "frozen_copy"]


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


class SquareBoxes(Dataset):
    """Images of a box dataset resized to ``size`` x ``size``, with their boxes rescaled.

    Items: ``(pixels uint8 [3, size, size], boxes float32 [M, 4] (x0, y0, x1, y1) in resized
    pixels, labels int64 [M], dataset index)``. The aspect ratio is not kept, as in the paper's
    800 x 800 protocol; boxes follow the same anisotropic scaling exactly.

    Args:
        dataset: items ``(PIL image, boxes [M, 4] source pixels, labels [M])``.
        indices: which items to use.
        size: side of the square, >= 1.
        hflip: mirror every image (and its boxes) left-right.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], size: int, hflip: bool = False) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an integer >= 1 (pixels), got {size!r}")
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.size = size
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, int]:
        index = self.indices[i]
        image, boxes, labels = self.dataset[index]
        width, height = image.size
        pixels = TF.pil_to_tensor(image.convert("RGB").resize((self.size, self.size), Image.BILINEAR))
        scale = torch.tensor([self.size / width, self.size / height] * 2, dtype=torch.float32)
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale
        if self.hflip:
            pixels = pixels.flip(-1)
            boxes = torch.stack([self.size - boxes[:, 2], boxes[:, 1], self.size - boxes[:, 0], boxes[:, 3]], dim=1)
        return pixels, boxes, torch.as_tensor(labels, dtype=torch.int64).reshape(-1), index


def _collate(items: list[tuple[Tensor, Tensor, Tensor, int]]) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
    pixels = torch.stack([item[0] for item in items])
    boxes = [item[1] for item in items]
    labels = torch.cat([item[2] for item in items])
    image_index = torch.cat([torch.full((len(item[2]),), item[3], dtype=torch.int64) for item in items])
    return pixels, boxes, labels, image_index


def _loader(
    dataset: Dataset, indices: Sequence[int], size: int, batch_size: int, num_workers: int, hflip: bool = False
) -> DataLoader:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    return DataLoader(
        SquareBoxes(dataset, indices, size, hflip),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=torch.cuda.is_available(),
    )


def _device_of(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _plain_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``SyncBatchNorm`` by a ``BatchNorm2d`` with the same parameters and buffers.

    A probe runs on one process; SyncBatchNorm in train mode would wait for the other ranks.
    """
    if isinstance(module, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        state = module.state_dict()
        plain.load_state_dict(state)
        return plain.to(next(iter(state.values())).device) if state else plain
    for name, child in module.named_children():
        setattr(module, name, _plain_batchnorm(child))
    return module


def frozen_copy(trunk: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """A deep copy of ``trunk`` in eval mode without gradients (SyncBatchNorm made plain).

    DDP and ``torch.compile`` wrappers are removed; the original is never touched.
    """
    while isinstance(getattr(trunk, "module", None), nn.Module):
        trunk = trunk.module
    trunk = getattr(trunk, "_orig_mod", trunk)
    copied = _plain_batchnorm(copy.deepcopy(trunk))
    copied.requires_grad_(False).eval()
    return copied.to(device) if device is not None else copied


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def adapted_trunk(
    trunk: nn.Module,
    dataset: Dataset,
    indices: Sequence[int] | None = None,
    *,
    image_size: int = 800,
    batch_size: int = 16,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> nn.Module:
    """A frozen copy of ``trunk`` whose BatchNorm statistics are re-estimated on ``dataset``.

    The paper's RoI protocol starts BatchNorm's running statistics over on the evaluation
    data, to adapt to its unseen distribution (Table 10 footnote, appendix B). Here they are
    reset and re-estimated as exact averages over the given images at ``image_size`` (BN
    momentum ``None``), with the weights frozen; the copy is returned in eval mode.

    Args:
        trunk: the trunk (``Trunk``, or any module mapping ``[B, 3, H, W]`` to a feature map).
        dataset: box dataset (only the images are used).
        indices: images to adapt on (all when ``None``); use the training split only.
        image_size: square side the images are resized to, as for feature extraction.
        batch_size: images per forward pass, >= 2 (BatchNorm needs a batch).
        num_workers: DataLoader workers.
        device: where to run; the trunk's device when ``None``.
        autocast_dtype: e.g. ``torch.bfloat16`` to run under autocast on that device.
        channels_last: feed channels-last inputs.

    Returns:
        The adapted copy (eval mode, ``requires_grad=False``).
    """
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2 for BatchNorm statistics, got {batch_size!r}")
    device = torch.device(device) if device is not None else _device_of(trunk)
    copied = frozen_copy(trunk, device)
    norms = _batchnorms(copied)
    if not norms:
        return copied
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: every image counts equally
        bn.train()
    indices = list(range(len(dataset))) if indices is None else list(indices)
    if len(indices) < 2:
        raise ValueError(f"BatchNorm adaptation needs at least 2 images, got {len(indices)}")
    loader = _loader(dataset, indices, image_size, batch_size, num_workers)
    with torch.no_grad():
        for pixels, _, _, _ in loader:
            if pixels.shape[0] < 2:  # a last batch of one image has no batch statistics
                continue
            _forward(copied, pixels, device, autocast_dtype, channels_last)
    copied.eval()
    return copied


def _forward(
    trunk: nn.Module, pixels: Tensor, device: torch.device, autocast_dtype: torch.dtype | None, channels_last: bool
) -> Tensor:
    x = normalize_uint8(pixels.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    with context:
        return trunk(x)


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
    device = torch.device(device) if device is not None else _device_of(trunk)
    indices = list(range(len(dataset))) if indices is None else list(indices)
    captured: list[Tensor] = []
    hooks = []
    if stages is not None:
        if not stages:
            raise ValueError("stages must name at least one module, or be None for the trunk output")
        for module in _stage_modules(trunk, stages):
            hooks.append(module.register_forward_hook(lambda _m, _i, out: captured.append(out)))
    was_training = trunk.training
    trunk.eval()
    features, labels, image_index = [], [], []
    cells: list[tuple[int, float]] = []
    try:
        with torch.no_grad():
            for pixels, boxes, batch_labels, batch_index in _loader(
                dataset, indices, image_size, batch_size, num_workers, hflip
            ):
                captured.clear()
                output = _forward(trunk, pixels, device, autocast_dtype, channels_last)
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
        trunk.train(was_training)
    if not features:
        raise ValueError("indices selects no images")
    return RoIFeatures(torch.cat(features), torch.cat(labels), torch.cat(image_index))
