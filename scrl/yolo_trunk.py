"""Ultralytics YOLO backbones as trunks: a detector's layers up to its stride-32 output, built from the model YAML.

``create_trunk("ultralytics:yolo11n.yaml")`` builds the backbone of the detector that
``ultralytics.YOLO("yolo11n.yaml")`` builds, with the same layers under the same key names
(``model.0.conv.weight`` ...), so the pretrained weights go back into that detector
(:func:`scrl.export.to_ultralytics`). Nothing is downloaded: the YAML files ship with the
``ultralytics`` package, and the model is randomly initialised as Ultralytics initialises it.

``ultralytics`` is an optional extra (``pip install "scrl[ultralytics]"``) under the AGPL-3.0
licence, which applies to a program that uses it; ``import scrl`` never imports it.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import PIL.Image
import torch
from torch import Tensor, nn

from .trunk import IMAGENET_MEAN, IMAGENET_STD, Trunk, evaluating

__all__ = ["ULTRALYTICS_PREFIX", "import_ultralytics", "ultralytics_backbone_layers", "ultralytics_trunk"]

# The registered namespace: "ultralytics:yolo11n.yaml" is the backbone of Ultralytics' yolo11n.yaml.
ULTRALYTICS_PREFIX = "ultralytics:"
_PROBE_SIDE = 256  # divisible by 64, so every layer's stride reads off exactly


def import_ultralytics() -> Any:
    """The ``ultralytics`` package, imported without its network checks.

    Ultralytics probes the network when it is imported (a DNS lookup that decides whether to
    send usage events and auto-install requirements) unless ``YOLO_OFFLINE`` is set; scrl sets it
    to ``1`` when the user has not set it, so that building a trunk or writing an export stays
    offline. Set ``YOLO_OFFLINE=0`` before the import for Ultralytics' default behaviour. It also
    replaces ``PIL.Image.open`` process-wide (for HEIF photos); scrl puts PIL's own back, so that
    an unreadable image stays PIL's error.

    Raises:
        ValueError: ultralytics is not installed; the message says how to install it.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    pil_open = PIL.Image.open
    try:
        import ultralytics
        import ultralytics.utils.patches  # noqa: F401  (replaces PIL.Image.open when first imported)
    except ImportError as err:
        raise ValueError('Ultralytics YOLO trunks and exports need ultralytics (AGPL-3.0): pip install "scrl[ultralytics]"') from err
    finally:
        # Ultralytics swaps in an Image.open that, on an image PIL cannot read, tries to install
        # pi-heif and fails with ModuleNotFoundError: a damaged photo must stay an error naming it.
        PIL.Image.open = pil_open
    return ultralytics


def detection_model(model_yaml: str, **kwargs: Any) -> nn.Module:
    """Ultralytics' ``DetectionModel`` of ``model_yaml`` (random init, silent), as ``YOLO(model_yaml)`` builds it.

    Raises:
        ValueError: the name is no model YAML, or Ultralytics cannot build a detector from it.
    """
    if not isinstance(model_yaml, str) or not model_yaml.endswith((".yaml", ".yml")):
        raise ValueError(
            f"an Ultralytics trunk is built from a model YAML such as 'yolo11n.yaml' or 'yolov8s.yaml' (no weights are "
            f"read or downloaded), got {model_yaml!r}"
        )
    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel, guess_model_task, yaml_model_load

    try:
        task = guess_model_task(yaml_model_load(model_yaml))
        if task == "classify":
            raise ValueError(f"{model_yaml!r} is an Ultralytics classifier; a trunk is the backbone of a detector (yolo11n.yaml)")
        return DetectionModel(model_yaml, verbose=False, **kwargs)
    except FileNotFoundError as err:
        raise ValueError(f"Ultralytics has no model YAML {model_yaml!r} ({err}); its YAMLs are under ultralytics/cfg/models") from err
    except (KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise ValueError(f"Ultralytics cannot build a detector from {model_yaml!r}: {err}") from err


class _YoloBackbone(nn.Module):
    """The first layers of an Ultralytics model, run as Ultralytics runs them (a layer may read earlier outputs).

    The layers sit in ``self.model`` under their indices, so the state dict keys are the
    detector's own (``model.0.conv.weight`` ...). With ``imagenet_input`` the module takes images
    normalised with ImageNet's mean and std, as every scrl trunk does, and hands the layers the
    pixels in ``[0, 1]`` that Ultralytics feeds its detectors: the pretrained layers see what
    they will see when fine-tuned.
    """

    def __init__(self, layers: list[nn.Module], imagenet_input: bool = True) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)
        self._sequential = all(layer.f == -1 for layer in layers)
        self.imagenet_input = imagenet_input
        # Not persistent: the state dict stays the detector's own.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.imagenet_input:
            x = torch.addcmul(self.mean.to(x.dtype), x, self.std.to(x.dtype))
        return self.model(x) if self._sequential else _layer_outputs(self.model, x)[-1]

    def extra_repr(self) -> str:
        return f"imagenet_input={self.imagenet_input}"


