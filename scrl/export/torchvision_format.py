"""Trunk weights for torchvision's and timm's classifiers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import torchvision
from torch import Tensor, nn

from ..runtime.checkpoint import load_checkpoint, save_checkpoint, write_atomically
from ..trunk import TIMM_PREFIX, supported_archs, torchvision_trunk
from .source import Source, load_source, resnet_arch, source_arch, trunk_weights
from .verify import check_loaded, check_same_features

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
    """Write :func:`to_torchvision` of ``source`` to ``path`` and verify the file.

    A path ending in ``.safetensors`` is written with safetensors (which must be installed),
    any other with :func:`scrl.runtime.save_checkpoint`; both atomically. The file is then read
    back into ``torchvision.models.get_model(arch)``: every key but the classifier's must load,
    and its features must equal the trunk's on a probe batch (:mod:`scrl.export.verify`).

    Returns:
        ``path``.

    Raises:
        ValueError: the weights do not fit, or the written file does not give them back.
    """
    path = Path(path)
    source = load_source(source, weights_only=weights_only)
    state = to_torchvision(source, arch=arch)
    arch = arch or source_arch(source) or resnet_arch(state)
    _write_weights(state, path)
    reference = torchvision_trunk(arch).body
    reference.load_state_dict(state)
    classifier = torchvision.models.get_model(arch, weights=None)
    _check_file(f"torchvision.models.{arch}", classifier, path, state, reference.eval(), torchvision_trunk(classifier).body)
    return path


def save_timm(source: Source, path: str | os.PathLike, *, arch: str | None = None, weights_only: bool = True) -> Path:
    """Write :func:`to_timm` of ``source`` to ``path`` (``.safetensors`` or a checkpoint) and verify the file.

    The file is read back into ``timm.create_model(NAME)``: every key but the classifier's must
    load, and ``forward_features`` must equal the trunk's map on a probe batch.

    Returns:
        ``path``.

    Raises:
        ValueError: timm is missing, the weights do not fit, or the written file does not give them back.
    """
    import timm  # to_timm has checked that it is installed

    path = Path(path)
    source = load_source(source, weights_only=weights_only)
    state = to_timm(source, arch=arch)
    name = (arch or source_arch(source)).removeprefix(TIMM_PREFIX)
    _write_weights(state, path)
    reference, classifier = timm.create_model(name, pretrained=False), timm.create_model(name, pretrained=False)
    reference.load_state_dict(state, strict=False)
    _check_file(f"timm's {name}", classifier, path, state, reference.eval().forward_features, classifier.forward_features)
    return path


def _write_weights(state: Mapping[str, Tensor], path: Path) -> None:
    if path.suffix != ".safetensors":
        save_checkpoint(dict(state), path)
        return
    try:
        from safetensors.torch import save
    except ImportError as err:
        raise ValueError('a .safetensors file needs safetensors: pip install safetensors') from err
    data = save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt", "written_by": "scrl"})
    write_atomically(path, lambda f: f.write(data))


def _read_weights(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return load_checkpoint(path)


def _check_file(target: str, model: nn.Module, path: Path, state: Mapping[str, Tensor],
                expected: Callable[[Tensor], Tensor], features: Callable[[Tensor], Tensor]) -> None:
    """Load the file at ``path`` into ``model`` (only the keys outside ``state``, its classifier, may stay unloaded) and
    compare ``features`` (the loaded model's map) with ``expected`` (the trunk's)."""
    missing, unexpected = model.load_state_dict(_read_weights(path), strict=False)
    check_loaded(target, missing, unexpected, allowed_missing=set(model.state_dict()) - set(state))
    model.eval()
    check_same_features(target, expected, features)
