import inspect
import time

import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.utils.data import default_collate

from scrl import (
    BYOL, LARS, SCRL, BoxPairSampler, RoIPairPool, Trunk, ViewGeometry, lars_param_groups, resnet_trunk, roi_pair_pool,
)
from scrl.models import TwoViewModel
from scrl.pooling import BoxPairPool, GlobalPool
from scrl.schedule import cosine_tau

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


def loss_by_hand(model: TwoViewModel, view1, view2, geom1, geom2, seed: int) -> torch.Tensor:
    """The model's loss rebuilt from its parts, without the pooling component or the loss function.

    Maps of both views in one trunk call -> rows (RoIAlign of the sampler's boxes at the trunk's
    cell centres for SCRL, map means for BYOL) -> heads (BatchNorm over valid rows) -> float64
    ``mean_valid(2 - 2 cos(q1, z2)) + mean_valid(2 - 2 cos(q2, z1))``. Call it right after the
    model's own call with the same seed; BatchNorm's batch statistics make it independent of
    the running statistics that call moved.
    """
    views = torch.cat([view1, view2])
    with torch.no_grad():
        maps = [model.trunk(views).chunk(2), model.target.module["trunk"](views).chunk(2)]
        if isinstance(model, SCRL):
            pairs = model.sampler(geom1, geom2, generator=torch.Generator().manual_seed(seed))
            cells = dict(spatial_scale=1 / model.trunk.stride, cell_offset=model.trunk.cell_offset)
            online, target = (torch.cat(roi_pair_pool(*m, pairs, **cells)[:2]) for m in maps)
            valid = pairs.valid.reshape(-1)
            mask = torch.cat([valid, valid])
        else:
            online, target = (torch.cat([x.mean(dim=(2, 3)) for x in m]) for m in maps)
            valid, mask = torch.ones(view1.shape[0], dtype=torch.bool), None
        q1, q2 = model.predictor(model.projector(online, mask), mask).double().chunk(2)
        z1, z2 = model.target.module["projector"](target, mask).double().chunk(2)
    per_pair = 4 - 2 * F.cosine_similarity(q1, z2) - 2 * F.cosine_similarity(q2, z1)
    return per_pair[valid].sum() / max(1, int(valid.sum()))


@pytest.mark.parametrize("cls", [SCRL, BYOL])
def test_forward_gives_a_loss_and_detached_scalar_logs(cls):
    torch.manual_seed(0)
    model = cls("resnet18", **SMALL)
    batch = view_batch(4)
    loss, logs = model(*batch, generator=torch.Generator().manual_seed(5))
    assert loss.shape == () and loss.dtype == torch.float32 and loss.requires_grad
    torch.testing.assert_close(loss.double(), loss_by_hand(model, *batch, seed=5), rtol=1e-5, atol=1e-6)
    assert set(logs) == {"loss", "valid_box_share", "collapse_std"}
    assert all(t.shape == () and not t.requires_grad for t in logs.values())
    assert logs["loss"] == loss.detach()
    assert 0 < logs["valid_box_share"] <= 1 and 0 < logs["collapse_std"] < 1
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
    assert logs["valid_box_share"] == 0 and loss.item() == 0.0
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
    assert 0 < logs["valid_box_share"] < 1 and logs["valid_box_share"] == seen["valid"].float().mean()
    bn = model.projector.bn
    torch.testing.assert_close(bn.running_mean, bn.momentum * seen["hidden"][mask].mean(0))
    torch.testing.assert_close(bn.running_var, (1 - bn.momentum) + bn.momentum * seen["hidden"][mask].var(0))


@pytest.mark.parametrize("cls, kwargs", [(SCRL, dict(num_boxes=1)), (BYOL, {})])
def test_one_image_and_one_box_give_the_loss_computed_by_hand(cls, kwargs):
    torch.manual_seed(0)
    model = cls("resnet18", **SMALL, **kwargs)
    batch = view_batch(1)
    loss, logs = model(*batch, generator=torch.Generator().manual_seed(3))
    assert logs["valid_box_share"] == 1  # the one slot is a real box (or the one image) ...
    torch.testing.assert_close(loss.double(), loss_by_hand(model, *batch, seed=3), rtol=1e-5, atol=1e-6)
    assert loss.item() > 0.1  # ... so this is a real loss, not the 0 of no valid pair
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for _, p in online_parameters(model))


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
    assert model.sampler.candidates_per_box == 7 and model.pool.features_per_channel == 4
    for rule, aligned in (("aligned", True), ("unaligned", False), ("exact", None)):
        assert SCRL(Trunk(body, stride=8, channels=16), roi_pooling=rule, **SMALL).roi_pool.aligned is aligned
    loss, logs = model(*view_batch(2))
    loss.backward()
    assert logs["valid_box_share"] > 0 and body[0].weight.grad is not None


