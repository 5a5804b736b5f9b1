"""How an export proves itself: every key loaded, and the same features from the file as from the trunk.

A weight file that loads "mostly" is the failure users meet (a detector fine-tuned from 400 of
531 tensors, the rest random, without a word). Every writer in :mod:`scrl.export` reads its file
back into the target architecture where the target library is installed, and calls these two
checks; a failure is a ``ValueError`` naming the keys or the size of the difference.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

# A probe a trunk of stride 32 maps to a 3x3 grid: every border and interior cell is compared.
PROBE_SHAPE = (2, 3, 96, 96)
FEATURE_ATOL = 1e-4  # fp32: the same convolutions summed in another order


def probe_images(shape: tuple[int, ...] = PROBE_SHAPE, seed: int = 0) -> Tensor:
    """A fixed batch of normalised-looking images ``[B, 3, H, W]`` (float32, ~N(0, 1)), the same on every call."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def check_loaded(target: str, missing: Iterable[str], unexpected: Iterable[str], *, allowed_missing: Iterable[str] = ()) -> None:
    """Refuse a partial load.

    Args:
        target: what was loaded into, for the message (``"transformers.ResNetBackbone"``).
        missing: keys of the target that the file did not fill.
        unexpected: keys of the file the target has no place for.
        allowed_missing: target keys that are meant to stay as they are (a detector's head).

    Raises:
        ValueError: some key is missing (beyond ``allowed_missing``) or unexpected; the message
            counts and names them.
    """
    missing = sorted(set(missing) - set(allowed_missing))
    unexpected = sorted(unexpected)
    if missing or unexpected:
        def listed(keys: list[str]) -> str:
            return f"{len(keys)} ({', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})"

        raise ValueError(f"the export does not load fully into {target}: missing {listed(missing)}, unexpected {listed(unexpected)}")


def check_same_features(
    target: str, expected: Callable[[Tensor], Tensor], loaded: Callable[[Tensor], Tensor], *, atol: float = FEATURE_ATOL
) -> float:
    """Compare the feature maps of the source trunk and of the loaded export on :func:`probe_images`.

    Both callables run in float32 under ``torch.no_grad``; put their modules in eval mode first.

    Returns:
        The largest absolute difference.

    Raises:
        ValueError: the shapes differ or an element differs by more than ``atol``.
    """
    images = probe_images()
    with torch.no_grad():
        want, got = expected(images).float(), loaded(images).float()
    if want.shape != got.shape:
        raise ValueError(f"{target} gives a {list(got.shape)} map where the trunk gives {list(want.shape)}")
    difference = float((want - got).abs().max())
    if not difference <= atol:
        raise ValueError(f"{target} gives other features than the trunk: they differ by up to {difference:.3g} (allowed {atol:g})")
    return difference
