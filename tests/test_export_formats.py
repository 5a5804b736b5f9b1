"""Exports to Hugging Face Transformers (loaded back, same C5) and MMDetection (its own key names and widths)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from scrl.export import save_mmdet, to_mmdet, to_transformers
from scrl.export.mmdet_format import mmdet_config

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
STAGES = ["stage1", "stage2", "stage3", "stage4"]
ATOL = 1e-4


def randomised(arch: str) -> nn.Module:
    """A torchvision model whose BN statistics and layer scales are not their defaults, so that a lost or swapped tensor shows.

    The statistics are those of a random batch (as after training), which keeps every map near
    unit scale: set at random, they let C5 grow to hundreds or vanish behind the ReLUs.
    """
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_scale"):  # 1e-6 at init: the blocks would hardly count
                param.uniform_(0.1, 0.3)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # the exact average over the batches seen
        if norms:
            model.train()(torch.randn(4, 3, 64, 64))
    return model.eval()


def trunk_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("fc.", "classifier."))}


def torchvision_c5(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, torchvision.models.ConvNeXt):
            return model.features(images)
        return nn.Sequential(*list(model.children())[:-2])(images)  # ResNet: all but avgpool and fc


# ---------------------------------------------------------------- Hugging Face Transformers


@pytest.fixture(scope="module")
def resnet18_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    pytest.importorskip("transformers")
    model = randomised("resnet18")
    out = tmp_path_factory.mktemp("hf") / "scrl-r18"
    assert to_transformers(model, out) == out  # a torchvision ResNet: its arch found from the weights' layout
    return model, out


def _source(kind: str, arch: str, model: nn.Module):
    if kind == "checkpoint":  # a training checkpoint that records its trunk's name
        return {"model": {f"trunk.body.{k}": v for k, v in trunk_state(model).items()}, "run": {"identity": {"arch": arch}}}
    return trunk_state(model)


@pytest.mark.parametrize("arch, kind", [("resnet18", "fixture"), ("resnet50", "checkpoint"), ("convnext_tiny", "state")])
def test_transformers_export_loads_fully_and_gives_torchvision_c5(arch, kind, resnet18_export, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    if kind == "fixture":
        model, out = resnet18_export
    else:
        model = randomised(arch)
        out = to_transformers(_source(kind, arch, model), tmp_path / "export", arch=arch if kind == "state" else None)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left beside it
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    backbone_class = transformers.ConvNextBackbone if arch.startswith("convnext") else transformers.ResNetBackbone
    loaded, info = backbone_class.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.config.out_features == STAGES
    if arch.startswith("resnet"):
        assert loaded.config.downsample_in_bottleneck is False and loaded.config.downsample_in_first_stage is False
        assert loaded.config.layer_type == ("basic" if arch == "resnet18" else "bottleneck")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    want = torchvision_c5(model, images)
    assert want.abs().amax() > 0.1  # features to compare, not a map of zeros
    with torch.no_grad():
        out_maps = loaded.eval()(images, output_hidden_states=True)
    assert [m.shape[1] for m in out_maps.feature_maps][-1] == want.shape[1] and len(out_maps.feature_maps) == 4
    if arch.startswith("convnext"):  # the stage-4 state; feature_maps add the norm the backbone puts on each stage
        torch.testing.assert_close(out_maps.hidden_states[-1], want, rtol=0, atol=ATOL)
        want = torch.nn.functional.layer_norm(want.permute(0, 2, 3, 1), want.shape[1:2], eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(out_maps.feature_maps[-1], want, rtol=0, atol=ATOL)


def test_transformers_refuses_a_lost_or_misshapen_tensor_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    state = trunk_state(randomised("resnet18"))
    lost = {k: v for k, v in state.items() if k != "layer4.1.conv2.weight"}
    with pytest.raises(ValueError, match=r"layer4\.1\.conv2\.weight"):
        to_transformers(lost, tmp_path / "lost", arch="resnet18")
    misshapen = dict(state, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight"):
        to_transformers(misshapen, tmp_path / "misshapen", arch="resnet18")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_reads_back_partially_is_refused_and_the_earlier_export_kept(resnet18_export, tmp_path, monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    model, good = resnet18_export
    out = tmp_path / "scrl-r18"
    shutil.copytree(good, out)
    before = (out / "model.safetensors").read_bytes()
    dropped = "encoder.stages.3.layers.1.layer.1.normalization.running_var"
    save_pretrained = transformers.ResNetBackbone.save_pretrained

    def torn_save(self, folder, **kwargs):  # a tensor lost on the way to the file
        save_pretrained(self, folder, **kwargs)
        weights = load_file(Path(folder) / "model.safetensors")
        del weights[dropped]
        save_file(weights, Path(folder) / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(transformers.ResNetBackbone, "save_pretrained", torn_save)
    with pytest.raises(ValueError, match=rf"missing 1 \({dropped}\)"):
        to_transformers(model, out)
    assert (out / "model.safetensors").read_bytes() == before  # the earlier export, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scrl-r18"]  # and nothing half written beside it


def test_a_folder_with_other_features_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    from scrl.export import transformers_format

    key_of = transformers_format._hf_resnet_key
    swap = {"layer4.1.conv1.weight": "layer4.1.conv2.weight", "layer4.1.conv2.weight": "layer4.1.conv1.weight"}  # same shapes
    monkeypatch.setattr(transformers_format, "_hf_resnet_key", lambda key: key_of(swap.get(key, key)))  # loads fully, wrongly
    with pytest.raises(ValueError, match=r"other features than the trunk: they differ by up to \d"):
        to_transformers(randomised("resnet18"), tmp_path / "swapped")
    assert list(tmp_path.iterdir()) == []


def test_transformers_refuses_other_trunks_and_destinations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = randomised("resnet18")
    for arch, hint in (("efficientnet_b0", "convnext_tiny"), ("timm:resnet18", "to_timm"), ("wide_resnet50_2", "resnet152")):
        with pytest.raises(ValueError, match=rf"arch '{arch}' has no Transformers export: .*{hint}"):
            to_transformers(model, tmp_path / "x", arch=arch)
    regnet = scrl_trunk("regnet_x_400mf")  # a trunk records its name: refused without arch=
    with pytest.raises(ValueError, match="'regnet_x_400mf' has no Transformers export"):
        to_transformers(regnet, tmp_path / "x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"notes holds files that are no part of an export \(todo\.txt\)"):
        to_transformers(model, tmp_path / "notes")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        to_transformers(model, tmp_path / "file")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ValueError, match=r'pip install "scrl\[transformers\]"'):
        to_transformers(model, tmp_path / "x")


def scrl_trunk(arch: str) -> nn.Module:
    from scrl.trunk import torchvision_trunk

    return torchvision_trunk(arch)


def test_import_scrl_export_does_not_import_transformers() -> None:
    code = "import sys, scrl.export; print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'safetensors')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- MMDetection
#
# Names as MMDetection's own modules give them (mmdet/models/backbones/resnet.py, resnext.py,
# regnet.py, mmdet/models/layers/res_layer.py; mmpretrain/models/backbones/convnext.py):
# build_norm_layer(postfix=k) names a BatchNorm ``bn{k}``, the stem is ``conv1``/``bn1``, a stage
# is ``layer{i}``, a ResLayer's projection shortcut ``downsample.0`` (conv) and ``.1`` (norm) on its
# first block when the stride is not 1 or the channels change; RegNet uses ResNeXt's bottleneck
# with expansion 1 and a 3x3 stride-2 stem of 32 channels. mmpretrain's ConvNeXt has
# ``downsample_layers.{0..3}`` (stem conv + LN, then LN + 2x2 conv), ``stages.{i}.{j}`` blocks
# (``depthwise_conv``, ``norm``, ``pointwise_conv1``, ``pointwise_conv2``, ``gamma`` [C]) and a
# ``norm{i}`` for each out index.

MMDET_KEYS = {
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.bn1.weight": (64,), "layer1.1.conv2.weight": (64, 64, 3, 3), "layer1.1.bn2.running_mean": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.num_batches_tracked": (), "layer3.1.bn2.bias": (256,),
        "layer4.0.downsample.1.weight": (512,), "layer4.1.conv2.weight": (512, 512, 3, 3),
    },
    "resnet50": {
        "conv1.weight": (64, 3, 7, 7), "bn1.num_batches_tracked": (), "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv2.weight": (64, 64, 3, 3), "layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.bn3.weight": (256,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer1.0.downsample.1.running_var": (256,),
        "layer2.0.conv2.weight": (128, 128, 3, 3), "layer3.5.bn2.bias": (256,),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1), "layer4.2.conv3.weight": (2048, 512, 1, 1),
    },
    "resnext50_32x4d": {  # width = floor(planes * base_width / 64) * groups; conv2 has 32 groups
        "conv1.weight": (64, 3, 7, 7), "bn1.weight": (64,), "layer1.0.conv1.weight": (128, 64, 1, 1),
        "layer1.0.conv2.weight": (128, 4, 3, 3), "layer1.0.bn2.weight": (128,), "layer1.0.conv3.weight": (256, 128, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer2.0.conv2.weight": (256, 8, 3, 3),
        "layer3.0.conv2.weight": (512, 16, 3, 3), "layer4.0.conv2.weight": (1024, 32, 3, 3),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1), "layer4.2.bn3.running_mean": (2048,),
    },
    "regnet_x_400mf": {  # stages of 1, 2, 7, 12 blocks, 32, 64, 160, 400 channels, group width 16
        "conv1.weight": (32, 3, 3, 3), "bn1.weight": (32,), "layer1.0.conv1.weight": (32, 32, 1, 1),
        "layer1.0.conv2.weight": (32, 16, 3, 3), "layer1.0.conv3.weight": (32, 32, 1, 1),
        "layer1.0.downsample.0.weight": (32, 32, 1, 1), "layer1.0.downsample.1.running_mean": (32,),
        "layer2.1.bn2.running_var": (64,), "layer3.6.conv2.weight": (160, 16, 3, 3),
        "layer4.0.downsample.0.weight": (400, 160, 1, 1), "layer4.11.conv3.weight": (400, 400, 1, 1),
        "layer4.11.bn3.num_batches_tracked": (),
    },
    "convnext_tiny": {
        "downsample_layers.0.0.weight": (96, 3, 4, 4), "downsample_layers.0.1.bias": (96,),
        "downsample_layers.1.0.weight": (96,), "downsample_layers.1.1.weight": (192, 96, 2, 2),
        "stages.0.0.depthwise_conv.weight": (96, 1, 7, 7), "stages.0.0.norm.weight": (96,),
        "stages.0.0.pointwise_conv1.weight": (384, 96), "stages.0.0.pointwise_conv2.weight": (96, 384),
        "stages.0.0.gamma": (96,), "stages.2.8.gamma": (384,), "stages.3.2.pointwise_conv1.bias": (3072,),
        "norm0.bias": (96,), "norm3.weight": (768,),
    },
}
NOT_MMDET_KEYS = {
    "resnet18": ["layer1.0.downsample.0.weight", "layer1.0.conv3.weight", "fc.weight"],  # basic blocks, layer1 keeps 64 channels
    "convnext_tiny": ["norm4.weight"],
}

# MMDetection RegNet.arch_settings (mmdet/models/backbones/regnet.py).
MMDET_REGNETS = {
    "regnetx_400mf": dict(w0=24, wa=24.48, wm=2.54, group_w=16, depth=22, bot_mul=1.0),
    "regnetx_800mf": dict(w0=56, wa=35.73, wm=2.28, group_w=16, depth=16, bot_mul=1.0),
    "regnetx_1.6gf": dict(w0=80, wa=34.01, wm=2.25, group_w=24, depth=18, bot_mul=1.0),
    "regnetx_3.2gf": dict(w0=88, wa=26.31, wm=2.25, group_w=48, depth=25, bot_mul=1.0),
    "regnetx_4.0gf": dict(w0=96, wa=38.65, wm=2.43, group_w=40, depth=23, bot_mul=1.0),
    "regnetx_6.4gf": dict(w0=184, wa=60.83, wm=2.07, group_w=56, depth=17, bot_mul=1.0),
    "regnetx_8.0gf": dict(w0=80, wa=49.56, wm=2.88, group_w=120, depth=23, bot_mul=1.0),
    "regnetx_12gf": dict(w0=168, wa=73.36, wm=2.37, group_w=112, depth=19, bot_mul=1.0),
}
# torchvision's regnet_x_* builders (torchvision/models/regnet.py): depth, w_0, w_a, w_m, group_width.
TORCHVISION_REGNETS = {
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16), "regnet_x_800mf": (16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24), "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120), "regnet_x_16gf": (22, 216, 55.59, 2.1, 128),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168),
}


def mmdet_regnet_layout(arch: str | dict) -> tuple[list[int], list[int], list[int]]:
    """Blocks, widths and group widths per stage, as MMDetection's RegNet.__init__ computes them."""
    a = MMDET_REGNETS[arch] if isinstance(arch, str) else arch
    widths_cont = np.arange(a["depth"]) * a["wa"] + a["w0"]  # generate_regnet
    ks = np.round(np.log(widths_cont / a["w0"]) / np.log(a["wm"]))
    widths = (np.round(np.divide(a["w0"] * np.power(a["wm"], ks), 8)) * 8).astype(int).tolist()
    diff = [w != p for w, p in zip(widths + [0], [0] + widths)]  # get_stages_from_blocks
    stage_widths = [w for w, d in zip(widths, diff[:-1]) if d]
    stage_blocks = np.diff([i for i, d in zip(range(len(diff)), diff) if d]).tolist()
    bottleneck = [int(w * a["bot_mul"]) for w in stage_widths]  # adjust_width_group
    groups = [min(a["group_w"], b) for b in bottleneck]
    bottleneck = [int(round(b / g) * g) for b, g in zip(bottleneck, groups)]
    return stage_blocks, [int(b / a["bot_mul"]) for b in bottleneck], groups


