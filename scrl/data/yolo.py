"""Object boxes in YOLO text labels: ``images/`` beside ``labels/``, one ``.txt`` per image.

Each label line is ``class_id cx cy w h`` with the four box numbers normalised to ``[0, 1]``
by the image width and height. An image without a label file is an image without objects.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_convert

from .image_folder import IMAGE_EXTENSIONS
from .image_file import open_rgb
from .label_problems import LabelProblem, fit_box, report_problems

__all__ = ["YoloBoxes"]

# Files that may hold the class names of a YOLO dataset, looked for in the root and its parent.
_NAME_FILES = ("classes.yaml", "data.yaml", "dataset.yaml", "classes.txt")


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _read_names_yaml(path: Path) -> list[str] | None:
    """Read the ``names:`` entry of a YOLO dataset yaml without a yaml parser.

    Handles the three forms the YOLO tools write: an indented ``id: name`` mapping, an
    indented ``- name`` list, and an inline ``names: [a, b]`` list.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("names:"):
            continue
        inline = line[len("names:") :].split("#")[0].strip()
        if inline.startswith("["):
            return [str(n) for n in ast.literal_eval(inline)]
        by_id: dict[int, str] = {}
        listed: list[str] = []
        for entry in lines[i + 1 :]:
            if entry and not entry[0].isspace():
                break
            entry = entry.strip()
            if entry.startswith("- "):
                listed.append(_strip_quotes(entry[2:]))
            elif ":" in entry:
                key, value = entry.split(":", 1)
                by_id[int(key)] = _strip_quotes(value)
        if by_id:
            return [by_id.get(k, str(k)) for k in range(max(by_id) + 1)]
        return listed or None
    return None


def _find_class_names(root: Path) -> list[str] | None:
    for folder in (root, root.parent):
        for name in _NAME_FILES:
            path = folder / name
            if not path.is_file():
                continue
            if path.suffix == ".txt":
                return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            names = _read_names_yaml(path)
            if names:
                return names
    return None


def _read_labels(path: Path, num_classes: int | None) -> list[tuple[str, int, tuple[float, ...]] | LabelProblem]:
    """The lines of a label file in order: ``(where, class, (cx, cy, w, h))`` when well-formed, else the problem.

    A missing file is an image without objects (no lines).
    """
    if not path.is_file():
        return []
    lines: list[tuple[str, int, tuple[float, ...]] | LabelProblem] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"line {number}"
        if len(fields) != 5:
            message = f"expected 'class cx cy w h', got {len(fields)} fields; skipped"
            lines.append(LabelProblem(str(path), where, message))
            continue
        try:
            cls = int(fields[0])
            cxcywh = tuple(float(v) for v in fields[1:])
        except ValueError:
            lines.append(LabelProblem(str(path), where, f"not numbers: {line.strip()!r}; skipped"))
            continue
        if cls < 0 or (num_classes is not None and cls >= num_classes):
            allowed = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            lines.append(LabelProblem(str(path), where, f"class id {cls} not in {allowed}; skipped"))
            continue
        lines.append((where, cls, cxcywh))
    return lines


class YoloBoxes(Dataset):
    """Object boxes from a YOLO-format folder.

    Layout: ``root/images/**/NAME.jpg`` and ``root/labels/**/NAME.txt`` (same relative path),
    each label line ``class_id cx cy w h`` normalised to ``[0, 1]``. Class names come from
    ``class_names``, else from ``classes.yaml``/``data.yaml``/``dataset.yaml``/``classes.txt``
    in ``root`` or its parent, else they are the ids as strings.

    All labels are parsed at construction. Malformed lines (wrong field count, non-numeric
    values, unknown class id), boxes outside the image and label files without an image are
    collected in :attr:`problems` with file and line; with ``strict=False`` (default) the bad
    entries are skipped (boxes reaching outside the image are clipped) and one
    :class:`~scrl.data.LabelWarning` summarises them, with ``strict=True`` a ``ValueError``
    lists them all.

    Items: ``ds[i] -> (image, boxes, labels)``: a ``PIL.Image`` in RGB, boxes float32
    ``[M, 4]`` ``(x0, y0, x1, y1)`` in source pixels, labels int64 ``[M]`` in
    ``[0, num_classes)``.

    Args:
        root: the dataset folder holding ``images/`` and ``labels/``.
        class_names: names by class id; overrides any names file.
        tolerance: overshoot outside ``[0, 1]`` (normalised units) clipped without a report,
            for labels rounded to a few decimals; >= 0.
        strict: raise on any problem instead of warning.

    Example:
        >>> ds = YoloBoxes("coco128-train")            # doctest: +SKIP
        >>> image, boxes, labels = ds[0]               # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        class_names: Sequence[str] | None = None,
        tolerance: float = 1e-3,
        strict: bool = False,
    ) -> None:
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0 (a fraction of the image side), got {tolerance!r}")
        self.root = Path(root)
        image_dir, label_dir = self.root / "images", self.root / "labels"
        if not image_dir.is_dir():
            raise ValueError(f"root must hold an images/ folder; {image_dir} does not exist")
        names = list(class_names) if class_names is not None else _find_class_names(self.root)
        self.problems: list[LabelProblem] = []
        self.image_paths = sorted(
            p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        images_by_stem = {p.relative_to(image_dir).with_suffix(""): p for p in self.image_paths}
        label_paths = [label_dir / p.relative_to(image_dir).with_suffix(".txt") for p in self.image_paths]
        lines = [_read_labels(path, len(names) if names else None) for path in label_paths]
        # YOLO's (cx, cy, w, h) to corners for every well-formed line of every file at once.
        centred = [line[2] for per_file in lines for line in per_file if not isinstance(line, LabelProblem)]
        corners = iter(box_convert(torch.tensor(centred, dtype=torch.float64).reshape(-1, 4), "cxcywh", "xyxy").tolist())
        self._boxes: list[Tensor] = []
        self._labels: list[Tensor] = []
        for path, per_file in zip(label_paths, lines):
            boxes: list[tuple[float, ...]] = []
            labels: list[int] = []
            for line in per_file:
                if isinstance(line, LabelProblem):
                    self.problems.append(line)
                    continue
                where, cls, _ = line
                box, message = fit_box(next(corners), 1.0, 1.0, tolerance)
                if message is not None:
                    self.problems.append(LabelProblem(str(path), where, message))
                if box is not None:
                    boxes.append(box)
                    labels.append(cls)
            self._boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            self._labels.append(torch.tensor(labels, dtype=torch.int64))
        if label_dir.is_dir():
            for label_path in sorted(label_dir.rglob("*.txt")):
                if label_path.relative_to(label_dir).with_suffix("") not in images_by_stem:
                    self.problems.append(LabelProblem(str(label_path), "", "no image with this name; skipped"))
        max_label = max((int(t.max()) for t in self._labels if t.numel()), default=-1)
        self.class_names: list[str] = names if names else [str(i) for i in range(max_label + 1)]
        self.num_classes = len(self.class_names)
        report_problems(self.problems, str(self.root), strict)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, Tensor, Tensor]:
        path = self.image_paths[index]
        image = open_rgb(path)
        scale = torch.tensor([image.width, image.height, image.width, image.height], dtype=torch.float32)
        return image, self._boxes[index] * scale, self._labels[index].clone()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
            f"classes={self.num_classes}, problems={len(self.problems)})"
        )
