"""Files and processes: crash-safe checkpoint and weight files with the RNG state a bit-exact resume needs, one
process at a time in a folder, and the process group ``torchrun`` starts (with the DDP wrapping
and unwrapping of models).

This is the bottom layer of the package: it imports nothing else of ``scrl``, so every other
layer (export and evaluation as much as the training run) may use it.
"""

from .checkpoint import (
    LAST_CHECKPOINT, CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint, strip_wrapper_prefixes,
    write_atomically,
)
from .distributed import DistInfo, all_gather_object, cleanup, get_rank, get_world_size, init_distributed, unwrap_module, wrap_ddp
from .folder_lock import FolderLock, FolderLockedError
from .random_streams import RandomStreams, seeded_global_rngs

__all__ = [
    "all_gather_object",
    "CheckpointError",
    "cleanup",
    "DistInfo",
    "FolderLock",
    "FolderLockedError",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "LAST_CHECKPOINT",
    "latest_checkpoint",
    "load_checkpoint",
    "RandomStreams",
    "save_checkpoint",
    "seeded_global_rngs",
    "strip_wrapper_prefixes",
    "unwrap_module",
    "wrap_ddp",
    "write_atomically",
]
