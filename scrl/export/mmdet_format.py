"""Trunk weights for MMDetection: its backbones' key names, a checkpoint for ``init_cfg``, and the config that matches.

MMDetection is not needed: the checkpoint is checked against the parameter names MMDetection's
``ResNet``, ``ResNeXt`` and ``RegNet`` (and mmpretrain's ``ConvNeXt``) give themselves, generated
here from their block counts, and against their channel widths; where MMDetection is installed
the backbone is also built and loaded strictly.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..runtime.checkpoint import save_checkpoint, write_atomically
from ..trunk import TIMM_PREFIX
from .detectron2_format import DETECTRON2_PIXEL_MEAN, DETECTRON2_PIXEL_STD
from .source import Source, load_source, resnet_arch, source_arch
from .torchvision_format import to_torchvision
from .verify import check_loaded

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_OUT_INDICES = (0, 1, 2, 3)
# Fine-tuning as in the paper: every layer trained, BatchNorm synchronised across GPUs and updated.
_BN_TRAINING = dict(frozen_stages=-1, norm_cfg=dict(type="SyncBN", requires_grad=True), norm_eval=False, style="pytorch")
# MMDetection's ResNet.arch_settings: blocks per stage by depth.
_RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# torchvision regnet_x_* -> MMDetection RegNet ``arch``, blocks and channels per stage. Where torchvision's
# parameters give MMDetection's generator the same layout, its own name or those parameters; regnet_x_400mf's
# last stage is 400 channels in torchvision but 384 in MMDetection's regnetx_400mf (the two round a half
# differently), so it gets parameters that MMDetection's generator turns into torchvision's layout.
_REGNET_X: dict[str, tuple[str | dict[str, Any], tuple[int, ...], tuple[int, ...]]] = {
    "regnet_x_400mf": (dict(w0=24, wa=24.8, wm=2.55, group_w=16, depth=22, bot_mul=1.0), (1, 2, 7, 12), (32, 64, 160, 400)),
    "regnet_x_800mf": ("regnetx_800mf", (1, 3, 7, 5), (64, 128, 288, 672)),
    "regnet_x_1_6gf": ("regnetx_1.6gf", (2, 4, 10, 2), (72, 168, 408, 912)),
    "regnet_x_3_2gf": ("regnetx_3.2gf", (2, 6, 15, 2), (96, 192, 432, 1008)),
    "regnet_x_8gf": ("regnetx_8.0gf", (2, 5, 15, 1), (80, 240, 720, 1920)),
    "regnet_x_16gf": (dict(w0=216, wa=55.59, wm=2.1, group_w=128, depth=22, bot_mul=1.0), (2, 6, 13, 1), (256, 512, 896, 2048)),
    "regnet_x_32gf": (dict(w0=320, wa=69.86, wm=2.0, group_w=168, depth=23, bot_mul=1.0), (2, 7, 13, 1), (336, 672, 1344, 2520)),
}
# torchvision convnext_* -> mmpretrain ConvNeXt.arch_settings: arch, blocks and channels per stage.
_CONVNEXTS = {
    "convnext_tiny": ("tiny", (3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ("small", (3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ("base", (3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ("large", (3, 3, 27, 3), (192, 384, 768, 1536)),
}
_CONVNEXT_BLOCK = {"0": "depthwise_conv", "2": "norm", "3": "pointwise_conv1", "5": "pointwise_conv2"}  # torchvision's block.N
_RESNEXT = re.compile(r"resnext(50|101|152)_(\d+)x(\d+)d")


@dataclass(frozen=True)
class _Layout:
    """What MMDetection builds for one torchvision trunk."""

    family: str  # "resnet" (ResNet, ResNeXt), "regnet" or "convnext"
    backbone: dict[str, Any]  # the config's backbone, but for init_cfg
    blocks: tuple[int, ...]
    widths: tuple[int, ...]  # channels out of each stage
    convs: int = 3  # convolutions per residual block: 2 in basic blocks
    stem: int = 64
    strides: tuple[int, ...] = (1, 2, 2, 2)


def _layout(arch: str) -> _Layout:
    """MMDetection's backbone for the torchvision trunk ``arch``; a ValueError naming what is allowed for others."""
    resnext = _RESNEXT.fullmatch(arch)
    if arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        depth = int(arch.removeprefix("resnet"))
        basic = depth < 50
        backbone = dict(type="ResNet", depth=depth, num_stages=4, out_indices=_OUT_INDICES, **_BN_TRAINING)
        widths = tuple(64 * 2**i * (1 if basic else 4) for i in range(4))
        return _Layout("resnet", backbone, _RESNET_BLOCKS[depth], widths, convs=2 if basic else 3)
    if resnext:
        depth, groups, base_width = (int(g) for g in resnext.groups())
        backbone = dict(
            type="ResNeXt", depth=depth, groups=groups, base_width=base_width, num_stages=4, out_indices=_OUT_INDICES, **_BN_TRAINING
        )
        return _Layout("resnet", backbone, _RESNET_BLOCKS[depth], (256, 512, 1024, 2048))
    if arch in _REGNET_X:
        regnet, blocks, widths = _REGNET_X[arch]
        backbone = dict(type="RegNet", arch=copy.deepcopy(regnet), out_indices=_OUT_INDICES, **_BN_TRAINING)
        return _Layout("regnet", backbone, blocks, widths, stem=32, strides=(2, 2, 2, 2))
    if arch in _CONVNEXTS:
        name, blocks, widths = _CONVNEXTS[arch]
        # frozen_stages=0 freezes nothing in mmpretrain; gap_before_final_norm=False keeps the maps (not pooled vectors).
        backbone = dict(
            type="mmpretrain.ConvNeXt", arch=name, out_indices=list(_OUT_INDICES), frozen_stages=0, gap_before_final_norm=False
        )
        return _Layout("convnext", backbone, blocks, widths)
    raise ValueError(_unsupported(arch))


