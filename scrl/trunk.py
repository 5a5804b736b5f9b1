"""Trunks: the encoder f that maps an image batch to its last feature map (C5 for a ResNet).

SCRL pools boxes on this map, BYOL pools it globally. Both need its stride (input pixels per
feature cell) and its number of channels; SCRL also needs where each cell is centred in the
input, so that a box is pooled where the trunk really looks (:mod:`scrl.cell_centre`).

Trunks are found by name in one registry: :func:`register_trunk` adds a name,
:func:`create_trunk` builds it and :func:`list_trunks` lists the names. torchvision's CNN
families (:data:`FAMILIES`) are registered under their builder names, timm's CNNs under the
namespace ``"timm:"`` (:data:`TIMM_PREFIX`) and the backbones of Ultralytics' YOLO detectors under
``"ultralytics:"`` (:mod:`scrl.yolo_trunk`).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import math
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple

import torch
import torchvision
from torch import Tensor, nn

from .cell_centre import measure_cell_offset

__all__ = [
    "TIMM_PREFIX", "Trunk", "check_trunk_name", "create_trunk", "list_trunks", "register_trunk", "resnet_trunk",
    "supported_archs", "timm_trunk", "torchvision_trunk",
]

RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
# Every trunk takes RGB views normalised per channel with ImageNet's mean and std ([0, 1] scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Family(NamedTuple):
    """A family of torchvision classifiers: what their builder names start with, which of their
    modules (in order) make the stride-32 feature map, which module is the classifier, and where
    the map's cells are centred (measured; tests/test_trunk_families.py keeps it measured)."""

    prefixes: tuple[str, ...]
    feature_modules: tuple[str, ...]
    classifier: str
    cell_offset: float


# Every stride-2 stage of these with an odd kernel and symmetric padding puts output j over
# input 2j (cell i over pixel 32i, centred at 32i + 0.5); ConvNeXt's non-overlapping patch stem
# and downsamplers centre cell i at (i + 0.5) * 32.
FAMILIES: dict[str, _Family] = {
    "resnet": _Family(
        ("resnet", "resnext", "wide_resnet"),
        ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"), "fc", 0.5,
    ),
    "regnet": _Family(("regnet_x_", "regnet_y_"), ("stem", "trunk_output"), "fc", 0.5),
    "convnext": _Family(("convnext_",), ("features",), "classifier", 16.0),
    "efficientnet": _Family(("efficientnet_b", "efficientnet_v2_"), ("features",), "classifier", 0.5),
    "mobilenet_v3": _Family(("mobilenet_v3_",), ("features",), "classifier", 0.5),
}


def supported_archs() -> list[str]:
    """The torchvision builder names :func:`torchvision_trunk` takes, sorted; each is a registered trunk name.

    They are the trunks that export to torchvision (:func:`scrl.export.to_torchvision`) and carry
    torchvision's detectors (:mod:`scrl.eval.detection`); :func:`list_trunks` lists every name.
    """
    prefixes = tuple(prefix for family in FAMILIES.values() for prefix in family.prefixes)
    return sorted(name for name in torchvision.models.list_models(module=torchvision.models) if name.startswith(prefixes))


# The registered namespace of timm's models: "timm:convnext_nano" is timm's convnext_nano.
TIMM_PREFIX = "timm:"


def _family_of(arch: str) -> str | None:
    """The key of :data:`FAMILIES` whose prefixes ``arch`` starts with, or None."""
    return next((name for name, family in FAMILIES.items() if arch.startswith(family.prefixes)), None)


