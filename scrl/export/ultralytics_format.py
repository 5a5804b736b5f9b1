"""A pretrained YOLO backbone in an Ultralytics checkpoint: ``YOLO(path)`` loads it, ``YOLO(path).train(data=...)`` fine-tunes it.

The checkpoint is the one Ultralytics writes itself (``{"model": DetectionModel, "train_args":
...}``, float32): the detector of the model YAML with the pretrained backbone layers and the
fresh head Ultralytics initialises. ``YOLO(path).train(data=...)`` builds the detector for the
data's classes and takes every tensor whose shape fits from the file, so the backbone carries
over whatever the number of classes, and the head's class layers start fresh.

Ultralytics (AGPL-3.0) is needed to write the file and to use it (``pip install "scrl[ultralytics]"``).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..runtime.checkpoint import write_atomically
from ..runtime.random_streams import seeded_global_rngs
from ..yolo_trunk import ULTRALYTICS_PREFIX, _YoloBackbone, detection_model, import_ultralytics, ultralytics_backbone_layers
from .source import Source, load_source, source_arch, trunk_weights
from .verify import check_loaded, check_same_features


def to_ultralytics(source: Source, model: str, path: str | os.PathLike, *, weights_only: bool = True, seed: int = 0) -> Path:
    """Write an Ultralytics checkpoint of the detector ``model`` with the pretrained backbone of ``source``; verify it.

    After writing, the file is loaded as a user loads it (``ultralytics.YOLO(path)``): every
    backbone tensor must equal the pretrained one, and its backbone layers must give the same
    stride-32 map as the trunk on a probe batch (:mod:`scrl.export.verify`).

    Args:
        source: a training checkpoint (path or dict) or an SCRL/BYOL model or
            :class:`~scrl.trunk.Trunk` of an ``"ultralytics:NAME.yaml"`` trunk, or a run's
            ``backbone_ultralytics.pth`` (keys ``model.0.conv.weight`` ...).
        model: the model YAML the backbone was pretrained as (``"yolo11n.yaml"``; the
            ``"ultralytics:"`` prefix may be kept); a source that records its trunk must agree.
        path: the ``.pt`` file to write (Ultralytics tells checkpoints from YAMLs by the suffix).
        weights_only: load a path with PyTorch's restricted unpickler.
        seed: seeds the detector's fresh head, >= 0 (the same seed gives the same file).

    Returns:
        ``path``.

    Raises:
        ValueError: ultralytics is not installed, ``path`` is no ``.pt``, ``model`` disagrees with
            the source's trunk, or the weights do not fill the backbone exactly (the message
            names the missing and unexpected keys) or give other features once loaded.

    Example:
        >>> to_ultralytics("runs/yolo/checkpoint_last.pth", "yolo11n.yaml", "scrl_yolo11n.pt")  # doctest: +SKIP
        >>> ultralytics.YOLO("scrl_yolo11n.pt").train(data="coco8.yaml", epochs=100)           # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"path must end in .pt (Ultralytics reads a checkpoint only by that suffix), got {path}")
    name = model.removeprefix(ULTRALYTICS_PREFIX) if isinstance(model, str) else model
    source = load_source(source, weights_only=weights_only)
    recorded = source_arch(source)
    if recorded is not None and recorded != ULTRALYTICS_PREFIX + name:
        raise ValueError(f"model {name!r} given, but the source's trunk is {recorded!r}")
    state = _backbone_weights(source)
    ultralytics = import_ultralytics()
    with seeded_global_rngs(seed):  # Ultralytics initialises the head from the global stream
        detector = detection_model(name)
    layers = ultralytics_backbone_layers(detector)
    head = [k for k in detector.state_dict() if int(k.split(".")[1]) >= layers]
    target = f"Ultralytics {name}"
    try:
        missing, unexpected = detector.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape that differs: another scale of the model
        raise ValueError(f"the weights do not fit {target}: {err}") from err
    check_loaded(target, missing, unexpected, allowed_missing=head)
    checkpoint = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "version": ultralytics.__version__,
        "license": "AGPL-3.0 (Ultralytics); backbone pretrained with scrl (SCRL)", "model": detector.float(),
        "train_args": {"model": name, "task": "detect"}, "epoch": -1, "best_fitness": None, "ema": None, "updates": None,
        "optimizer": None,
    }
    write_atomically(path, lambda f: torch.save(checkpoint, f))
    _verify(path, name, state, layers)
    return path


def _backbone_weights(source: Source) -> dict[str, Tensor]:
    """The backbone tensors of ``source`` under the detector's keys (``model.0.conv.weight`` ...)."""
    if isinstance(source, Mapping) and source and all(isinstance(k, str) and k.startswith("model.") for k in source):
        return {k: v.detach().cpu() for k, v in source.items()}  # already the detector's layout (a run's backbone file)
    return trunk_weights(source)


def _verify(path: Path, name: str, state: Mapping[str, Tensor], layers: int) -> None:
    """Load ``path`` as a user does and compare its backbone with the pretrained weights, tensor by tensor and by features."""
    from ultralytics import YOLO

    loaded = YOLO(str(path)).model
    loaded_state = loaded.state_dict()
    different = sorted(k for k, v in state.items() if k not in loaded_state or not torch.equal(loaded_state[k], v))
    if different:
        raise ValueError(f"ultralytics.YOLO({str(path)!r}) holds other backbone tensors than the pretrained ones: {different[:8]}")
    pretrained = _YoloBackbone(list(detection_model(name).model[:layers])).eval()
    pretrained.load_state_dict(state)
    check_same_features(f"ultralytics.YOLO({str(path)!r})", pretrained, _YoloBackbone(list(loaded.model[:layers])).eval())
