"""torch.distributed set-up from the environment that ``torchrun`` provides, and small helpers.

There is no launcher here: start one process with ``python script.py`` or many with
``torchrun --nproc_per_node=G [--nnodes N --node_rank R --rdzv_endpoint HOST:PORT] script.py``.
Every helper also works in a single process without a process group.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "init_distributed",
    "get_rank",
    "get_world_size",
    "all_gather_object",
    "wrap_ddp",
    "cleanup",
    "unwrap_module",
]

# torch 2.13 renamed DDP's ``broadcast_buffers`` to ``forward_sync_buffers`` and warns on the old name.
_SYNC_BUFFERS_ARG = (
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else "broadcast_buffers"
)


class DistInfo(NamedTuple):
    """Where this process sits: global ``rank``, ``world_size``, ``local_rank`` on its node, and its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through
    the ``env://`` rendezvous). Uses NCCL when this process drives a GPU and gloo otherwise.
    Each process takes GPU ``LOCAL_RANK``. Without these variables the process runs alone.

    Args:
        device: ``"cuda"`` or ``"cpu"``; ``None`` picks CUDA when available.

    Returns:
        :class:`DistInfo`.

    Example:
        >>> info = init_distributed()  # under torchrun: rank/world from the environment
        >>> model = model.to(info.device)
    """
    if device not in (None, "cuda", "cpu"):
        raise ValueError(f"device must be 'cuda', 'cpu' or None, got {device!r}")
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:
            dist.init_process_group(backend="nccl", init_method="env://", device_id=dev)
        else:
            dist.init_process_group(backend="gloo", init_method="env://")
    return DistInfo(rank, world_size, local_rank, dev)


def get_world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of processes in ``group`` (``None``: all of them), 1 without a process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` without a process group)."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: nn.Module, device: torch.device, sync_buffers: bool = True) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when a process group runs; ``model`` itself otherwise.

    Args:
        model: the module, already on ``device``.
        device: this process's device; a CUDA device is passed to DDP as its only ``device_ids``.
        sync_buffers: copy rank 0's buffers (BatchNorm running statistics) to every rank before
            each forward. ``False`` where each rank's buffers are meant to stay its own or are
            kept equal anyway (SyncBatchNorm).
    """
    if get_world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **{_SYNC_BUFFERS_ARG: sync_buffers})


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap_module(module: nn.Module) -> nn.Module:
    """``module`` without its ``DistributedDataParallel``/``DataParallel`` and ``torch.compile`` wrappers.

    DDP keeps the wrapped module in ``.module`` (possibly several times over), ``torch.compile``
    in ``._orig_mod``; the innermost module holds the attributes (``body``, ``stride``,
    ``backbone_state_dict``) the evaluation and export code look for.
    """
    while isinstance(getattr(module, "module", None), nn.Module):
        module = module.module
    return getattr(module, "_orig_mod", module)
