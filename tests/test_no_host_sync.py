"""A training step never waits for the accelerator: no value is read back to the host, no shape depends on data.

On CPU the proof is structural: every step runs under :class:`HostSyncGuard`, which sees each
ATen op and each tensor method call and fails on those that synchronise on an accelerator
(``.item()`` and every other host read go through ``aten._local_scalar_dense``; ``nonzero``,
boolean-mask indexing and their kin have output shapes that depend on the data; a tensor built
from host data is a host-to-device copy). With a GPU the same step also runs under
``torch.cuda.set_sync_debug_mode("error")``.
"""

import sys
from typing import Callable

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from scrl import BYOL, LARS, SCRL, ViewGeometry, lars_param_groups
from scrl.data.two_view import TwoViewBatch
from scrl.geometry import check_view_size
from scrl.train import PretrainConfig, Pretrainer
from scrl.train.telemetry import DeviceMeans, NonFiniteWatch
from scrl.transforms import BatchPhotometric

SMALL = dict(projector_hidden=32, projection_dim=16)
aten = torch.ops.aten

# Ops that read a device value on the host, or whose output shape depends on tensor values.
SYNCING_OPS = {
    aten._local_scalar_dense: "reads a value back to the host (.item(), bool(), int(), float(), if tensor)",
    aten.nonzero: "nonzero: output shape depends on the data",
    aten.masked_select: "masked_select: output shape depends on the data",
    aten.repeat_interleave: "repeat_interleave with tensor repeats: output shape depends on the data",
    aten._unique: "unique: output shape depends on the data",
    aten._unique2: "unique: output shape depends on the data",
    aten.unique_dim: "unique: output shape depends on the data",
    aten.unique_consecutive: "unique_consecutive: output shape depends on the data",
    aten.bincount: "bincount: output shape depends on the data",
    aten.equal: "equal: returns a Python bool",
    aten.allclose: "allclose: returns a Python bool",
    aten.is_nonzero: "is_nonzero: returns a Python bool",
    aten.lift_fresh: "a tensor built from host data (a host-to-device copy on an accelerator)",
}
INDEXING_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
HOST_METHODS = {
    torch.Tensor.item: ".item()",
    torch.Tensor.tolist: ".tolist()",
    torch.Tensor.numpy: ".numpy()",
    torch.Tensor.cpu: ".cpu()",
    torch.Tensor.__bool__: "bool(tensor)",
}


def _in_cpu_geometry_check() -> bool:
    """Whether the op comes from ``check_view_size``, which reads a geometry only while it is on the CPU.

    On an accelerator the geometry lives on the device and the check reads nothing (see
    tests/test_geometry.py); in these CPU runs its reads are of host memory, not synchronisations.
    """
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is check_view_size.__code__:
            return True
        frame = frame.f_back
    return False


class HostSyncGuard:
    """Context manager that reports every host-device synchronisation point of the code it runs.

    Args:
        on_sync: called with a description of each one; the default raises ``AssertionError``.
    """

    def __init__(self, on_sync: Callable[[str], None] | None = None) -> None:
        report = on_sync or self._raise

        def on_sync_outside_the_geometry_check(what: str) -> None:
            if not _in_cpu_geometry_check():
                report(what)

        self.on_sync = on_sync_outside_the_geometry_check
        guard = self

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                # Integer repeats, or tensor repeats with the output size given, need no read-back.
                sized = func is aten.repeat_interleave.self_int or kwargs.get("output_size") is not None
                if func.overloadpacket in SYNCING_OPS and not sized:
                    guard.on_sync(f"{func}: {SYNCING_OPS[func.overloadpacket]}")
                if func.overloadpacket in INDEXING_OPS and any(
                    isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None
                ):
                    guard.on_sync(f"{func} with a boolean mask: output shape depends on the data")
                return func(*args, **kwargs)

        class Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in HOST_METHODS:
                    guard.on_sync(HOST_METHODS[func])
                return func(*args, **(kwargs or {}))

        self._modes = (Function(), Dispatch())

    @staticmethod
    def _raise(what: str) -> None:
        raise AssertionError(f"host-device synchronisation in the training step: {what}")

    def __enter__(self) -> "HostSyncGuard":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


@pytest.mark.parametrize(
    "sync, what",
    [
        (lambda x: x.sum().item(), "item"),
        (lambda x: bool(x.sum() > 0), "bool"),
        (lambda x: float(x.sum()), "_local_scalar_dense"),
        (lambda x: x.tolist(), "tolist"),
        (lambda x: x.cpu(), "cpu"),
        (lambda x: x[x > 0], "boolean mask"),
        (lambda x: (x > 0).nonzero(), "nonzero"),
        (lambda x: torch.where(x > 0), "nonzero"),
        (lambda x: x.unique(), "unique"),
        (lambda x: x.repeat_interleave(torch.tensor([1, 2, 3]), dim=0), "repeat_interleave|lift_fresh"),
        (lambda x: torch.repeat_interleave(torch.arange(3)), "repeat_interleave"),
        (lambda x: x * torch.tensor([1.0, 2.0]), "lift_fresh"),
    ],
)
def test_guard_catches_every_kind_of_sync(sync, what):
    x = torch.randn(3, 2)
    with pytest.raises(AssertionError, match=what), HostSyncGuard():
        sync(x)
    with HostSyncGuard():  # while these are fine
        x.repeat_interleave(2, dim=0), x[x.argmax(0)], torch.where(x > 0, x, 0.0), x.to(torch.float64)
        x.repeat_interleave(torch.arange(1, 4), dim=0, output_size=6)


