"""Open a box dataset from a command-line string: a YOLO folder, a COCO JSON, or synthetic scenes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from torch.utils.data import Dataset

from .box_checks import BoxDataError
from .coco import CocoBoxes
from .image_folder import DEFAULT_MAX_CONSECUTIVE_UNREADABLE
from .synthetic import SyntheticScenes
from .yolo import YoloBoxes, read_class_names

__all__ = ["HELD_OUT_SEED", "add_reading_arguments", "open_box_dataset", "reading_options"]

# Seed of the synthetic evaluation scenes: far from the small seeds pretraining runs use, so
# evaluation scenes are never training scenes.
HELD_OUT_SEED = 1_000_003


def _guess_coco_images(annotation_json: Path) -> Path:
    """``.../annotations/instances_val2017.json`` -> ``.../val2017`` (the COCO layout)."""
    split = annotation_json.stem.split("_", 1)[-1]
    for folder in (annotation_json.parent, annotation_json.parent.parent):
        for name in (split, "images"):
            if (folder / name).is_dir():
                return folder / name
    raise ValueError(
        f"cannot find the image folder of {annotation_json} (looked for '{split}/' and 'images/' beside it "
        "and one level up); pass image_dir"
    )


def open_box_dataset(
    spec: str | os.PathLike,
    *,
    format: str | None = None,
    image_dir: str | os.PathLike | None = None,
    synthetic_image_size: int = 160,
    strict: bool = False,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    max_consecutive_unreadable: int = DEFAULT_MAX_CONSECUTIVE_UNREADABLE,
    split: bool = False,
) -> Dataset:
    """The box dataset that ``spec`` names.

    * ``synthetic`` or ``synthetic:N``: ``N`` (default 256) held-out :class:`SyntheticScenes`
      of ``synthetic_image_size`` pixels, seed :data:`HELD_OUT_SEED`;
    * a ``.json`` file: :class:`CocoBoxes`, images in ``image_dir`` or, when ``None``, in the
      COCO layout's folder (``annotations/instances_val2017.json`` -> ``val2017/``);
    * a folder holding ``images/``: :class:`YoloBoxes`.

    The readers refuse a dataset that evaluation cannot use and leave unreadable images out
    (:mod:`scrl.data.box_checks`); ``split=True`` also refuses one with fewer than two usable
    images.

    Args:
        spec: the string or path.
        format: ``"coco"``, ``"yolo"`` or ``"synthetic"`` to skip the guess.
        image_dir: COCO image folder.
        synthetic_image_size: side of synthetic scenes in pixels.
        strict: passed to the readers (raise on annotation problems).
        class_names: YOLO class names by id (:func:`~scrl.data.read_class_names` reads a names file).
        num_classes: YOLO class count, when there are no names.
        max_consecutive_unreadable: how many unreadable images in a row the readers skip before
            refusing the dataset, >= 1.
        split: the caller splits the images into two sides by image (training and held-out).

    Raises:
        ValueError: a bad argument, a missing path, or one that is none of the above.
        BoxDataError: a dataset that cannot be used: no images, no boxes, fewer than two
            images with ``split``, image paths outside ``image_dir``, or a run of unreadable images.

    Example:
        >>> open_box_dataset("../shared/data/coco128-train")       # doctest: +SKIP
        YoloBoxes(root='../shared/data/coco128-train', images=128, classes=80, problems=2, unlabelled=2, skipped=0)
        >>> len(open_box_dataset("synthetic:64"))
        64
    """
    text = str(spec)
    if format not in (None, "coco", "yolo", "synthetic"):
        raise ValueError(f"format must be 'coco', 'yolo', 'synthetic' or None, got {format!r}")
    if format == "synthetic" or (format is None and (text == "synthetic" or text.startswith("synthetic:"))):
        if class_names is not None or num_classes is not None:
            raise ValueError("class names and counts are for YOLO folders; synthetic scenes have their own 18 classes")
        count = text.partition(":")[2] or "256"
        if not count.isdigit() or int(count) < 2:
            raise ValueError(f"spec 'synthetic:N' needs an integer N >= 2, got {text!r}")
        return SyntheticScenes(int(count), image_size=synthetic_image_size, seed=HELD_OUT_SEED)
    path = Path(text)
    readable = dict(strict=strict, max_consecutive_unreadable=max_consecutive_unreadable)
    if format == "coco" or (format is None and path.suffix.lower() == ".json"):
        if class_names is not None or num_classes is not None:
            raise ValueError(f"class names and counts are for YOLO folders; the COCO file {text} lists its own categories")
        images = image_dir if image_dir is not None else _guess_coco_images(path)
        dataset: Dataset = CocoBoxes(path, images, **readable)
    elif format == "yolo" or (format is None and (path / "images").is_dir()):
        dataset = YoloBoxes(path, class_names=class_names, num_classes=num_classes, **readable)
    elif not path.exists():
        raise ValueError(f"{text} does not exist: expected 'synthetic[:N]', a COCO .json file or a YOLO folder")
    elif path.is_dir():
        raise BoxDataError(f"{text} holds no images/ folder: a YOLO dataset is a folder with images/ and labels/")
    else:
        raise ValueError(
            f"cannot tell what {text!r} is: expected 'synthetic[:N]', a COCO .json file or a YOLO folder with images/"
        )
    if split and len(dataset) < 2:
        unreadable = f" ({len(dataset.skipped)} more cannot be decoded)" if dataset.skipped else ""
        raise BoxDataError(
            f"{text} has {len(dataset)} usable image{unreadable}: a split into training and held-out images needs at least 2"
        )
    return dataset


def add_reading_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a script's box dataset: ``--data``, ``--image-dir`` and how it is read (``--format``, ``--names``,
    ``--num-classes``, ``--max-consecutive-unreadable``, which :func:`reading_options` turns into
    :func:`open_box_dataset`'s options)."""
    add = parser.add_argument
    add("--data", required=True, help="boxes: COCO .json, YOLO folder (images/ + labels/) or synthetic[:N]")
    add("--image-dir", default=None, help="COCO image folder of --data (default: guessed from the COCO layout)")
    add("--format", choices=["coco", "yolo", "synthetic"], default=None, help="dataset format (default: guessed)")
    add("--names", default=None, metavar="FILE",
        help="YOLO class names, one per line (.txt) or a data.yaml (default: data.yaml / classes.yaml / classes.txt beside images/)")
    add("--num-classes", type=int, default=None, metavar="N", help="YOLO class count, when there are no names")
    add("--max-consecutive-unreadable", type=int, default=DEFAULT_MAX_CONSECUTIVE_UNREADABLE, metavar="N",
        help=f"stop when N images in a row cannot be decoded; fewer are skipped and reported (default: {DEFAULT_MAX_CONSECUTIVE_UNREADABLE})")


def reading_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`open_box_dataset`'s reading options from the flags of :func:`add_reading_arguments`.

    Raises:
        BoxDataError: ``--names`` is not a readable list of class names.
    """
    return dict(format=args.format, class_names=read_class_names(args.names) if args.names else None,
                num_classes=args.num_classes, max_consecutive_unreadable=args.max_consecutive_unreadable)

