"""A feature pyramid on any supported trunk, for torchvision's detectors (Faster R-CNN, Mask R-CNN, ...)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from .trunk import as_trunk, evaluating

__all__ = ["FPNBackbone", "pyramid_stages"]

PYRAMID_STRIDES = (4, 8, 16, 32)


def pyramid_stages(body: nn.Module, size: int = 224) -> list[tuple[str, int, int]]:
    """The modules of ``body`` whose outputs end each resolution of the pyramid (strides 4 to 32).

    Runs ``body`` once on a ``size`` x ``size`` input (in eval mode, without gradients) and, for
    each stride of :data:`PYRAMID_STRIDES` it reaches, takes the last module (of the top two
    levels of ``body``) to finish at that stride: ``layer1 .. layer4`` for a ResNet,
    ``trunk_output.block1 .. block4`` for a RegNet, the stages of ``features`` for ConvNeXt,
    EfficientNet and MobileNetV3.

    Returns:
        ``[(module name, channels, stride), ...]`` in increasing stride (strides the trunk never
        reaches are left out).
    """
    finished: list[tuple[str, int, int]] = []
    hooks = []
    for name, module in body.named_modules():
        if name and name.count(".") <= 1:
            hooks.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: finished.append((name, out.shape[1], size // out.shape[-1]))
                if isinstance(out, Tensor) and out.dim() == 4 else None
            ))
    try:
        with evaluating(body), torch.no_grad():
            body(torch.zeros(1, 3, size, size, device=next(body.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    last = {stride: (name, channels, stride) for name, channels, stride in finished if stride in PYRAMID_STRIDES}
    return [last[stride] for stride in PYRAMID_STRIDES if stride in last]


class FPNBackbone(nn.Module):
    """A torchvision classifier's feature stages with a feature pyramid on top, as torchvision's detectors take it.

    Args:
        model: a torchvision classification CNN of a supported family (e.g. with pretrained
            weights loaded; its modules are reused), its trunk
            (``create_trunk("convnext_tiny", weights="DEFAULT")``) or its name
            (:func:`scrl.trunk.supported_archs`).
        out_channels: channels of every pyramid level.

    Attributes:
        out_channels: for the detector heads.
        stages: ``[(module name, channels, stride), ...]`` the pyramid is built from.

    Example:
        >>> backbone = FPNBackbone(torchvision.models.convnext_tiny())
        >>> detector = torchvision.models.detection.FasterRCNN(backbone, num_classes=91)
    """

    def __init__(self, model: nn.Module | str, out_channels: int = 256) -> None:
        super().__init__()
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be an integer >= 1, got {out_channels!r}")
        trunk = as_trunk(model)
        self.stages = pyramid_stages(trunk.body)
        self.body = create_feature_extractor(trunk.body, {name: str(i) for i, (name, _, _) in enumerate(self.stages)})
        self.fpn = FeaturePyramidNetwork(
            [channels for _, channels, _ in self.stages], out_channels, extra_blocks=LastLevelMaxPool(),
            norm_layer=nn.BatchNorm2d,
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``x`` ``[B, 3, H, W]`` -> the pyramid's maps, finest first, plus a max-pooled coarsest level."""
        return self.fpn(self.body(x))
