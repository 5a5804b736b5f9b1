"""Open a box dataset from a command-line string: a YOLO folder, a COCO JSON, or synthetic scenes."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from .coco import CocoBoxes
from .synthetic import SyntheticScenes
from .yolo import YoloBoxes

__all__ = ["HELD_OUT_SEED", "open_box_dataset"]

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
) -> Dataset:
    """The box dataset that ``spec`` names.

    * ``synthetic`` or ``synthetic:N``: ``N`` (default 256) held-out :class:`SyntheticScenes`
      of ``synthetic_image_size`` pixels, seed :data:`HELD_OUT_SEED`;
    * a ``.json`` file: :class:`CocoBoxes`, images in ``image_dir`` or, when ``None``, in the
      COCO layout's folder (``annotations/instances_val2017.json`` -> ``val2017/``);
    * a folder holding ``images/``: :class:`YoloBoxes`.

    Args:
        spec: the string or path.
        format: ``"coco"``, ``"yolo"`` or ``"synthetic"`` to skip the guess.
        image_dir: COCO image folder.
        synthetic_image_size: side of synthetic scenes in pixels.
        strict: passed to the readers (raise on annotation problems).

    Example:
        >>> open_box_dataset("../shared/data/coco128-train")       # doctest: +SKIP
        YoloBoxes(root='../shared/data/coco128-train', images=128, classes=80, problems=2)
        >>> len(open_box_dataset("synthetic:64"))
        64
    """
    text = str(spec)
    if format not in (None, "coco", "yolo", "synthetic"):
        raise ValueError(f"format must be 'coco', 'yolo', 'synthetic' or None, got {format!r}")
    if format == "synthetic" or (format is None and (text == "synthetic" or text.startswith("synthetic:"))):
        count = text.partition(":")[2] or "256"
        if not count.isdigit() or int(count) < 2:
            raise ValueError(f"spec 'synthetic:N' needs an integer N >= 2, got {text!r}")
        return SyntheticScenes(int(count), image_size=synthetic_image_size, seed=HELD_OUT_SEED)
    path = Path(text)
    if format == "coco" or (format is None and path.suffix.lower() == ".json"):
        return CocoBoxes(path, image_dir if image_dir is not None else _guess_coco_images(path), strict=strict)
    if format == "yolo" or (format is None and (path / "images").is_dir()):
        return YoloBoxes(path, strict=strict)
    raise ValueError(
        f"cannot tell what {text!r} is: expected 'synthetic[:N]', a COCO .json file or a YOLO folder with images/"
    )
