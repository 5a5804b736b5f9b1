"""Procedurally generated multi-object scenes with ground-truth boxes.

Each image shows 2-4 shapes (6 shapes x 3 textures = 18 classes) in random colours and sizes
on a textured background. A scene depends only on ``(seed, index)``, so the dataset needs no
files, is identical in every worker and process, and doubles as a small detection-like
benchmark: pretrain on the images, then evaluate box features against the ground-truth boxes.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["SyntheticScenes", "SHAPES", "TEXTURES"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
TEXTURES: tuple[str, ...] = ("plain", "striped", "checkered")

# Object side as a fraction of the image side; the lower bound keeps every object at least a
# few C5 cells wide at 160 px, the upper bound leaves room for several objects.
_SIZE_RANGE = (0.22, 0.45)
# Placement tries per object before it is dropped; objects may touch but hardly overlap.
_PLACEMENT_TRIES = 30
_MAX_OVERLAP_IOU = 0.05


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coverage in ``[0, 1]`` of a shape on local coordinates ``u, v`` in ``[-1, 1]``.

    The shape fills the square ``[-1, 1]^2`` as tightly as its form allows; edges are
    anti-aliased over about one pixel via the (approximate) signed distance ``d`` scaled by
    ``edge`` (pixels per unit).
    """
    edge = (u.shape[1] - 1) / 2.0
    if shape == "circle":
        d = np.sqrt(u * u + v * v) - 1.0
    elif shape == "ring":
        r = np.sqrt(u * u + v * v)
        d = np.abs(r - 0.7) - 0.3
    elif shape == "square":
        d = np.maximum(np.abs(u), np.abs(v)) - 1.0
    elif shape == "diamond":
        d = (np.abs(u) + np.abs(v) - 1.0) / np.sqrt(2.0)
    elif shape == "cross":
        arm = 0.33
        horizontal = np.maximum(np.abs(u) - 1.0, np.abs(v) - arm)
        vertical = np.maximum(np.abs(u) - arm, np.abs(v) - 1.0)
        d = np.minimum(horizontal, vertical)
    elif shape == "triangle":
        # Isosceles triangle pointing up or down, base on one edge of the square.
        if rng.random() < 0.5:
            v = -v
        left = (-2.0 * u - v - 1.0) / np.sqrt(5.0)  # edge from (-1, 1) to the apex (0, -1)
        right = (2.0 * u - v - 1.0) / np.sqrt(5.0)  # edge from (1, 1) to the apex
        bottom = v - 1.0
        d = np.maximum(np.maximum(left, right), bottom)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - d * edge, 0.0, 1.0)


