"""Object boxes in YOLO text labels: ``images/`` beside ``labels/``, one ``.txt`` per image.

Each label line is ``class_id cx cy w h`` with the four box numbers normalised to ``[0, 1]``
by the image width and height. An image without a label file is an image without objects.
"""

from __future__ import annotations

import ast
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_convert

from .box_checks import usable_images
from .image_folder import DEFAULT_MAX_CONSECUTIVE_UNREADABLE, IMAGE_EXTENSIONS
from .image_file import open_rgb
from .label_problems import LabelProblem, LabelWarning, fit_box, report_problems

__all__ = ["YoloBoxes", "read_class_names"]

# Files that may hold the class names of a YOLO dataset, looked for in the root and its parent.
_NAME_FILES = ("classes.yaml", "data.yaml", "dataset.yaml", "classes.txt")


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _without_comment(text: str) -> str:
    """``text`` up to a YAML ``# comment``: a ``#`` at the start or after a blank, outside quotes."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip()
    return text.strip()


def _flow_list(text: str) -> list[str]:
    """The items of a YAML flow list ``[a, 'b c', "d"]`` (quoted or plain, comments already removed)."""
    try:
        return [str(n) for n in ast.literal_eval(text)]
    except (ValueError, SyntaxError):  # YAML's unquoted flow list, [cat, dog]
        return [_strip_quotes(n) for n in text.strip().strip("[]").split(",") if n.strip()]


def _read_names_yaml(path: Path) -> list[str] | None:
    """Read the class names of a YOLO dataset yaml without a yaml parser.

    Handles the forms the YOLO tools write: an indented ``id: name`` mapping, an indented
    ``- name`` list, and a flow list ``names: [a, b]``, also over several lines; trailing
    ``# comments``; and ``nc: N``, the class count, alone (names ``"0"`` ... ``"N-1"``) or beside
    the names, which it must then agree with.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    counts = [_without_comment(line[len("nc:"):]) for line in lines if line.startswith("nc:")]
    count = int(counts[0]) if counts and counts[0].isdigit() else None
    names = None
    for i, line in enumerate(lines):
        if not line.startswith("names:"):
            continue
        inline = _without_comment(line[len("names:"):])
        if inline.startswith("["):
            following = iter(lines[i + 1 :])
            while "]" not in inline:  # a flow list over several lines
                inline += " " + _without_comment(next(following, "]"))
            names = _flow_list(inline[: inline.index("]") + 1])
            break
        by_id: dict[int, str] = {}
        listed: list[str] = []
        for entry in lines[i + 1 :]:
            if entry and not entry[0].isspace() and not entry.lstrip().startswith("#"):
                break
            entry = _without_comment(entry)
            if entry.startswith("- "):
                listed.append(_strip_quotes(entry[2:].strip()))
            elif ":" in entry:
                key, value = entry.split(":", 1)
                by_id[int(key)] = _strip_quotes(value.strip())
        names = [by_id.get(k, str(k)) for k in range(max(by_id) + 1)] if by_id else listed or None
        break
    if names is not None and count is not None and len(names) != count:
        raise ValueError(f"{path} says nc: {count} but names {len(names)} classes")
    if names is None and count is not None and count >= 1:
        names = [str(k) for k in range(count)]
    return names