def tiny_step(cls, device: torch.device, amp: bool = False) -> Callable[[int], dict]:
    """One full step of the pretraining loop with on-device augmentation, on a tiny model and batch."""
    torch.manual_seed(0)
    model = cls("resnet18", **SMALL).to(device)
    optimizer = LARS(lars_param_groups(model, weight_decay=1e-6), lr=0.1)
    augment1, augment2 = BatchPhotometric(view=1).to(device), BatchPhotometric(view=2).to(device)
    generator = torch.Generator(device).manual_seed(0)
    batch = 4
    views = torch.randint(0, 256, (2, batch, 3, 64, 64), dtype=torch.uint8).to(device)
    crops = torch.tensor([[0.0, 0.0, 80.0, 80.0], [16.0, 8.0, 96.0, 88.0]], dtype=torch.float64)
    flipped, size = torch.tensor([False, True] * (batch // 2)), torch.full((batch, 2), 64.0, dtype=torch.float64)
    geoms = [ViewGeometry(crops[v].expand(batch, 4), flipped, size).to(device) for v in range(2)]
    means, watch = DeviceMeans(), NonFiniteWatch()

    def step(k: int) -> dict:
        view1, view2 = augment1(views[0], generator=generator), augment2(views[1], generator=generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, logs = model(view1, view2, *geoms, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(k, 10)
        watch.update(loss, k + 1)
        means.add(logs)
        return logs

    return step


@pytest.mark.parametrize("cls", [SCRL, BYOL])
def test_training_step_has_no_host_sync(cls):
    step = tiny_step(cls, torch.device("cpu"))
    step(0)  # creates the optimiser state
    with HostSyncGuard():
        logs = step(1)
    assert torch.isfinite(logs["loss"]) and 0 < logs["loss"] < 8
    if cls is SCRL:
        assert 0 < logs["valid_box_share"] <= 1


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_fp16_loss_scaling_steps_lars_without_host_sync(optimizer):
    """GradScaler reads its inf/NaN flag on the host before a plain optimizer's step; LARS takes the flag as a tensor."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    if optimizer == "lars":
        opt = LARS(lars_param_groups(model, weight_decay=1e-6), lr=0.1)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        scaler.scale(model(torch.randn(4, 6)).square().mean()).backward()
        scaler.step(opt)
        scaler.update()

    step()  # the scaler's and the optimiser's state
    if optimizer == "lars":
        with HostSyncGuard():
            step()
    else:
        with pytest.raises(AssertionError, match="item"), HostSyncGuard():
            step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host-device syncs")
@pytest.mark.parametrize("cls", [SCRL, BYOL])
def test_training_step_has_no_host_sync_on_cuda(cls):
    step = tiny_step(cls, torch.device("cuda"), amp=True)
    step(0)  # allocations, cuDNN set-up, momentum buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logs = step(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(logs["loss"]).item()


def test_pretraining_reads_values_only_at_logging_steps(tmp_path, monkeypatch):
    """Every host read of a run of scrl.train.Pretrainer, attributed to the step it follows."""
    reads: dict[int, list[str]] = {}
    guard = HostSyncGuard(lambda what: reads[len(reads)].append(what))
    to = TwoViewBatch.to

    def start_of_step(batch, *args, **kwargs):
        if not reads:
            guard.__enter__()
        reads[len(reads) + 1] = []
        return to(batch, *args, **kwargs)

    monkeypatch.setattr(TwoViewBatch, "to", start_of_step)
    try:
        summary = Pretrainer(PretrainConfig(
            device="cpu", arch="resnet18", image_size=64, batch_size=4, synthetic_images=24, projector_hidden=32,
            projection_dim=16, epochs=1, log_every=3, workers=2, augment_on_device=True, output_dir=str(tmp_path),
        )).run()
    finally:
        guard.__exit__(None, None, None)
    assert summary["step"] == 6 and sorted(reads) == [1, 2, 3, 4, 5, 6]
    # Logged at step 1 (the first line comes at once), then every 3 steps.
    assert {k: v for k, v in reads.items() if k not in (1, 3, 6)} == {2: [], 4: [], 5: []}
    assert reads[1] and reads[3] and reads[6]  # the logging reads the interval's means (and the run's end saves)
