"""Running a trunk for evaluation: its device, its module without wrappers, the normalised forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scrl.eval import forward_images
from scrl.eval.trunk_forward import module_device
from scrl.runtime import unwrap_module
from scrl.transforms import IMAGENET_MEAN, IMAGENET_STD


class Recorder(nn.Module):
    """Returns its input, and remembers the dtype it ran under (autocast shows in a matmul's dtype)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        self.compute_dtype = (x[:, :, 0, 0] @ self.weight).dtype
        return x


def test_module_device() -> None:
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(nn.ReLU()) == torch.device("cpu")  # no parameters
    assert module_device(nn.Linear(2, 2), "meta") == torch.device("meta")


def test_unwrap_module_removes_data_parallel_and_compile_wrappers() -> None:
    inner = nn.Linear(2, 2)
    assert unwrap_module(inner) is inner
    assert unwrap_module(nn.DataParallel(nn.DataParallel(inner))) is inner
    assert unwrap_module(torch.compile(inner)) is inner  # compiles lazily: nothing runs here
    assert unwrap_module(nn.DataParallel(torch.compile(inner))) is inner


def test_forward_images_normalises_uint8_and_float_alike() -> None:
    pixels = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    trunk = Recorder()
    out = forward_images(trunk, pixels, torch.device("cpu"))
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out, (pixels / 255.0 - mean) / std, rtol=0, atol=1e-5)
    torch.testing.assert_close(forward_images(trunk, pixels / 255.0, torch.device("cpu")), out, rtol=0, atol=1e-5)
    assert trunk.compute_dtype == torch.float32 and trunk.seen.is_contiguous()


def test_forward_images_channels_last_and_autocast() -> None:
    trunk = Recorder()
    pixels = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    forward_images(trunk, pixels, torch.device("cpu"), autocast_dtype=torch.bfloat16, channels_last=True)
    assert trunk.seen.is_contiguous(memory_format=torch.channels_last)
    assert trunk.compute_dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_forward_images_moves_host_pixels_to_the_device() -> None:
    trunk = Recorder().cuda()
    out = forward_images(trunk, torch.zeros(1, 3, 2, 2, dtype=torch.uint8).pin_memory(), module_device(trunk))
    assert out.device.type == "cuda"