class Trunk(nn.Module):
    """A feature extractor with a declared output stride, channel count and cell centres.

    Args:
        body: any module mapping ``[B, 3, H, W]`` images to a ``[B, channels, H', W']`` feature
            map with ``H' = H / stride`` (rounded as the layers round).
        stride: input pixels per feature-map cell, >= 1 (32 for a ResNet's C5).
        channels: channels of the feature map, >= 1.
        cell_offset: cell ``i`` of the map is centred at ``stride * i + cell_offset`` input
            pixels (pixel-edge coordinates); ``None`` measures it
            once with :func:`~scrl.cell_centre.measure_cell_offset`.
        arch: the registered name the trunk is built from (:func:`create_trunk` sets it), which
            export uses to check the weights against that model; ``None`` for other modules.

    Example:
        >>> body = nn.Sequential(nn.Conv2d(3, 64, 8, stride=8), nn.ReLU())
        >>> trunk = Trunk(body, stride=8, channels=64)
        >>> trunk(torch.randn(2, 3, 64, 64)).shape, trunk.cell_offset
        (torch.Size([2, 64, 8, 8]), 4.0)
    """

    def __init__(
        self, body: nn.Module, stride: int, channels: int, cell_offset: float | None = None, arch: str | None = None
    ) -> None:
        super().__init__()
        if not isinstance(body, nn.Module):
            raise ValueError(f"body must be an nn.Module, got {type(body).__name__}")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an integer >= 1 (input pixels per feature cell), got {stride!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        if cell_offset is None:
            cell_offset = measure_cell_offset(body, stride)
        if not isinstance(cell_offset, (int, float)) or not math.isfinite(cell_offset):
            raise ValueError(f"cell_offset must be a finite number of input pixels, got {cell_offset!r}")
        self.body = body
        self.stride = stride
        self.channels = channels
        self.cell_offset = float(cell_offset)
        self.arch = arch

    def forward(self, x: Tensor) -> Tensor:
        """``x`` float ``[B, 3, H, W]`` -> feature map ``[B, channels, H / stride, W / stride]``."""
        return self.body(x)

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The weights under the key names of the model the body comes from (torchvision's, timm's)."""
        export = getattr(self.body, "backbone_state_dict", None)
        return export() if callable(export) else self.body.state_dict()

    def load_backbone_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load weights in the layout :meth:`backbone_state_dict` gives (strictly)."""
        load = getattr(self.body, "load_backbone_state_dict", None)
        (load if callable(load) else self.body.load_state_dict)(state)

    def extra_repr(self) -> str:
        arch = f"arch={self.arch!r}, " if self.arch is not None else ""
        return f"{arch}stride={self.stride}, channels={self.channels}, cell_offset={self.cell_offset}"


# Full names, and namespaces (names ending in ":") whose builders take the rest of a name.
_TRUNKS: dict[str, Callable[..., Trunk]] = {}
_NAMESPACES: dict[str, Callable[..., Trunk]] = {}


def register_trunk(
    name: str, builder: Callable[..., Trunk] | None = None, *, replace: bool = False
) -> Callable[..., Trunk] | Callable[[Callable[..., Trunk]], Callable[..., Trunk]]:
    """Register ``builder`` under ``name`` for :func:`create_trunk`, ``SCRL(name)`` and ``PretrainConfig(arch=name)``.

    Without ``builder`` it is a decorator that registers the function it decorates. A name
    ending in ``":"`` registers a namespace: ``create_trunk("NS:REST", **kwargs)`` calls
    ``builder("REST", **kwargs)`` for any non-empty ``REST`` (``"timm:"`` is one); a full name
    wins over a namespace. A registration holds in the process that makes it: make it when a
    module is imported that every process building the trunk imports (the training script, or a
    module it imports; ``torchrun`` starts each process from the script).

    Args:
        name: the trunk's name, or a namespace ending in ``":"``; not empty.
        builder: ``builder(**kwargs) -> Trunk`` (a namespace's ``builder(rest, **kwargs) -> Trunk``).
        replace: replace an earlier registration of ``name`` instead of refusing it.

    Returns:
        ``builder``; without it, the decorator.

    Raises:
        ValueError: ``name`` is empty or already registered (without ``replace``), or ``builder``
            is not callable.

    Example:
        >>> @register_trunk("patch-cnn")
        ... def patch_cnn(width: int = 64) -> Trunk:
        ...     return Trunk(nn.Sequential(nn.Conv2d(3, width, 32, stride=32), nn.ReLU()), stride=32, channels=width)
        >>> create_trunk("patch-cnn", width=16).channels
        16
    """
    if not isinstance(name, str) or not name.removesuffix(":"):
        raise ValueError(f"a trunk name must be a non-empty string, got {name!r}")
    if builder is None:
        return functools.partial(register_trunk, name, replace=replace)
    if not callable(builder):
        raise ValueError(f"the builder of trunk {name!r} must be callable, got {type(builder).__name__}")
    table = _NAMESPACES if name.endswith(":") else _TRUNKS
    if name in table and not replace:
        raise ValueError(f"trunk {name!r} is already registered; pass replace=True to replace it")
    table[name] = builder
    return builder


def create_trunk(name: str, **kwargs: Any) -> Trunk:
    """The trunk registered as ``name``, built by its builder with ``kwargs``.

    Args:
        name: a name of :func:`list_trunks`, or ``"NS:REST"`` in a registered namespace
            (``"timm:convnext_nano"``).
        **kwargs: for the builder; torchvision's pass them to ``torchvision.models.get_model``
            (``weights="DEFAULT"``), timm's to ``timm.create_model`` (``pretrained=True``).

    Returns:
        The builder's :class:`Trunk`, with ``arch`` set to ``name`` where the builder left it ``None``.

    Raises:
        ValueError: ``name`` is not registered (see :func:`check_trunk_name`), or its builder
            returns no :class:`Trunk`.

    Example:
        >>> trunk = create_trunk("resnet18")
        >>> trunk.stride, trunk.channels, trunk.cell_offset
        (32, 512, 0.5)
    """
    check_trunk_name(name)
    if name in _TRUNKS:
        trunk = _TRUNKS[name](**kwargs)
    else:
        namespace = _namespace_of(name)
        trunk = _NAMESPACES[namespace](name[len(namespace) :], **kwargs)
    if not isinstance(trunk, Trunk):
        raise ValueError(f"the builder of trunk {name!r} returned a {type(trunk).__name__}, not a Trunk")
    if trunk.arch is None:
        trunk.arch = name
    return trunk


def list_trunks(pattern: str | None = None) -> list[str]:
    """The registered trunk names, sorted; with ``pattern``, those it matches (fnmatch, case-sensitive).

    The names of a namespace are resolved on demand and not listed: ``"timm:NAME"`` takes any
    of timm's CNNs (``timm.list_models()`` lists timm's names, vision transformers among them,
    which are not trunks), so ``list_trunks("timm:*")`` is empty unless such a name is
    registered in full.

    Example:
        >>> list_trunks("convnext_*")
        ['convnext_base', 'convnext_large', 'convnext_small', 'convnext_tiny']
    """
    names = sorted(_TRUNKS)
    return names if pattern is None else [name for name in names if fnmatch.fnmatchcase(name, pattern)]


def check_trunk_name(name: str) -> None:
    """Refuse a name :func:`create_trunk` cannot build, without building anything.

    Raises:
        ValueError: ``name`` is neither registered nor in a registered namespace; the message
            starts with ``repr(name)`` and suggests the closest registered names.

    Example:
        >>> check_trunk_name("timm:convnext_nano")  # a namespace's names pass unseen, timm or not
        >>> check_trunk_name("resnet5")
        Traceback (most recent call last):
        ValueError: 'resnet5' is not a supported trunk (did you mean 'resnet50' or 'resnet152' or 'resnet34'?); ...
    """
    if isinstance(name, str) and (name in _TRUNKS or _namespace_of(name) is not None):
        return
    close = difflib.get_close_matches(name, list(_TRUNKS), n=3) if isinstance(name, str) else []
    guess = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    namespaces = ", ".join(f"'{namespace}NAME'" for namespace in sorted(_NAMESPACES))
    raise ValueError(
        f"{name!r} is not a supported trunk{guess}; the trunks are the names of scrl.trunk.list_trunks() "
        f"and {namespaces}; register another with scrl.trunk.register_trunk(name, builder)"
    )


def _namespace_of(name: str) -> str | None:
    """The longest registered namespace that ``name`` lies in, with something after it; None if none."""
    return max((ns for ns in _NAMESPACES if name.startswith(ns) and len(name) > len(ns)), key=len, default=None)


def torchvision_trunk(arch: str | nn.Module, **kwargs: Any) -> Trunk:
    """A torchvision classification CNN without its global pool and classifier, returning its last map.

    ``trunk.body`` is an ``nn.Sequential`` of the model's own feature modules under their
    torchvision names (``conv1 ... layer4`` for ResNets, ``stem, trunk_output`` for RegNets,
    ``features`` for ConvNeXt, EfficientNet and MobileNetV3), so ``trunk.body.state_dict()``
    loads into ``torchvision.models.get_model(arch)`` with only the classifier missing.

    Args:
        arch: a builder name of one of :data:`FAMILIES` (``"resnet50"``, ``"resnext50_32x4d"``,
            ``"wide_resnet50_2"``, ``"regnet_y_800mf"``, ``"convnext_tiny"``, ``"efficientnet_b0"``,
            ``"efficientnet_v2_s"``, ``"mobilenet_v3_large"``, ...; :func:`supported_archs`), or such
            a model instance, whose modules are reused (not copied).
        **kwargs: for ``torchvision.models.get_model`` with a name; ``weights=None`` (random
            init) unless given (``weights="DEFAULT"``).

    Returns:
        :class:`Trunk` with ``stride=32``, the map's ``channels``, the family's ``cell_offset``
        and ``arch`` set to the builder name (for an instance: found from the layout of its
        weights; ``None`` for a RegNet instance, whose builders cannot be laid out without
        building them).

    Raises:
        ValueError: ``arch`` is no supported name or model (the message lists the families), or
            ``kwargs`` come with a model instance.

    Example:
        >>> trunk = torchvision_trunk("convnext_tiny")
        >>> trunk.channels, trunk.cell_offset
        (768, 16.0)
    """
    if isinstance(arch, str):
        if arch not in supported_archs():
            raise ValueError(_unsupported(arch))
        family = _family_of(arch)
        model = torchvision.models.get_model(arch, **{"weights": None, **kwargs})
    elif kwargs:
        raise ValueError(f"options {', '.join(sorted(kwargs))} build a model by name; a model instance is used as it is")
    elif isinstance(arch, _FAMILY_CLASSES):
        model = arch
        family = next(name for cls, name in _FAMILY_CLASSES_TO_NAMES if isinstance(model, cls))
        arch = _arch_of(model, family)
    else:
        raise ValueError(_unsupported(type(arch).__name__))
    spec = FAMILIES[family]
    body = nn.Sequential(OrderedDict((name, getattr(model, name)) for name in spec.feature_modules))
    return Trunk(body, stride=32, channels=_map_channels(body), cell_offset=spec.cell_offset, arch=arch)


_FAMILY_CLASSES_TO_NAMES = (
    (torchvision.models.ResNet, "resnet"), (torchvision.models.RegNet, "regnet"), (torchvision.models.ConvNeXt, "convnext"),
    (torchvision.models.EfficientNet, "efficientnet"), (torchvision.models.MobileNetV3, "mobilenet_v3"),
)
_FAMILY_CLASSES = tuple(cls for cls, _ in _FAMILY_CLASSES_TO_NAMES)


def _arch_of(model: nn.Module, family: str) -> str | None:
    """The builder name of a torchvision model instance, from the layout of its weights; None if unknown."""
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in supported_archs():
        if _family_of(name) != family:
            continue
        try:
            with torch.device("meta"):  # the layout only: nothing is allocated or initialised
                candidate = torchvision.models.get_model(name, weights=None)
        except NotImplementedError:  # builders that compute their widths with tensors (RegNets)
            continue
        if type(candidate) is type(model) and {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == state:
            return name
    return None


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``module`` in eval mode (no BatchNorm statistics move), then restore its mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _map_channels(body: nn.Module) -> int:
    """Channels of ``body``'s map, from one small forward pass."""
    with evaluating(body), torch.no_grad():
        return int(body(torch.zeros(1, 3, 64, 64, device=next(body.parameters()).device)).shape[1])


class _TimmFeatures(nn.Module):
    """A timm model's ``forward_features``: its unpooled last map, its weights under timm's names."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def backbone_state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load_backbone_state_dict(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)


def timm_trunk(name: str, **kwargs: Any) -> Trunk:
    """A timm model (random init) without its classifier, returning its last feature map.

    Needs the optional ``timm`` extra (``pip install "scrl[timm]"``); ``import scrl`` does not.
    The trunk's ``backbone_state_dict()`` is a timm state dict that
    ``timm.create_model(name).load_state_dict(sd, strict=False)`` takes with only the classifier
    missing. The stride comes from timm's ``feature_info``, the channels from ``num_features``,
    and the cell offset is measured (:func:`~scrl.cell_centre.measure_cell_offset`). It is the
    builder of the namespace :data:`TIMM_PREFIX`: ``create_trunk("timm:NAME")`` calls it.

    Args:
        name: a timm model name, with or without the ``"timm:"`` prefix (``"convnext_nano"``,
            ``"timm:regnety_002"``); the model must give a 4-d map from ``forward_features``
            (CNNs; not vision transformers).
        **kwargs: for ``timm.create_model``; ``pretrained=False`` unless given, ``num_classes=0``.

    Raises:
        ValueError: timm is not installed, the name is unknown to it, or the model gives no map.
    """
    name = name.removeprefix(TIMM_PREFIX)
    try:
        import timm
    except ImportError as err:
        raise ValueError(f"trunk 'timm:{name}' needs timm: pip install \"scrl[timm]\"") from err
    try:
        model = timm.create_model(name, **{"pretrained": False, **kwargs}, num_classes=0)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"timm has no model {name!r} ({err}); see timm.list_models()") from err
    body = _TimmFeatures(model)
    stride = int(model.feature_info[-1]["reduction"])
    try:
        _freeze_unused(body)
        return Trunk(body, stride=stride, channels=int(model.num_features), arch=TIMM_PREFIX + name)
    except (AssertionError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"timm's {name} gives no CNN feature map from forward_features that scrl can pool ({err}); vision "
            "transformers are not trunks here"
        ) from err


def _freeze_unused(body: nn.Module) -> None:
    """Stop training the parameters ``body``'s forward never uses (timm keeps pre-logits layers such as
    ConvNeXt's ``head.norm`` and MobileNetV3's ``conv_head`` outside ``forward_features``): they would get
    no gradient, which DistributedDataParallel refuses. They stay in the export, untrained."""
    params = [p for p in body.parameters() if p.requires_grad]
    with evaluating(body), torch.enable_grad():
        grads = torch.autograd.grad(body(torch.zeros(1, 3, 128, 128)).sum(), params, allow_unused=True)
    for param, grad in zip(params, grads):
        if grad is None:
            param.requires_grad_(False)


def _unsupported(arch: object) -> str:
    families = ", ".join(f"{name} ({'|'.join(f.prefixes)}*)" for name, f in FAMILIES.items())
    return (
        f"arch {arch!r} is not a supported trunk: give a torchvision classifier of the families {families} "
        f"(e.g. {', '.join(('resnet50', 'resnext50_32x4d', 'regnet_y_800mf', 'convnext_tiny', 'efficientnet_b0', 'mobilenet_v3_large'))}; "
        "all: scrl.trunk.supported_archs()), a timm model as 'timm:NAME' (pip install \"scrl[timm]\"), or any module "
        "returning a feature map wrapped as Trunk(module, stride, channels) or registered with scrl.trunk.register_trunk"
    )


def resnet_trunk(arch: str | torchvision.models.ResNet) -> Trunk:
    """A torchvision ResNet without its global pool and classifier, returning C5.

    ``trunk.body`` is an ``nn.Sequential`` of the ResNet's own modules named as in torchvision
    (``conv1, bn1, relu, maxpool, layer1 .. layer4``), so ``trunk.body.state_dict()`` loads
    straight into ``torchvision.models.resnet50()`` (with ``strict=False`` for the missing fc).

    Args:
        arch: one of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` (built with
            random weights, ``weights=None``), or a ``torchvision.models.ResNet`` instance whose
            modules are reused (not copied).

    Returns:
        :class:`Trunk` with ``stride=32``, ``channels`` 512 (resnet18/34) or 2048 (resnet50/101)
        and ``cell_offset=0.5``: each stride-2 stage (7x7 conv with padding 3, padded 3x3
        max-pool, 3x3 convs with padding 1, 1x1 stride-2 shortcuts) puts output ``j`` over input
        index ``2j``, so C5 cell ``i`` is centred on pixel ``32i``, at ``32i + 0.5``.

    Example:
        >>> trunk = resnet_trunk("resnet18")
        >>> trunk(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 512, 2, 2])
    """
    if isinstance(arch, str) and arch not in RESNET_ARCHS:
        raise ValueError(f"arch must be one of {RESNET_ARCHS} or a torchvision ResNet, got {arch!r}")
    if not isinstance(arch, (str, torchvision.models.ResNet)):
        raise ValueError(f"arch must be one of {RESNET_ARCHS} or a torchvision ResNet, got {type(arch).__name__}")
    return torchvision_trunk(arch)


def as_trunk(trunk: nn.Module | str) -> Trunk:
    """``trunk`` itself if it is a :class:`Trunk`, :func:`create_trunk` of a name, else :func:`torchvision_trunk` of a model."""
    if isinstance(trunk, Trunk):
        return trunk
    if isinstance(trunk, str):
        return create_trunk(trunk)
    return torchvision_trunk(trunk)


def _register_builtin_trunks() -> None:
    for name in supported_archs():
        register_trunk(name, functools.partial(torchvision_trunk, name))
    register_trunk(TIMM_PREFIX, timm_trunk)  # timm is imported only when such a trunk is built
    register_trunk("ultralytics:", _ultralytics_trunk)


def _ultralytics_trunk(name: str, **kwargs: Any) -> Trunk:
    """:func:`scrl.yolo_trunk.ultralytics_trunk`, whose module (and Ultralytics) load only when such a trunk is built."""
    from .yolo_trunk import ultralytics_trunk

    return ultralytics_trunk(name, **kwargs)


_register_builtin_trunks()
