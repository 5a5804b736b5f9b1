"""The trunk registry: names of every family, building by name, refusals, namespaces, and a registered trunk trained."""

import pytest
import torch
from torch import nn

import scrl.trunk
from scrl import SCRL
from scrl.export import source_arch
from scrl.train import ConfigError, PretrainConfig, Pretrainer
from scrl.trunk import Trunk, check_trunk_name, create_trunk, list_trunks, register_trunk, supported_archs


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Registrations made by a test last for that test only."""
    monkeypatch.setattr(scrl.trunk, "_TRUNKS", dict(scrl.trunk._TRUNKS))
    monkeypatch.setattr(scrl.trunk, "_NAMESPACES", dict(scrl.trunk._NAMESPACES))


def small_cnn(width: int = 16) -> Trunk:
    """Three stride-2 stages with odd kernels and symmetric padding: stride 8, cells centred at 8i + 0.5."""
    layers = []
    for c_in, c_out in ((3, width // 2), (width // 2, width), (width, width)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return Trunk(nn.Sequential(*layers), stride=8, channels=width)


@pytest.mark.parametrize(
    "name, channels, cell_offset",
    [("resnet18", 512, 0.5), ("regnet_x_400mf", 400, 0.5), ("convnext_tiny", 768, 16.0), ("efficientnet_b0", 1280, 0.5),
     ("mobilenet_v3_small", 576, 0.5)],
)
def test_every_family_is_registered_and_built_by_name(name, channels, cell_offset):
    assert name in list_trunks()
    trunk = create_trunk(name)
    assert isinstance(trunk, Trunk)
    assert (trunk.arch, trunk.stride, trunk.channels, trunk.cell_offset) == (name, 32, channels, cell_offset)


def test_every_torchvision_name_is_listed_and_patterns_select_them():
    assert set(supported_archs()) <= set(list_trunks()) and len(supported_archs()) == 42
    assert list_trunks() == sorted(list_trunks())
    assert list_trunks("convnext_*") == ["convnext_base", "convnext_large", "convnext_small", "convnext_tiny"]
    assert list_trunks("*v3_*") == ["mobilenet_v3_large", "mobilenet_v3_small"]
    assert list_trunks("ResNet*") == [] and list_trunks("vgg*") == []
    # timm's names are resolved on demand, never listed; the namespace still takes them.
    assert list_trunks("timm:*") == []
    check_trunk_name("timm:any_name_at_all")


def test_options_reach_the_builder():
    trunk = create_trunk("resnet18", norm_layer=nn.Identity)  # torchvision.models.get_model's options
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    with pytest.raises(TypeError, match="nonsense"):
        create_trunk("resnet18", nonsense=1)


@pytest.mark.parametrize(
    "name, suggestion", [("resnet5", "'resnet50' or"), ("convnext_tiniest", "'convnext_tiny' or"), ("mobilenet", "'mobilenet_v3_small' or")]
)
def test_an_unknown_name_is_refused_with_close_names_and_the_list(name, suggestion):
    for refuse in (create_trunk, check_trunk_name, SCRL):
        with pytest.raises(ValueError, match=f"^'{name}' is not a supported trunk \\(did you mean {suggestion}") as err:
            refuse(name)
        assert "scrl.trunk.list_trunks()" in str(err.value) and "'timm:NAME'" in str(err.value)
    with pytest.raises(ValueError, match=r"^'vgg16' is not a supported trunk; the trunks are the names of scrl\.trunk\.list_trunks\(\)"):
        create_trunk("vgg16")  # nothing close: no guess
    with pytest.raises(ConfigError, match=f"^arch='{name}' is not a supported trunk .*register_trunk"):
        PretrainConfig(arch=name)
    with pytest.raises(ValueError, match="'timm:' is not a supported trunk"):
        create_trunk("timm:")  # a namespace alone names no trunk


def test_a_second_registration_of_a_name_is_refused_unless_it_replaces():
    register_trunk("tiny", small_cnn)
    with pytest.raises(ValueError, match="trunk 'tiny' is already registered; pass replace=True"):
        register_trunk("tiny", small_cnn)
    with pytest.raises(ValueError, match="trunk 'resnet50' is already registered"):
        register_trunk("resnet50", small_cnn)
    with pytest.raises(ValueError, match="trunk 'timm:' is already registered"):
        register_trunk("timm:", small_cnn)
    register_trunk("tiny", lambda: small_cnn(width=8), replace=True)
    assert create_trunk("tiny").channels == 8


@pytest.mark.parametrize(
    "name, builder, message",
    [("", small_cnn, "non-empty string"), (":", small_cnn, "non-empty string"), (3, small_cnn, "non-empty string"),
     ("tiny", "small_cnn", "must be callable")],
)
def test_bad_registrations_are_refused(name, builder, message):
    with pytest.raises(ValueError, match=message):
        register_trunk(name, builder)


def test_the_decorator_registers_the_function_and_returns_it():
    @register_trunk("decorated")
    def decorated(width: int = 16) -> Trunk:
        return small_cnn(width)

    assert callable(decorated) and decorated(width=8).channels == 8
    trunk = create_trunk("decorated", width=32)
    assert (trunk.arch, trunk.stride, trunk.channels, trunk.cell_offset) == ("decorated", 8, 32, 0.5)
    assert "decorated" in list_trunks("deco*")


def test_a_builder_that_returns_no_trunk_is_named():
    register_trunk("bare", lambda: nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match="the builder of trunk 'bare' returned a Conv2d, not a Trunk"):
        create_trunk("bare")


def test_a_namespace_builder_takes_the_rest_of_the_name_and_a_full_name_wins():
    register_trunk("width:", lambda rest, **kwargs: small_cnn(int(rest), **kwargs))
    register_trunk("width:64", lambda: small_cnn(8))
    assert create_trunk("width:32").channels == 32 and create_trunk("width:32").arch == "width:32"
    assert create_trunk("width:64").channels == 8
    assert list_trunks("width:*") == ["width:64"]


def test_a_registered_trunk_trains_through_the_config(tmp_path):
    # workers=0: a registration holds in the process that makes it (docs/trunks.md).
    register_trunk("my-cnn", small_cnn)
    config = PretrainConfig(
        device="cpu", arch="my-cnn", image_size=64, batch_size=4, synthetic_images=8, epochs=1, workers=0,
        projector_hidden=32, projection_dim=16, output_dir=str(tmp_path),
    )
    summary = Pretrainer(config).run()
    assert summary["step"] == 2
    assert source_arch(tmp_path / "checkpoint_last.pth") == "my-cnn"  # the run's identity names the trunk
    assert not (tmp_path / "backbone_torchvision.pth").exists()  # named for what it holds: no torchvision weights
    backbone = torch.load(tmp_path / "backbone.pth", weights_only=True)
    trunk = create_trunk("my-cnn")
    trunk.load_backbone_state_dict(backbone)  # the trained weights, in the registered trunk's layout
    assert not torch.equal(trunk.body[0].weight, create_trunk("my-cnn").body[0].weight)


def test_timm_names_are_built_through_the_namespace():
    pytest.importorskip("timm")
    trunk = create_trunk("timm:resnet18")
    assert (trunk.arch, trunk.stride, trunk.channels, trunk.cell_offset) == ("timm:resnet18", 32, 512, 0.5)