def _unsupported(arch: str) -> str:
    if arch.startswith("regnet_y_"):
        why = "MMDetection's RegNet has no squeeze-and-excitation, which torchvision's regnet_y_* have; "
    elif arch.startswith("wide_resnet"):
        why = "MMDetection's ResNet has no wider bottlenecks; "
    elif arch.startswith(TIMM_PREFIX):
        why = "a timm trunk exports with to_timm; "
    else:
        why = ""
    return (
        f"arch {arch!r} has no MMDetection export: {why}it takes torchvision's resnet18/34/50/101/152, "
        f"resnext50_32x4d/resnext101_32x8d/resnext101_64x4d, {', '.join(_REGNET_X)} and {', '.join(_CONVNEXTS)}"
    )


def _mmdet_key(family: str, key: str) -> str:
    """MMDetection's name for a torchvision trunk key of ``family``.

    ResNet and ResNeXt: the same names (``conv1``, ``bn1``, ``layer{i}.{j}.conv{k}``, ``.bn{k}``,
    ``.downsample.{0,1}``). RegNet: ``stem.{0,1}`` -> ``conv1`` / ``bn1``;
    ``trunk_output.block{i}.block{i}-{j}.f.{a,b,c}.{0,1}`` -> ``layer{i}.{j}.conv{1,2,3}`` / ``bn{1,2,3}``;
    ``....proj.{0,1}`` -> ``layer{i}.{j}.downsample.{0,1}``. ConvNeXt (mmpretrain):
    ``features.0.{0,1}`` -> ``downsample_layers.0.{0,1}``; ``features.{2,4,6}.{n}`` ->
    ``downsample_layers.{1,2,3}.{n}``; ``features.{1,3,5,7}.{j}.block.{0,2,3,5}`` ->
    ``stages.{0..3}.{j}.{depthwise_conv,norm,pointwise_conv1,pointwise_conv2}``; ``....layer_scale`` -> ``....gamma``.
    """
    if family == "resnet":
        return key
    if family == "regnet":
        stem = re.fullmatch(r"stem\.([01])\.(\w+)", key)
        if stem:
            return f"{'conv1' if stem[1] == '0' else 'bn1'}.{stem[2]}"
        block = re.fullmatch(r"trunk_output\.block([1-4])\.block\1-(\d+)\.(?:proj|f\.([abc]))\.([01])\.(\w+)", key)
        if block:
            prefix = f"layer{block[1]}.{block[2]}."
            if block[3] is None:
                return prefix + f"downsample.{block[4]}.{block[5]}"
            return prefix + f"{'conv' if block[4] == '0' else 'bn'}{'abc'.index(block[3]) + 1}.{block[5]}"
    if family == "convnext":
        down = re.fullmatch(r"features\.([0246])\.([01])\.(\w+)", key)
        if down:
            return f"downsample_layers.{int(down[1]) // 2}.{down[2]}.{down[3]}"
        block = re.fullmatch(r"features\.([1357])\.(\d+)\.(?:layer_scale|block\.([0235])\.(\w+))", key)
        if block:
            prefix = f"stages.{int(block[1]) // 2}.{block[2]}."
            return prefix + (f"{_CONVNEXT_BLOCK[block[3]]}.{block[4]}" if block[3] else "gamma")
    raise ValueError(f"{key!r} is not a torchvision {family} trunk key")