def _texture(texture: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which of two colours each pixel takes, as a float in ``[0, 1]`` (1 = second colour)."""
    if texture == "plain":
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    if texture == "striped":
        angle = rng.uniform(0.0, np.pi)
        period = rng.uniform(5.0, 9.0)
        t = (x * np.cos(angle) + y * np.sin(angle)) / period
        return (np.sin(2.0 * np.pi * t) > 0).astype(np.float32)
    period = rng.uniform(5.0, 9.0)
    return ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured background, float32 ``[size, size, 3]`` in ``[0, 1]``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    hue = rng.random()
    base = _hsv(hue, rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.8))
    other = _hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.8))
    kind = rng.integers(4)
    if kind == 0:  # soft gradient
        angle = rng.uniform(0.0, 2.0 * np.pi)
        t = (x * np.cos(angle) + y * np.sin(angle)) / size
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    elif kind == 1:  # a few interfering waves
        t = np.zeros_like(x)
        for _ in range(3):
            fx, fy = rng.uniform(-0.15, 0.15, size=2)
            t += np.sin(fx * x + fy * y + rng.uniform(0.0, 2.0 * np.pi))
        t = (t / 6.0) + 0.5
    elif kind == 2:  # low-contrast wide stripes
        t = 0.5 + 0.5 * np.sin(2.0 * np.pi * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) / rng.uniform(12, 30))
    else:  # blotchy noise: coarse random grid upsampled bilinearly
        cells = int(rng.integers(3, 7))
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        gx, gy = x / size * cells, y / size * cells
        ix, iy = np.minimum(gx.astype(int), cells - 1), np.minimum(gy.astype(int), cells - 1)
        fx, fy = gx - ix, gy - iy
        t = (
            grid[iy, ix] * (1 - fx) * (1 - fy)
            + grid[iy, ix + 1] * fx * (1 - fy)
            + grid[iy + 1, ix] * (1 - fx) * fy
            + grid[iy + 1, ix + 1] * fx * fy
        )
    img = base * (1.0 - t[..., None]) + other * t[..., None]
    img += rng.normal(0.0, 0.02, size=img.shape).astype(np.float32)
    return img


class SyntheticScenes(torch.utils.data.Dataset):
    """Scenes of 2-4 textured, coloured shapes on textured backgrounds, with their boxes.

    Class ``c`` is shape ``SHAPES[c // 3]`` with texture ``TEXTURES[c % 3]``; colours, sizes,
    positions and the background vary freely, so only shape and texture identify a class.
    Scene ``i`` is a pure function of ``(seed, i)``.

    Args:
        num_images: dataset length, >= 1.
        image_size: side of the square images in pixels, >= 32.
        objects: ``(low, high)``, inclusive range of objects per scene, 1 <= low <= high <= 8.
            A scene may hold fewer than ``low`` when an object finds no free place.
        seed: any integer; different seeds give different scenes.

    Each item is ``(image, boxes, labels)``: a PIL RGB image, float32 ``[M, 4]`` boxes
    ``(x0, y0, x1, y1)`` in pixels (pixel-edge convention: tight around the object's pixels),
    int64 ``[M]`` class ids in ``[0, 18)``.

    Example:
        >>> ds = SyntheticScenes(512, image_size=96, seed=0)
        >>> image, boxes, labels = ds[0]
        >>> image.size, boxes.shape[1], ds.class_names[int(labels[0])]
        ((96, 96), 4, 'striped diamond')
    """

    def __init__(self, num_images: int, image_size: int = 160, objects: tuple[int, int] = (2, 4), seed: int = 0) -> None:
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size must be an integer >= 32 (pixels), got {image_size!r}")
        low, high = objects
        if not (1 <= low <= high <= 8):
            raise ValueError(f"objects must be (low, high) with 1 <= low <= high <= 8, got {objects!r}")
        self.num_images = num_images
        self.image_size = image_size
        self.objects = (int(low), int(high))
        self.seed = int(seed)
        self.class_names = [f"{texture} {shape}" for shape in SHAPES for texture in TEXTURES]
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Image.Image, Tensor, Tensor]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index %= self.num_images
        rng = np.random.default_rng([self.seed, index])
        size = self.image_size
        img = _background(size, rng)
        boxes: list[np.ndarray] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(self.objects[0], self.objects[1] + 1))):
            placed = self._draw_object(img, rng, torch.as_tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)))
            if placed is not None:
                boxes.append(placed[0])
                labels.append(placed[1])
        pixels = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return (
            Image.fromarray(pixels, mode="RGB"),
            torch.as_tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)),
            torch.as_tensor(labels, dtype=torch.int64),
        )

    def _draw_object(self, img: np.ndarray, rng: np.random.Generator, taken: Tensor) -> tuple[np.ndarray, int] | None:
        """Paint one random object into ``img`` in place; returns its tight box and class, or None.

        ``taken`` holds the boxes already placed, float32 ``[M, 4]``.
        """
        size = self.image_size
        for _ in range(_PLACEMENT_TRIES):
            side = int(rng.uniform(*_SIZE_RANGE) * size)
            aspect = rng.uniform(0.75, 1.33)
            w, h = max(8, int(side * np.sqrt(aspect))), max(8, int(side / np.sqrt(aspect)))
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float32)
            if len(taken) == 0 or box_iou(torch.from_numpy(box[None]), taken).max() <= _MAX_OVERLAP_IOU:
                break
        else:
            return None
        label = int(rng.integers(len(SHAPES) * len(TEXTURES)))
        shape, texture = SHAPES[label // len(TEXTURES)], TEXTURES[label % len(TEXTURES)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        u, v = xx / w * 2.0 - 1.0, yy / h * 2.0 - 1.0
        alpha = _shape_mask(shape, u, v, rng)
        hue = rng.random()
        colour = _hsv(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
        # The second texture colour differs clearly in brightness so stripes/checks stay visible.
        second = _hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.5, 1.0), rng.uniform(0.15, 0.4))
        mix = _texture(texture, xx + x0, yy + y0, rng)[..., None]
        paint = colour * (1.0 - mix) + second * mix
        patch = img[y0 : y0 + h, x0 : x0 + w]
        patch[:] = patch * (1.0 - alpha[..., None]) + paint * alpha[..., None]
        # Tight box around the pixels the object actually covers (>= half coverage).
        rows, cols = np.nonzero(alpha >= 0.5)
        return np.array([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1], dtype=np.float32), label

    def extra_repr(self) -> str:
        return f"num_images={self.num_images}, image_size={self.image_size}, objects={self.objects}, seed={self.seed}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
