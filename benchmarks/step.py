"""Time one full training step of SCRL against BYOL, and LARS / EMA against per-tensor loops.

A step is forward, backward, LARS step and target update, on the same trunk, batch and view
size for both methods. The two are timed interleaved (alternating which goes first) and the
medians are reported, so drifting machine load hits both alike. Peak memory is the rise of
one step over the tensor memory in use before it (activations, gradients, temporaries): on
CUDA from ``max_memory_allocated``, on CPU from the profiler's memory timeline.

``lars_speedup`` and ``ema_speedup`` compare :class:`scrl.LARS` and
:meth:`scrl.MomentumTarget.update` (``torch._foreach_*``) on ResNet-50's parameters with a
plain Python loop over the tensors doing the same arithmetic.

Usage:
    python benchmarks/step.py                       # resnet50, 128 px, batch 8, CPU
    python benchmarks/step.py --device cuda --size 224 --batch 64 --channels-last --amp --json

The last line with ``--json`` is one JSON object with the keys ``arch, size, batch,
scrl_step_s, byol_step_s, overhead_ratio, scrl_peak_mb, byol_peak_mb, lars_speedup,
ema_speedup`` (plus ``device``, ``threads``, ``repeats``, ``valid_box_share``, ``lars_step_s``,
``lars_loop_s``, ``ema_update_s``, ``ema_loop_s``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch
import torchvision
from torch import Tensor, nn

from scrl import BYOL, LARS, SCRL, MomentumTarget, ViewGeometry, lars_param_groups
from scrl.transforms.geometric import random_resized_crop_params
from scrl.trunk import supported_archs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_views(batch: int, size: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor, ViewGeometry, ViewGeometry]:
    """Random images with the geometries of the paper's crops (scale 0.2 to 1) + flips of 500x375 sources."""
    geoms = []
    # Crops draw from the global RNG, as in a data worker; seeded here, restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only, like TwoViewDataset
        for _ in range(2):
            crops = torch.tensor([random_resized_crop_params(500, 375, (0.2, 1.0)) for _ in range(batch)])
            flips = torch.rand(batch) < 0.5
            geom = ViewGeometry(crops.double(), flips, torch.full((batch, 2), float(size), dtype=torch.float64))
            geoms.append(geom.to(device))
        views = torch.randn(2, batch, 3, size, size).to(device)
    return views[0], views[1], geoms[0], geoms[1]


