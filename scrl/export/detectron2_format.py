"""Trunk weights for Detectron2: its key names, a pickle of numpy arrays, and the config keys that match."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from ..runtime.checkpoint import write_atomically
from .source import _BLOCK_KEY, Source, load_source, resnet_arch, source_arch, trunk_weights
from .torchvision_format import to_torchvision

# torchvision's ImageNet normalisation in the 0-255 pixel units Detectron2 works in.
DETECTRON2_PIXEL_MEAN = (123.675, 116.28, 103.53)
DETECTRON2_PIXEL_STD = (58.395, 57.12, 57.375)

def detectron2_key(key: str) -> str:
    """Detectron2's name for a torchvision ResNet trunk key.

    ==============================  ===================================
    torchvision                     Detectron2
    ==============================  ===================================
    ``conv1.weight``                ``stem.conv1.weight``
    ``bn1.X``                       ``stem.conv1.norm.X``
    ``layer{i}.{j}.conv{k}.weight`` ``res{i+1}.{j}.conv{k}.weight``
    ``layer{i}.{j}.bn{k}.X``        ``res{i+1}.{j}.conv{k}.norm.X``
    ``layer{i}.{j}.downsample.0.X`` ``res{i+1}.{j}.shortcut.X``
    ``layer{i}.{j}.downsample.1.X`` ``res{i+1}.{j}.shortcut.norm.X``
    ==============================  ===================================

    The same names serve Detectron2's ``BottleneckBlock`` (resnet50/101/152) and
    ``BasicBlock`` (resnet18/34).

    Raises:
        ValueError: for keys that are not part of a ResNet trunk (e.g. ``fc.weight``).
    """
    stem = re.fullmatch(r"(conv1|bn1)\.(\w+)", key)
    if stem:
        return ("stem.conv1." if stem.group(1) == "conv1" else "stem.conv1.norm.") + stem.group(2)
    block = _BLOCK_KEY.fullmatch(key)
    if block:
        prefix = f"res{int(block.group(1)) + 1}.{block.group(2)}."
        rest = block.group(3)
        for pattern, replacement in (
            (r"conv(\d)\.(\w+)", r"conv\1.\2"),
            (r"bn(\d)\.(\w+)", r"conv\1.norm.\2"),
            (r"downsample\.0\.(\w+)", r"shortcut.\1"),
            (r"downsample\.1\.(\w+)", r"shortcut.norm.\1"),
        ):
            if re.fullmatch(pattern, rest):
                return prefix + re.sub(pattern, replacement, rest)
    raise ValueError(f"{key!r} is not a torchvision ResNet trunk key")


def to_detectron2(source: Source, *, weights_only: bool = True) -> dict[str, Any]:
    """The Detectron2 weights object for the trunk of ``source``.

    Returns:
        ``{"model": {detectron2 key: numpy array}, "__author__": "scrl",
        "matching_heuristics": True}``: every trunk tensor (BatchNorm ``num_batches_tracked``
        included, ``fc`` excluded) exactly once, shapes unchanged. Pickle it to a ``.pkl`` file
        (:func:`save_detectron2`) and point ``MODEL.WEIGHTS`` at it, with the config keys of
        :func:`detectron2_config`.
    """
    state = _resnet_only(source, weights_only)
    model = {detectron2_key(k): v.numpy() for k, v in state.items()}
    return {"model": model, "__author__": "scrl", "matching_heuristics": True}


def _resnet_only(source: Source, weights_only: bool) -> dict[str, Tensor]:
    """The torchvision export of ``source``, which must be a ResNet for Detectron2."""
    source = load_source(source, weights_only=weights_only)
    recorded = source_arch(source)
    arch = None
    if recorded is None or recorded.startswith("resnet"):  # ResNeXt and Wide ResNets fail resnet_arch too
        try:
            arch = resnet_arch(trunk_weights(source))
        except ValueError:
            pass
    if arch is None:
        raise ValueError(
            f"Detectron2 export is for torchvision's plain ResNets (resnet18 ... resnet152) only; this trunk is "
            f"{recorded or 'another model'}, for which scrl has no Detectron2 key map and config. Fine-tune it "
            "with torchvision's detectors on the torchvision export (examples/finetune_detection.py)"
        )
    return to_torchvision(source, arch=arch)


def detectron2_config(arch: str, weights: str | os.PathLike = "model.pkl") -> str:
    """Detectron2 config keys (yaml text) that match exported torchvision-style weights.

    torchvision trunks take RGB input normalised with ImageNet mean/std and put the stride of
    a bottleneck in its 3x3 convolution; fine-tuning follows the paper (all layers trained,
    SyncBN in the trunk and the FPN). Merge the text into a Faster R-CNN FPN config.

    Args:
        arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or ``"resnet152"``.
        weights: the ``.pkl`` file written by :func:`save_detectron2`, for ``MODEL.WEIGHTS``.
    """
    depth = int(arch.removeprefix("resnet")) if arch.removeprefix("resnet").isdigit() else None
    if depth not in (18, 34, 50, 101, 152):
        raise ValueError(f"arch must be one of resnet18/34/50/101/152, got {arch!r}")
    mean = ", ".join(f"{v:g}" for v in DETECTRON2_PIXEL_MEAN)
    std = ", ".join(f"{v:g}" for v in DETECTRON2_PIXEL_STD)
    basic = "    RES2_OUT_CHANNELS: 64  # basic blocks (ResNet-18/34)\n" if depth < 50 else ""
    return (
        f"# Detectron2 config keys for a {arch} trunk exported by scrl (torchvision layout).\n"
        "# Merge into a Faster R-CNN FPN config, e.g. with _BASE_: \"../Base-RCNN-FPN.yaml\".\n"
        "MODEL:\n"
        f'  WEIGHTS: "{weights}"\n'
        f"  PIXEL_MEAN: [{mean}]\n"
        f"  PIXEL_STD: [{std}]\n"
        "  BACKBONE:\n"
        "    FREEZE_AT: 0  # fine-tune all layers\n"
        "  RESNETS:\n"
        f"    DEPTH: {depth}\n"
        f"{basic}"
        "    STRIDE_IN_1X1: False  # torchvision strides in the 3x3 conv\n"
        '    NORM: "SyncBN"\n'
        "  FPN:\n"
        '    NORM: "SyncBN"\n'
        "INPUT:\n"
        '  FORMAT: "RGB"\n'
    )


def save_detectron2(
    source: Source, path: str | os.PathLike, *, weights_only: bool = True
) -> tuple[Path, Path]:
    """Write the Detectron2 weights to ``path`` (``.pkl``) and the config keys beside it (``.yaml``).

    Detectron2 reads a weights file as a pickle only when its name ends in ``.pkl``.

    Returns:
        ``(weights_path, config_path)``.

    Example:
        >>> save_detectron2("runs/scrl/checkpoint_last.pth", "scrl_r50.pkl")  # doctest: +SKIP
        (PosixPath('scrl_r50.pkl'), PosixPath('scrl_r50.yaml'))
    """
    path = Path(path)
    if path.suffix != ".pkl":
        raise ValueError(f"path must end in .pkl (Detectron2 reads pickles only by that suffix), got {path}")
    state = _resnet_only(source, weights_only)
    weights = to_detectron2(state)
    write_atomically(path, lambda f: pickle.dump(weights, f, protocol=pickle.HIGHEST_PROTOCOL))
    config = path.with_suffix(".yaml")
    text = detectron2_config(resnet_arch(state), path.name)
    write_atomically(config, lambda f: f.write(text.encode("utf-8")))
    return path, config
