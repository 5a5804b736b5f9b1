"""Render the figures of docs/geometry.md.

    python docs/make_figures.py [box_pairs] [cell_centres]    (no name: all figures)

* docs/figures/box_pairs.png: a COCO128 image with both crops and the sampled boxes, then
  view 1 and view 2 with each matched pair in one colour. Skipped (exit status 0) when
  ../shared/data/coco128-train is not there.
* docs/figures/cell_centres.png: where the C5 cells of a torchvision resnet18 look along one
  axis of a 192-px view, where RoIAlign's ``aligned=True`` / ``aligned=False`` assume they are,
  and where one box is pooled under each rule. Every position is measured (gradient centroids
  on a linearised copy of the trunk), none is typed in; about 12 s on two CPU cores (25 s
  with the imports).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes

from scrl import BoxPairSampler, TwoViewTransform, resnet_trunk
from scrl.cell_centre import gradient_centroid, linearised_copy
from scrl.roi_pool import pool_boxes
from scrl.data import to_rgb
from scrl.transforms import byol_view
from scrl.viz import PALETTE, draw_box_pairs

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared/data/coco128-train"
IMAGE = "000000000025.jpg"  # a giraffe among trees: structure that makes matches easy to check
VIEW_SIZE = 224
GAP = 12
NUM_BOXES = 5  # fewer than the default 10, so that each box stays visible

# cell_centres.png: a 192-px view (6 x 6 C5 cells) in the middle of a 512-px zero canvas, so that
# no probed cell's gradient bump is cut off by the canvas border (it spans about +-150 px).
CELL_VIEW = 192
CELL_MARGIN = 160
PROBED_CELLS = (2, 3, 4)  # view columns whose gradient is measured (row 2)
CELL_BOX = (70.0, 60.0, 130.0, 140.0)  # a 60 x 80 px box in view pixels, centred at (100, 100)
# (label, roi_align rule for pool_boxes, colour, marker): exact pooling, Detectron2's, the authors'
RULES = (
    ("exact (aligned=None)", None, "#2ca02c", "o"),
    ("aligned=True", True, "#d62728", "^"),
    ("aligned=False", False, "#1f77b4", "s"),
)


def pick_views(img: Image.Image) -> tuple:
    """The first seed whose views differ in flip and hold all pairs, so the figure shows both cases."""
    transform = TwoViewTransform(
        byol_view(1, VIEW_SIZE, photometric=False, output="float"),
        byol_view(2, VIEW_SIZE, photometric=False, output="float"),
    )
    sampler = BoxPairSampler(num_boxes=NUM_BOXES, min_size=32)
    for seed in range(1000):
        torch.manual_seed(seed)
        view1, view2, geom1, geom2 = transform(img)
        pairs = sampler(geom1, geom2)  # CPU geometries: the sampler goes on with the global stream
        if bool(geom1.flipped) != bool(geom2.flipped) and bool(pairs.valid.all()):
            return view1, view2, geom1, geom2, pairs
    raise RuntimeError(f"no seed gave one flipped and one unflipped view with {NUM_BOXES} pairs")


def source_panel(img: Image.Image, geom1, geom2, pairs) -> torch.Tensor:
    """The source image at view height, crop 1 in white, crop 2 in black, the boxes in colour."""
    scale = VIEW_SIZE / img.height
    panel = F.pil_to_tensor(F.resize(img, [VIEW_SIZE, round(img.width * scale)]))
    crops = torch.stack([geom1.crop, geom2.crop]).float() * scale
    panel = draw_bounding_boxes(panel, crops, colors=["white", "black"], width=4)
    valid = pairs.valid[0]
    slots = valid.nonzero().flatten().tolist()
    boxes = geom1.view_to_source(pairs.boxes1[0][valid].double()).float() * scale
    return draw_bounding_boxes(panel, boxes, colors=[PALETTE[k % len(PALETTE)] for k in slots], width=3)


def measure_cell_centres() -> dict:
    """Measure, on a linearised resnet18, where C5 cells and one box pooled with each rule look.

    One zero canvas per probe, all in one batch: a cell's (or a pooled box's) gradient with
    respect to its canvas is a bump centred where it looks (:mod:`scrl.cell_centre`).

    Returns:
        ``stride``, ``cell_offset`` (declared by the trunk), ``centres``: ``{column: x}`` of the
        probed cells, ``offset``: their mean ``x - stride * column``, ``profiles``:
        ``{column: gradient summed over rows and channels}`` with ``xs`` (pixel centres in view
        px), and ``pooled``: ``{label: (x, y)}`` of the box pooled with each rule, in view px.
    """
    trunk = resnet_trunk("resnet18")
    body = linearised_copy(trunk.body)
    stride, side = trunk.stride, CELL_VIEW + 2 * CELL_MARGIN
    first, cells = CELL_MARGIN // stride, CELL_VIEW // stride
    canvas = torch.zeros(len(PROBED_CELLS) + len(RULES), 3, side, side, requires_grad=True)
    view_map = body(canvas)[..., first : first + cells, first : first + cells]
    outputs = [view_map[n, :, 2, column].sum() for n, column in enumerate(PROBED_CELLS)]
    box = torch.tensor([CELL_BOX])
    for n, (_, aligned, _, _) in enumerate(RULES, start=len(PROBED_CELLS)):
        rows = pool_boxes(view_map[n : n + 1], [box], spatial_scale=1 / stride, aligned=aligned, cell_offset=trunk.cell_offset)
        outputs.append(rows.sum())
    torch.stack(outputs).sum().backward()
    grads = canvas.grad
    centres = {c: gradient_centroid(grads[n])[0] - CELL_MARGIN for n, c in enumerate(PROBED_CELLS)}
    profiles = {c: grads[n].sum(dim=(0, 1)).double() for n, c in enumerate(PROBED_CELLS)}
    pooled = {}
    for n, (label, _, _, _) in enumerate(RULES, start=len(PROBED_CELLS)):
        x, y = gradient_centroid(grads[n])
        pooled[label] = (x - CELL_MARGIN, y - CELL_MARGIN)
    return {
        "stride": stride,
        "cell_offset": trunk.cell_offset,
        "centres": centres,
        "offset": sum(x - stride * c for c, x in centres.items()) / len(centres),
        "profiles": profiles,
        "xs": torch.arange(side, dtype=torch.float64) + 0.5 - CELL_MARGIN,
        "pooled": pooled,
    }


def _px(value: float) -> str:
    """A signed offset to one decimal, with a true minus sign and no "-0.0"."""
    value = round(value, 1) + 0.0
    return "0.0" if value == 0 else f"{value:+.1f}".replace("-", "\u2212")


def cell_centres_figure(out: Path) -> str:
    """Draw docs/figures/cell_centres.png from :func:`measure_cell_centres`; returns a summary."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit('the cell_centres figure needs matplotlib: pip install "scrl[plot]"') from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    m = measure_cell_centres()
    stride, offset, pooled = m["stride"], m["offset"], m["pooled"]
    cells = range(CELL_VIEW // stride)
    real = [stride * i + offset for i in cells]
    assumed = {True: [stride * i + stride / 2 for i in cells], False: [stride * i for i in cells]}
    x0, y0, x1, y1 = CELL_BOX
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2

    fig = plt.figure(figsize=(13, 6.2), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=(1.9, 1))
    left.suptitle(
        f"torchvision resnet18, C5 of a {CELL_VIEW}-px view ({len(cells)} cells of {stride} px); "
        "all positions measured",
        fontsize=11,
    )
    bumps, rows = left.subplots(2, 1, height_ratios=(1, 1.2))
    view = right.subplots()
    xlim = (-24, CELL_VIEW + 24)

    # Top left: the measured gradient bumps of a few cells, summed over rows.
    peak = max(float(p.max()) for p in m["profiles"].values())
    for column, profile in m["profiles"].items():
        x = m["centres"][column]
        label = f"cell {column}: {x:.1f} = {stride}\u00b7{column} + {x - stride * column:.1f}"
        line = bumps.plot(m["xs"], profile / peak, lw=0.9, label=label)[0]
        bumps.fill_between(m["xs"], profile / peak, color=line.get_color(), alpha=0.12)
        bumps.axvline(x, color=line.get_color(), ls="--", lw=1.2)
    bumps.set(xlim=xlim, ylim=(0, 1.45), yticks=[], ylabel="input gradient\n(sum over rows)")
    bumps.legend(loc="upper center", ncol=3, fontsize=8.5, frameon=False, handlelength=1.2, columnspacing=1.2)
    bumps.set_title(f"gradient of single C5 cells w.r.t. the input: bumps centred at {stride}i + {offset:.1f}",
                    fontsize=10, loc="left")  # fmt: skip

    # Bottom left: real and assumed cell centres, and the box pooled with each rule.
    levels = {"real": 3, "exact (aligned=None)": 2, "aligned=False": 1, "aligned=True": 0}
    rows.plot(real, [levels["real"]] * len(real), "o", color="black", ms=7)
    for label, aligned, colour, marker in RULES:
        level = levels[label]
        centres = real if aligned is None else assumed[aligned]
        rows.plot(centres, [level] * len(centres), marker, mfc="none", mec=colour, ms=7, mew=1.3)
        rows.plot([x0, x1], [level, level], color=colour, lw=8, alpha=0.25, solid_capstyle="butt")
        px = pooled[label][0]
        rows.plot(px, level, marker, color=colour, ms=11, mec="black", mew=0.8, zorder=5)
        rows.annotate(f"pooled at {_px(px - cx)} px", (px, level), xytext=(0, 9), textcoords="offset points",
                      ha="center", fontsize=9, color=colour, fontweight="bold")  # fmt: skip
    rows.axvline(cx, color="gray", ls=":", lw=1.2)
    rows.text(cx, -0.8, f"box centre {cx:.0f}", ha="center", fontsize=8.5, color="gray")
    rows.set_yticks(
        list(levels.values()),
        [f"real centres: {stride}i + {offset:.1f}", "exact: samples at them",
         f"aligned=False assumes {stride}i", f"aligned=True assumes {stride}i + {stride // 2}"],
    )  # fmt: skip
    rows.set(xlim=xlim, ylim=(-0.95, 3.5), xlabel="x (view px, pixel edges)")
    rows.set_title(f"box x = {x0:.0f} .. {x1:.0f} (bar); filled: centroid of the gradient of the box's pooled "
                   "feature", fontsize=10, loc="left")  # fmt: skip
    for ax in (bumps, rows):
        ax.axvspan(xlim[0], 0, color="0.9", zorder=0)
        ax.axvspan(CELL_VIEW, xlim[1], color="0.9", zorder=0)
        ax.set_xticks(range(0, CELL_VIEW + 1, stride))
        ax.grid(axis="x", color="0.85", lw=0.8)

    # Right: the whole view in 2-D, with the strips beyond the last cell centre shaded.
    last = real[-1]
    view.add_patch(plt.Rectangle((last, 0), CELL_VIEW - last, CELL_VIEW, fc="0.9", ec="none"))
    view.add_patch(plt.Rectangle((0, last), last, CELL_VIEW - last, fc="0.9", ec="none"))
    view.add_patch(plt.Rectangle((0, 0), CELL_VIEW, CELL_VIEW, fc="none", ec="black", lw=1))
    view.text(4, (last + CELL_VIEW) / 2, f"beyond the last centre ({last:.1f}):\nclamped to the border cell",
              fontsize=7.5, va="center", color="0.3")  # fmt: skip
    gx, gy = torch.meshgrid(torch.tensor(real), torch.tensor(real), indexing="xy")
    view.plot(gx.flatten(), gy.flatten(), "o", color="black", ms=4, label=f"real C5 centres ({stride}i + {offset:.1f})")
    view.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fc="none", ec="black", lw=1.5, ls="--"))
    view.plot(cx, cy, "+", color="black", ms=16, mew=1.5, label=f"box centre ({cx:.0f}, {cy:.0f})", zorder=6)
    for label, _, colour, marker in RULES:
        px, py = pooled[label]
        view.plot(px, py, marker, color=colour, ms=9, mec="black", mew=0.8,
                  label=f"{label}: ({_px(px - cx)}, {_px(py - cy)}) px")  # fmt: skip
    view.set(xlim=(-4, CELL_VIEW + 4), ylim=(CELL_VIEW + 4, -4), aspect="equal")
    view.set(xlabel="x (view px)", ylabel="y (view px)")
    view.set_xticks(range(0, CELL_VIEW + 1, stride))
    view.set_yticks(range(0, CELL_VIEW + 1, stride))
    right.suptitle("the view: a box (dashed), where each rule pools it", fontsize=11)
    view.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8.5, frameon=False)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    shifts = ", ".join(f"{label} {_px(pooled[label][0] - cx)} px" for label, _, _, _ in RULES)
    return f"cell offset {offset:.2f} px (declared {m['cell_offset']}); box pooled at {shifts}"


