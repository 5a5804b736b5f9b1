"""A feature pyramid on any trunk, for torchvision's detectors (Faster R-CNN, Mask R-CNN, ...)."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from .trunk import as_trunk, evaluating

__all__ = ["FPNBackbone", "pyramid_stages"]

PYRAMID_STRIDES = (4, 8, 16, 32)


def pyramid_stages(body: nn.Module, size: int = 224) -> list[tuple[str, int, int]]:
    """The modules of ``body`` whose outputs end each resolution of the pyramid (strides 4 to 32).

    Runs ``body`` once on a ``size`` x ``size`` input (in eval mode, without gradients) and, for
    each stride of :data:`PYRAMID_STRIDES` it reaches, takes the last module to finish at that
    stride among the modules at most ``d`` levels below ``body``, for the smallest ``d`` at which
    they reach every one of these strides the body reaches: ``layer1 .. layer4`` for a ResNet,
    ``trunk_output.block1 .. block4`` for a RegNet, the stages of ``features`` for ConvNeXt,
    EfficientNet and MobileNetV3, ``model.stages.0 ..`` for a timm ConvNeXt (whose forward runs
    below ``model``), ``model.2, model.4, model.6`` and ``model`` for a YOLO backbone. A module
    that hands its input on (``nn.Identity``, an in-place activation) ends no stage.

    Returns:
        ``[(module name, channels, stride), ...]`` in increasing stride (strides the trunk never
        reaches are left out).
    """
    finished = [m for m in _finished_maps(body, size) if m[2] in PYRAMID_STRIDES]
    last = {stride: (name, channels, stride) for name, channels, stride in _shallowest(finished)}
    return [last[stride] for stride in PYRAMID_STRIDES if stride in last]


def _shallowest(finished: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The maps of the modules at most ``d`` levels deep, for the smallest ``d`` at which they reach
    every stride of ``finished``.

    Deeper modules end inner blocks, not stages; only a body whose stages lie deeper than its
    top levels (timm's, below ``model``) needs them.
    """
    reached = {stride for _, _, stride in finished}
    for depth in itertools.count():
        kept = [m for m in finished if m[0].count(".") <= depth]
        if {stride for _, _, stride in kept} == reached:
            return kept


def _finished_maps(body: nn.Module, size: int) -> list[tuple[str, int, int]]:
    """``(name, channels, stride)`` of every module of ``body`` that makes a new map, in the order they finish."""
    finished: list[tuple[str, int, int]] = []

    def keep(name: str, inputs: tuple, out: object) -> None:
        # A square probe gives square maps: other 4-d outputs (channels-last tokens) are no stage.
        is_map = isinstance(out, Tensor) and out.dim() == 4 and out.shape[-2] == out.shape[-1]
        if is_map and not any(out is x for x in inputs):
            finished.append((name, out.shape[1], size // out.shape[-1]))

    hooks = [module.register_forward_hook(lambda _m, inputs, out, name=name: keep(name, inputs, out))
             for name, module in body.named_modules() if name]
    try:
        with evaluating(body), torch.no_grad():
            body(torch.zeros(1, 3, size, size, device=next(body.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return finished


class _KeepOutput:
    """A stage's forward hook: its output goes to the capture its FPN has open, if any (the body may run elsewhere)."""

    def __init__(self, captures: list[dict[int, Tensor]], index: int) -> None:
        self.captures = captures
        self.index = index

    def __call__(self, _module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        if self.captures:
            self.captures[-1][self.index] = output


class FPNBackbone(nn.Module):
    """A trunk's feature stages with a feature pyramid on top, as torchvision's detectors take it.

    The stages (:func:`pyramid_stages`) are read with forward hooks while the trunk's body runs
    as it is, so any body works: torchvision's, timm's, a YOLO backbone, your own. The hooks
    stay on the stage modules and record only while this module's forward runs; a stage module
    replaced after construction (``nn.SyncBatchNorm.convert_sync_batchnorm``) is hooked again
    on the next forward. The whole body runs, so modules after the coarsest stage (a stride-64
    stage) run too and get no gradient (DistributedDataParallel then needs them frozen).

    Args:
        model: a :class:`~scrl.trunk.Trunk` (``create_trunk("timm:convnext_nano")``), a registered
            trunk name, or a torchvision classification CNN of a supported family (e.g. with
            pretrained weights loaded); its modules are reused.
        out_channels: channels of every pyramid level.

    Attributes:
        out_channels: for the detector heads.
        stages: ``[(module name, channels, stride), ...]`` the pyramid is built from.

    Raises:
        ValueError: ``out_channels`` below 1, or the trunk reaches none of the strides 4 to 32.

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
        if not self.stages:
            raise ValueError(f"the trunk's body reaches none of the strides {PYRAMID_STRIDES}: no stage for a pyramid")
        self.body = trunk.body
        self.fpn = FeaturePyramidNetwork(
            [channels for _, channels, _ in self.stages], out_channels, extra_blocks=LastLevelMaxPool(),
            norm_layer=nn.BatchNorm2d,
        )
        self.out_channels = out_channels
        # The hooks hold this list; each forward opens a capture on it and closes it, so no map outlives the call.
        self._captures: list[dict[int, Tensor]] = []
        self._hooked: list[nn.Module | None] = [None] * len(self.stages)
        self._hook_stages()

    def _hook_stages(self) -> None:
        """Hook the stage modules not hooked yet: all at first, later those replaced since."""
        for index, (name, _, _) in enumerate(self.stages):
            module = self.body.get_submodule(name)
            if module is not self._hooked[index]:
                module.register_forward_hook(_KeepOutput(self._captures, index))
                self._hooked[index] = module

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``x`` ``[B, 3, H, W]`` -> the pyramid's maps, finest first, plus a max-pooled coarsest level."""
        self._hook_stages()
        self._captures.append({})
        try:
            self.body(x)
        finally:
            taken = self._captures.pop()
        return self.fpn(OrderedDict((str(index), taken[index]) for index in range(len(self.stages))))
