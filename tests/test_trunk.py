import pytest
import torch
import torchvision
from torch import nn

from scrl import Trunk, resnet_trunk
from scrl.trunk import as_trunk


@pytest.mark.parametrize("arch, channels", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_resnet_trunk_reports_stride_and_channels(arch, channels):
    trunk = resnet_trunk(arch)
    assert trunk.stride == 32 and trunk.channels == channels
    assert trunk(torch.randn(2, 3, 64, 96)).shape == (2, channels, 2, 3)


def test_resnet_trunk_is_the_resnet_up_to_layer4_with_torchvision_names():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    trunk = resnet_trunk(resnet)
    assert trunk.body.conv1 is resnet.conv1  # modules reused, not copied
    features = {}
    resnet.layer4.register_forward_hook(lambda m, i, o: features.update(c5=o))
    x = torch.randn(2, 3, 64, 64)
    resnet(x)
    torch.testing.assert_close(trunk(x), features["c5"])

    fresh = torchvision.models.resnet18(weights=None)
    result = fresh.load_state_dict(trunk.body.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    torch.testing.assert_close(fresh.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)


def test_trunk_wraps_any_feature_module():
    body = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU())
    trunk = Trunk(body, stride=8, channels=16)
    assert trunk(torch.randn(1, 3, 32, 48)).shape == (1, 16, 4, 6)
    assert "stride=8, channels=16" in repr(trunk)
    assert as_trunk(trunk) is trunk


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(stride=0, channels=4), "stride"), (dict(stride=8, channels=0), "channels"), (dict(stride=1.5, channels=4), "stride")],
)
def test_trunk_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Trunk(nn.Identity(), **kwargs)


def test_unknown_arch_and_plain_modules_are_rejected():
    with pytest.raises(ValueError, match="arch"):
        resnet_trunk("resnet152x")
    with pytest.raises(ValueError, match="Trunk\\(module, stride"):
        as_trunk(nn.Conv2d(3, 8, 3))
