"""Export of trunk weights: torchvision state dicts and Detectron2 pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from scrl.export import (
    detectron2_config,
    detectron2_key,
    resnet_arch,
    save_detectron2,
    save_torchvision,
    to_detectron2,
    to_torchvision,
    trunk_weights,
)
from scrl.runtime import CheckpointError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def explicit_detectron2_map(arch: str) -> dict[str, str]:
    """torchvision key -> Detectron2 key, spelled out block by block (Detectron2's ResNet naming)."""
    convs = (1, 2) if arch in ("resnet18", "resnet34") else (1, 2, 3)
    out = {"conv1.weight": "stem.conv1.weight"}
    out.update({f"bn1.{p}": f"stem.conv1.norm.{p}" for p in BN})
    for stage, count in enumerate(BLOCKS[arch], start=1):
        for block in range(count):
            tv, d2 = f"layer{stage}.{block}", f"res{stage + 1}.{block}"
            for c in convs:
                out[f"{tv}.conv{c}.weight"] = f"{d2}.conv{c}.weight"
                out.update({f"{tv}.bn{c}.{p}": f"{d2}.conv{c}.norm.{p}" for p in BN})
            # torchvision gives a projection shortcut to the first block of every stage except
            # layer1 of basic-block nets, whose input already has 64 channels at stride 1.
            if block == 0 and not (stage == 1 and len(convs) == 2):
                out[f"{tv}.downsample.0.weight"] = f"{d2}.shortcut.weight"
                out.update({f"{tv}.downsample.1.{p}": f"{d2}.shortcut.norm.{p}" for p in BN})
    return out


def _randomised(arch: str) -> torchvision.models.ResNet:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():  # non-default BN statistics, so a lost or swapped buffer shows
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("arch", ["resnet50", "resnet101", "resnet18", "resnet34"])
def test_detectron2_key_map_complete_and_one_to_one(arch: str) -> None:
    model = _randomised(arch)
    trunk = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    expected = explicit_detectron2_map(arch)
    assert set(expected) == set(trunk)  # the explicit map covers the real trunk exactly

    exported = to_detectron2(model)
    assert exported["__author__"] == "scrl" and exported["matching_heuristics"] is True
    weights = exported["model"]
    assert len(weights) == len(trunk) and set(weights) == set(expected.values())
    for tv_key, d2_key in expected.items():
        assert detectron2_key(tv_key) == d2_key
        assert isinstance(weights[d2_key], np.ndarray)
        assert weights[d2_key].shape == tuple(trunk[tv_key].shape)
        np.testing.assert_array_equal(weights[d2_key], trunk[tv_key].numpy())


def test_detectron2_spot_keys_and_rejects_head() -> None:
    assert detectron2_key("layer3.22.bn2.running_var") == "res4.22.conv2.norm.running_var"
    assert detectron2_key("layer4.0.downsample.1.bias") == "res5.0.shortcut.norm.bias"
    assert detectron2_key("bn1.weight") == "stem.conv1.norm.weight"
    with pytest.raises(ValueError, match="fc.weight"):
        detectron2_key("fc.weight")


def _checkpoint(arch: str = "resnet18") -> tuple[dict, dict[str, torch.Tensor]]:
    """A training checkpoint as the pretraining script writes it (online + target + heads)."""
    online = {k: v for k, v in _randomised(arch).state_dict().items() if not k.startswith("fc.")}
    target = {k: torch.zeros_like(v) for k, v in online.items()}
    model = {f"trunk.body.{k}": v for k, v in online.items()}
    model.update({f"target.trunk.body.{k}": v for k, v in target.items()})
    model["projector.net.0.weight"] = torch.randn(8, 512)
    return {"model": model, "args": {"arch": arch, "method": "scrl"}, "step": 3}, online


def test_torchvision_export_from_checkpoint_file_loads_strictly_minus_fc(tmp_path: Path) -> None:
    checkpoint, online = _checkpoint()
    path = tmp_path / "checkpoint_last.pth"
    torch.save(checkpoint, path)
    out = save_torchvision(path, tmp_path / "backbone.pth")
    state = torch.load(out, weights_only=True)
    fresh = torchvision.models.resnet18()
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    for key, value in online.items():  # the online trunk, never the target
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_sources_agree_module_trunk_ddp_prefix_and_torchvision_dict() -> None:
    model = _randomised("resnet18")
    reference = to_torchvision(model)
    prefixed = {f"module.trunk.body.{k}": v for k, v in reference.items()}
    assert to_torchvision({"model": prefixed}).keys() == reference.keys()
    trunk_like = torch.nn.Module()
    trunk_like.body = model
    for source in (trunk_like, model.state_dict(), {"model": prefixed}):
        got = trunk_weights(source)
        assert got.keys() == reference.keys()
        assert all(torch.equal(got[k], reference[k]) for k in reference)
    assert resnet_arch(reference) == "resnet18"


def test_wrapper_prefixes_stripped_nested_mixed_and_inside_keys_in_order() -> None:
    reference = to_torchvision(_randomised("resnet18"))
    keys = list(reference)
    # DDP around compile, compile around DDP, DDP twice, a compiled trunk inside the model.
    prefixes = ["module._orig_mod.", "_orig_mod.module.", "module.module.", "", "module."]
    mixed = {}
    for i, key in enumerate(keys):
        head = prefixes[i % len(prefixes)]
        mixed[f"{head}trunk._orig_mod.body.{key}" if i % 7 == 0 else f"{head}trunk.body.{key}"] = reference[key]
    frozen = dict(mixed)
    got = trunk_weights({"model": mixed})
    assert list(got) == keys and all(torch.equal(got[k], reference[k]) for k in keys)  # same order too
    assert mixed == frozen and list(mixed) == list(frozen)  # the caller's dict is left as it was
    compiled = torch.nn.DataParallel(torch.compile(_randomised("resnet18")))  # compiles lazily: nothing runs
    assert list(trunk_weights(compiled)) == keys


def test_scrl_module_exports_its_online_trunk() -> None:
    scrl = pytest.importorskip("scrl")
    if not hasattr(scrl, "SCRL"):
        pytest.skip("scrl.SCRL not available")
    model = scrl.SCRL("resnet18", projector_hidden=32, projection_dim=16)
    state = to_torchvision(model)
    assert resnet_arch(state) == "resnet18"
    body = model.trunk.body.state_dict()
    assert all(torch.equal(state[k], body[k]) for k in state) and state.keys() == body.keys()


def test_save_detectron2_writes_pickle_and_config(tmp_path: Path) -> None:
    checkpoint, online = _checkpoint("resnet50")
    weights_path, config_path = save_detectron2(checkpoint, tmp_path / "scrl_r50.pkl")
    with open(weights_path, "rb") as f:
        loaded = pickle.load(f, encoding="latin1")  # how Detectron2 reads it
    assert set(loaded) == {"model", "__author__", "matching_heuristics"}
    assert len(loaded["model"]) == len(online)
    np.testing.assert_array_equal(loaded["model"]["res3.0.shortcut.weight"], online["layer2.0.downsample.0.weight"])
    text = config_path.read_text()
    assert config_path.name == "scrl_r50.yaml"
    for line in (
        'WEIGHTS: "scrl_r50.pkl"',
        "PIXEL_MEAN: [123.675, 116.28, 103.53]",
        "PIXEL_STD: [58.395, 57.12, 57.375]",
        "DEPTH: 50",
        "STRIDE_IN_1X1: False",
        'NORM: "SyncBN"',
        'FORMAT: "RGB"',
    ):
        assert line in text
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(text)
    assert config["MODEL"]["RESNETS"] == {"DEPTH": 50, "STRIDE_IN_1X1": False, "NORM": "SyncBN"}
    assert config["INPUT"]["FORMAT"] == "RGB"
    assert "RES2_OUT_CHANNELS: 64" in detectron2_config("resnet34")


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.pkl"):
        save_detectron2(_randomised("resnet18"), tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="no trunk weights"):
        trunk_weights({"model": {"projector.weight": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match="missing.pth does not exist"):
        trunk_weights(tmp_path / "missing.pth")
    state = to_torchvision(_randomised("resnet18"))
    del state["layer4.1.conv2.weight"]
    with pytest.raises(ValueError, match="missing"):
        to_torchvision(state)
    with pytest.raises(ValueError, match="arch"):
        detectron2_config("vgg16")


def test_unreadable_or_unsafe_files_are_checkpoint_errors_naming_the_path(tmp_path: Path) -> None:
    torn = tmp_path / "torn.pth"
    save_torchvision(_randomised("resnet18"), torn)
    torn.write_bytes(torn.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"torn\.pth is not a readable checkpoint"):
        to_torchvision(torn)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {}, "path": Path("x")}, unsafe)  # a Python object the restricted unpickler refuses
    with pytest.raises(CheckpointError, match=r"unsafe\.pth holds objects that torch\.load\(weights_only=True\) refuses"):
        trunk_weights(unsafe)
    assert issubclass(CheckpointError, ValueError)  # callers catching ValueError still catch these


def test_exported_files_are_written_atomically_and_load_weights_only(tmp_path: Path) -> None:
    out = save_torchvision(_randomised("resnet18"), tmp_path / "r18.pth")
    weights, config = save_detectron2(_randomised("resnet18"), tmp_path / "r18.pkl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pkl", "r18.pth", "r18.yaml"]  # no temporary file left
    assert torch.load(out, weights_only=True).keys() == to_torchvision(_randomised("resnet18")).keys()
    assert config.read_text(encoding="utf-8").startswith("# Detectron2 config keys for a resnet18")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_torchvision_export_reads_its_file_back_into_torchvision(tmp_path: Path, suffix: str) -> None:
    if suffix == ".safetensors":
        safetensors = pytest.importorskip("safetensors.torch")
    out = save_torchvision(_randomised("resnet18"), tmp_path / f"r18{suffix}")
    state = safetensors.load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in _randomised("resnet18").state_dict().items() if not k.startswith("fc."))


def test_an_export_whose_file_loses_a_tensor_is_refused_by_name(tmp_path: Path, monkeypatch) -> None:
    import scrl.export.torchvision_format as torchvision_format

    write = torchvision_format._write_weights

    def lossy(state, path):  # a writer that drops one tensor: the file no longer holds the whole trunk
        write({k: v for k, v in state.items() if k != "layer3.1.bn2.running_var"}, path)

    monkeypatch.setattr(torchvision_format, "_write_weights", lossy)
    with pytest.raises(ValueError, match=r"does not load fully into torchvision\.models\.resnet18: missing 1 \(layer3\.1\.bn2\.running_var\)"):
        save_torchvision(_randomised("resnet18"), tmp_path / "r18.pth")


def test_a_timm_export_is_verified_in_timm_and_writes_safetensors(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    from scrl import BYOL
    from scrl.export import save_timm

    model = BYOL("timm:resnet18", projector_hidden=16, projection_dim=8)
    out = save_timm(model, tmp_path / "r18.safetensors")
    classifier = timm.create_model("resnet18", pretrained=False)
    missing, unexpected = classifier.load_state_dict(load_file(out), strict=False)
    assert unexpected == [] and set(missing) == {"fc.weight", "fc.bias"}
