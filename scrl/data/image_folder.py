"""Any folder tree of images as an unlabelled dataset that survives corrupt files."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import torch
from PIL import Image

from .data_error import DataError
from .encoded_image import EncodedImage, read_for_device
from .image_file import open_rgb

__all__ = ["ImageFolderDataset", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# How many unreadable files in a row are replaced before giving up: a run of this many broken
# files means the folder itself is broken.
DEFAULT_MAX_CONSECUTIVE_UNREADABLE = 64


def _image_files(root: str) -> Iterator[str]:
    """Image files under ``root``, following symbolic links, each real file once.

    A directory reached twice (a link to a parent, or two links to one folder) is walked once,
    so a link loop ends; a file reached by several paths is listed under the first of them in
    sorted walk order.
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        dirnames.sort()
        real_dir = os.path.realpath(dirpath)  # once per folder: resolving every file would be slow on big trees
        for name in sorted(filenames):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path) if os.path.islink(path) else os.path.join(real_dir, name)
            if real not in seen_files:
                seen_files.add(real)
                yield path


class ImageFolderDataset(torch.utils.data.Dataset):
    """All images under ``root`` (any depth), in sorted path order; labels are not used.

    An ImageNet ``train/`` folder works as is (class sub-folders are just folders). Files with
    the extensions in :data:`IMAGE_EXTENSIONS`, in any letter case, are listed once at
    construction. Symbolic links are followed; each real file is listed once (by its resolved
    path) and a directory reached twice is walked once, so a link loop such as ``loop -> .``
    neither hangs nor multiplies the data. A file that cannot be decoded (truncated, not an
    image, unreadable) is skipped when it is loaded: the next file in path order that decodes
    takes its place, so the substitute is the same in every process and every run, and the
    skipped path is reported with its reason (:meth:`load`, :attr:`skipped`) instead of
    crashing the run.

    Args:
        root: folder to scan.
        transform: optional callable applied to the RGB PIL image.
        max_consecutive_unreadable: how many unreadable files in a row are replaced before
            :meth:`load` gives up with a ``RuntimeError``, >= 1.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: ``root`` holds no image files (the message names the path).

    Example:
        >>> ds = ImageFolderDataset("/data/imagenet/train")
        >>> image, skipped = ds.load(0)  # PIL RGB image, paths skipped on the way
        >>> len(ds), ds.samples[0]
        (1281167, '/data/imagenet/train/n01440764/n01440764_10026.JPEG')
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        max_consecutive_unreadable: int = DEFAULT_MAX_CONSECUTIVE_UNREADABLE,
    ) -> None:
        if not isinstance(max_consecutive_unreadable, int) or max_consecutive_unreadable < 1:
            raise ValueError(f"max_consecutive_unreadable must be an integer >= 1, got {max_consecutive_unreadable!r}")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
        samples = sorted(_image_files(root))
        if not samples:
            raise DataError(
                f"image folder {root!r} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)} in any letter case, "
                "in all sub-folders)"
            )
        self.root = root
        self.samples: list[str] = samples
        self.transform = transform
        self.max_consecutive_unreadable = max_consecutive_unreadable
        # Paths found unreadable by this process, with the reason; each worker keeps its own,
        # and the training process reports each path once (scrl.train.Pretrainer).
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, dict[str, str]]:
        """Decode image ``index`` as RGB, or the first readable file after it.

        This is the protocol by which :class:`~scrl.data.TwoViewDataset` reports replaced files:
        any dataset with a ``load(index) -> (image, {skipped path: reason})`` method is read through it.

        Returns:
            ``(image, skipped)``: the PIL RGB image and the files that were unreadable on the way,
            path to reason (empty when file ``index`` itself decodes).

        Raises:
            RuntimeError: ``max_consecutive_unreadable`` files in a row are unreadable.
        """
        return self._first_readable(index, open_rgb)

    def load_encoded(self, index: int) -> tuple[EncodedImage | Image.Image, dict[str, str]]:
        """Image ``index`` undecoded when it is a JPEG the device decodes, else decoded as :meth:`load` does.

        The reading side of decoding on the device (:class:`~scrl.transforms.TwoViewCrops`):
        a JPEG comes back as its bytes and header size (:func:`~scrl.data.encoded_image.read_for_device`); any
        other file, or a JPEG the device cannot decode, is decoded here, and an unreadable file
        is replaced and reported exactly as by :meth:`load`.

        Returns:
            ``(image, skipped)``: an :class:`~scrl.data.EncodedImage` or a PIL RGB image, and the
            files that were unreadable on the way.

        Raises:
            RuntimeError: ``max_consecutive_unreadable`` files in a row are unreadable.
        """
        return self._first_readable(index, read_for_device)

    def _first_readable(self, index: int, read: Callable[[str], Any]) -> tuple[Any, dict[str, str]]:
        n = len(self.samples)
        skipped: dict[str, str] = {}
        for k in range(min(n, self.max_consecutive_unreadable)):
            path = self.samples[(index + k) % n]
            if path not in self.skipped:
                try:
                    return read(path), skipped
                except OSError as exc:
                    cause = exc.__cause__ or exc
                    self.skipped[path] = f"{type(cause).__name__}: {cause}"
            skipped[path] = self.skipped[path]
        raise DataError(
            f"{len(skipped)} unreadable images in a row from {self.samples[index % n]!r} on (max_consecutive_unreadable="
            f"{self.max_consecutive_unreadable}): the folder looks broken"
        )

    def __getitem__(self, index: int) -> Any:
        image, _ = self.load(index)
        return self.transform(image) if self.transform is not None else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, images={len(self)}, transform={self.transform!r})"