def mmdet_resnet_keys(blocks, widths, *, convs: int, stem: int, strides) -> set[str]:
    """ResNet._make_stem_layer, then ResLayer(block) per stage, with BasicBlock (2 convs) or Bottleneck (3)."""
    keys = {"conv1.weight", *(f"bn1.{p}" for p in BN)}
    inplanes = stem
    for i, (count, planes_out, stride) in enumerate(zip(blocks, widths, strides), start=1):
        for j in range(count):
            for k in range(1, convs + 1):
                keys.add(f"layer{i}.{j}.conv{k}.weight")
                keys.update(f"layer{i}.{j}.bn{k}.{p}" for p in BN)
            if j == 0 and (stride != 1 or inplanes != planes_out):
                keys.add(f"layer{i}.{j}.downsample.0.weight")
                keys.update(f"layer{i}.{j}.downsample.1.{p}" for p in BN)
        inplanes = planes_out
    return keys


def mmpretrain_convnext_keys(depths) -> set[str]:
    keys = {f"downsample_layers.{i}.{n}.{p}" for i in range(4) for n in (0, 1) for p in ("weight", "bias")}
    for i, depth in enumerate(depths):
        for j in range(depth):
            keys.add(f"stages.{i}.{j}.gamma")
            for m in ("depthwise_conv", "norm", "pointwise_conv1", "pointwise_conv2"):
                keys.update(f"stages.{i}.{j}.{m}.{p}" for p in ("weight", "bias"))
    return keys | {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}


