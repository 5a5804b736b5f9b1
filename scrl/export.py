"""Carry pretrained trunk weights into torchvision and Detectron2.

Sources accepted everywhere (``source`` below):

* the path of a training checkpoint written by ``examples/pretrain_imagenet.py`` (a dict with
  ``"model"``, the SCRL/BYOL ``state_dict`` whose online trunk keys start with ``trunk.body.``),
  or such a dict already loaded; no model is built to read it;
* an ``SCRL``/``BYOL`` module (anything with a ``backbone_state_dict()`` method), a ``Trunk``
  (anything with ``.body``) or a torchvision ``ResNet``, also wrapped in DDP or ``torch.compile``;
* a torchvision ResNet ``state_dict`` (e.g. supervised weights), or the path of one.

Detectron2 is not needed: its weight format is a pickle of numpy arrays under Detectron2's
key names, which Detectron2 loads with ``matching_heuristics`` the way it loads its own
converted torchvision models.

Files are read with :func:`scrl.runtime.load_checkpoint` (an unreadable one is a
:class:`~scrl.runtime.CheckpointError` naming it) and written atomically
(:func:`scrl.runtime.save_checkpoint`, :func:`scrl.runtime.write_atomically`).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor, nn

from .runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, strip_wrapper_prefixes, write_atomically
from .runtime.distributed import unwrap_module
from .trunk import FAMILIES, TIMM_PREFIX, supported_archs, torchvision_trunk

__all__ = [
    "detectron2_config",
    "load_source",
    "resnet_arch",
    "save_detectron2",
    "save_torchvision",
    "source_arch",
    "to_detectron2",
    "to_timm",
    "to_torchvision",
    "trunk_weights",
]

Source = str | os.PathLike | Mapping[str, Any] | nn.Module

# torchvision's ImageNet normalisation in the 0-255 pixel units Detectron2 works in.
DETECTRON2_PIXEL_MEAN = (123.675, 116.28, 103.53)
DETECTRON2_PIXEL_STD = (58.395, 57.12, 57.375)

# Blocks per stage -> depth, for basic-block and bottleneck ResNets.
_DEPTHS = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}
_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.(.+)")


def _trunk_from_state(state: Mapping[str, Any]) -> dict[str, Tensor]:
    state = strip_wrapper_prefixes(state)
    for prefix in ("trunk.body.", "body."):
        picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    for family in FAMILIES.values():  # a torchvision classifier's own state dict: its features, not its head
        if all(k.split(".")[0] in (*family.feature_modules, family.classifier) for k in state):
            if any(k.split(".")[0] == family.feature_modules[0] for k in state):
                return {k: v for k, v in state.items() if k.split(".")[0] != family.classifier}
    sample = ", ".join(list(state)[:5])
    raise ValueError(
        "source holds no trunk weights: expected keys starting with 'trunk.body.' (an SCRL/BYOL "
        f"state_dict), 'body.' (a Trunk) or a torchvision classifier's keys ('conv1.weight', 'features.0...'); got {sample}, ..."
    )


def trunk_weights(source: Source, *, weights_only: bool = True) -> dict[str, Tensor]:
    """The trunk weights of ``source`` under its trunk's own key names, on the CPU.

    For torchvision trunks those are the classifier's names (``conv1.weight``, ``features.0...``);
    a model's or trunk's weights are what its ``backbone_state_dict()`` method gives.

    Args:
        source: a checkpoint path or dict, an SCRL/BYOL/Trunk/ResNet module, or a torchvision
            state dict (see the module docstring); ``fc.*`` is never included.
        weights_only: load a path with PyTorch's restricted unpickler (``False`` only for
            trusted files holding other Python objects).

    Returns:
        ``{key: tensor}`` (for a ResNet ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``...),
        detached CPU copies.

    Raises:
        CheckpointError: a path that does not exist or is no readable checkpoint.
        ValueError: ``source`` holds no trunk weights.

    Example:
        >>> sd = trunk_weights("runs/scrl/checkpoint_last.pth")          # doctest: +SKIP
        >>> torchvision.models.resnet50().load_state_dict(sd, strict=False)  # doctest: +SKIP
    """
    source = load_source(source, weights_only=weights_only)
    if isinstance(source, nn.Module):
        module = unwrap_module(source)
        if hasattr(module, "backbone_state_dict"):  # SCRL, BYOL, Trunk: already under the source model's names
            state: Mapping[str, Any] = module.backbone_state_dict()
        elif isinstance(getattr(module, "body", None), nn.Module):
            state = _trunk_from_state(module.body.state_dict())
        else:
            state = _trunk_from_state(module.state_dict())
    elif isinstance(source, Mapping):
        model = source.get("model")
        state = _trunk_from_state(model if isinstance(model, Mapping) else source)
    else:
        raise ValueError(f"source must be a path, a mapping or an nn.Module, got {type(source).__name__}")
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def resnet_arch(state_dict: Mapping[str, Tensor]) -> str:
    """The torchvision ResNet name (``"resnet18"`` ... ``"resnet152"``) of trunk weights.

    Inferred from the number of blocks per stage and the block type, so it works on weights
    from any source. Raises ``ValueError`` for other layouts (e.g. wide ResNets, ResNeXt).
    """
    blocks = [0, 0, 0, 0]
    for key in state_dict:
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            stage = int(match.group(1)) - 1
            blocks[stage] = max(blocks[stage], int(match.group(2)) + 1)
    bottleneck = "layer1.0.conv3.weight" in state_dict
    depth = _DEPTHS.get((bottleneck, tuple(blocks)))
    width_ok = "layer1.0.conv1.weight" in state_dict and state_dict["layer1.0.conv1.weight"].shape[0] == 64
    if depth is None or not width_ok:
        raise ValueError(
            f"weights are not a standard torchvision ResNet (blocks per stage {blocks}, "
            f"bottleneck={bottleneck}); supported: resnet18/34/50/101/152"
        )
    return f"resnet{depth}"


def load_source(source: Source, *, weights_only: bool = True) -> Source:
    """``source`` itself, or the dict a path holds (loaded once, for several of the functions here).

    Raises:
        CheckpointError: the path does not exist, or is no readable checkpoint
            (:func:`scrl.runtime.load_checkpoint`); the message names it.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source
    if not os.path.isfile(source):  # a ValueError like every other refusal here, not an OSError
        raise CheckpointError(f"checkpoint {os.fspath(source)} does not exist")
    return load_checkpoint(source, weights_only=weights_only)


