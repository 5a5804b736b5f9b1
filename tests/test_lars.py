import copy

import pytest
import torch
import torchvision
from torch import nn

from scrl import LARS, lars_param_groups


def reference_step(groups: list[dict], buffers: dict[int, torch.Tensor]) -> None:
    """The LARS formula written out per tensor, with Python control flow."""
    for group in groups:
        for p in group["params"]:
            g = p.grad
            if not group.get("lars_exclude", False):
                u = g + group["weight_decay"] * p
                w_norm, u_norm = p.norm().item(), u.norm().item()
                ratio = group["eta"] * w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                u = ratio * u
            else:
                u = g
            v = buffers.get(id(p), torch.zeros_like(p)) * group["momentum"] + u
            buffers[id(p)] = v
            p.data -= group["lr"] * v


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 3)
        self.zero = nn.Parameter(torch.zeros(3, 3))  # ||w|| = 0: ratio 1
        self.idle = nn.Parameter(torch.zeros(2, 2))  # ||w|| = ||g|| = 0: ratio 1


def test_lars_matches_the_step_by_step_reference_over_several_steps():
    torch.manual_seed(0)
    model = Net()
    twin = copy.deepcopy(model)
    opt = LARS(lars_param_groups(model, weight_decay=1e-2), lr=0.5, momentum=0.9, eta=0.02)
    ref_groups = lars_param_groups(twin, weight_decay=1e-2)
    for g in ref_groups:
        g.update(lr=0.5, momentum=0.9, eta=0.02)
    buffers: dict[int, torch.Tensor] = {}
    for step in range(3):
        grads = {name: torch.randn_like(p) for name, p in model.named_parameters()}
        grads["idle"].zero_()
        for m in (model, twin):
            for name, p in m.named_parameters():
                p.grad = grads[name].clone()
        for g in opt.param_groups + ref_groups:
            g["lr"] = 0.5 / (step + 1)  # a schedule changes lr between steps
        opt.step()
        reference_step(ref_groups, buffers)
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=f"{name} after step {step}")
    assert model.zero.abs().sum() > 0 and model.idle.abs().sum() == 0


def test_excluded_group_is_plain_sgd_with_lr_applied_once():
    p = nn.Parameter(torch.full((4,), 2.0))
    opt = LARS([{"params": [p], "lars_exclude": True, "weight_decay": 0.0}], lr=0.1, momentum=0.9, weight_decay=0.5)
    p.grad = torch.ones(4)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4,), 2.0 - 0.1))
    opt.step()  # v = 0.9 * 1 + 1
    torch.testing.assert_close(p.detach(), torch.full((4,), 2.0 - 0.1 - 0.1 * 1.9))


def test_excluded_group_ignores_weight_decay():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = LARS([{"params": [p], "lars_exclude": True, "weight_decay": 0.5}, {"params": [q], "lars_exclude": True}], lr=0.1)
    p.grad, q.grad = torch.full((3,), 2.0), torch.full((3,), 2.0)
    opt.step()
    assert torch.equal(p, q) and torch.allclose(p, torch.full((3,), 0.8))


def test_adapted_step_has_the_trust_ratio_size():
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(10, 10))
    w0 = w.detach().clone()
    opt = LARS([w], lr=1.0, momentum=0.9, eta=0.001)
    w.grad = torch.randn(10, 10) * 1e3
    opt.step()
    assert (w0 - w.detach()).norm().item() == pytest.approx(0.001 * w0.norm().item(), rel=1e-5)


def test_resnet50_groups_exclude_every_batchnorm_and_the_fc_bias():
    model = torchvision.models.resnet50(weights=None)
    adapted, excluded = lars_param_groups(model, weight_decay=1.5e-6)
    assert adapted["weight_decay"] == 1.5e-6 and excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]
    excluded_ids = {id(p) for p in excluded["params"]}
    adapted_ids = {id(p) for p in adapted["params"]}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 53
    assert all(id(m.weight) in excluded_ids and id(m.bias) in excluded_ids for m in bns)
    assert id(model.fc.bias) in excluded_ids and id(model.fc.weight) in adapted_ids
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert {id(m.weight) for m in convs} | {id(model.fc.weight)} == adapted_ids
    assert len(excluded_ids) == 2 * 53 + 1 and not excluded_ids & adapted_ids


