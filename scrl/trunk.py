"""Trunks: the encoder f that maps an image batch to its last feature map (C5 for a ResNet).

SCRL pools boxes on this map, BYOL pools it globally. Both need its stride (input pixels per
feature cell) and its number of channels; SCRL also needs where each cell is centred in the
input, so that a box is pooled where the trunk really looks (:mod:`scrl.cell_centre`).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torchvision
from torch import Tensor, nn

from .cell_centre import measure_cell_offset

__all__ = ["Trunk", "resnet_trunk", "as_trunk", "RESNET_ARCHS"]

RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")


class Trunk(nn.Module):
    """A feature extractor with a declared output stride, channel count and cell centres.

    Args:
        body: any module mapping ``[B, 3, H, W]`` images to a ``[B, channels, H', W']`` feature
            map with ``H' = H / stride`` (rounded as the layers round).
        stride: input pixels per feature-map cell, >= 1 (32 for a ResNet's C5).
        channels: channels of the feature map, >= 1.
        cell_offset: cell ``i`` of the map is centred at ``stride * i + cell_offset`` input
            pixels (pixel-edge coordinates); ``None`` measures it
            once with :func:`~scrl.cell_centre.measure_cell_offset`.

    Example:
        >>> body = nn.Sequential(nn.Conv2d(3, 64, 8, stride=8), nn.ReLU())
        >>> trunk = Trunk(body, stride=8, channels=64)
        >>> trunk(torch.randn(2, 3, 64, 64)).shape, trunk.cell_offset
        (torch.Size([2, 64, 8, 8]), 4.0)
    """

    def __init__(self, body: nn.Module, stride: int, channels: int, cell_offset: float | None = None) -> None:
        super().__init__()
        if not isinstance(body, nn.Module):
            raise ValueError(f"body must be an nn.Module, got {type(body).__name__}")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an integer >= 1 (input pixels per feature cell), got {stride!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        if cell_offset is None:
            cell_offset = measure_cell_offset(body, stride)
        if not isinstance(cell_offset, (int, float)) or not math.isfinite(cell_offset):
            raise ValueError(f"cell_offset must be a finite number of input pixels, got {cell_offset!r}")
        self.body = body
        self.stride = stride
        self.channels = channels
        self.cell_offset = float(cell_offset)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` float ``[B, 3, H, W]`` -> feature map ``[B, channels, H / stride, W / stride]``."""
        return self.body(x)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, channels={self.channels}, cell_offset={self.cell_offset}"


def resnet_trunk(arch: str | torchvision.models.ResNet) -> Trunk:
    """A torchvision ResNet without its global pool and classifier, returning C5.

    ``trunk.body`` is an ``nn.Sequential`` of the ResNet's own modules named as in torchvision
    (``conv1, bn1, relu, maxpool, layer1 .. layer4``), so ``trunk.body.state_dict()`` loads
    straight into ``torchvision.models.resnet50()`` (with ``strict=False`` for the missing fc).

    Args:
        arch: one of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` (built with
            random weights, ``weights=None``), or a ``torchvision.models.ResNet`` instance whose
            modules are reused (not copied).

    Returns:
        :class:`Trunk` with ``stride=32``, ``channels`` 512 (resnet18/34) or 2048 (resnet50/101)
        and ``cell_offset=0.5``: each stride-2 stage (7x7 conv with padding 3, padded 3x3
        max-pool, 3x3 convs with padding 1, 1x1 stride-2 shortcuts) puts output ``j`` over input
        index ``2j``, so C5 cell ``i`` is centred on pixel ``32i``, at ``32i + 0.5``.

    Example:
        >>> trunk = resnet_trunk("resnet18")
        >>> trunk(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 512, 2, 2])
    """
    if isinstance(arch, str):
        if arch not in RESNET_ARCHS:
            raise ValueError(f"arch must be one of {RESNET_ARCHS} or a torchvision ResNet, got {arch!r}")
        resnet = getattr(torchvision.models, arch)(weights=None)
    elif isinstance(arch, torchvision.models.ResNet):
        resnet = arch
    else:
        raise ValueError(f"arch must be one of {RESNET_ARCHS} or a torchvision ResNet, got {type(arch).__name__}")
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    body = nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in names))
    return Trunk(body, stride=32, channels=resnet.fc.in_features, cell_offset=0.5)


def as_trunk(trunk: nn.Module | str) -> Trunk:
    """``trunk`` itself if it is a :class:`Trunk`, else :func:`resnet_trunk` of the name or ResNet."""
    if isinstance(trunk, Trunk):
        return trunk
    if isinstance(trunk, (str, torchvision.models.ResNet)):
        return resnet_trunk(trunk)
    raise ValueError(
        f"trunk must be a Trunk, a torchvision ResNet or one of {RESNET_ARCHS}, got {type(trunk).__name__}; "
        "wrap other modules as Trunk(module, stride=..., channels=...) (cell_offset is measured if not given)"
    )