def box_pairs_figure(out: Path) -> str | None:
    """Draw docs/figures/box_pairs.png; ``None`` when the COCO128 image is not there."""
    if not (COCO128 / "images" / IMAGE).is_file():
        return None
    img = to_rgb(Image.open(COCO128 / "images" / IMAGE))
    view1, view2, geom1, geom2, pairs = pick_views(img)
    left = source_panel(img, geom1, geom2, pairs)
    right = draw_box_pairs(view1, view2, pairs, 0, gap=GAP, width=3, labels=False)
    gap = torch.full((3, VIEW_SIZE, GAP), 255, dtype=torch.uint8)
    figure = torch.cat([left, gap, right], dim=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(figure, str(out))
    return (
        f"{figure.shape[2]}x{figure.shape[1]}; view 1 flipped: {bool(geom1.flipped)}, view 2 flipped: "
        f"{bool(geom2.flipped)}, valid pairs: {int(pairs.valid.sum())}"
    )


FIGURES = {"box_pairs": box_pairs_figure, "cell_centres": cell_centres_figure}


def main() -> None:
    parser = argparse.ArgumentParser(description="Render the figures of docs/geometry.md.")
    parser.add_argument("figures", nargs="*", metavar="FIGURE", help=f"any of {', '.join(FIGURES)} (default: all)")
    names = parser.parse_args().figures or list(FIGURES)
    unknown = [name for name in names if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    for name in names:
        out = ROOT / "docs" / "figures" / f"{name}.png"
        start = time.perf_counter()
        summary = FIGURES[name](out)
        if summary is None:
            print(f"COCO128 image {IMAGE} not found under {COCO128}; {out.relative_to(ROOT)} not rendered")
        else:
            print(f"wrote {out.relative_to(ROOT)} in {time.perf_counter() - start:.1f} s ({summary})")


if __name__ == "__main__":
    main()
