"""Pixel oracle: views of an image whose pixels spell out their own source coordinates.

Source pixel ``(column x, row y)`` has ``R = x`` and ``G = y``, so any pixel of a geometric
view (``photometric=False``) tells where in the source it was sampled. The recorded
:class:`ViewGeometry` and the sampled box pairs must agree with what the pixels say.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from scrl import BoxPairSampler, TwoViewTransform
from scrl.transforms import RandomHorizontalFlip, RandomResizedCrop, byol_view

WIDTH, HEIGHT = 200, 150  # both <= 256, so one 8-bit channel holds a coordinate exactly
INTERPOLATIONS = [InterpolationMode.NEAREST, InterpolationMode.BILINEAR, InterpolationMode.BICUBIC]
# Sizes that upsample (120x160 views of crops of 67..200 px) and downsample (48 px views).
VIEW_SIZES = [(120, 160), (48, 48)]


def coordinate_image() -> Image.Image:
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(WIDTH)[None, :]
    pixels[..., 1] = np.arange(HEIGHT)[:, None]
    return Image.fromarray(pixels)


def decode(view: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Source ``(x, y)`` read from the view pixel containing each point ``[P, 2]`` (view px).

    The pixel of column ``R`` spans ``[R, R + 1]``, so its centre ``R + 0.5`` is the decoded x.
    """
    height, width = view.shape[1:]
    col = points[:, 0].floor().long().clamp(0, width - 1)
    row = points[:, 1].floor().long().clamp(0, height - 1)
    return view[:2, row, col].T.double() + 0.5


def to_source(geom, points: torch.Tensor) -> torch.Tensor:
    """View points ``[P, 2]`` to source points via the geometry (points as zero-size boxes)."""
    return geom.view_to_source(torch.cat([points, points], dim=-1))[:, :2]


# How far each filter reads around a sample point, in source px, when the view is not
# smaller than the crop; a view that shrinks the crop widens it by 1 / scale (antialiasing).
FILTER_REACH = {InterpolationMode.NEAREST: 0.0, InterpolationMode.BILINEAR: 1.0, InterpolationMode.BICUBIC: 2.0}


def filter_slack(interpolation: InterpolationMode, geom, source_points: torch.Tensor) -> torch.Tensor:
    """Source px a decoded coordinate may stray from the true one, besides the 8-bit rounding.

    Nearest copies one source pixel, and decoding gives that pixel's centre, within 0.5 px of
    the point: the same bound as the rounding term, so no slack. Bilinear and bicubic weigh a
    neighbourhood symmetrically, which on a linear ramp returns the ramp's value at the point
    exactly (measured: interior errors never exceed the 0.5 px rounding). Within one filter
    reach of the image border, PIL renormalises the weights over the pixels inside the image,
    which pulls the value towards the interior: measured at most 0.08 x reach, allowed 0.25 x.

    Returns:
        float64 ``[P, 2]`` slack per point and axis.
    """
    reach = FILTER_REACH[interpolation] * torch.clamp(1 / geom.scale, min=1)
    limit = torch.tensor([WIDTH, HEIGHT], dtype=torch.float64)
    near_border = (source_points < reach) | (source_points > limit - reach)
    return 1e-6 + near_border * 0.25 * reach


@pytest.mark.parametrize("interpolation", INTERPOLATIONS, ids=lambda m: m.value)
@pytest.mark.parametrize("size", VIEW_SIZES, ids=str)
@pytest.mark.parametrize("seed", range(16))
def test_every_view_pixel_shows_the_source_point_its_geometry_predicts(seed, size, interpolation):
    view_fn = byol_view(1 + seed % 2, size=size, photometric=False, output="uint8", interpolation=interpolation)
    torch.manual_seed(seed)
    view, geom = view_fn(coordinate_image())
    assert_every_pixel_shows_its_source_point(view, geom, interpolation)


