"""Trunk weights for torchvision's and timm's classifiers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from torch import Tensor

from ..runtime.checkpoint import save_checkpoint
from ..trunk import TIMM_PREFIX, supported_archs, torchvision_trunk
from .source import Source, load_source, resnet_arch, source_arch, trunk_weights

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


def save_torchvision(
    source: Source, path: str | os.PathLike, *, arch: str | None = None, weights_only: bool = True
) -> Path:
    """Write :func:`to_torchvision` of ``source`` to ``path`` (:func:`scrl.runtime.save_checkpoint`); returns the path."""
    path = Path(path)
    save_checkpoint(to_torchvision(source, arch=arch, weights_only=weights_only), path)
    return path
