"""Trunk weights for Hugging Face Transformers: a ``ResNetBackbone`` or ``ConvNextBackbone`` folder that proves itself."""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.checkpoint import _writer_is_gone
from ..trunk import TIMM_PREFIX, torchvision_trunk
from .source import Source, load_source, resnet_arch, source_arch
from .torchvision_format import to_torchvision
from .verify import check_loaded, check_same_features

# Blocks per stage, as torchvision builds them.
_RESNET_DEPTHS = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
# Blocks and channels per stage, as torchvision builds them.
_CONVNEXTS = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}
TRANSFORMERS_ARCHS = (*_RESNET_DEPTHS, *_CONVNEXTS)
_STAGES = ["stage1", "stage2", "stage3", "stage4"]
_CONVNEXT_EPS = 1e-6  # torchvision's LayerNorm2d and the norms Transformers adds to each output stage
_CONVNEXT_BLOCK = {"0": "dwconv", "2": "layernorm", "3": "pwconv1", "5": "pwconv2"}  # torchvision's block.N
_EXPORT_FILES = frozenset({"config.json", "model.safetensors"})


def _hf_resnet_key(key: str) -> str:
    """Transformers' ``ResNetBackbone`` name for a torchvision ResNet trunk key.

    ``conv1`` / ``bn1`` -> ``embedder.embedder.convolution`` / ``.normalization``;
    ``layer{i}.{j}.conv{k}`` / ``bn{k}`` -> ``encoder.stages.{i-1}.layers.{j}.layer.{k-1}.convolution`` / ``.normalization``;
    ``layer{i}.{j}.downsample.0`` / ``.1`` -> ``encoder.stages.{i-1}.layers.{j}.shortcut.convolution`` / ``.normalization``.
    """
    stem = re.fullmatch(r"(conv1|bn1)\.(\w+)", key)
    if stem:
        return f"embedder.embedder.{'convolution' if stem[1] == 'conv1' else 'normalization'}.{stem[2]}"
    conv = re.fullmatch(r"layer([1-4])\.(\d+)\.(conv|bn)([1-3])\.(\w+)", key)
    if conv:
        part = "convolution" if conv[3] == "conv" else "normalization"
        return f"encoder.stages.{int(conv[1]) - 1}.layers.{conv[2]}.layer.{int(conv[4]) - 1}.{part}.{conv[5]}"
    shortcut = re.fullmatch(r"layer([1-4])\.(\d+)\.downsample\.([01])\.(\w+)", key)
    if shortcut:
        part = "convolution" if shortcut[3] == "0" else "normalization"
        return f"encoder.stages.{int(shortcut[1]) - 1}.layers.{shortcut[2]}.shortcut.{part}.{shortcut[4]}"
    raise ValueError(f"{key!r} is not a torchvision ResNet trunk key")


def _hf_convnext_key(key: str) -> str:
    """Transformers' ``ConvNextBackbone`` name for a torchvision ConvNeXt trunk key.

    ``features.0.{0,1}`` (stem conv, LayerNorm2d) -> ``embeddings.patch_embeddings`` / ``embeddings.layernorm``;
    ``features.{2,4,6}.{n}`` (LayerNorm2d, 2x2 conv) -> ``encoder.stages.{1,2,3}.downsampling_layer.{n}``;
    ``features.{1,3,5,7}.{j}.block.{0,2,3,5}`` -> ``encoder.stages.{0..3}.layers.{j}.{dwconv,layernorm,pwconv1,pwconv2}``
    and ``....layer_scale`` -> ``....layer_scale_parameter``.
    """
    stem = re.fullmatch(r"features\.0\.([01])\.(\w+)", key)
    if stem:
        return f"embeddings.{'patch_embeddings' if stem[1] == '0' else 'layernorm'}.{stem[2]}"
    down = re.fullmatch(r"features\.([246])\.([01])\.(\w+)", key)
    if down:
        return f"encoder.stages.{int(down[1]) // 2}.downsampling_layer.{down[2]}.{down[3]}"
    block = re.fullmatch(r"features\.([1357])\.(\d+)\.(?:layer_scale|block\.([0235])\.(\w+))", key)
    if block:
        prefix = f"encoder.stages.{int(block[1]) // 2}.layers.{block[2]}."
        return prefix + (f"{_CONVNEXT_BLOCK[block[3]]}.{block[4]}" if block[3] else "layer_scale_parameter")
    raise ValueError(f"{key!r} is not a torchvision ConvNeXt trunk key")


def _hf_convnext_value(key: str, value: Tensor) -> Tensor:
    """torchvision's layer scale is ``[C, 1, 1]`` (it scales an NCHW map), Transformers' ``[C]`` (NHWC)."""
    return value.reshape(-1) if key.endswith(".layer_scale") else value


