"""Datasets that draw each item's randomness from ``(seed, epoch, index)`` alone."""

from __future__ import annotations

from torch.utils.data import Dataset

from ..runtime.random_streams import mix_seed

__all__ = ["SeededDataset"]


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