def config_of(arch: str, checkpoint: str = "w.pth") -> dict:
    namespace: dict = {}
    exec(mmdet_config(arch, checkpoint), namespace)  # the config is Python: dict(...) literals
    return namespace


def mmdet_expected_keys(arch: str) -> set[str]:
    """The full key list of the backbone the exported config builds, by MMDetection's naming code."""
    backbone = config_of(arch)["model"]["backbone"]
    if backbone["type"] == "mmpretrain.ConvNeXt":
        assert backbone["arch"] == "tiny"
        return mmpretrain_convnext_keys((3, 3, 9, 3))  # ConvNeXt.arch_settings["tiny"]
    if backbone["type"] == "RegNet":
        blocks, widths, _ = mmdet_regnet_layout(backbone["arch"])
        return mmdet_resnet_keys(blocks, widths, convs=3, stem=32, strides=(2, 2, 2, 2))
    depth = backbone["depth"]
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    expansion = 1 if depth < 50 else 4
    widths = [64 * 2**i * expansion for i in range(4)]
    return mmdet_resnet_keys(blocks, widths, convs=2 if depth < 50 else 3, stem=64, strides=(1, 2, 2, 2))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "regnet_x_400mf", "convnext_tiny"])
def test_mmdet_keys_are_exactly_the_backbones_own(arch: str) -> None:
    model = randomised(arch)
    tv = trunk_state(model)
    exported = to_mmdet(tv, arch=arch)
    state = exported["state_dict"]
    assert exported["meta"]["arch"] == arch and exported["meta"]["author"] == "scrl"
    expected = mmdet_expected_keys(arch)
    assert set(state) - expected == set() and expected - set(state) == set()
    for key, shape in MMDET_KEYS[arch].items():
        assert tuple(state[key].shape) == shape, key
    assert not set(NOT_MMDET_KEYS.get(arch, ())) & set(state)
    added = {k for k in state if k.startswith("norm") and arch.startswith("convnext")}  # ConvNeXt's output norms
    assert len(state) == len(tv) + len(added)
    assert sum(v.numel() for k, v in state.items() if k not in added) == sum(v.numel() for v in tv.values())
    for k in added:
        assert torch.equal(state[k], torch.ones_like(state[k]) if k.endswith("weight") else torch.zeros_like(state[k]))