@pytest.mark.parametrize("cls", [SCRL, BYOL])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float64, torch.int32])
def test_views_of_a_dtype_the_trunk_cannot_take_are_named(cls, dtype):
    v1, v2, g1, g2 = view_batch(2)
    with pytest.raises(ValueError, match=f"view1 must be float32, float16 or bfloat16.*got {dtype}"):
        cls("resnet18", **SMALL)(v1.to(dtype), v2, g1, g2)


def test_geometry_of_another_view_size_is_refused():
    """96-px views with geometry that records 64-px views would pool boxes in the wrong pixels."""
    v1, v2, g1, g2 = view_batch(2)
    big = torch.nn.functional.interpolate(v1, scale_factor=1.5)
    with pytest.raises(ValueError, match=rf"view1 is {big.shape[-2]} x {big.shape[-1]} px but its geometry says"):
        SCRL("resnet18", **SMALL)(big, v2, g1, g2)


def test_argument_checks():
    model = SCRL("resnet18", **SMALL)
    v1, v2, g1, g2 = view_batch(2)
    with pytest.raises(ValueError, match="geom1"):
        model(v1, v2)
    with pytest.raises(ValueError, match=r"view2: the geometry's batch shape \[1\] differs from the views' \[2\]"):
        model(v1, v2, g1, ViewGeometry(g2.crop[:1], g2.flipped[:1], g2.size[:1]))
    with pytest.raises(ValueError, match="view1"):
        model(v1[0], v2, g1, g2)
    with pytest.raises(ValueError, match="same number"):
        model(v1, v2[:1], g1, ViewGeometry(g2.crop[:1], g2.flipped[:1], g2.size[:1]))
    with pytest.raises(ValueError, match="tau_base"):
        BYOL("resnet18", tau_base=1.5)
    with pytest.raises(ValueError, match="roi_output_size"):
        SCRL("resnet18", roi_output_size=0)
    with pytest.raises(ValueError, match="pool"):
        TwoViewModel("resnet18", nn.Identity())
    with pytest.raises(ValueError, match="sampler"):
        BoxPairPool(RoIPairPool(), RoIPairPool())


# A non-default value for every BoxPairSampler argument.
SAMPLER_OPTIONS = dict(num_boxes=3, min_size=8.0, iou_threshold=None, jitter=0.1, mode="grid", candidates_per_box=7)


def test_every_sampler_option_reaches_the_sampler_under_its_own_name():
    assert SAMPLER_OPTIONS.keys() == inspect.signature(BoxPairSampler).parameters.keys()
    trunk = resnet_trunk("resnet18")
    for name, value in SAMPLER_OPTIONS.items():
        assert getattr(SCRL(trunk, **{name: value}, **SMALL).sampler, name) == value, name
    model = SCRL(trunk, **SAMPLER_OPTIONS, **SMALL)
    assert repr(model.sampler) == repr(BoxPairSampler(**SAMPLER_OPTIONS))
    # The sampler checks its own arguments; the old SCRL-only names are gone.
    with pytest.raises(ValueError, match="num_boxes"):
        SCRL(trunk, num_boxes=0)
    with pytest.raises(ValueError, match="mode"):
        SCRL(trunk, mode="random")
    with pytest.raises(TypeError, match="box_jitter"):
        SCRL(trunk, box_jitter=0.1)


def test_a_sampler_instance_is_used_as_given_and_not_together_with_options():
    trunk = resnet_trunk("resnet18")
    sampler = BoxPairSampler(num_boxes=2, min_size=8)
    model = SCRL(trunk, sampler=sampler, **SMALL)
    assert model.sampler is sampler and model.pool.sampler is sampler
    _, logs = model(*view_batch(2))
    assert logs["valid_box_share"] > 0
    with pytest.raises(ValueError, match="sampler.*min_size, num_boxes"):
        SCRL(trunk, sampler=sampler, num_boxes=3, min_size=8)