def assert_every_pixel_shows_its_source_point(view: torch.Tensor, geom, interpolation: InterpolationMode) -> None:
    """Every pixel centre of a geometric view of :func:`coordinate_image` decodes to where ``geom`` maps it."""
    height, width = view.shape[1:]
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([cols, rows], dim=-1).reshape(-1, 2).double() + 0.5
    truth = to_source(geom, centres)
    error = (decode(view, centres) - truth).abs()
    # Rounding alone reaches 0.5 px somewhere in every view, so a geometry that slipped by
    # half a view pixel (0.5 / scale >= 0.2 source px here) fails.
    assert (error <= 0.5 + filter_slack(interpolation, geom, truth)).all()


@pytest.mark.parametrize("interpolation", INTERPOLATIONS, ids=lambda m: m.value)
@pytest.mark.parametrize("seed", range(30))
def test_matched_boxes_show_the_same_source_points_in_both_views(seed, interpolation):
    size = VIEW_SIZES[0]
    image = coordinate_image()
    transform = TwoViewTransform(
        byol_view(1, size, photometric=False, output="uint8", interpolation=interpolation),
        byol_view(2, size, photometric=False, output="uint8", interpolation=interpolation),
    )
    torch.manual_seed(seed)
    view1, view2, geom1, geom2 = transform(image)
    pairs = BoxPairSampler(num_boxes=10, min_size=16)(geom1, geom2, generator=torch.Generator().manual_seed(seed))
    valid = pairs.valid[0]
    assert valid.sum() >= 5  # crops of >= 20 % of this small image overlap widely: the test is never vacuous
    # The centre and points near the corners, as fractions of each box (a, b).
    fractions = torch.tensor([[0.5, 0.5], [0.05, 0.05], [0.95, 0.05], [0.05, 0.95], [0.95, 0.95]], dtype=torch.float64)
    boxes1 = pairs.boxes1[0][valid].double()
    boxes2 = pairs.boxes2[0][valid].double()
    mirrored = bool(geom1.flipped) != bool(geom2.flipped)  # exactly one view flipped: x fractions mirror
    fractions2 = fractions.clone()
    if mirrored:
        fractions2[:, 0] = 1 - fractions2[:, 0]

    def points(boxes, frac):
        return (boxes[:, None, :2] + frac[None] * (boxes[:, None, 2:] - boxes[:, None, :2])).reshape(-1, 2)

    p1, p2 = points(boxes1, fractions), points(boxes2, fractions2)
    truth = to_source(geom1, p1)
    torch.testing.assert_close(to_source(geom2, p2), truth, rtol=0, atol=1e-3)
    for view, geom, p in ((view1, geom1, p1), (view2, geom2, p2)):
        # Reading the pixel that contains a point samples that pixel's centre, up to half a
        # view pixel (0.5 / scale source px) away; then 8-bit rounding (0.5) and filter slack.
        tolerance = 0.5 / geom.scale + 0.5 + filter_slack(interpolation, geom, truth)
        assert ((decode(view, p) - truth).abs() <= tolerance).all()


@pytest.mark.parametrize("seed", range(10))
def test_chained_crops_and_flips_keep_the_pixels_and_geometry_in_step(seed):
    # Crop, flip, crop again, flip again: every step composes the recorded geometry.
    steps = [
        RandomResizedCrop((150, 150), (0.4, 1.0), interpolation=InterpolationMode.NEAREST),
        RandomHorizontalFlip(0.5),
        RandomResizedCrop((100, 120), (0.4, 1.0), interpolation=InterpolationMode.NEAREST),
        RandomHorizontalFlip(0.5),
    ]
    torch.manual_seed(seed)
    image, geom = steps[0](coordinate_image())
    first_scale = geom.scale
    for step in steps[1:]:
        image, geom = step(image, geom)
    view = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    rows, cols = torch.meshgrid(torch.arange(100), torch.arange(120), indexing="ij")
    centres = torch.stack([cols, rows], dim=-1).reshape(-1, 2).double() + 0.5
    # Nearest twice: the second pick can land up to half an intermediate pixel off.
    tolerance = 0.5 + 0.5 / first_scale + 1e-6
    assert ((decode(view, centres) - to_source(geom, centres)).abs() <= tolerance).all()
