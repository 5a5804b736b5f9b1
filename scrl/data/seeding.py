"""Seeds derived from a run's seed, and blocks of code run on seeded global random streams.

Everything random outside a training step draws either from a ``torch.Generator`` seeded with
:func:`mix_seed` of the caller's seed and what the draw is for (sample, epoch, stream), or, for
code that takes no generator (worker-side transforms, torchvision's detection heads, module
initialisation), from the global streams inside :func:`seeded_global_rngs`. Either way the
result depends on the seed alone, and the caller's global streams are left as they were.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SeededDataset", "mix_seed", "seeded_global_rngs"]


def mix_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key, their order and their number, e.g. ``mix_seed(seed, epoch, index)``.

    Mixed with :class:`numpy.random.SeedSequence`, so nearby keys give unrelated streams. The
    number of keys is mixed in too: ``SeedSequence`` alone pads short entropy with zeros, so
    ``(seed, epoch)`` and ``(seed, epoch, 0)`` would give the same stream.

    Example:
        >>> torch.Generator().manual_seed(mix_seed(0, 3, 17))  # sample 17 of epoch 3
    """
    if not keys or min(keys) < 0:
        raise ValueError(f"keys must be one or more integers >= 0, got {keys}")
    state = np.random.SeedSequence([len(keys), *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextmanager
def seeded_global_rngs(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run a block on the global random streams seeded with ``seed``; restore the caller's afterwards.

    Seeds torch's CPU generator, Python's ``random`` and NumPy's (``seed % 2**32``), and for a
    CUDA ``device`` that device's generator too; on exit, also after an exception, all of them
    are back where the caller left them. A block that draws from them therefore gives the same
    result for the same seed, wherever it runs, and consumes nothing of the caller's streams.

    Args:
        seed: an integer in ``[0, 2**64)``, e.g. from :func:`mix_seed`.
        device: the device whose generator the block draws from besides the CPU's; ``None`` or
            a CPU device: the CPU only. Other GPUs are neither seeded nor restored.

    Example:
        >>> with seeded_global_rngs(mix_seed(seed, 1)):
        ...     head = torch.nn.Linear(8, 2)  # the same initial weights for the same seed
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    gpus = [device] if device.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=gpus):
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would reseed every GPU
        for gpu in gpus:
            with torch.cuda.device(gpu):
                torch.cuda.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededDataset(Dataset):
    """Base of the datasets that wrap another and draw each item's randomness from ``(seed, epoch, index)``.

    Keys are ``(epoch, index)`` tuples as :class:`~scrl.data.ResumableSampler` yields them (so
    that persistent workers, which never see ``set_epoch``, still know the epoch), or plain
    indices (epoch 0). A subclass reads the item ``index`` of :attr:`dataset` and seeds its
    draws with the seed :meth:`item_seed` gives.

    Args:
        dataset: the wrapped dataset; its length is this one's.
        seed: base seed, >= 0.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def item_seed(self, key: int | tuple[int, int], *stream: int) -> tuple[int, int]:
        """``(index, mix_seed(seed, *stream, epoch, index))`` for ``key``; ``stream`` tells apart the draws of one item."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return index, mix_seed(self.seed, *stream, epoch, index)