def read_class_names(path: str | os.PathLike) -> list[str]:
    """The class names in a names file: one per line (``.txt``) or the ``names:`` entry of a YOLO yaml.

    Args:
        path: a ``.txt`` file, or a ``.yaml``/``.yml`` file such as a YOLO ``data.yaml``.

    Returns:
        The names by class id.

    Raises:
        ValueError: the file is missing or names no class; the message names it.

    Example:
        >>> read_class_names("../shared/data/coco128-train/classes.yaml")[:2]   # doctest: +SKIP
        ['person', 'bicycle']
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"names file {path} does not exist")
    names = _names_in(path)
    if not names:
        raise ValueError(f"names file {path} names no class (one name per line in a .txt, or 'names:' in a .yaml)")
    return names


def _names_in(path: Path) -> list[str] | None:
    """The class names ``path`` holds, or ``None``; a ``ValueError`` when it contradicts itself."""
    if path.suffix.lower() == ".txt":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] or None
    return _read_names_yaml(path)


def _find_class_names(root: Path) -> tuple[list[str], Path] | None:
    """The names of the first names file in ``root`` or its parent that names classes, and that file."""
    for folder in (root, root.parent):
        for name in _NAME_FILES:
            path = folder / name
            names = _names_in(path) if path.is_file() else None
            if names:  # else, e.g. a dataset.yaml without names: the next file may have them
                return names, path
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
    each label line ``class_id cx cy w h`` normalised to ``[0, 1]``. An image without a label
    file is an image without objects; :attr:`unlabelled` lists them and a
    :class:`~scrl.data.LabelWarning` says how many there are.

    Classes: ``class_names`` when given, else ``num_classes`` (names ``"0"``, ``"1"``, ...),
    else the names in ``classes.yaml``/``data.yaml``/``dataset.yaml``/``classes.txt`` in
    ``root`` or its parent; with none of them the count is guessed as the largest class id in
    the labels + 1, with a warning, since classes without any box would be missed.
    :attr:`names_source` says which it was.

    All labels are parsed at construction. Malformed lines (wrong field count, non-numeric
    values, unknown class id), boxes outside the image and label files without an image are
    collected in :attr:`problems` with file and line; with ``strict=False`` (default) the bad
    entries are skipped (boxes reaching outside the image are clipped) and one
    :class:`~scrl.data.LabelWarning` summarises them, with ``strict=True`` a ``ValueError``
    lists them all. Then every image is decoded once: unreadable ones are left out and reported
    (:attr:`skipped`; :mod:`scrl.data.box_checks` has the rule).

    Items: ``ds[i] -> (image, boxes, labels)``: a ``PIL.Image`` in RGB, boxes float32
    ``[M, 4]`` ``(x0, y0, x1, y1)`` in source pixels, labels int64 ``[M]`` in
    ``[0, num_classes)``.

    Args:
        root: the dataset folder holding ``images/`` and ``labels/``.
        class_names: names by class id; overrides any names file.
        num_classes: the number of classes, >= 1, when there are no names; must agree with
            ``class_names`` when both are given.
        tolerance: overshoot outside ``[0, 1]`` (normalised units) clipped without a report,
            for labels rounded to a few decimals; >= 0.
        strict: raise on any annotation problem instead of warning.
        max_consecutive_unreadable: how many unreadable images in a row are skipped before the
            folder is refused, >= 1.

    Raises:
        ValueError: a bad argument, no ``images/`` folder, or (``strict``) annotation problems.
        BoxDataError: no images, no boxes, or no readable image (the message says which).

    Example:
        >>> ds = YoloBoxes("coco128-train")            # doctest: +SKIP
        >>> image, boxes, labels = ds[0]               # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        tolerance: float = 1e-3,
        strict: bool = False,
        max_consecutive_unreadable: int = DEFAULT_MAX_CONSECUTIVE_UNREADABLE,
    ) -> None:
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0 (a fraction of the image side), got {tolerance!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if class_names is not None and len(class_names) == 0:
            raise ValueError("class_names must hold at least one name")
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"num_classes={num_classes} but class_names holds {len(class_names)} names")
        if not isinstance(max_consecutive_unreadable, int) or max_consecutive_unreadable < 1:
            raise ValueError(f"max_consecutive_unreadable must be an integer >= 1, got {max_consecutive_unreadable!r}")
        self.root = Path(root)
        image_dir, label_dir = self.root / "images", self.root / "labels"
        if not image_dir.is_dir():
            raise ValueError(f"root must hold an images/ folder; {image_dir} does not exist")
        names, self.names_source = self._given_names(class_names, num_classes)
        self.problems: list[LabelProblem] = []
        self.image_paths = sorted(
            p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        images_by_stem = {p.relative_to(image_dir).with_suffix(""): p for p in self.image_paths}
        label_paths = [label_dir / p.relative_to(image_dir).with_suffix(".txt") for p in self.image_paths]
        self.unlabelled: list[Path] = [image for image, label in zip(self.image_paths, label_paths) if not label.is_file()]
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
        report_problems(self.problems, str(self.root), strict)
        self._report_unlabelled(label_dir)
        kept, self.skipped = usable_images(
            str(self.root), self.image_paths, [len(t) for t in self._labels],
            no_images=f"{image_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)} in any letter case and sub-folder)",
            no_boxes=self._why_no_boxes(label_dir, lines),
            max_consecutive_unreadable=max_consecutive_unreadable,
        )
        if names is None:
            names = self._guessed_names()
        self.class_names: list[str] = names
        self.num_classes = len(self.class_names)
        self.image_paths = [self.image_paths[i] for i in kept]
        self._boxes = [self._boxes[i] for i in kept]
        self._labels = [self._labels[i] for i in kept]
        self.box_counts: list[int] = [len(t) for t in self._labels]

    def _given_names(self, class_names: Sequence[str] | None, num_classes: int | None) -> tuple[list[str] | None, str]:
        """The class names from the arguments or a names file, and where they came from (``None``: not known)."""
        if class_names is not None:
            return list(class_names), "class_names"
        if num_classes is not None:
            return [str(i) for i in range(num_classes)], "num_classes"
        found = _find_class_names(self.root)
        if found is not None:
            return found[0], str(found[1])
        return None, "labels"

    def _guessed_names(self) -> list[str]:
        count = 1 + max(int(t.max()) for t in self._labels if t.numel())
        warnings.warn(
            f"{self.root}: no class names found (looked for {', '.join(_NAME_FILES)} in it and its parent), so the "
            f"class count is guessed from the labels: largest class id + 1 = {count}; classes after it that have no "
            "box are missed: give the names or the count (class_names= or num_classes=; --names FILE or "
            "--num-classes N in the scripts)",
            LabelWarning,
            stacklevel=3,
        )
        return [str(i) for i in range(count)]

    def _report_unlabelled(self, label_dir: Path) -> None:
        if not self.unlabelled or len(self.unlabelled) == len(self.image_paths):
            return  # none, or none labelled at all: that is no dataset, and usable_images says so
        example = label_dir / self.unlabelled[0].relative_to(self.root / "images").with_suffix(".txt")
        warnings.warn(
            f"{self.root}: {len(self.unlabelled)} of {len(self.image_paths)} images have no label file "
            f"(e.g. {example}); they are read as images without objects",
            LabelWarning,
            stacklevel=3,
        )

    def _why_no_boxes(self, label_dir: Path, lines: list[list]) -> str:
        """Why no image has a box, when none has: no label files, empty ones, or only rejected lines."""
        if len(self.unlabelled) == len(self.image_paths):
            return f"none of its images has a label file (looked for {label_dir}/NAME.txt)"
        rejected = sum(len(per_file) for per_file in lines)  # with no box kept, every line was rejected
        if rejected == 0:
            return "every label file is empty" + (f", and {len(self.unlabelled)} images have none" if self.unlabelled else "")
        return f"all {rejected} label lines were rejected (the annotation problems say why)"

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, Tensor, Tensor]:
        path = self.image_paths[index]
        image = open_rgb(path)
        scale = torch.tensor([image.width, image.height, image.width, image.height], dtype=torch.float32)
        return image, self._boxes[index] * scale, self._labels[index].clone()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, classes={self.num_classes}, "
            f"problems={len(self.problems)}, unlabelled={len(self.unlabelled)}, skipped={len(self.skipped)})"
        )