def _expected_keys(layout: _Layout) -> set[str]:
    """Every parameter and buffer name of the MMDetection backbone, following its naming code."""
    if layout.family == "convnext":
        keys = {f"downsample_layers.{i}.{n}.{p}" for i in range(4) for n in (0, 1) for p in ("weight", "bias")}
        for i, count in enumerate(layout.blocks):
            for j in range(count):
                keys |= {f"stages.{i}.{j}.{m}.{p}" for m in _CONVNEXT_BLOCK.values() for p in ("weight", "bias")}
                keys.add(f"stages.{i}.{j}.gamma")
        return keys | {f"norm{i}.{p}" for i in _OUT_INDICES for p in ("weight", "bias")}
    keys = {"conv1.weight", *(f"bn1.{p}" for p in _BN)}
    inplanes = layout.stem
    for i, (count, width, stride) in enumerate(zip(layout.blocks, layout.widths, layout.strides), start=1):
        for j in range(count):
            for k in range(1, layout.convs + 1):
                keys |= {f"layer{i}.{j}.conv{k}.weight", *(f"layer{i}.{j}.bn{k}.{p}" for p in _BN)}
        if stride != 1 or inplanes != width:  # MMDetection's ResLayer: a projection shortcut on the first block
            keys |= {f"layer{i}.0.downsample.0.weight", *(f"layer{i}.0.downsample.1.{p}" for p in _BN)}
        inplanes = width
    return keys


def _check_widths(layout: _Layout, state: Mapping[str, Tensor]) -> None:
    """Each stage's output channels are those MMDetection builds for the config's architecture."""
    for i, width in enumerate(layout.widths):
        key = f"stages.{i}.0.gamma" if layout.family == "convnext" else f"layer{i + 1}.0.bn{layout.convs}.weight"
        if state[key].shape[0] != width:
            raise ValueError(
                f"the export does not fit MMDetection's {layout.backbone['type']}: {key} has {state[key].shape[0]} "
                f"channels where {layout.backbone} builds {width}"
            )


def _load_into_mmdet(layout: _Layout, state: Mapping[str, Tensor]) -> bool:
    """Build the backbone and load ``state`` strictly, where MMDetection (mmpretrain for ConvNeXt) is installed.

    Returns:
        whether it was built.
    """
    kind = layout.backbone["type"]
    try:
        if kind.startswith("mmpretrain."):
            from mmpretrain.models import backbones
        else:
            from mmdet.models import backbones
    except ImportError:
        return False
    kwargs = {k: v for k, v in copy.deepcopy(layout.backbone).items() if k != "type"}
    model = getattr(backbones, kind.removeprefix("mmpretrain."))(**kwargs)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape that does not fit; the message names the key
        raise ValueError(f"the export does not fit MMDetection's {kind}: {err}") from err
    check_loaded(f"MMDetection's {kind}", missing, unexpected)
    return True


def _torchvision_weights(source: Source, arch: str | None, weights_only: bool) -> tuple[str, _Layout, dict[str, Tensor]]:
    """The trunk's torchvision name, MMDetection layout and weights (checked by :func:`to_torchvision`)."""
    source = load_source(source, weights_only=weights_only)
    arch = arch or source_arch(source)
    if arch is not None:
        _layout(arch)  # refuse other trunks before their weights are read
    state = to_torchvision(source, arch=arch)
    arch = arch or resnet_arch(state)
    return arch, _layout(arch), state


