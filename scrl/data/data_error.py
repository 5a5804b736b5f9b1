"""The one error for data a run cannot use."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Data that cannot be used as given: an empty folder, a folder of unreadable files, a box dataset without boxes.

    The message names the data (its folder or file) and what is missing. The example scripts
    report it as a named error with exit status 2, like a bad flag.
    """

    @classmethod
    def from_worker(cls, exc: "DataError") -> "DataError":
        """The error as the data worker raised it, without the traceback text a ``DataLoader`` wraps around it."""
        text = str(exc)
        if "Original Traceback" not in text:
            return exc
        return cls(text.rstrip().splitlines()[-1].split(": ", 1)[-1])
