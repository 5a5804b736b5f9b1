"""Where the cells of a trunk's feature map look: the cell-centre offset, measured with a probe.

RoIAlign has to know where each feature cell sits in the input to pool a box where it really
is. For a trunk of stride ``s``, cell ``i`` is centred at ``s * i + cell_offset`` input pixels
(pixel-edge coordinates: a W-px image spans ``[0, W]``). The offset depends on the layers:

* torchvision ResNets: every stride-2 stage puts output ``j`` over input index ``2j`` (7x7 and
  3x3 kernels with symmetric padding, the padded 3x3 max-pool), so C5 cell ``i`` is centred on
  input pixel ``32i``, whose centre is ``32i + 0.5``: ``cell_offset = 0.5``.
* non-overlapping ``k x k`` stride-``k`` patches (ConvNeXt's stem and downsamplers):
  ``cell_offset = stride / 2``.

:func:`measure_cell_offset` finds the offset of any convolutional module: it turns a copy into a
linear, translation-equivariant network with positive constant kernels and reads the centroid of
the gradient of one interior output cell with respect to the input.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["linearised_copy", "measure_cell_offset", "map_cell_geometry"]

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_MAX_TO_AVG = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
# Squeeze-and-excitation gates (EfficientNet, MobileNetV3, RegNetY, and timm's kin) scale each
# channel by a function of the whole map: they move no cell, but on the positive probe their
# products of global means overflow, so the probe leaves them out.
_CHANNEL_GATE_NAMES = ("SqueezeExcitation", "SqueezeExcite", "SEModule", "EffectiveSEModule", "EcaModule", "CecaModule")
# Self-attention over a map (the PSA and area-attention blocks of YOLO11/YOLO12) mixes every cell
# into every other and keeps each cell where it is: on the constant probe it would spread one
# cell's gradient over the whole image, so the probe leaves it out too.
_SELF_ATTENTION_NAMES = ("Attention", "AAttn")


def _is_channel_gate(module: nn.Module) -> bool:
    return type(module).__name__ in _CHANNEL_GATE_NAMES + _SELF_ATTENTION_NAMES


def _linearise_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, _ACTIVATIONS + _NORMS) or _is_channel_gate(child):
            setattr(module, name, nn.Identity())
        elif type(child) in _MAX_TO_AVG:
            dilation = child.dilation if isinstance(child.dilation, tuple) else (child.dilation,)
            if any(d != 1 for d in dilation):
                raise ValueError(f"cannot locate the cells of a dilated max-pool ({child}); pass cell_offset explicitly")
            # Same window and stride: a max-pool looks at the same input cells as this average.
            avg = _MAX_TO_AVG[type(child)](child.kernel_size, child.stride, child.padding, child.ceil_mode)
            setattr(module, name, avg)
        else:
            _linearise_children(child)


def linearised_copy(module: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``module`` made linear and positive, for locating its cells.

    Convolutions and linear layers get constant positive weights (``1 / fan_in``) and zero
    biases; activations, normalisation layers, squeeze-and-excitation gates and self-attention
    blocks (``Attention``, ``AAttn``) become identities; max-pools become average
    pools over the same windows; forward hooks are dropped. What is left is translation-equivariant
    with symmetric, positive kernels, so the gradient of one output cell is a bump centred where
    the cell looks. Activations applied functionally inside ``forward`` (not as modules) are left
    as they are; on the positive signals of the probe most of them pass it on unchanged in shape.

    Args:
        module: any module; it is not modified.

    Returns:
        The copy, in eval mode, without gradients on its parameters.
    """
    probe = copy.deepcopy(module).float().cpu().eval()
    _linearise_children(probe)
    with torch.no_grad():
        for sub in probe.modules():
            sub._forward_hooks.clear()
            sub._forward_pre_hooks.clear()
            if isinstance(sub, (nn.modules.conv._ConvNd, nn.Linear)):
                sub.weight.fill_(1.0 / sub.weight[0].numel())
                if sub.bias is not None:
                    sub.bias.zero_()
    return probe.requires_grad_(False)


def gradient_centroid(grad: torch.Tensor) -> tuple[float, float]:
    """Centroid ``(x, y)`` of a non-negative input gradient ``[..., H, W]``, in pixel-edge px.

    Pixel ``(row, col)`` counts at its centre ``(col + 0.5, row + 0.5)``.

    Raises:
        ValueError: the gradient is zero everywhere (the output does not depend on the input).
    """
    g = grad.detach().double().abs().reshape(-1, *grad.shape[-2:]).sum(0)
    total = g.sum()
    if not total > 0:
        raise ValueError("the output does not depend on the input: its gradient is zero everywhere")
    xs = torch.arange(g.shape[1], dtype=torch.float64) + 0.5
    ys = torch.arange(g.shape[0], dtype=torch.float64) + 0.5
    return float((g.sum(0) * xs).sum() / total), float((g.sum(1) * ys).sum() / total)