def _unsupported(arch: str) -> str:
    timm = f"; a '{TIMM_PREFIX}NAME' trunk exports with to_timm" if arch.startswith(TIMM_PREFIX) else ""
    return (
        f"arch {arch!r} has no Transformers export: it takes torchvision's {', '.join(TRANSFORMERS_ARCHS)} "
        f"(Transformers' ResNetBackbone and ConvNextBackbone){timm}"
    )


def _torchvision_weights(source: Source, arch: str | None, weights_only: bool) -> tuple[str, dict[str, Tensor]]:
    """The trunk's torchvision name and weights (checked by :func:`to_torchvision`), refusing other trunks first."""
    source = load_source(source, weights_only=weights_only)
    arch = arch or source_arch(source)
    if arch is not None and arch not in TRANSFORMERS_ARCHS:
        raise ValueError(_unsupported(arch))
    state = to_torchvision(source, arch=arch)
    return arch or resnet_arch(state), state


def _resnet_config(arch: str) -> dict[str, Any]:
    basic = arch in ("resnet18", "resnet34")
    return dict(
        embedding_size=64,
        depths=list(_RESNET_DEPTHS[arch]),
        hidden_sizes=[64 * 2**i * (1 if basic else 4) for i in range(4)],
        layer_type="basic" if basic else "bottleneck",
        hidden_act="relu",
        downsample_in_first_stage=False,  # torchvision's layer1 does not stride: the stem's max-pool has
        downsample_in_bottleneck=False,  # torchvision strides in the 3x3 conv, not the first 1x1
        out_features=_STAGES,
    )


def _convnext_config(arch: str) -> dict[str, Any]:
    depths, widths = _CONVNEXTS[arch]
    return dict(depths=list(depths), hidden_sizes=list(widths), hidden_act="gelu", drop_path_rate=0.0, out_features=_STAGES)


