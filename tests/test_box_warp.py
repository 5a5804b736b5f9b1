"""Resize and mirror of an image with its boxes: exactly the pixel-edge formulas, pixels unchanged from PIL/torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from scrl.data import hflip_with_boxes, resize_with_boxes


def _photo(width: int = 37, height: int = 23) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _boxes() -> torch.Tensor:
    # Awkward values, and boxes touching both vertical edges.
    return torch.tensor([[0.0, 1.25, 11.3, 22.9], [3.7, 0.0, 37.0, 5.5], [12.1, 7.0, 12.9, 7.1]])


@pytest.mark.parametrize("size", [(224, 224), (97, 160), (23, 37), (5, 3)])
def test_resize_scales_boxes_by_the_pixel_ratio_exactly(size) -> None:
    image, boxes = _photo(), _boxes()
    resized, scaled = resize_with_boxes(image, boxes, size)
    height, width = size
    assert isinstance(resized, Image.Image) and resized.size == (width, height)
    assert type(scaled) is torch.Tensor and scaled.dtype == torch.float32
    expected = boxes * torch.tensor([width / 37, height / 23] * 2, dtype=torch.float32)
    assert torch.equal(scaled, expected)
    assert np.array_equal(np.asarray(resized), np.asarray(image.resize((width, height), Image.BILINEAR)))
    assert torch.equal(boxes, _boxes())  # the input is not modified


def test_resize_of_a_tensor_image() -> None:
    pixels = TF.pil_to_tensor(_photo())
    resized, scaled = resize_with_boxes(pixels, _boxes(), (46, 74))
    assert resized.shape == (3, 46, 74) and resized.dtype == torch.uint8
    assert torch.equal(scaled, _boxes() * 2)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_hflip_maps_x_to_width_minus_x_and_swaps(as_tensor: bool) -> None:
    image = TF.pil_to_tensor(_photo()) if as_tensor else _photo()
    boxes = _boxes()
    flipped, mirrored = hflip_with_boxes(image, boxes)
    expected = torch.stack([37 - boxes[:, 2], boxes[:, 1], 37 - boxes[:, 0], boxes[:, 3]], dim=1)
    # Equal as numbers; a box touching the right edge gets x0 = -0.0, which equals 0.
    assert type(mirrored) is torch.Tensor and torch.equal(mirrored, expected)
    assert (mirrored[:, 2] > mirrored[:, 0]).all()
    if as_tensor:
        assert torch.equal(flipped, image.flip(-1))
    else:
        assert np.array_equal(np.asarray(flipped), np.asarray(image)[:, ::-1])
    torch.testing.assert_close(hflip_with_boxes(flipped, mirrored)[1], boxes, rtol=0, atol=4e-6)  # float rounding


def test_empty_boxes_and_bad_arguments() -> None:
    resized, scaled = resize_with_boxes(_photo(), torch.zeros(0, 4), (8, 8))
    assert scaled.shape == (0, 4) and resized.size == (8, 8)
    assert hflip_with_boxes(_photo(), torch.zeros(0, 4))[1].shape == (0, 4)
    with pytest.raises(ValueError, match="boxes"):
        hflip_with_boxes(_photo(), torch.zeros(3))
    with pytest.raises(ValueError, match="boxes"):
        resize_with_boxes(_photo(), torch.zeros(2, 4, dtype=torch.int64), (8, 8))
    with pytest.raises(ValueError, match="size"):
        resize_with_boxes(_photo(), _boxes(), (0, 8))
    with pytest.raises(ValueError, match="size"):
        resize_with_boxes(_photo(), _boxes(), 8)
