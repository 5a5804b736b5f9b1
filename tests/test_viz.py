"""scrl.viz: the two views side by side with matched boxes in matching colours."""

from __future__ import annotations

import pytest
import torch
from PIL import ImageColor

from scrl import BoxPairs
from scrl.transforms import normalize_images
from scrl.viz import PALETTE, draw_box_pairs, to_uint8_image


def grey_pairs() -> tuple[torch.Tensor, torch.Tensor, BoxPairs]:
    view1 = torch.full((2, 3, 40, 60), 0.5)
    view2 = torch.full((2, 3, 30, 50), 0.5)
    boxes1 = torch.zeros(2, 3, 4)
    boxes2 = torch.zeros(2, 3, 4)
    boxes1[1, 0] = torch.tensor([5.0, 5.0, 25.0, 30.0])
    boxes2[1, 0] = torch.tensor([10.0, 2.0, 40.0, 20.0])
    boxes1[1, 2] = torch.tensor([30.0, 10.0, 55.0, 35.0])
    boxes2[1, 2] = torch.tensor([1.0, 1.0, 20.0, 25.0])
    valid = torch.tensor([[False, False, False], [True, False, True]])
    return view1, view2, BoxPairs(boxes1, boxes2, valid)


def test_pairs_share_a_colour_across_the_two_views():
    view1, view2, pairs = grey_pairs()
    picture = draw_box_pairs(view1, view2, pairs, index=1, gap=8, width=1, labels=False)
    assert picture.dtype == torch.uint8 and picture.shape == (3, 40, 60 + 8 + 50)
    for slot in (0, 2):
        b1, b2 = pairs.boxes1[1, slot], pairs.boxes2[1, slot]
        colour = torch.tensor(ImageColor.getrgb(PALETTE[slot]), dtype=torch.uint8)
        x0, y0 = int(b1[0]), int(b1[1])
        assert torch.equal(picture[:, y0 + 3, x0], colour)  # left edge of the box in view 1
        x0, y0 = int(b2[0]) + 60 + 8, int(b2[1])
        assert torch.equal(picture[:, y0 + 3, x0], colour)  # the same pair's box in view 2
    assert (picture[:, 35:, 68:] == 255).all()  # the shorter view is padded with white
    assert (picture[:, :, 60:68] == 255).all()  # the gap


def test_no_valid_pair_draws_just_the_views():
    view1, view2, pairs = grey_pairs()
    picture = draw_box_pairs(view1, view2, pairs, index=0, gap=0)
    assert (picture[:, :30] == 128).all()


@pytest.mark.parametrize("kind", ["uint8", "unit", "normalised"])
def test_views_of_every_kind_come_back_as_the_same_image(kind):
    unit = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    want = (unit * 255).round().to(torch.uint8)
    image = {
        "uint8": want,
        "unit": unit,
        "normalised": normalize_images(unit),
    }[kind]
    assert (to_uint8_image(image).int() - want.int()).abs().max() <= 1


def test_bad_arguments_raise():
    view1, view2, pairs = grey_pairs()
    with pytest.raises(ValueError, match="index"):
        draw_box_pairs(view1, view2, pairs, index=2)
    with pytest.raises(ValueError, match="gap"):
        draw_box_pairs(view1, view2, pairs, index=1, gap=-1)
    with pytest.raises(ValueError, match="image"):
        to_uint8_image(torch.zeros(4, 8, 8))