def test_mmdet_values_are_the_torchvision_tensors() -> None:
    regnet = trunk_state(randomised("regnet_x_400mf"))
    state = to_mmdet(regnet, arch="regnet_x_400mf")["state_dict"]
    for mm_key, tv_key in (
        ("conv1.weight", "stem.0.weight"),
        ("bn1.running_var", "stem.1.running_var"),
        ("layer2.0.downsample.0.weight", "trunk_output.block2.block2-0.proj.0.weight"),
        ("layer3.4.conv2.weight", "trunk_output.block3.block3-4.f.b.0.weight"),
        ("layer4.11.bn3.running_mean", "trunk_output.block4.block4-11.f.c.1.running_mean"),
    ):
        assert torch.equal(state[mm_key], regnet[tv_key]), mm_key
    convnext = randomised("convnext_tiny")
    state = to_mmdet(_source("checkpoint", "convnext_tiny", convnext))["state_dict"]  # the arch from the run identity
    tv = trunk_state(convnext)
    assert torch.equal(state["stages.2.5.gamma"], tv["features.5.5.layer_scale"].flatten())
    assert torch.equal(state["stages.3.1.pointwise_conv2.weight"], tv["features.7.1.block.5.weight"])
    assert torch.equal(state["downsample_layers.3.1.weight"], tv["features.6.1.weight"])
    resnet = trunk_state(randomised("resnet18"))
    state = to_mmdet(resnet)["state_dict"]  # arch from the layout
    assert all(torch.equal(state[k], v) for k, v in resnet.items())


