import math

import pytest
import torch
from torch import nn

from scrl import MomentumTarget
from scrl.schedule import cosine_tau


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_cosine_tau_schedule():
    assert cosine_tau(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_tau(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_tau(100, 100, 0.996) == pytest.approx(1.0)
    k, K, base = 30, 100, 0.97
    assert cosine_tau(k, K, base) == pytest.approx(1 - (1 - base) * (math.cos(math.pi * k / K) + 1) / 2)
    for args, name in [((-1, 10, 0.9), "step"), ((11, 10, 0.9), "step"), ((0, 0, 0.9), "total_steps"), ((0, 10, 1.5), "base")]:
        with pytest.raises(ValueError, match=name):
            cosine_tau(*args)


def test_target_starts_as_an_exact_copy_without_gradients():
    torch.manual_seed(0)
    online = small_net()
    online(torch.randn(6, 4))  # non-trivial BatchNorm running statistics
    target = MomentumTarget(online)
    for (name, p), (_, t) in zip(online.state_dict().items(), target.module.state_dict().items()):
        assert torch.equal(p, t) and p.data_ptr() != t.data_ptr(), name
    assert not any(p.requires_grad for p in target.parameters())
    out = target(torch.randn(3, 4))
    assert not out.requires_grad


def test_target_stays_in_training_mode():
    holder = nn.ModuleDict({"target": MomentumTarget(small_net())})
    holder.eval()
    assert all(m.training for m in holder["target"].modules())
    x = torch.randn(5, 4)
    holder["target"](x)
    assert holder["target"].module[1].num_batches_tracked == 1  # batch statistics were used


def test_update_follows_the_formula_and_copies_buffers():
    torch.manual_seed(1)
    online = small_net()
    target = MomentumTarget(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(6, 4))
    before = [t.clone() for t in target.module.parameters()]
    tau = 0.9
    target.update(online, tau)
    for xi, theta, new in zip(before, online.parameters(), target.module.parameters()):
        torch.testing.assert_close(new, tau * xi + (1 - tau) * theta)
    for b_online, b_target in zip(online.buffers(), target.module.buffers()):
        assert torch.equal(b_online, b_target)
    target.update(online, 0.0)
    for theta, new in zip(online.parameters(), target.module.parameters()):
        torch.testing.assert_close(new, theta)


def test_update_rejects_bad_arguments():
    target = MomentumTarget(small_net())
    with pytest.raises(ValueError, match="tau"):
        target.update(small_net(), 1.5)
    with pytest.raises(ValueError, match="parameters"):
        target.update(nn.Linear(4, 8), 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host-device syncs")
def test_update_never_syncs_with_the_host():
    online = small_net().cuda()
    target = MomentumTarget(online)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        target.update(online, cosine_tau(3, 10, 0.99))
    finally:
        torch.cuda.set_sync_debug_mode("default")
