import time

import pytest
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.utils.data import default_collate

from scrl import BYOL, LARS, SCRL, Trunk, ViewGeometry, cosine_tau, lars_param_groups

SMALL = dict(projector_hidden=256, projection_dim=64)



def view_batch(batch: int, size: int = 64, seed: int = 0, source: int = 96, disjoint: bool = False):
    """Two views per random source image, cropped, resized and flipped, with their geometries."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, source, source, generator=g)
    views: list[list[torch.Tensor]] = [[], []]
    geoms: list[list[ViewGeometry]] = [[], []]
    for i in range(batch):
        for v in range(2):
            side = source // 2 if disjoint else int(torch.randint(64, 89, (1,), generator=g))
            x0 = (0 if v == 0 else source // 2) if disjoint else int(torch.randint(0, source - side + 1, (1,), generator=g))
            y0 = 0 if disjoint else int(torch.randint(0, source - side + 1, (1,), generator=g))
            view = TF.resized_crop(images[i], y0, x0, side, side, [size, size], antialias=True)
            geom = ViewGeometry.full(source, source).crop_to([x0, y0, x0 + side, y0 + side]).resize(size, size)
            if torch.rand(1, generator=g) < 0.5:
                view, geom = view.flip(-1), geom.hflip()
            views[v].append((view - 0.5) / 0.25)
            geoms[v].append(geom)
    return torch.stack(views[0]), torch.stack(views[1]), default_collate(geoms[0]), default_collate(geoms[1])


def online_parameters(model: nn.Module):
    return [(n, p) for n, p in model.named_parameters() if not n.startswith("target.")]


@pytest.mark.parametrize("cls", [SCRL, BYOL])
def test_forward_gives_a_loss_and_detached_scalar_logs(cls):
    torch.manual_seed(0)
    model = cls("resnet18", **SMALL)
    loss, logs = model(*view_batch(4))
    assert loss.shape == () and loss.dtype == torch.float32 and loss.requires_grad and 0 < loss.item() < 8
    assert set(logs) == {"loss", "valid_share", "collapse_std"}
    assert all(t.shape == () and not t.requires_grad for t in logs.values())
    assert logs["loss"] == loss.detach()
    assert 0 < logs["valid_share"] <= 1 and 0 < logs["collapse_std"] < 1
    loss.backward()
    for name, p in online_parameters(model):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())


def test_state_dict_prefix_and_backbone_export():
    model = SCRL("resnet18", **SMALL)
    keys = model.state_dict().keys()
    assert "trunk.body.conv1.weight" in keys and "trunk.body.layer4.1.bn2.running_var" in keys
    assert "target.module.trunk.body.conv1.weight" in keys and "projector.fc1.weight" in keys
    backbone = model.backbone_state_dict()
    resnet = torchvision.models.resnet18(weights=None)
    result = resnet.load_state_dict(backbone, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    torch.testing.assert_close(resnet.layer3[0].conv1.weight, model.trunk.body.layer3[0].conv1.weight)


def test_target_starts_as_a_copy_follows_the_schedule_and_stays_in_train_mode():
    torch.manual_seed(0)
    model = SCRL("resnet18", tau_base=0.9, **SMALL)
    online = dict(model.trunk.named_parameters(prefix="trunk")) | dict(model.projector.named_parameters(prefix="projector"))
    target = dict(model.target.module.named_parameters())
    assert online.keys() == target.keys()
    assert all(torch.equal(online[k], target[k]) for k in online)
    before = {k: v.clone() for k, v in target.items()}
    with torch.no_grad():
        for p in online.values():
            p.add_(1.0)
    model.update_target(3, 10)
    tau = cosine_tau(3, 10, 0.9)
    for k in online:
        torch.testing.assert_close(target[k], tau * before[k] + (1 - tau) * online[k])
    model.eval()
    assert not model.trunk.training and all(m.training for m in model.target.modules())


def test_zero_valid_pairs_give_zero_loss_and_gradients_everywhere():
    torch.manual_seed(0)
    model = SCRL("resnet18", **SMALL)
    loss, logs = model(*view_batch(2, disjoint=True))
    assert logs["valid_share"] == 0 and loss.item() == 0.0
    loss.backward()
    for name, p in online_parameters(model):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_head_batchnorm_statistics_come_from_valid_boxes_only():
    torch.manual_seed(0)
    model = SCRL("resnet18", **SMALL)
    seen = {}
    model.sampler.register_forward_hook(lambda m, i, out: seen.update(valid=out.valid.reshape(-1)))
    model.projector.fc1.register_forward_hook(lambda m, i, out: seen.update(hidden=out.detach()))
    _, logs = model(*view_batch(4))
    mask = torch.cat([seen["valid"], seen["valid"]])
    assert 0 < logs["valid_share"] < 1 and logs["valid_share"] == seen["valid"].float().mean()
    bn = model.projector.bn
    torch.testing.assert_close(bn.running_mean, bn.momentum * seen["hidden"][mask].mean(0))
    torch.testing.assert_close(bn.running_var, (1 - bn.momentum) + bn.momentum * seen["hidden"][mask].var(0))


@pytest.mark.parametrize("cls, kwargs", [(SCRL, dict(num_boxes=1)), (BYOL, {})])
def test_one_image_and_one_box_work(cls, kwargs):
    model = cls("resnet18", **SMALL, **kwargs)
    loss, logs = model(*view_batch(1))
    loss.backward()
    assert torch.isfinite(loss)


def test_box_sampling_follows_the_generator():
    torch.manual_seed(0)
    model = SCRL("resnet18", **SMALL).eval()  # eval: BatchNorm stats stay put between calls
    batch = view_batch(4)
    a, _ = model(*batch, generator=torch.Generator().manual_seed(1))
    b, _ = model(*batch, generator=torch.Generator().manual_seed(1))
    c, _ = model(*batch, generator=torch.Generator().manual_seed(2))
    assert a.item() == b.item() != c.item()


@pytest.mark.parametrize("cls", [SCRL, BYOL])
def test_channels_last_and_bf16_autocast(cls):
    torch.manual_seed(0)
    model = cls("resnet18", **SMALL)
    v1, v2, g1, g2 = view_batch(4)
    reference, _ = model(v1, v2, g1, g2, generator=torch.Generator().manual_seed(0))
    model = model.to(memory_format=torch.channels_last)
    cl = [v.to(memory_format=torch.channels_last) for v in (v1, v2)]
    loss, _ = model(*cl, g1, g2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, logs = model(*cl, g1, g2, generator=torch.Generator().manual_seed(0))
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert abs(low.item() - reference.item()) < 0.1 * reference.item()
    low.backward()
    assert all(torch.isfinite(p.grad).all() for _, p in online_parameters(model))


def test_custom_trunk_and_larger_roi_output():
    body = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.BatchNorm2d(16), nn.ReLU())
    model = SCRL(Trunk(body, stride=8, channels=16), min_size=8, roi_output_size=2, candidates_per_box=7, **SMALL)
    assert model.projector.fc1.in_features == 16 * 4
    # The pool samples where this trunk's cells are (non-overlapping patches: mid-patch), and the
    # sampler's settings are reachable from SCRL.
    assert model.trunk.cell_offset == model.roi_pool.cell_offset == 4.0 and model.roi_pool.aligned is None
    assert model.sampler.candidates_per_box == 7
    assert SCRL(Trunk(body, stride=8, channels=16), roi_aligned=True, **SMALL).roi_pool.aligned is True
    loss, logs = model(*view_batch(2))
    loss.backward()
    assert logs["valid_share"] > 0 and body[0].weight.grad is not None


def test_argument_checks():
    model = SCRL("resnet18", **SMALL)
    v1, v2, g1, g2 = view_batch(2)
    with pytest.raises(ValueError, match="geom1"):
        model(v1, v2)
    with pytest.raises(ValueError, match="geom2"):
        model(v1, v2, g1, ViewGeometry(g2.crop[:1], g2.flipped[:1], g2.size[:1]))
    with pytest.raises(ValueError, match="view1"):
        model(v1[0], v2, g1, g2)
    with pytest.raises(ValueError, match="same number"):
        model(v1, v2[:1], g1, g2)
    with pytest.raises(ValueError, match="tau_base"):
        BYOL("resnet18", tau_base=1.5)
    with pytest.raises(ValueError, match="roi_output_size"):
        SCRL("resnet18", roi_output_size=0)


def train(model: nn.Module, batch, steps: int, lr: float) -> list[float]:
    """The same loop for SCRL and BYOL: the two swap in one line."""
    opt = LARS(lars_param_groups(model, weight_decay=1e-6), lr=lr)
    losses = []
    for step in range(steps):
        loss, logs = model(*batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_target(step, steps)
        losses.append(logs["loss"])
    return torch.stack(losses).tolist()


def test_scrl_and_byol_swap_in_one_line():
    batch = view_batch(4)
    for cls in (SCRL, BYOL):
        losses = train(cls("resnet18", **SMALL), batch, steps=2, lr=0.5)
        assert len(losses) == 2 and all(0 < x < 8 for x in losses)


@pytest.mark.slow
def test_training_scrl_on_a_fixed_batch_lowers_the_loss():
    torch.manual_seed(0)
    model = SCRL("resnet18", tau_base=0.99, **SMALL)
    start = time.perf_counter()
    losses = train(model, view_batch(4, seed=3), steps=30, lr=1.0)
    print(f"SCRL loss {losses[0]:.3f} -> {losses[-1]:.3f} in 30 steps, {time.perf_counter() - start:.1f} s")
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