def _hf_weights(arch: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` under Transformers' names; for ConvNeXt also the norms it adds to each output stage."""
    if arch in _RESNET_DEPTHS:
        return {_hf_resnet_key(k): v for k, v in state.items()}
    weights = {_hf_convnext_key(k): _hf_convnext_value(k, v) for k, v in state.items()}
    for stage, width in zip(_STAGES, _CONVNEXTS[arch][1]):
        # torchvision has no such norm: written as LayerNorm's initial state, for fine-tuning to train, so
        # that the folder is complete and a key that fails to load always means a fault.
        weights[f"hidden_states_norms.{stage}.weight"] = torch.ones(width)
        weights[f"hidden_states_norms.{stage}.bias"] = torch.zeros(width)
    return weights


def _check_loading_info(target: str, info: Mapping[str, Any]) -> None:
    """Refuse what ``from_pretrained(..., output_loading_info=True)`` did not load."""
    mismatched = sorted(str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get("mismatched_keys", ()))
    if mismatched:
        raise ValueError(f"the export does not load fully into {target}: shapes differ for {', '.join(mismatched[:8])}")
    check_loaded(target, info.get("missing_keys", ()), info.get("unexpected_keys", ()))


def _check_features(arch: str, target: str, trunk: nn.Module, loaded: nn.Module) -> None:
    """C5 of the loaded folder against torchvision's trunk.

    For ConvNeXt both the stage-4 hidden state and ``feature_maps[-1]`` (that state through the
    norm Transformers adds) are compared, side by side in one map, so each model runs once.
    """
    if arch in _RESNET_DEPTHS:
        check_same_features(target, trunk, lambda x: loaded(x).feature_maps[-1])
        return

    def expected(x: Tensor) -> Tensor:
        c5 = trunk(x)
        normalised = F.layer_norm(c5.permute(0, 2, 3, 1), c5.shape[1:2], eps=_CONVNEXT_EPS).permute(0, 3, 1, 2)
        return torch.cat([c5, normalised], dim=1)

    def got(x: Tensor) -> Tensor:
        out = loaded(x, output_hidden_states=True)
        return torch.cat([out.hidden_states[-1], out.feature_maps[-1]], dim=1)

    check_same_features(f"{target} (stage4 and feature_maps[-1])", expected, got)


def _check_destination(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ValueError(f"path {path} is a file; a Transformers export is a folder (config.json, model.safetensors)")
    if path.is_dir():
        other = sorted(set(os.listdir(path)) - _EXPORT_FILES)
        if other:
            raise ValueError(
                f"path {path} holds files that are no part of an export ({', '.join(other[:5])}); an export replaces "
                "only an empty folder or one holding config.json and model.safetensors"
            )


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_folder(path: Path, fill: Callable[[Path], None]) -> None:
    """Fill a new sibling folder with ``fill(folder)`` and rename it to ``path``: ``path`` is never half written.

    A folder already at ``path`` is renamed away first and removed after, so a crash in between
    leaves the previous export beside ``path`` (``.old-NAME.*``), complete. Folders left by writers
    that died on this host are removed, as :func:`scrl.runtime.write_atomically` does for files.
    """
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    for prefix in (f".tmp-{path.name}.", f".old-{path.name}."):
        for stale in glob.glob(os.path.join(glob.escape(os.fspath(parent)), glob.escape(prefix) + "*")):
            if _writer_is_gone(os.path.basename(stale)[len(prefix) :]):
                shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}.{socket.gethostname()}.{os.getpid()}.", dir=parent))
    try:
        fill(staging)
        for name in os.listdir(staging):
            _fsync(staging / name)
        _fsync(staging)
        if path.exists():
            retired = staging.with_name(".old-" + staging.name.removeprefix(".tmp-"))
            os.replace(path, retired)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
        _fsync(parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed into place


def to_transformers(source: Source, path: str | os.PathLike, *, arch: str | None = None, weights_only: bool = True) -> Path:
    """Write the trunk of ``source`` as a Transformers backbone folder and prove it loads and computes the same.

    torchvision ResNets become ``transformers.ResNetBackbone`` (stride in the 3x3 conv of a
    bottleneck: ``downsample_in_bottleneck=False``), torchvision ConvNeXts
    ``transformers.ConvNextBackbone``; both with ``out_features=["stage1", ..., "stage4"]``, so
    ``model(pixel_values).feature_maps`` holds C2 ... C5 (``[B, C, H/4, W/4]`` ... ``[B, C, H/32, W/32]``).
    The folder holds ``config.json`` and ``model.safetensors`` (``save_pretrained``); it is written
    beside ``path`` and renamed into place only after it has been read back with
    ``from_pretrained`` with no key missing, unexpected or of another shape, and its C5 matched
    torchvision's trunk to within 1e-4 in float32 (:mod:`scrl.export.verify`). ConvNeXt's backbone
    adds a LayerNorm to each output stage that torchvision has not: it is written as LayerNorm's
    initial state (weight 1, bias 0), and the stage-4 hidden state before it is what is compared
    with torchvision's C5 (and ``feature_maps[-1]`` with that C5 so normalised).

    Args:
        source: a checkpoint path or dict, an SCRL/BYOL/Trunk/ResNet module or a torchvision state
            dict (see :mod:`scrl.export`).
        path: the folder to write; it may exist empty or hold an earlier export (``config.json``,
            ``model.safetensors``), which it replaces.
        arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"``, ``"resnet152"``,
            ``"convnext_tiny"``, ``"convnext_small"``, ``"convnext_base"`` or ``"convnext_large"``;
            default: the one ``source`` records, else the ResNet its weights' layout implies.
        weights_only: load a path with PyTorch's restricted unpickler.

    Returns:
        ``path``, for ``transformers.AutoBackbone.from_pretrained(path)``.

    Raises:
        ValueError: transformers is not installed; ``arch`` is none of those (timm trunks, other
            torchvision families); ``path`` is a file or a folder holding other files; the weights
            do not fit the torchvision model; or the written folder loads partially or gives other
            features (the message names the keys or the difference); ``path`` is left as it was then.

    Example:
        >>> to_transformers("runs/scrl/checkpoint_last.pth", "scrl-r50")                # doctest: +SKIP
        >>> backbone = transformers.AutoBackbone.from_pretrained("scrl-r50")           # doctest: +SKIP
        >>> [f.shape[1] for f in backbone(torch.randn(1, 3, 224, 224)).feature_maps]   # doctest: +SKIP
        [256, 512, 1024, 2048]
    """
    path = Path(path)
    if arch is not None and arch not in TRANSFORMERS_ARCHS:
        raise ValueError(_unsupported(arch))
    _check_destination(path)
    try:
        import transformers
    except ImportError as err:
        raise ValueError('the Transformers export needs transformers and safetensors: pip install "scrl[transformers]"') from err
    arch, state = _torchvision_weights(source, arch, weights_only)
    if arch in _RESNET_DEPTHS:
        backbone_class, config = transformers.ResNetBackbone, transformers.ResNetConfig(**_resnet_config(arch))
    else:
        backbone_class, config = transformers.ConvNextBackbone, transformers.ConvNextConfig(**_convnext_config(arch))
    target = f"transformers.{backbone_class.__name__}"
    model = backbone_class(config)
    try:
        missing, unexpected = model.load_state_dict(_hf_weights(arch, state), strict=False)
    except RuntimeError as err:  # a shape that does not fit; the message names the key
        raise ValueError(f"the export does not fit {target}: {err}") from err
    check_loaded(target, missing, unexpected)
    with torch.device("meta"):  # built without its random init: every tensor is assigned from state
        trunk = torchvision_trunk(arch)
    trunk.body.load_state_dict(state, assign=True)
    trunk.eval()

    def write_and_prove(folder: Path) -> None:
        model.save_pretrained(folder)
        # Mismatched shapes reported, not raised, so that the message can name them.
        loaded, info = backbone_class.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True)
        _check_loading_info(target, info)
        _check_features(arch, target, trunk, loaded.eval())

    _write_folder(path, write_and_prove)
    return path
