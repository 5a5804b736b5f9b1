"""The pretraining data loader: uint8 views made in worker processes, pinned, prefetched."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .sampler import ResumableSampler
from .two_view import TwoViewDataset, collate_two_views

__all__ = ["two_view_loader"]


def two_view_loader(
    dataset: TwoViewDataset,
    sampler: ResumableSampler,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    prefetch_factor: int = 4,
    seed: int = 0,
) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` of :class:`~scrl.data.TwoViewBatch` for pretraining.

    Incomplete last batches are dropped (static shapes). With ``workers > 0`` the workers stay
    alive across epochs and each keeps ``prefetch_factor`` batches ready.

    Randomness: the transforms in the workers draw from the global RNGs, which
    :class:`TwoViewDataset` seeds per sample from ``(seed, epoch, index)``, so the per-worker
    seeds the DataLoader hands out never matter and a batch is the same for any number of
    workers. Those worker seeds come from the loader's own ``torch.Generator``, seeded with
    ``seed``, so that creating an iterator never draws from the training process's global RNG
    (which would make a resumed run diverge).

    Args:
        dataset: the two-view dataset.
        sampler: decides order and sharding; call ``sampler.set_epoch`` before each epoch.
        batch_size: images per batch in this process, >= 1.
        workers: worker processes, >= 0 (0 loads in the training process).
        pin_memory: page-locked host batches for asynchronous copies to the GPU.
        prefetch_factor: batches prepared ahead per worker, >= 1 (ignored without workers).
        seed: seeds the loader's generator, >= 0 (pass the run's seed).

    Example:
        >>> loader = two_view_loader(ds, ResumableSampler(ds, 1, 0), batch_size=32, workers=2)
        >>> batch = next(iter(loader))  # TwoViewBatch(view1 uint8 [32, 3, H, W], ...)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if prefetch_factor < 1:
        raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_two_views,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
