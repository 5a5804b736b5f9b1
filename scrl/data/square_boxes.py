"""A box dataset's images resized to a square, with their boxes, and the loader that batches them.

The RoI linear protocol (SCRL paper, Sec. 4.2.5) resizes every evaluation image to 800 x 800
without keeping the aspect ratio; the ground-truth boxes follow the same anisotropic scaling
exactly (:func:`~scrl.data.resize_with_boxes`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torchvision.transforms.functional as TF
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .box_warp import hflip_with_boxes, resize_with_boxes

__all__ = ["SquareBoxes", "collate_square_boxes", "square_box_loader"]

SquareItem = tuple[Tensor, Tensor, Tensor, int]
SquareBatch = tuple[Tensor, list[Tensor], Tensor, Tensor]


class SquareBoxes(Dataset):
    """Images of a box dataset resized to ``size`` x ``size``, with their boxes rescaled.

    Items: ``(pixels uint8 [3, size, size], boxes float32 [M, 4] (x0, y0, x1, y1) in resized
    pixels, labels int64 [M], dataset index)``. Images are resized bilinearly; the aspect ratio
    is not kept, as in the paper's 800 x 800 protocol.

    Args:
        dataset: items ``(PIL image, boxes [M, 4] source pixels, labels [M])``.
        indices: which items to use.
        size: side of the square, >= 1.
        hflip: mirror every image (and its boxes) left-right.

    Example:
        >>> pixels, boxes, labels, index = SquareBoxes(SyntheticScenes(8), [3, 5], size=224)[0]
        >>> pixels.shape, index
        (torch.Size([3, 224, 224]), 3)
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], size: int, hflip: bool = False) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an integer >= 1 (pixels), got {size!r}")
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.size = size
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> SquareItem:
        index = self.indices[i]
        image, boxes, labels = self.dataset[index]
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        image, boxes = resize_with_boxes(image.convert("RGB"), boxes, (self.size, self.size))
        pixels = TF.pil_to_tensor(image)
        if self.hflip:
            pixels, boxes = hflip_with_boxes(pixels, boxes)
        return pixels, boxes, torch.as_tensor(labels, dtype=torch.int64).reshape(-1), index


def collate_square_boxes(items: Sequence[SquareItem]) -> SquareBatch:
    """Batch :class:`SquareBoxes` items.

    Returns:
        ``(pixels uint8 [B, 3, S, S], boxes: B tensors [M_b, 4], labels int64 [sum M_b],
        image_index int64 [sum M_b])``: labels and the dataset index of each box's image,
        in the order of the boxes.
    """
    pixels = torch.stack([item[0] for item in items])
    boxes = [item[1] for item in items]
    labels = torch.cat([item[2] for item in items])
    image_index = torch.cat([torch.full((len(item[2]),), item[3], dtype=torch.int64) for item in items])
    return pixels, boxes, labels, image_index


def square_box_loader(
    dataset: Dataset,
    indices: Sequence[int],
    size: int,
    *,
    batch_size: int,
    num_workers: int = 0,
    hflip: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A loader of :class:`SquareBoxes` batches (:func:`collate_square_boxes`), in ``indices`` order.

    Nothing in a batch is random; the loader's own generator, seeded with ``seed``, gives the
    worker processes their base seed, so a dataset that draws in its workers is seeded too.

    Args:
        dataset: items ``(PIL image, boxes [M, 4] source pixels, labels [M])``.
        indices: images to load, in this order.
        size: side of the square, >= 1.
        batch_size: images per batch, >= 1.
        num_workers: worker processes for decoding and resizing, >= 0.
        hflip: mirror every image and its boxes.
        seed: seeds the workers' base seed, >= 0.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    return DataLoader(
        SquareBoxes(dataset, indices, size, hflip),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_square_boxes,
        pin_memory=torch.cuda.is_available(),
        # Starting an iterator draws a worker base seed; its own generator keeps that draw off
        # the caller's global RNG (an evaluation inside a training run must not shift its stream).
        generator=torch.Generator().manual_seed(seed),
    )
