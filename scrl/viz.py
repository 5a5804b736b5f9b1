"""Pictures of matched box pairs, for checking and explaining the sampler, and figures saved to files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from .box_sampler import BoxPairs
from .transforms.normalize import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["draw_box_pairs", "headless_pyplot", "save_figure", "to_uint8_image"]

# Ten well-separated colours (matplotlib's "tab10"), cycled over the K pairs.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def to_uint8_image(
    image: Tensor,
    normalized: bool | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """An image tensor as displayable uint8 ``[3, H, W]``.

    Args:
        image: ``[3, H, W]`` uint8 (returned as is), float in [0, 1], or float normalised
            with ``mean``/``std``.
        normalized: whether a float image is normalised; ``None`` guesses it from the range
            (values outside [0, 1] mean normalised).
        mean: per-channel mean used for normalisation.
        std: per-channel standard deviation used for normalisation.

    Returns:
        uint8 ``[3, H, W]`` on the CPU.

    Example:
        >>> to_uint8_image(torch.zeros(3, 8, 8)).dtype
        torch.uint8
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape [3, H, W], got {list(image.shape)}")
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise ValueError(f"image must be uint8 or floating point, got dtype {image.dtype}")
    image = image.float()
    if normalized is None:
        normalized = bool(image.min() < 0 or image.max() > 1)
    if normalized:
        image = image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def draw_box_pairs(
    view1: Tensor,
    view2: Tensor,
    pairs: BoxPairs,
    index: int = 0,
    *,
    gap: int = 8,
    width: int = 2,
    labels: bool = True,
    normalized: bool | None = None,
) -> Tensor:
    """The two views side by side, each valid matched pair drawn in one colour in both.

    Args:
        view1: view-1 image ``[3, H1, W1]``, or a batch ``[N, 3, H1, W1]`` (row ``index`` is
            drawn); uint8, float in [0, 1] or ImageNet-normalised float.
        view2: view-2 image(s), same conventions.
        pairs: :class:`BoxPairs` with ``[N, K, 4]`` boxes in view pixels.
        index: which image of the batch, ``0 <= index < N``.
        gap: white columns between the views, >= 0.
        width: box line width in pixels, >= 1.
        labels: write the pair's slot number ``k`` above each box.
        normalized: whether float views are normalised; ``None`` guesses (see :func:`to_uint8_image`).

    Returns:
        uint8 ``[3, max(H1, H2), W1 + gap + W2]`` (the shorter view is padded with white below).

    Example:
        >>> v1, v2, g1, g2 = TwoViewTransform.byol(96)(img)
        >>> picture = draw_box_pairs(v1, v2, BoxPairSampler(min_size=16)(g1, g2))
        >>> torchvision.io.write_png(picture, "pairs.png")
    """
    n = pairs.valid.shape[0]
    if not -n <= index < n:
        raise ValueError(f"index must be in [0, {n}) (the batch size of pairs), got {index}")
    if gap < 0 or width < 1:
        raise ValueError(f"gap must be >= 0 and width >= 1, got gap={gap}, width={width}")
    panels = [to_uint8_image(view[index] if view.dim() == 4 else view, normalized) for view in (view1, view2)]
    valid = pairs.valid[index].cpu()
    slots = valid.nonzero().flatten().tolist()
    colors = [PALETTE[k % len(PALETTE)] for k in slots]
    names = [str(k) for k in slots] if labels else None
    drawn = []
    for panel, boxes in zip(panels, (pairs.boxes1, pairs.boxes2)):
        kept = boxes[index].detach().cpu().float()[valid]
        drawn.append(draw_bounding_boxes(panel, kept, labels=names, colors=colors, width=width) if slots else panel)
    height = max(p.shape[1] for p in drawn)
    canvas = torch.full((3, height, drawn[0].shape[2] + gap + drawn[1].shape[2]), 255, dtype=torch.uint8)
    canvas[:, : drawn[0].shape[1], : drawn[0].shape[2]] = drawn[0]
    canvas[:, : drawn[1].shape[1], drawn[0].shape[2] + gap :] = drawn[1]
    return canvas


def headless_pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed), or ``None`` without matplotlib.

    matplotlib is optional (``pip install "scrl[plot]"``); a caller without it skips its figure.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: str | Path, title: str, title_size: float = 9, dpi: int = 120) -> None:
    """Title and legend on ``fig``'s first axes, then the figure written to ``path`` (its folder made) and closed.

    Args:
        fig: a matplotlib figure from :func:`headless_pyplot`'s ``subplots``.
        path: the image file; its suffix picks the format (``.png``).
        title: the axes' title.
        title_size: the title's font size, in points.
        dpi: dots per inch of the image.
    """
    import matplotlib.pyplot as plt

    ax = fig.axes[0]
    ax.set_title(title, fontsize=title_size)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