@pytest.mark.parametrize("arch", sorted(TORCHVISION_REGNETS))
def test_mmdet_regnet_config_builds_torchvision_layout(arch: str) -> None:
    from torchvision.models.regnet import BlockParams

    depth, w_0, w_a, w_m, group_width = TORCHVISION_REGNETS[arch]
    params = BlockParams.from_init_params(depth=depth, w_0=w_0, w_a=w_a, w_m=w_m, group_width=group_width)
    backbone = config_of(arch)["model"]["backbone"]
    assert mmdet_regnet_layout(backbone["arch"]) == (params.depths, params.widths, params.group_widths)
    assert config_of(arch)["model"]["neck"]["in_channels"] == params.widths
    if arch == "regnet_x_400mf":  # MMDetection's own regnetx_400mf ends in 384 channels, torchvision's in 400
        assert mmdet_regnet_layout("regnetx_400mf")[1] == [32, 64, 160, 384] and params.widths[-1] == 400


def test_mmdet_refuses_other_trunks() -> None:
    state = trunk_state(randomised("resnet18"))
    for arch, why in (
        ("regnet_y_400mf", "no squeeze-and-excitation"),
        ("wide_resnet50_2", "no wider bottlenecks"),
        ("efficientnet_b0", "it takes torchvision's resnet18"),
        ("timm:resnet18", "to_timm"),
    ):
        with pytest.raises(ValueError, match=rf"arch '{arch}' has no MMDetection export: .*{why}"):
            to_mmdet(state, arch=arch)
    lost = {k: v for k, v in state.items() if k != "layer3.1.bn1.running_mean"}
    with pytest.raises(ValueError, match=r"layer3\.1\.bn1\.running_mean"):
        to_mmdet(lost)


