"""Object boxes from a COCO-format annotation JSON (``instances_*.json``) and its image folder."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_convert

from .box_checks import BoxDataError, usable_images
from .image_file import open_rgb
from .image_folder import DEFAULT_MAX_CONSECUTIVE_UNREADABLE
from .label_problems import LabelProblem, fit_box, listed, report_problems

__all__ = ["CocoBoxes"]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class CocoBoxes(Dataset):
    """Object boxes from a COCO annotation file.

    Reads ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
    (``image_id``, ``category_id``, ``bbox`` = ``[x, y, w, h]`` in pixels, optional
    ``iscrowd``) and ``categories`` (``id``, ``name``). Category ids are mapped to contiguous
    labels ``0 .. num_classes - 1`` in increasing id order; :attr:`category_ids` maps back.
    Crowd annotations (``iscrowd: 1``) mark regions of many objects, not one object, and are
    left out unless ``include_crowd=True``; :attr:`num_crowd` counts them.

    Malformed annotations (missing or non-numeric fields, unknown image or category id,
    empty boxes), boxes outside their image and image entries whose file is missing are
    collected in :attr:`problems` with the JSON file and the entry's place (e.g.
    ``annotations[17] (id 905)``). With ``strict=False`` (default) bad entries are skipped
    (boxes reaching outside the image are clipped, images without a file are left out) and
    one :class:`~scrl.data.LabelWarning` summarises them; ``strict=True`` raises a
    ``ValueError`` listing them all. A ``file_name`` that leads outside ``image_dir`` (``../x.jpg``,
    an absolute path) is never read: the file is refused with a :class:`~scrl.data.BoxDataError`
    naming the entries. Then every image is decoded once: unreadable ones are left out and
    reported (:attr:`skipped`; :mod:`scrl.data.box_checks` has the rule).

    Items: ``ds[i] -> (image, boxes, labels)``: a ``PIL.Image`` in RGB, boxes float32
    ``[M, 4]`` ``(x0, y0, x1, y1)`` in source pixels, labels int64 ``[M]``.

    Args:
        annotation_json: path of the COCO annotation file.
        image_dir: folder the ``file_name`` entries are relative to.
        include_crowd: keep crowd annotations as boxes.
        tolerance: overshoot outside the image (pixels) clipped without a report; >= 0.
        strict: raise on any annotation problem instead of warning.
        max_consecutive_unreadable: how many unreadable images in a row are skipped before the
            dataset is refused, >= 1.

    Raises:
        ValueError: a bad argument, a missing or malformed file, or (``strict``) annotation problems.
        BoxDataError: image paths outside ``image_dir``, no usable images, no boxes, or no readable
            image (the message says which).

    Example:
        >>> ds = CocoBoxes("annotations/instances_val2017.json", "val2017")   # doctest: +SKIP
        >>> image, boxes, labels = ds[0]                                       # doctest: +SKIP
    """

    def __init__(
        self,
        annotation_json: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        include_crowd: bool = False,
        tolerance: float = 1.0,
        strict: bool = False,
        max_consecutive_unreadable: int = DEFAULT_MAX_CONSECUTIVE_UNREADABLE,
    ) -> None:
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0 (pixels), got {tolerance!r}")
        if not isinstance(max_consecutive_unreadable, int) or max_consecutive_unreadable < 1:
            raise ValueError(f"max_consecutive_unreadable must be an integer >= 1, got {max_consecutive_unreadable!r}")
        self.annotation_json = Path(annotation_json)
        self.image_dir = Path(image_dir)
        if not self.annotation_json.is_file():
            raise ValueError(f"annotation_json must be a file; {self.annotation_json} does not exist")
        if not self.image_dir.is_dir():
            raise ValueError(f"image_dir must be a folder; {self.image_dir} does not exist")
        try:
            data = json.loads(self.annotation_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.annotation_json}: not valid JSON ({err})") from err
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
            raise ValueError(f"{self.annotation_json}: a COCO file needs 'images' and 'categories' lists")
        self.problems: list[LabelProblem] = []
        self.num_crowd = 0
        src = str(self.annotation_json)

        categories: dict[int, str] = {}
        for i, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
                self.problems.append(LabelProblem(src, f"categories[{i}]", "no integer 'id'; skipped"))
                continue
            categories[cat["id"]] = str(cat.get("name", cat["id"]))
        self.category_ids: list[int] = sorted(categories)
        self.class_names: list[str] = [categories[c] for c in self.category_ids]
        self.num_classes = len(self.class_names)
        label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}

        images: dict[int, dict] = {}
        outside: list[LabelProblem] = []
        missing: list[Path] = []
        for i, entry in enumerate(data["images"]):
            where = f"images[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
                self.problems.append(LabelProblem(src, where, "no integer 'id'; skipped"))
                continue
            where = f"images[{i}] (id {entry['id']})"
            if not isinstance(entry.get("file_name"), str):
                self.problems.append(LabelProblem(src, where, "no 'file_name'; skipped"))
                continue
            if not (_is_number(entry.get("width")) and _is_number(entry.get("height"))):
                self.problems.append(LabelProblem(src, where, "no numeric 'width'/'height'; skipped"))
                continue
            if not self._inside_image_dir(entry["file_name"]):
                outside.append(LabelProblem(src, where, f"file_name {entry['file_name']!r} leads outside {self.image_dir}"))
                continue
            if not (self.image_dir / entry["file_name"]).is_file():
                missing.append(self.image_dir / entry["file_name"])
                self.problems.append(LabelProblem(src, where, f"image file {missing[-1]} is missing; skipped"))
                continue
            images[entry["id"]] = entry
        if outside:
            raise BoxDataError(f"{src} names image files outside its image folder {self.image_dir}; refused:{listed(outside)}")
        self.image_ids: list[int] = sorted(images)
        self.image_paths = [self.image_dir / images[i]["file_name"] for i in self.image_ids]
        self._sizes = [(float(images[i]["width"]), float(images[i]["height"])) for i in self.image_ids]
        boxes: dict[int, list[tuple[float, ...]]] = {i: [] for i in self.image_ids}
        labels: dict[int, list[int]] = {i: [] for i in self.image_ids}
        known_ids = {e.get("id") for e in data["images"] if isinstance(e, dict)}

        annotations = data.get("annotations", [])
        checked = [self._check_annotation(ann, known_ids, label_of) for ann in annotations]
        usable = [i for i, problem in enumerate(checked) if problem is None]
        # COCO's [x, y, w, h] to corners, in float64 like the JSON numbers, all boxes at once.
        xywh = torch.tensor([annotations[i]["bbox"] for i in usable], dtype=torch.float64).reshape(-1, 4)
        corners = dict(zip(usable, box_convert(xywh, "xywh", "xyxy").tolist()))
        for i, (ann, problem) in enumerate(zip(annotations, checked)):
            where = f"annotations[{i}]" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
            if problem:
                self.problems.append(LabelProblem(src, where, problem))
                continue
            image_id = ann["image_id"]
            if image_id not in images:
                continue  # its image entry was already reported as unusable
            if ann.get("iscrowd", 0) and not include_crowd:
                self.num_crowd += 1
                continue
            width, height = float(images[image_id]["width"]), float(images[image_id]["height"])
            box, message = fit_box(corners[i], width, height, tolerance)
            if message is not None:
                self.problems.append(LabelProblem(src, where, message))
            if box is not None:
                boxes[image_id].append(box)
                labels[image_id].append(label_of[ann["category_id"]])

        self._boxes = [torch.tensor(boxes[i], dtype=torch.float32).reshape(-1, 4) for i in self.image_ids]
        self._labels = [torch.tensor(labels[i], dtype=torch.int64) for i in self.image_ids]
        report_problems(self.problems, src, strict)
        kept, self.skipped = usable_images(
            src, self.image_paths, [len(t) for t in self._labels],
            no_images=self._why_no_images(len(data["images"]), missing),
            no_boxes=self._why_no_boxes(len(annotations)),
            max_consecutive_unreadable=max_consecutive_unreadable,
        )
        self.image_ids = [self.image_ids[i] for i in kept]
        self.image_paths = [self.image_paths[i] for i in kept]
        self._sizes = [self._sizes[i] for i in kept]
        self._boxes = [self._boxes[i] for i in kept]
        self._labels = [self._labels[i] for i in kept]
        self.box_counts: list[int] = [len(t) for t in self._labels]

    def _inside_image_dir(self, file_name: str) -> bool:
        """Whether ``file_name`` names a path inside ``image_dir``, written as it is (``..`` and absolute paths leave it).

        Symbolic links inside the folder are followed: they are the folder's own, set up by
        whoever set up the images, while the annotation file may come from anywhere.
        """
        folder = os.path.abspath(self.image_dir)
        return Path(os.path.abspath(os.path.join(folder, file_name))).is_relative_to(folder)

    def _why_no_images(self, entries: int, missing: list[Path]) -> str:
        if entries == 0:
            return "its 'images' list is empty"
        if len(missing) == entries:
            return (f"none of the {entries} image files it names is in {self.image_dir} (e.g. {missing[0]}); "
                    "is that the image folder?")
        return f"none of its {entries} 'images' entries is usable (the annotation problems say why)"

    def _why_no_boxes(self, annotations: int) -> str:
        if annotations == 0:
            return "it has no 'annotations'"
        crowd = f"; {self.num_crowd} are crowd regions, left out unless include_crowd=True" if self.num_crowd else ""
        return f"none of its {annotations} annotations gives a usable box on a usable image{crowd}"

    @staticmethod
    def _check_annotation(ann: object, known_ids: set, label_of: dict[int, int]) -> str | None:
        if not isinstance(ann, dict):
            return "not an object; skipped"
        if ann.get("image_id") not in known_ids:
            return f"image_id {ann.get('image_id')!r} is not in 'images'; skipped"
        if ann.get("category_id") not in label_of:
            return f"category_id {ann.get('category_id')!r} is not in 'categories'; skipped"
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            return f"'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}; skipped"
        return None

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Image.Image, Tensor, Tensor]:
        path = self.image_paths[index]
        image = open_rgb(path)
        if (float(image.width), float(image.height)) != self._sizes[index]:
            width, height = self._sizes[index]
            raise ValueError(
                f"image {path} is {image.width}x{image.height} px but {self.annotation_json} says "
                f"{width:g}x{height:g} (image id {self.image_ids[index]}); the boxes would not fit it"
            )
        return image, self._boxes[index].clone(), self._labels[index].clone()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(annotation_json={str(self.annotation_json)!r}, images={len(self)}, "
            f"classes={self.num_classes}, problems={len(self.problems)}, skipped={len(self.skipped)})"
        )
