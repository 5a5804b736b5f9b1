"""Problems found while reading box annotations, reported with their file and place.

Annotation files written by hand or converted between tools contain malformed lines, boxes
that leave the image and references to images that do not exist. A reader must neither drop
such entries silently nor crash far from the cause, so the box datasets collect every problem
as a :class:`LabelProblem` and either raise them all at once (``strict=True``) or keep them
in ``dataset.problems`` and issue one warning that summarises them.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

__all__ = ["LabelProblem", "LabelWarning", "fit_box", "listed", "report_problems"]

# Problems listed in the warning or error text; the full list stays in ``dataset.problems``.
_SHOWN = 10


class LabelWarning(UserWarning):
    """Warning category for annotation problems, so users can filter or escalate them."""


class LabelProblem(NamedTuple):
    """One problem in an annotation source.

    Attributes:
        path: the file the problem is in (label file, annotation JSON or image).
        where: the place in that file, e.g. ``"line 3"`` or ``"annotations[17] (id 905)"``;
            empty when the problem concerns the whole file.
        message: what is wrong and what the reader did about it (e.g. ``"skipped"``).
    """

    path: str
    where: str
    message: str

    def __str__(self) -> str:
        place = f"{self.path}:{self.where}" if self.where else self.path
        return f"{place}: {self.message}"


def listed(problems: Sequence[LabelProblem]) -> str:
    """The first problems, one per indented line after a line break, and how many more there are."""
    shown = "".join(f"\n  {p}" for p in problems[:_SHOWN])
    return shown + (f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")


def report_problems(problems: Sequence[LabelProblem], source: str, strict: bool) -> None:
    """Raise or warn about ``problems`` found while reading ``source``.

    Args:
        problems: everything found; nothing happens when empty.
        source: the dataset's root or annotation file, named in the message.
        strict: raise ``ValueError`` listing the problems instead of warning.

    Raises:
        ValueError: when ``strict`` and there is at least one problem.
    """
    if not problems:
        return
    text = f"{len(problems)} annotation problem(s) in {source}:{listed(problems)}"
    if strict:
        raise ValueError(text)
    warnings.warn(text + "\n(all of them are in dataset.problems)", LabelWarning, stacklevel=3)


def fit_box(
    box: Sequence[float], width: float, height: float, tolerance: float
) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """Check a box ``(x0, y0, x1, y1)`` against a ``width`` x ``height`` image.

    Overshoots up to ``tolerance`` (rounding in converted labels) are clipped without a
    message; a box reaching further out is clipped and reported; a box with no area inside
    the image, an empty box or non-finite numbers are rejected and reported.

    Args:
        box: ``(x0, y0, x1, y1)`` in the same units as ``width``/``height``.
        width: image width, > 0.
        height: image height, > 0.
        tolerance: overshoot accepted silently, in the same units, >= 0.

    Returns:
        ``(box, message)``: the box clipped to the image (``None`` when rejected) and a
        message describing the problem (``None`` when there is none).

    Example:
        >>> fit_box((-5.0, 0.0, 20.0, 10.0), 100.0, 50.0, tolerance=1.0)
        ((0.0, 0.0, 20.0, 10.0), 'box (-5, 0, 20, 10) extends outside the image [0, 100]x[0, 50]; clipped')
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    text = f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None, f"{text} has non-finite coordinates; skipped"
    if not (x1 > x0 and y1 > y0):
        return None, f"{text} is empty (zero or negative width/height); skipped"
    image = f"the image [0, {width:g}]x[0, {height:g}]"
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        return None, f"{text} lies outside {image}; skipped"
    overshoot = max(-x0, -y0, x1 - width, y1 - height)
    if overshoot > tolerance:
        return clipped, f"{text} extends outside {image}; clipped"
    return clipped, None