def test_save_mmdet_writes_checkpoint_and_config(tmp_path: Path) -> None:
    model = randomised("resnet50")
    weights, config = save_mmdet(model, tmp_path / "scrl_r50_mmdet.pth")
    assert config == tmp_path / "scrl_r50_mmdet.py"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scrl_r50_mmdet.pth", "scrl_r50_mmdet.py"]
    checkpoint = torch.load(weights, weights_only=True)  # as mmengine's load_checkpoint reads it
    assert set(checkpoint) == {"state_dict", "meta"} and len(checkpoint["state_dict"]) == len(trunk_state(model))
    text = config.read_text(encoding="utf-8")
    ast.parse(text)
    assert 'type="Pretrained"' in text and f'checkpoint="{weights}"' in text
    cfg = config_of("resnet50", weights)["model"]
    assert cfg["backbone"] == {
        "_delete_": True, "type": "ResNet", "depth": 50, "num_stages": 4, "out_indices": (0, 1, 2, 3),
        "frozen_stages": -1, "norm_cfg": {"type": "SyncBN", "requires_grad": True}, "norm_eval": False,
        "style": "pytorch", "init_cfg": {"type": "Pretrained", "checkpoint": str(weights)},
    }
    assert cfg["data_preprocessor"] == {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "bgr_to_rgb": True}
    assert cfg["neck"] == {"in_channels": [256, 512, 1024, 2048]}
    convnext = config_of("convnext_tiny")
    assert convnext["custom_imports"] == {"imports": ["mmpretrain.models"], "allow_failed_imports": False}
    backbone = convnext["model"]["backbone"]
    assert backbone["type"] == "mmpretrain.ConvNeXt" and backbone["arch"] == "tiny" and backbone["gap_before_final_norm"] is False
    assert config_of("resnext50_32x4d")["model"]["backbone"]["groups"] == 32
    with pytest.raises(ValueError, match=r"must not end in \.py"):
        save_mmdet(model, tmp_path / "weights.py")


def test_mmdet_backbone_is_built_and_loaded_strictly_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []

    def resnet(**kwargs):  # stands in for mmdet's ResNet: the same names, one buffer more when told
        built.append(kwargs)
        body = torchvision.models.resnet18()
        del body.fc
        if kwargs.get("extra"):
            body.register_buffer("extra_buffer", torch.zeros(1))
        return body

    backbones = types.SimpleNamespace(ResNet=resnet)
    models = types.ModuleType("mmdet.models")
    models.backbones = backbones
    monkeypatch.setitem(sys.modules, "mmdet", types.ModuleType("mmdet"))
    monkeypatch.setitem(sys.modules, "mmdet.models", models)
    state = trunk_state(randomised("resnet18"))
    to_mmdet(state)
    assert built and built[0]["depth"] == 18 and built[0]["style"] == "pytorch"
    monkeypatch.setattr(backbones, "ResNet", lambda **kwargs: resnet(**kwargs, extra=True))
    with pytest.raises(ValueError, match=r"MMDetection's ResNet: missing 1 \(extra_buffer\)"):
        to_mmdet(state)


def test_real_mmdet_loads_the_export_strictly() -> None:
    pytest.importorskip("mmdet")
    from mmdet.models.backbones import ResNet

    state = to_mmdet(trunk_state(randomised("resnet50")))["state_dict"]
    ResNet(depth=50, style="pytorch").load_state_dict(state, strict=True)