def measure_cell_offset(module: nn.Module, stride: int, *, stage: str | None = None, size: int | None = None) -> float:
    """Measure where the cells of ``module``'s output map are centred: ``stride * i + offset``.

    Runs :func:`linearised_copy` of ``module`` on one ``[1, 3, size, size]`` input and takes the
    centroid of the gradient of the output cell nearest the image centre. The result is rounded to
    the nearest half pixel: every convolution or pooling window of integer size, stride and padding
    puts its centre on a multiple of half an input pixel, so offsets lie on that grid.

    Args:
        module: maps ``[B, 3, H, W]`` images to a ``[B, C, H', W']`` map (or, with ``stage``,
            contains the submodule that does).
        stride: input pixels per cell of the probed map, >= 1.
        stage: name of a submodule of ``module`` (``"layer3"``) whose output is probed instead.
        size: side of the probe input in pixels; default ``16 * stride`` (at least 256), wide
            enough that the probed cell's receptive field is not cut by the image border.

    Returns:
        The offset in input pixels (0.5 for a torchvision ResNet at every stage).

    Raises:
        ValueError: ``stride`` or ``size`` out of range, ``stage`` not found, the output is not a
            4-d map, its cells do not depend on the input, or the x and y offsets differ.

    Example:
        >>> measure_cell_offset(nn.Conv2d(3, 8, 4, stride=4), stride=4)
        2.0
    """
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1 (input pixels per feature cell), got {stride!r}")
    size = max(16 * stride, 256) if size is None else size
    if not isinstance(size, int) or size < 2 * stride:
        raise ValueError(f"size must be an integer >= 2 * stride = {2 * stride} pixels, got {size!r}")
    # A positive image keeps every signal of the positive network positive, so activations the
    # module calls as functions (F.relu in forward) let the gradient through.
    with torch.inference_mode(False), torch.enable_grad():  # callers may be evaluating
        probe = linearised_copy(module)
        captured: list[torch.Tensor] = []
        if stage is not None:
            try:
                target = probe.get_submodule(stage)
            except AttributeError as err:
                raise ValueError(f"stage: no submodule {stage!r} in {type(module).__name__}") from err
            target.register_forward_hook(lambda _m, _i, out: captured.append(out))
        image = torch.ones(1, 3, size, size, requires_grad=True)
        output = probe(image)
        fmap = captured[0] if stage is not None else output
        if not isinstance(fmap, torch.Tensor) or fmap.dim() != 4:
            got = list(fmap.shape) if isinstance(fmap, torch.Tensor) else type(fmap).__name__
            raise ValueError(f"the probed output must be a [B, C, H, W] feature map, got {got}")
        if not fmap.requires_grad:
            raise ValueError("the output does not depend on the input: no gradient reaches the image")
        cells = size / stride
        if not cells / 2 <= fmap.shape[-1] <= cells + 2:
            raise ValueError(
                f"stride {stride} does not fit the map: a {size}-px input gives {fmap.shape[-1]} cells, "
                f"about {size / fmap.shape[-1]:.1f} px each"
            )
        row, col = fmap.shape[-2] // 2, fmap.shape[-1] // 2
        fmap[0, :, row, col].sum().backward()
    x, y = gradient_centroid(image.grad)
    offset_x, offset_y = x - stride * col, y - stride * row
    if abs(offset_x - offset_y) > 0.25:
        raise ValueError(f"cells are centred differently in x and y (offsets {offset_x:.2f} and {offset_y:.2f} px)")
    return round(offset_x * 2) / 2


def map_cell_geometry(
    module: nn.Module, input_size: int, map_width: int, stage: str | None = None
) -> tuple[int, float]:
    """``(stride, cell_offset)`` of a feature map that ``module`` gave for a square input.

    A :class:`~scrl.Trunk`'s own ``stride`` and ``cell_offset`` for its output; otherwise (any
    module, or a named ``stage`` of it) the stride read off the map, ``input_size / map_width``
    rounded to a power of two, and the offset measured with :func:`measure_cell_offset`.

    Args:
        module: the trunk (a ``Trunk`` or any module returning a feature map).
        input_size: side of the input image in pixels.
        map_width: width of the map it gave, in cells.
        stage: name of the submodule (of ``module.body`` for a ``Trunk``) whose output the map is.
    """
    if stage is None and hasattr(module, "stride") and hasattr(module, "cell_offset"):
        return int(module.stride), float(module.cell_offset)
    stride = 2 ** max(0, round(math.log2(input_size / map_width)))
    body = module.body if stage is not None and isinstance(getattr(module, "body", None), nn.Module) else module
    return stride, measure_cell_offset(body, stride, stage=stage)