class Stepper:
    """One model with its optimiser; ``__call__`` runs one full training step."""

    def __init__(self, model: nn.Module, data: tuple, amp: bool, device: torch.device) -> None:
        self.model, self.data, self.amp, self.device = model, data, amp, device
        self.optimizer = LARS(lars_param_groups(model, weight_decay=1e-6), lr=0.1)
        self.step_index = 0
        self.logs: dict[str, Tensor] = {}

    def __call__(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, self.logs = self.model(*self.data)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.update_target(self.step_index % 1000, 1000)
        self.step_index += 1


def timed(fn: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def _cpu_peak_mb(fn: Callable[[], None]) -> float:
    """Peak of (tensor bytes allocated - tensor bytes freed) during ``fn``, from the profiler's memory timeline."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    current = peak = 0
    for _, action, (key, _), size in prof._memory_profile().timeline:
        if key.device.type == "cpu" and action in (Action.CREATE, Action.DESTROY):
            current += size if action == Action.CREATE else -size
            peak = max(peak, current)
    return peak / 2**20


def peak_step_mb(fn: Callable[[], None], device: torch.device) -> float | None:
    """Peak memory of one call of ``fn`` above what was in use before it, in MiB (None if unmeasurable)."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        return _cpu_peak_mb(fn)
    except (ImportError, AttributeError, RuntimeError):  # private profiler API of this torch version
        return None


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call, calling the functions in alternating order each repeat."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------- per-tensor loop baselines
def loop_lars_step(optimizer: LARS) -> None:
    """The same LARS arithmetic as :class:`scrl.LARS`, one tensor at a time (no host sync either)."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = optimizer.state[p]["momentum_buffer"]
                update = p.grad
                if not group["lars_exclude"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = p.norm(), update.norm()
                    ok = (w_norm > 0) & (u_norm > 0)
                    update = update * torch.where(ok, group["eta"] * w_norm / u_norm, 1.0)
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])


def loop_ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """The textbook EMA: ``xi.mul_(tau).add_(theta, alpha=1 - tau)`` per parameter, buffers copied."""
    with torch.no_grad():
        for xi, theta in zip(target.parameters(), online.parameters()):
            xi.mul_(tau).add_(theta, alpha=1 - tau)
        for b_target, b_online in zip(target.buffers(), online.buffers()):
            b_target.copy_(b_online)


def optimizer_speedups(device: torch.device, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    online = torchvision.models.resnet50(weights=None).to(device)
    for p in online.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    fused = LARS(lars_param_groups(online, weight_decay=1e-6), lr=0.1)
    fused.step()  # allocates the momentum buffers, shared with the loop baseline
    target = MomentumTarget(online)
    times = interleaved_medians(
        {
            "lars_step_s": fused.step,
            "lars_loop_s": lambda: loop_lars_step(fused),
            "ema_update_s": lambda: target.update(online, 0.996),
            "ema_loop_s": lambda: loop_ema_update(target.module, online, 0.996),
        },
        repeats,
        device,
    )
    times["lars_speedup"] = times["lars_loop_s"] / times["lars_step_s"]
    times["ema_speedup"] = times["ema_loop_s"] / times["ema_update_s"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50", choices=supported_archs(), metavar="ARCH", help="any trunk of docs/trunks.md")
    parser.add_argument("--size", type=int, default=128, help="view side in pixels")
    parser.add_argument("--batch", type=int, default=8, help="images per step (each gives two views)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true", help="models and views in channels_last")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--optimizer-repeats", type=int, default=10, help="timed LARS / EMA calls (0 skips)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    view1, view2, geom1, geom2 = random_views(args.batch, args.size, device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    view1, view2 = view1.contiguous(memory_format=memory_format), view2.contiguous(memory_format=memory_format)
    steppers = {}
    for name, cls in (("scrl", SCRL), ("byol", BYOL)):
        torch.manual_seed(0)
        model = cls(args.arch).to(device, memory_format=memory_format)
        steppers[name] = Stepper(model, (view1, view2, geom1, geom2), args.amp, device)
    for _ in range(args.warmup):
        for stepper in steppers.values():
            stepper()
    peaks = {name: peak_step_mb(stepper, device) for name, stepper in steppers.items()}
    times = interleaved_medians(steppers, args.repeats, device)

    result: dict[str, object] = {
        "arch": args.arch,
        "size": args.size,
        "batch": args.batch,
        "scrl_step_s": round(times["scrl"], 4),
        "byol_step_s": round(times["byol"], 4),
        "overhead_ratio": round(times["scrl"] / times["byol"], 3),
        "scrl_peak_mb": None if peaks["scrl"] is None else round(peaks["scrl"], 1),
        "byol_peak_mb": None if peaks["byol"] is None else round(peaks["byol"], 1),
        "valid_box_share": round(float(steppers["scrl"].logs["valid_box_share"]), 3),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
    }
    if args.optimizer_repeats > 0:
        del steppers
        speed = optimizer_speedups(device, args.optimizer_repeats)
        result.update({key: round(value, 5 if key.endswith("_s") else 2) for key, value in speed.items()})

    print(f"{args.arch}, {args.size} px, batch {args.batch}, {result['device']}, {result['threads']} threads, median of {args.repeats}")
    print(f"{'':10} {'step s':>8} {'peak MiB':>9}")
    for name in ("scrl", "byol"):
        peak = result[f"{name}_peak_mb"]
        print(f"{name.upper():10} {result[f'{name}_step_s']:8.3f} {'n/a' if peak is None else f'{peak:9.1f}':>9}")
    print(f"SCRL / BYOL step time: {result['overhead_ratio']:.3f} (valid box share {result['valid_box_share']:.2f})")
    if args.optimizer_repeats > 0:
        print(f"LARS.step {result['lars_step_s'] * 1e3:.2f} ms vs loop {result['lars_loop_s'] * 1e3:.2f} ms: x{result['lars_speedup']:.2f}")
        print(f"MomentumTarget.update {result['ema_update_s'] * 1e3:.2f} ms vs loop {result['ema_loop_s'] * 1e3:.2f} ms: x{result['ema_speedup']:.2f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
