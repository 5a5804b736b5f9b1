"""What a box dataset must hold before evaluation or fine-tuning reads it, checked once at construction.

Evaluation and fine-tuning count a box dataset's images and boxes, split it by image and decode
every image several times. A dataset without images or boxes would train and score on nothing,
and one unreadable image would abort the run far from its cause. So both box readers
(:class:`~scrl.data.CocoBoxes`, :class:`~scrl.data.YoloBoxes`) settle which images are usable
while they are built:

* a dataset without images, or without a single box, is refused with a :class:`BoxDataError`
  that names what is missing;
* every image is decoded once; one that cannot be decoded is skipped and reported by path with
  its reason, in pretraining's words (``skipped unreadable file: PATH (REASON)``, one
  :class:`UnreadableImageWarning` each), and ``max_consecutive_unreadable`` unreadable images in
  a row stop the reading, as they stop :class:`~scrl.data.ImageFolderDataset`.

Pretraining replaces an unreadable file by the next readable one when it is loaded. Box
datasets leave it out before anything is split instead: a split by image must know which images
exist, and a replacement could bring an image of one side of the split into the other.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from torch.utils.data import Dataset

from .data_error import DataError
from .image_file import open_rgb

__all__ = ["BoxDataError", "UnreadableImageWarning", "require_boxes_in", "usable_images"]

# Decoding is mostly done with the GIL released, so a few threads shorten the one pass over the images.
_DECODE_THREADS = min(8, os.cpu_count() or 1)


class BoxDataError(DataError):
    """A box dataset that evaluation or fine-tuning cannot use; the message names the dataset and what is missing.

    Raised for a dataset without images or boxes, too few images to split, a side of a split
    without boxes, image paths outside the image folder, and a run of unreadable images.
    """


class UnreadableImageWarning(UserWarning):
    """An image file that cannot be decoded and is left out of its dataset; the message names the file and why."""


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _decode_error(path: Path) -> str | None:
    """Why ``path`` cannot be decoded as the datasets decode it, or ``None`` when it can."""
    try:
        open_rgb(path)
    except OSError as exc:
        cause = exc.__cause__ or exc
        return f"{type(cause).__name__}: {cause}"
    return None


def unreadable_images(paths: Sequence[Path], max_consecutive_unreadable: int) -> dict[str, str]:
    """Decode every image once; the ones that fail, each reported as it is found.

    Args:
        paths: image files, in the dataset's order.
        max_consecutive_unreadable: how many unreadable images in a row are skipped before the
            reading stops, >= 1.

    Returns:
        ``{path: reason}`` of the images that cannot be decoded (empty when all can).

    Raises:
        BoxDataError: ``max_consecutive_unreadable`` images in a row cannot be decoded.
    """
    skipped: dict[str, str] = {}
    in_a_row = 0
    pool = ThreadPoolExecutor(_DECODE_THREADS)
    try:
        for path, reason in zip(paths, pool.map(_decode_error, paths)):
            if reason is None:
                in_a_row = 0
                continue
            in_a_row += 1
            skipped[str(path)] = reason
            warnings.warn(f"skipped unreadable file: {path} ({reason})", UnreadableImageWarning, stacklevel=4)
            if in_a_row == max_consecutive_unreadable:
                first = list(skipped)[-in_a_row]
                raise BoxDataError(
                    f"{in_a_row} unreadable images in a row from {first!r} on (max_consecutive_unreadable="
                    f"{max_consecutive_unreadable}): the folder looks broken"
                )
    finally:
        pool.shutdown(cancel_futures=True)  # after a run of unreadable images, decode no more
    return skipped


def usable_images(
    source: str,
    paths: Sequence[Path],
    box_counts: Sequence[int],
    *,
    no_images: str,
    no_boxes: str,
    max_consecutive_unreadable: int,
) -> tuple[list[int], dict[str, str]]:
    """The images of a box dataset that evaluation can use, or a :class:`BoxDataError` saying why there are none.

    The checks that cost nothing come first; then every image is decoded once
    (:func:`unreadable_images`).

    Args:
        source: the dataset's folder or annotation file, named in the messages.
        paths: its image files.
        box_counts: the number of boxes of each image.
        no_images: why ``paths`` is empty, in the reader's terms (used when it is).
        no_boxes: why no image has a box, in the reader's terms (used when none has).
        max_consecutive_unreadable: see :func:`unreadable_images`.

    Returns:
        ``(kept, skipped)``: the indices of the readable images in order, and the unreadable
        ones, path to reason.

    Raises:
        BoxDataError: no images, no boxes, no readable image, boxes only on unreadable images,
            or a run of unreadable images.
    """
    if not paths:
        raise BoxDataError(f"{source} has no images: {no_images}")
    if not any(box_counts):
        raise BoxDataError(f"{source} has {_plural(len(paths), 'image')} but no boxes: {no_boxes}")
    skipped = unreadable_images(paths, max_consecutive_unreadable)
    kept = [i for i, path in enumerate(paths) if str(path) not in skipped]
    if not kept:
        raise BoxDataError(f"{source} has no readable images: none of its {len(paths)} image files can be decoded")
    if not any(box_counts[i] for i in kept):
        raise BoxDataError(
            f"{source} has {_plural(len(kept), 'readable image')} but no boxes: the boxes are all on the "
            f"{_plural(len(skipped), 'image')} that cannot be decoded"
        )
    return kept, skipped


def require_boxes_in(dataset: Dataset, indices: Sequence[int], side: str) -> None:
    """Refuse one side of a split by image when it holds no image or no box.

    Args:
        dataset: a box dataset; its ``box_counts`` (the readers have them) are used when
            present, else its items are read until one has a box.
        indices: the images of that side.
        side: what that side is called in the message, e.g. ``"held-out"``.

    Raises:
        BoxDataError: ``indices`` is empty or its images hold no box.

    Example:
        >>> require_boxes_in(SyntheticScenes(4), [0, 1], "training")
    """
    if len(indices) == 0:
        raise BoxDataError(f"the {side} side of the split of {dataset!r} has no images")
    counts = getattr(dataset, "box_counts", None)
    # Without counts the items are read, up to the first that has a box: usually the first.
    if not any(counts[i] if counts is not None else len(dataset[i][2]) for i in indices):
        raise BoxDataError(
            f"the {_plural(len(indices), side + ' image')} of {dataset!r} hold no boxes: the split needs boxes on "
            "both sides (another split seed or fraction, or more labelled images)"
        )