def _layer_outputs(layers: Iterable[nn.Module], x: Tensor) -> list[Tensor]:
    """Every layer's output, each layer reading the earlier outputs its ``f`` names (-1: the previous one)."""
    outputs: list[Tensor] = []
    for layer in layers:
        if layer.f != -1:
            x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
        x = layer(x)
        outputs.append(x)
    return outputs


def ultralytics_backbone_layers(model: nn.Module) -> int:
    """How many leading layers of an Ultralytics detection model make its backbone up to the stride-32 output.

    The layers of the YAML's ``backbone`` list, cut after the last one whose output has stride
    32 (a P6 model's backbone goes on to stride 64; its stride-32 part is taken).

    Raises:
        ValueError: no backbone layer reaches stride 32.
    """
    with evaluating(model), torch.no_grad():
        outputs = _layer_outputs(model.model[: len(model.yaml["backbone"])], torch.zeros(1, 3, _PROBE_SIDE, _PROBE_SIDE))
    strides = [_PROBE_SIDE // x.shape[-1] if isinstance(x, Tensor) and x.dim() == 4 else None for x in outputs]
    if 32 not in strides:
        raise ValueError(f"the backbone of {model.yaml.get('yaml_file')} never reaches stride 32 (its strides: {strides})")
    return len(strides) - strides[::-1].index(32)


def ultralytics_trunk(name: str, **kwargs: Any) -> Trunk:
    """The backbone of an Ultralytics YOLO detector (random init) up to its stride-32 output.

    It is the builder of the namespace :data:`ULTRALYTICS_PREFIX`:
    ``create_trunk("ultralytics:yolo11n.yaml")`` calls it. The stride is 32, the channels are
    the last layer's, and the cell offset is measured (:func:`~scrl.cell_centre.measure_cell_offset`;
    the SPPF max-pool looks at the same cells as an average pool, and the attention blocks of
    YOLO11/YOLO12 keep every cell where it is; tests/test_yolo_trunk.py checks the measured
    offset against the layers before them).

    Args:
        name: a model YAML of Ultralytics (``"yolo11n.yaml"``, ``"yolov8s.yaml"``,
            ``"yolo12n.yaml"``; the scale letter picks the width and depth), or the path of one;
            with or without the ``"ultralytics:"`` prefix.
        **kwargs: for Ultralytics' ``DetectionModel`` (``ch=3``).

    Returns:
        :class:`~scrl.trunk.Trunk` whose ``backbone_state_dict()`` keys are the detector's own
        (``model.0.conv.weight`` ...). It takes views normalised with ImageNet's mean and std, as
        every trunk here, and gives its layers the pixels in ``[0, 1]`` Ultralytics gives them.

    Raises:
        ValueError: ultralytics is not installed, the YAML is unknown or builds no detector, or
            its backbone never reaches stride 32.

    Example:
        >>> trunk = ultralytics_trunk("yolo11n.yaml")        # doctest: +SKIP
        >>> trunk.stride, trunk.channels, trunk.cell_offset  # doctest: +SKIP
        (32, 256, 0.5)
    """
    name = name.removeprefix(ULTRALYTICS_PREFIX)
    model = detection_model(name, **kwargs)
    layers = list(model.model[: ultralytics_backbone_layers(model)])
    body = _YoloBackbone(layers)
    with evaluating(body), torch.no_grad():
        channels = int(body(torch.zeros(1, 3, 64, 64)).shape[1])
    return Trunk(body, stride=32, channels=channels, arch=ULTRALYTICS_PREFIX + name)
