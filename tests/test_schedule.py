import math

import pytest
import torch
from torch import nn

from scrl import LARS, warmup_cosine


def lrs_over(steps: int, warmup: int, total: int, base: float = 0.4) -> list[float]:
    opt = LARS([nn.Parameter(torch.zeros(1))], lr=base)
    sched = warmup_cosine(opt, warmup, total)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_linear_warmup_then_cosine_to_zero_per_step():
    base, warmup, total = 0.4, 10, 110
    lrs = lrs_over(total + 1, warmup, total, base)
    assert lrs[0] == pytest.approx(base / warmup)  # the first step already moves
    assert lrs[4] == pytest.approx(base * 5 / warmup)
    assert lrs[warmup - 1] == pytest.approx(base) and lrs[warmup] == pytest.approx(base)  # warm-up end
    assert lrs[warmup + 50] == pytest.approx(base / 2)  # half-way through the cosine
    assert lrs[total - 1] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * (total - 1 - warmup) / (total - warmup))))
    assert 0 < lrs[total - 1] < 1e-3 * base  # the last step
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))


def test_each_group_keeps_its_own_base_lr_and_no_warmup_works():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = LARS([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}], lr=0.5)
    sched = warmup_cosine(opt, warmup_steps=0, total_steps=4)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.1]
    opt.step()
    sched.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])


def test_bad_arguments():
    opt = LARS([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(opt, 0, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(opt, 11, 10)