def to_mmdet(source: Source, *, arch: str | None = None, weights_only: bool = True) -> dict[str, Any]:
    """The MMDetection checkpoint of the trunk of ``source``.

    torchvision ResNets become MMDetection's ``ResNet`` (``style="pytorch"``: the stride in the
    3x3 conv, as in torchvision), ResNeXts its ``ResNeXt``, ``regnet_x_*`` its ``RegNet``, and
    ConvNeXts mmpretrain's ``ConvNeXt`` (``type="mmpretrain.ConvNeXt"``). Every torchvision trunk
    tensor is renamed (see :func:`_mmdet_key`; ResNet and ResNeXt names are the same), the key set
    must equal the backbone's own, generated from its block counts, and each stage's channels
    must be those it builds. ConvNeXt's detection backbone adds a LayerNorm on each output stage
    (``norm0`` ... ``norm3``) that torchvision has not: it is written as LayerNorm's initial state
    (weight 1, bias 0), what mmpretrain would initialise it to. Where MMDetection is installed the
    backbone is built and loaded strictly too.

    Args:
        source: a checkpoint path or dict, an SCRL/BYOL/Trunk/ResNet module or a torchvision state
            dict (see :mod:`scrl.export`).
        arch: a torchvision trunk name: ``"resnet18"`` ... ``"resnet152"``, ``"resnext50_32x4d"``,
            ``"resnext101_32x8d"``, ``"resnext101_64x4d"``, ``"regnet_x_400mf"`` ... ``"regnet_x_32gf"``,
            ``"convnext_tiny"`` ... ``"convnext_large"``; default: the one ``source`` records, else the
            ResNet its weights' layout implies.
        weights_only: load a path with PyTorch's restricted unpickler.

    Returns:
        ``{"state_dict": {mmdet key: tensor}, "meta": {"arch": arch, "backbone": type, "author": "scrl"}}``,
        tensors with torchvision's shapes (ConvNeXt's layer scale ``[C, 1, 1]`` as ``gamma`` ``[C]``);
        :func:`save_mmdet` writes it with the config that loads it.

    Raises:
        ValueError: ``arch`` has no MMDetection backbone (``regnet_y_*``: MMDetection's RegNet has no
            squeeze-and-excitation; wide ResNets, EfficientNet, MobileNetV3, timm trunks), or the
            weights do not fit it; the message names the keys.

    Example:
        >>> checkpoint = to_mmdet("runs/scrl/checkpoint_last.pth")       # doctest: +SKIP
        >>> checkpoint["state_dict"]["layer1.0.conv2.weight"].shape      # doctest: +SKIP
        torch.Size([64, 64, 3, 3])
    """
    arch, layout, state = _torchvision_weights(source, arch, weights_only)
    exported = {_mmdet_key(layout.family, k): (v.reshape(-1) if k.endswith(".layer_scale") else v) for k, v in state.items()}
    if layout.family == "convnext":
        for i, width in enumerate(layout.widths):
            exported[f"norm{i}.weight"], exported[f"norm{i}.bias"] = torch.ones(width), torch.zeros(width)
    expected = _expected_keys(layout)
    check_loaded(f"MMDetection's {layout.backbone['type']}", expected - set(exported), set(exported) - expected)
    _check_widths(layout, exported)
    _load_into_mmdet(layout, exported)
    return {"state_dict": exported, "meta": {"arch": arch, "backbone": layout.backbone["type"], "author": "scrl"}}


def _literal(value: Any, indent: str) -> str:
    """``value`` as Python source in MMDetection's config style: ``dict(key=...)``, strings in double quotes."""
    if isinstance(value, dict):
        inline = "dict(" + ", ".join(f"{k}={_literal(v, indent)}" for k, v in value.items()) + ")"
        if len(indent) + len(inline) <= 88:  # a line for a short dict, a line per key for a long one
            return inline
        inner = indent + "    "
        return "dict(\n" + "".join(f"{inner}{k}={_literal(v, inner)},\n" for k, v in value.items()) + f"{indent})"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        items = ", ".join(_literal(v, indent) for v in value)
        return f"[{items}]" if isinstance(value, list) else f"({items})"
    return repr(value)


