"""Any folder tree of images as an unlabelled dataset that survives corrupt files."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import torch
from PIL import Image

from .image_file import open_rgb

__all__ = ["ImageFolderDataset", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# How many further files are tried in place of an unreadable one before giving up; a run of
# this many consecutive broken files means the folder itself is broken.
_MAX_SUBSTITUTES = 64


class ImageFolderDataset(torch.utils.data.Dataset):
    """All images under ``root`` (any depth), in sorted path order; labels are not used.

    An ImageNet ``train/`` folder works as is (class sub-folders are just folders). Files with
    the extensions in :data:`IMAGE_EXTENSIONS`, in any letter case, are listed once at
    construction. A file that cannot be decoded (truncated, not an image, unreadable) is
    skipped when it is loaded: the next file in path order that decodes takes its place, so
    the substitute is the same in every process and every run, and the skipped path is
    reported (:meth:`load`, :attr:`skipped`) instead of crashing the run.

    Args:
        root: folder to scan; following symbolic links.
        transform: optional callable applied to the RGB PIL image.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: ``root`` holds no image files (the message names the path).

    Example:
        >>> ds = ImageFolderDataset("/data/imagenet/train")
        >>> image, skipped = ds.load(0)  # PIL RGB image, paths skipped on the way
        >>> len(ds), ds.samples[0]
        (1281167, '/data/imagenet/train/n01440764/n01440764_10026.JPEG')
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
        samples = sorted(
            os.path.join(dirpath, f)
            for dirpath, _, filenames in os.walk(root, followlinks=True)
            for f in filenames
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not samples:
            raise ValueError(
                f"image folder {root!r} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)} in any letter case, "
                "in all sub-folders)"
            )
        self.root = root
        self.samples: list[str] = samples
        self.transform = transform
        # Paths found unreadable by this process, with the reason; each worker keeps its own.
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, list[str]]:
        """Decode image ``index`` as RGB, or the first readable file after it.

        This is the protocol by which :class:`~scrl.data.TwoViewDataset` reports replaced files:
        any dataset with a ``load(index) -> (image, skipped paths)`` method is read through it.

        Returns:
            ``(image, skipped)``: the PIL RGB image and the paths that were unreadable on the way
            (empty when file ``index`` itself decodes).

        Raises:
            RuntimeError: :data:`_MAX_SUBSTITUTES` consecutive files are unreadable.
        """
        n = len(self.samples)
        skipped: list[str] = []
        for k in range(min(n, _MAX_SUBSTITUTES + 1)):
            path = self.samples[(index + k) % n]
            if path in self.skipped:
                skipped.append(path)
                continue
            try:
                return open_rgb(path), skipped
            except OSError as exc:
                cause = exc.__cause__ or exc
                self.skipped[path] = f"{type(cause).__name__}: {cause}"
                print(f"scrl: skipping unreadable image {path}: {self.skipped[path]}", file=sys.stderr, flush=True)
                skipped.append(path)
        raise RuntimeError(f"{len(skipped)} consecutive unreadable images starting at {self.samples[index % n]!r}")

    def __getitem__(self, index: int) -> Any:
        image, _ = self.load(index)
        return self.transform(image) if self.transform is not None else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, images={len(self)}, transform={self.transform!r})"
