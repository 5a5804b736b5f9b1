"""Square-resized box images for the RoI protocol: pixels as PIL resizes them, boxes by the exact formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scrl.data import SquareBoxes, collate_square_boxes, square_box_loader


class Photos(torch.utils.data.Dataset):
    """Grayscale images of different shapes (items must come out RGB) with awkward boxes."""

    sizes = [(40, 24), (17, 31), (64, 64)]

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int):
        width, height = self.sizes[i]
        pixels = np.random.default_rng(i).integers(0, 256, (height, width), dtype=np.uint8)
        boxes = torch.tensor([[0.0, 1.5, width / 3, height - 0.25], [width / 2, 2.0, float(width), height / 2]])
        return Image.fromarray(pixels, mode="L"), boxes, torch.tensor([i, i + 1])


@pytest.mark.parametrize("hflip", [False, True])
def test_items_resize_and_mirror_by_the_formulas(hflip: bool) -> None:
    data, size = Photos(), 50
    square = SquareBoxes(data, [2, 0, 1], size, hflip=hflip)
    assert len(square) == 3
    for i, index in enumerate([2, 0, 1]):
        pixels, boxes, labels, got_index = square[i]
        image, source_boxes, source_labels = data[index]
        width, height = image.size
        resized = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
        expected_pixels = torch.from_numpy(resized.copy()).permute(2, 0, 1)
        expected = source_boxes * torch.tensor([size / width, size / height] * 2, dtype=torch.float32)
        if hflip:
            expected_pixels = expected_pixels.flip(-1)
            expected = torch.stack([size - expected[:, 2], expected[:, 1], size - expected[:, 0], expected[:, 3]], dim=1)
        assert pixels.dtype == torch.uint8 and torch.equal(pixels, expected_pixels)
        assert boxes.dtype == torch.float32 and torch.equal(boxes, expected)
        assert labels.dtype == torch.int64 and torch.equal(labels, source_labels) and got_index == index


def test_collate_and_loader_keep_order_and_leave_the_global_rng_alone() -> None:
    data = Photos()
    batch = collate_square_boxes([SquareBoxes(data, [1, 2], 16)[i] for i in range(2)])
    pixels, boxes, labels, image_index = batch
    assert pixels.shape == (2, 3, 16, 16) and [b.shape for b in boxes] == [(2, 4), (2, 4)]
    assert labels.tolist() == [1, 2, 2, 3] and image_index.tolist() == [1, 1, 2, 2]
    state = torch.get_rng_state()
    batches = list(square_box_loader(data, [2, 1, 0], 16, batch_size=2))
    assert torch.equal(torch.get_rng_state(), state)
    assert [b[3].tolist() for b in batches] == [[2, 2, 1, 1], [0, 0]]
    assert torch.equal(batches[0][0][1], batch[0][0])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        SquareBoxes(Photos(), [0], 0)
    with pytest.raises(ValueError, match="batch_size"):
        square_box_loader(Photos(), [0], 8, batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        square_box_loader(Photos(), [0], 8, batch_size=1, num_workers=-1)


def test_the_loader_seeds_its_own_generator_and_leaves_the_global_rng_alone() -> None:
    before = torch.get_rng_state()
    for seed in (0, 7):
        loader = square_box_loader(Photos(), [0, 1, 2], 16, batch_size=2, seed=seed)
        assert loader.generator.initial_seed() == seed
        assert [batch[0].shape[0] for batch in loader] == [2, 1]
    assert torch.equal(before, torch.get_rng_state())