def test_global_pool_is_the_mean_of_each_map_and_ignores_geometries():
    maps = [torch.randn(3, 8, 4, 5, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    pool = GlobalPool()
    rows = pool((maps[0], maps[1]), (maps[2], maps[3]))
    torch.testing.assert_close(rows.online, torch.cat([maps[0].mean((2, 3)), maps[1].mean((2, 3))]), rtol=0, atol=0)
    torch.testing.assert_close(rows.target, torch.cat([maps[2].mean((2, 3)), maps[3].mean((2, 3))]), rtol=0, atol=0)
    assert rows.valid is None and pool.features_per_channel == 1
    _, _, g1, g2 = view_batch(3)
    with_geometry = pool((maps[0], maps[1]), (maps[2], maps[3]), g1, g2, torch.Generator())
    assert torch.equal(with_geometry.online, rows.online) and torch.equal(with_geometry.target, rows.target)


def test_box_pair_pool_pools_the_samplers_boxes_like_roi_pair_pool_on_both_networks():
    trunk = Trunk(nn.Conv2d(3, 4, 8, stride=8), stride=8, channels=4)
    pool = BoxPairPool.for_trunk(trunk, BoxPairSampler(num_boxes=5, min_size=32), output_size=2)
    assert (pool.roi_pool.stride, pool.roi_pool.cell_offset, pool.roi_pool.aligned) == (8, 4.0, None)
    assert pool.features_per_channel == 4
    v1, v2, g1, g2 = view_batch(2)
    online, target = (trunk(v1), trunk(v2)), (trunk(v2), trunk(v1))
    rows = pool(online, target, g1, g2, torch.Generator().manual_seed(1))
    pairs = pool.sampler(g1, g2, generator=torch.Generator().manual_seed(1))
    settings = dict(output_size=2, spatial_scale=1 / 8, cell_offset=4.0)
    o1, o2, valid = roi_pair_pool(*online, pairs, **settings)
    t1, t2, _ = roi_pair_pool(*target, pairs, **settings)
    assert rows.online.shape == (2 * 2 * 5, 4 * 4) and 0 < valid.float().mean() < 1  # invalid slots too
    assert torch.equal(rows.online, torch.cat([o1, o2])) and torch.equal(rows.target, torch.cat([t1, t2]))
    assert torch.equal(rows.valid, valid)
    with pytest.raises(ValueError, match="geom2"):
        pool(online, target, g1, None)
    with pytest.raises(ValueError, match="trunk"):
        BoxPairPool.for_trunk(nn.Identity(), BoxPairSampler())
    with pytest.raises(ValueError, match="roi_pooling must be one of 'exact', 'aligned', 'unaligned', got True"):
        BoxPairPool.for_trunk(trunk, BoxPairSampler(), roi_pooling=True)


@pytest.mark.parametrize("cls", [SCRL, BYOL])
def test_scrl_and_byol_are_the_one_two_view_model_with_their_pooling(cls):
    torch.manual_seed(0)
    model = cls("resnet18", **SMALL)
    assert isinstance(model, TwoViewModel) and type(model).forward is TwoViewModel.forward
    torch.manual_seed(0)
    trunk = resnet_trunk("resnet18")
    pool = BoxPairPool.for_trunk(trunk, BoxPairSampler()) if cls is SCRL else GlobalPool()
    by_hand = TwoViewModel(trunk, pool, tau_base=model.tau_base, **SMALL)
    assert repr(by_hand).replace(type(by_hand).__name__, "", 1) == repr(model).replace(cls.__name__, "", 1)
    batch = view_batch(4)
    a, logs_a = model(*batch, generator=torch.Generator().manual_seed(0))
    b, logs_b = by_hand(*batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and all(torch.equal(logs_a[k], logs_b[k]) for k in logs_a)
    assert isinstance(model.pool, BoxPairPool if cls is SCRL else GlobalPool)


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
        torch.manual_seed(0)
        model = cls("resnet18", **SMALL)
        torch.manual_seed(0)
        untrained = cls("resnet18", **SMALL)
        losses = train(model, batch, steps=2, lr=0.5)
        untrained(*batch, generator=torch.Generator().manual_seed(0))  # the heads' BatchNorm as in step 0
        assert losses[0] == pytest.approx(loss_by_hand(untrained, *batch, seed=0).item(), rel=1e-5), cls.__name__
        assert losses[1] != losses[0]  # the step moved the weights


@pytest.mark.slow
def test_training_scrl_on_a_fixed_batch_lowers_the_loss():
    torch.manual_seed(0)
    model = SCRL("resnet18", tau_base=0.99, **SMALL)
    start = time.perf_counter()
    losses = train(model, view_batch(4, seed=3), steps=30, lr=1.0)
    print(f"SCRL loss {losses[0]:.3f} -> {losses[-1]:.3f} in 30 steps, {time.perf_counter() - start:.1f} s")
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
