"""Every random number of a run, from one seed: named, checkpointed streams and the per-sample seeds.

A run draws from nothing global. Its streams are derived from the run's seed by
:func:`mix_seed`, each with keys of its own so that no two share a sequence:

* data workers: ``mix_seed(seed, epoch, index)`` per sample (:class:`~scrl.data.TwoViewDataset`),
  so a sample's views do not depend on the worker that makes them or on the number of workers;
* each process's device steps (box sampling, batched augmentation, whatever a
  ``training_step`` adds): ``RandomStreams(seed, rank=rank)["name"]``, saved in the checkpoint;
* evaluation: generators seeded from its own ``seed`` argument, and for code that takes no
  generator (torchvision's detection heads, module initialisation) the global streams inside
  :func:`seeded_global_rngs`, which hands the caller's back afterwards.

``torch.compile`` takes these generators too: a random draw on one becomes a graph break,
so the draw runs eagerly and the graphs around it stay compiled.
"""

from __future__ import annotations

import random
import zlib
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import numpy as np
import torch

__all__ = ["RandomStreams", "seeded_global_rngs"]

_PROCESS_STREAMS = 0x52414E4B  # "RANK": keeps the per-process streams apart from the per-sample seeds


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


class RandomStreams(Mapping[str, torch.Generator]):
    """The named random streams of one process of a run: ``streams["boxes"]`` is a seeded ``torch.Generator``.

    A stream is made on first use, on ``device``, seeded from ``(seed, rank, name, *salt)``:
    the same seed and rank give the same streams in every run, and a stream added later does
    not shift the others. :meth:`state_dict` / :meth:`load_state_dict` carry every stream's
    position through a checkpoint.

    Args:
        seed: the run's seed, >= 0.
        rank: the process's rank; each rank draws its own numbers.
        device: where the generators live (a generator draws only on its own device).
        salt: extra keys, to restart every stream at a point of the run (see :meth:`restart`).

    Example:
        >>> streams = RandomStreams(0, rank=1)
        >>> noise = torch.rand(4, generator=streams["noise"])
        >>> saved = streams.state_dict()
    """

    def __init__(self, seed: int, *, rank: int = 0, device: torch.device | str = "cpu", salt: tuple[int, ...] = ()) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
        self.seed, self.rank, self.device, self.salt = seed, rank, torch.device(device), tuple(salt)
        self._generators: dict[str, torch.Generator] = {}

    def seed_of(self, name: str) -> int:
        """The seed of stream ``name``."""
        return mix_seed(self.seed, _PROCESS_STREAMS, self.rank, zlib.crc32(name.encode()), *self.salt)

    def __getitem__(self, name: str) -> torch.Generator:
        if name not in self._generators:
            self._generators[name] = torch.Generator(self.device).manual_seed(self.seed_of(name))
        return self._generators[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._generators)

    def __len__(self) -> int:
        return len(self._generators)

    def restart(self, *salt: int) -> None:
        """Start every stream afresh from ``(seed, rank, name, *salt)``, e.g. when a run changes its process count."""
        self.salt = tuple(salt)
        self._generators.clear()

    def state_dict(self) -> dict[str, Any]:
        """The position of every stream used so far (CPU tensors, loadable with ``weights_only=True``)."""
        return {"salt": list(self.salt), "generators": {name: g.get_state() for name, g in self._generators.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue every stream from a :meth:`state_dict`; streams it does not hold start from their seed."""
        self.restart(*state["salt"])
        for name, generator_state in state["generators"].items():
            self[name].set_state(generator_state.cpu())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, rank={self.rank}, device={str(self.device)!r}, streams={sorted(self)})"