def mmdet_config(arch: str, checkpoint: str | os.PathLike) -> str:
    """MMDetection config keys (Python text) that build ``arch``'s backbone from the checkpoint :func:`to_mmdet` gives.

    Args:
        arch: a torchvision trunk name :func:`to_mmdet` takes (``"resnet50"``).
        checkpoint: the checkpoint file, for ``init_cfg=dict(type="Pretrained", checkpoint=...)``.

    Raises:
        ValueError: ``arch`` has no MMDetection backbone.
    """
    layout = _layout(arch)
    model = dict(
        # torchvision's ImageNet normalisation; MMDetection decodes images as BGR, torchvision trunks take RGB.
        data_preprocessor=dict(mean=list(DETECTRON2_PIXEL_MEAN), std=list(DETECTRON2_PIXEL_STD), bgr_to_rgb=True),
        # _delete_: the base config's backbone (a ResNet, with its own settings) is replaced, not merged into.
        backbone=dict(_delete_=True, **layout.backbone, init_cfg=dict(type="Pretrained", checkpoint=os.fspath(checkpoint))),
        neck=dict(in_channels=list(layout.widths)),
    )
    if layout.family == "convnext":
        settings = (
            "# Fine-tuning: no stage frozen (frozen_stages=0 in mmpretrain); gap_before_final_norm=False gives the neck maps.\n"
            'custom_imports = dict(imports=["mmpretrain.models"], allow_failed_imports=False)  # registers mmpretrain.ConvNeXt\n'
        )
    else:
        settings = (
            "# Fine-tuning follows the paper: no stage frozen, BatchNorm synchronised across GPUs and trained\n"
            '# (SyncBN, norm_eval=False); style="pytorch" puts the stride in the 3x3 conv, as torchvision does.\n'
        )
    return (
        f"# MMDetection config keys for a {arch} trunk exported by scrl (torchvision weights, MMDetection names).\n"
        '# Merge into a detector config, e.g. after _base_ = "mask-rcnn_r50_fpn_1x_coco.py".\n'
        f"{settings}"
        f"model = {_literal(model, '')}\n"
    )


def save_mmdet(
    source: Source, path: str | os.PathLike, *, arch: str | None = None, weights_only: bool = True
) -> tuple[Path, Path]:
    """Write :func:`to_mmdet` of ``source`` to ``path`` and the config keys that load it beside it (``.py``).

    The config (Python, MMDetection's format) sets the backbone (type, depth or arch, ``out_indices``
    ``(0, 1, 2, 3)``, nothing frozen, SyncBN, ``style="pytorch"`` for ResNets) with
    ``init_cfg=dict(type="Pretrained", checkpoint=PATH)``, PATH as given here (MMDetection resolves
    a relative one against its working directory), the neck's input channels, and the data
    preprocessor's mean/std (0-255 RGB) with ``bgr_to_rgb=True``. Both files are written atomically.

    Args:
        source: see :func:`to_mmdet`.
        path: the checkpoint file (e.g. ``scrl_r50_mmdet.pth``); the config goes to the same name
            with ``.py``, so ``path`` itself must not end in ``.py``.
        arch: see :func:`to_mmdet`.
        weights_only: load a path with PyTorch's restricted unpickler.

    Returns:
        ``(checkpoint_path, config_path)``.

    Raises:
        ValueError: ``path`` ends in ``.py``, or :func:`to_mmdet` refuses ``source``.

    Example:
        >>> save_mmdet("runs/scrl/checkpoint_last.pth", "scrl_r50_mmdet.pth")  # doctest: +SKIP
        (PosixPath('scrl_r50_mmdet.pth'), PosixPath('scrl_r50_mmdet.py'))
    """
    path = Path(path)
    if path.suffix == ".py":
        raise ValueError(f"path must not end in .py (the config is written beside it as NAME.py), got {path}")
    exported = to_mmdet(source, arch=arch, weights_only=weights_only)
    save_checkpoint(exported, path)
    config = path.with_suffix(".py")
    text = mmdet_config(exported["meta"]["arch"], path)
    write_atomically(config, lambda f: f.write(text.encode("utf-8")))
    return path, config