def source_arch(source: Source, *, weights_only: bool = True) -> str | None:
    """The registered trunk name ``source``'s trunk was built from (:func:`scrl.trunk.create_trunk`), where ``source`` records it.

    A model or trunk carries it (``Trunk.arch``); a training checkpoint records it in its run
    identity (``checkpoint["run"]["identity"]["arch"]``, for models built from a config). Plain
    state dicts do not; ``None`` then.
    """
    source = load_source(source, weights_only=weights_only)
    if isinstance(source, nn.Module):
        module = unwrap_module(source)
        return getattr(getattr(module, "trunk", module), "arch", None)
    if isinstance(source, Mapping):
        identity = source.get("run", {}).get("identity", {}) if isinstance(source.get("run"), Mapping) else {}
        return identity.get("arch")
    return None


def to_torchvision(source: Source, *, arch: str | None = None, weights_only: bool = True) -> dict[str, Tensor]:
    """Trunk weights that load into ``torchvision.models.get_model(arch)`` with only the classifier missing.

    The weights are checked by loading them into the feature modules of a freshly built
    torchvision model of that name (:func:`scrl.trunk.torchvision_trunk`).

    Args:
        source: see the module docstring.
        arch: a torchvision trunk name of :func:`scrl.trunk.supported_archs` (``"convnext_tiny"``);
            default: the one ``source`` records (:func:`source_arch`), else the ResNet its weights'
            layout implies.
        weights_only: load a path with PyTorch's restricted unpickler.

    Raises:
        ValueError: the weights do not fit that model (or no name is known and they are no ResNet).

    Example:
        >>> sd = to_torchvision(scrl_model)                                # doctest: +SKIP
        >>> missing, unexpected = torchvision.models.resnet50().load_state_dict(sd, strict=False)
        >>> # missing == ['fc.weight', 'fc.bias'], unexpected == []        # doctest: +SKIP
    """
    source = load_source(source, weights_only=weights_only)
    state = trunk_weights(source, weights_only=weights_only)
    arch = arch or source_arch(source)
    if arch is None:
        try:
            arch = resnet_arch(state)
        except ValueError as err:
            raise ValueError(f"{err}; for another torchvision model pass its name as arch= (--arch convnext_tiny)") from err
    if arch not in supported_archs():
        raise ValueError(
            f"arch {arch!r} is not a torchvision classifier scrl exports to (those: scrl.trunk.supported_archs()); "
            f"a '{TIMM_PREFIX}NAME' trunk exports with to_timm (examples/export_backbone.py --format timm)"
        )
    features = torchvision_trunk(arch).body  # the classifier's modules but its head
    try:
        missing, unexpected = features.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"trunk weights do not fit torchvision.models.{arch}: {err}") from err
    if missing or unexpected:
        raise ValueError(f"trunk weights do not fit torchvision.models.{arch}: missing {missing}, unexpected {unexpected}")
    return state


def to_timm(source: Source, *, arch: str | None = None, weights_only: bool = True) -> dict[str, Tensor]:
    """Trunk weights of a ``"timm:NAME"`` trunk that ``timm.create_model(NAME)`` loads with only the classifier missing.

    Args:
        source: see the module docstring (a model, a trunk, or a training checkpoint of a timm trunk).
        arch: ``"timm:NAME"`` or ``"NAME"``; default: the one ``source`` records.

    Raises:
        ValueError: timm is not installed, no timm name is known, or the weights do not fit the model.
    """
    source = load_source(source, weights_only=weights_only)
    arch = arch or source_arch(source)
    if arch is None:
        raise ValueError("source records no timm model name: pass arch='timm:NAME'")
    name = arch.removeprefix(TIMM_PREFIX)
    if isinstance(source, Mapping) and "model" not in source and not any(k.startswith("trunk.body.") for k in source):
        state = dict(source)  # already a timm state dict (an earlier export)
    else:
        state = trunk_weights(source)
        if isinstance(source, Mapping):  # a checkpoint: the trunk's body holds the timm model as .model
            state = {k.removeprefix("model."): v for k, v in state.items()}
    try:
        import timm
    except ImportError as err:
        raise ValueError('the timm export needs timm: pip install "scrl[timm]"') from err
    model = timm.create_model(name, pretrained=False)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"trunk weights do not fit timm's {name}: {err}") from err
    head = {k for k in model.state_dict() if k.startswith(model.default_cfg.get("classifier", "fc"))}
    if unexpected or set(missing) - head:
        raise ValueError(f"trunk weights do not fit timm's {name}: missing {sorted(set(missing) - head)}, unexpected {unexpected}")
    return state


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


def save_torchvision(
    source: Source, path: str | os.PathLike, *, arch: str | None = None, weights_only: bool = True
) -> Path:
    """Write :func:`to_torchvision` of ``source`` to ``path`` (:func:`scrl.runtime.save_checkpoint`); returns the path."""
    path = Path(path)
    save_checkpoint(to_torchvision(source, arch=arch, weights_only=weights_only), path)
    return path


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