def test_groups_find_norm_layers_by_type_and_skip_frozen_and_shared_parameters():
    layer_norm = nn.LayerNorm((4, 5))  # a 2-D weight: excluded by type, not by shape
    shared = nn.Linear(5, 5)
    frozen = nn.Linear(5, 5).requires_grad_(False)
    model = nn.ModuleList([layer_norm, nn.GroupNorm(2, 4), shared, shared, frozen, nn.Conv2d(3, 4, 3, bias=False)])
    adapted, excluded = lars_param_groups(model, weight_decay=0.1)
    assert layer_norm.weight.dim() == 2 and any(p is layer_norm.weight for p in excluded["params"])
    assert len(adapted["params"]) == 2  # shared.weight once, the conv weight
    assert len(excluded["params"]) == 2 + 2 + 1  # LayerNorm, GroupNorm, shared.bias
    assert not any(p is frozen.weight or p is frozen.bias for g in (adapted, excluded) for p in g["params"])


def test_bad_arguments():
    params = [nn.Parameter(torch.zeros(1))]
    for kwargs, name in [(dict(lr=-1.0), "lr"), (dict(lr=0.1, momentum=1.0), "momentum"), (dict(lr=0.1, eta=0.0), "eta"), (dict(lr=0.1, weight_decay=-1.0), "weight_decay")]:
        with pytest.raises(ValueError, match=name):
            LARS(params, **kwargs)
    with pytest.raises(ValueError, match="weight_decay"):
        lars_param_groups(nn.Linear(2, 2), -1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host-device syncs")
@pytest.mark.parametrize("fp16_scaler", [False, True])
def test_step_never_syncs_with_the_host(fp16_scaler):
    model = torchvision.models.resnet18(weights=None).cuda()
    opt = LARS(lars_param_groups(model, 1e-6), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=fp16_scaler)
    for step in range(2):  # the first step allocates the momentum buffers and the scaler's state
        opt.zero_grad()
        scaler.scale(model(torch.randn(2, 3, 64, 64, device="cuda")).sum()).backward()
        torch.cuda.synchronize()
        if step == 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            scaler.step(opt)
            scaler.update()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("unscale_first", [False, True], ids=["scaler.step", "unscale_ then step"])
def test_under_grad_scaler_a_step_equals_the_step_on_unscaled_gradients(unscale_first):
    torch.manual_seed(0)
    model = Net()
    twin = copy.deepcopy(model)
    opt, twin_opt = (LARS(lars_param_groups(m, weight_decay=1e-2), lr=0.5, eta=0.02) for m in (model, twin))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(3):
        x = torch.randn(8, 6)
        for m, o in ((model, opt), (twin, twin_opt)):
            o.zero_grad()
            loss = m.fc2(torch.relu(m.bn(m.fc1(x)))).square().mean() + m.zero.sum() ** 2
            if m is model:
                scaler.scale(loss).backward()
                assert model.fc1.weight.grad.abs().max() > 100  # the gradients really are scaled
                if unscale_first:  # as before gradient clipping: LARS must not unscale again
                    scaler.unscale_(o)
                scaler.step(o)
                scaler.update()
            else:
                loss.backward()
                o.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_under_grad_scaler_a_step_with_non_finite_gradients_changes_nothing(bad):
    torch.manual_seed(0)
    model = Net()
    opt = LARS(lars_param_groups(model, weight_decay=1e-2), lr=0.5, eta=0.02)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def step(poison: bool) -> None:
        opt.zero_grad()
        scaler.scale(model.fc2(torch.relu(model.bn(model.fc1(torch.randn(8, 6))))).square().mean()).backward()
        if poison:
            model.fc1.weight.grad[0, 0] = bad
        scaler.step(opt)
        scaler.update()

    step(poison=False)  # momentum buffers now hold something to keep
    params = [p.detach().clone() for p in model.parameters()]
    buffers = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters() if p in opt.state}
    step(poison=True)
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p, before)
        if id(p) in buffers:
            assert torch.equal(opt.state[p]["momentum_buffer"], buffers[id(p)])
    assert scaler.get_scale() == 2.0**11  # the scaler saw the overflow and backed off
    step(poison=False)
    assert not torch.equal(model.fc1.weight, params[0])  # and the next finite step trains again
