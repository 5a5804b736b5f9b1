"""A distributed sampler whose data order is a function of (seed, epoch) and can resume mid-epoch."""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ResumableSampler"]


class ResumableSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` that yields ``(epoch, index)`` keys and can skip ahead.

    The order of an epoch depends only on ``seed`` and the epoch (as in ``DistributedSampler``),
    so a resumed run sees the same samples in the same order. :meth:`set_epoch` with
    ``start=s`` skips the first ``s`` samples of this replica's share without loading them.
    Each key carries the epoch so that a dataset can derive per-sample randomness from
    ``(seed, epoch, index)`` even inside persistent workers that never see ``set_epoch``.

    Args:
        dataset: any sized dataset.
        num_replicas: number of processes; ``None`` asks ``torch.distributed``.
        rank: this process's rank in ``[0, num_replicas)``; ``None`` asks ``torch.distributed``.
        shuffle: shuffle with ``seed + epoch``.
        seed: shuffling seed, identical on every rank.
        drop_last: drop the tail so that every replica gets the same number of samples
            (otherwise the tail is padded with repeated samples).

    Example:
        >>> sampler = ResumableSampler(dataset, num_replicas=1, rank=0, seed=0)
        >>> sampler.set_epoch(3, start=64)  # resume after 64 samples of epoch 3
        >>> next(iter(sampler))
        (3, 1742)
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select ``epoch`` and skip the first ``start`` samples of this replica's share, ``0 <= start <= len``."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start must be in [0, {self.num_samples}] (samples per replica), got {start}")
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start
