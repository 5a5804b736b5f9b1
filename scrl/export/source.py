"""Reading what an export starts from: a checkpoint, a model, a trunk or a state dict (:data:`Source`)."""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from torch import Tensor, nn

from ..runtime.checkpoint import CheckpointError, load_checkpoint, strip_wrapper_prefixes
from ..runtime.distributed import unwrap_module
from ..trunk import FAMILIES

Source = str | os.PathLike | Mapping[str, Any] | nn.Module

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
