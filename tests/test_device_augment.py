"""Views for on-device augmentation: geometry-only uint8 views (from the workers, or decoded on the device), finished by BatchPhotometric."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from scrl import TwoViewTransform
from scrl.transforms import BatchPhotometric, TwoViewCrops, ViewDecoder, byol_view


def noise_image(width: int = 120, height: int = 90, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("view", [1, 2])
def test_device_views_are_the_geometric_warp_in_uint8_with_the_full_pipelines_geometry(view):
    img = noise_image()
    for seed in range(5):
        def make(**kwargs):
            torch.manual_seed(seed)
            return byol_view(view, size=40, **kwargs)(img)

        raw, geom = make(photometric="device")
        warp, warp_geom = make(photometric=False, output="float")
        _, full_geom = make()
        assert raw.dtype == torch.uint8 and raw.shape == (3, 40, 40)
        assert torch.equal(raw, (warp * 255).round().to(torch.uint8))  # no colour change at all
        for a, b, c in zip(geom, warp_geom, full_geom):  # crops are drawn before any photometric draw
            assert torch.equal(a, b) and torch.equal(a, c)


def test_device_views_are_uint8_and_refuse_any_other_output():
    img = noise_image()
    outputs = []
    for output in (None, "uint8"):
        torch.manual_seed(3)
        outputs.append(byol_view(2, size=32, photometric="device", output=output)(img)[0])
    assert all(out.dtype == torch.uint8 and torch.equal(out, outputs[0]) for out in outputs)
    for output in ("float", "normalized"):
        with pytest.raises(ValueError, match="photometric='device'"):
            byol_view(2, size=32, photometric="device", output=output)


def test_two_view_transform_passes_photometric_to_both_views():
    img = noise_image()
    device = TwoViewTransform.byol(size=32, photometric="device")
    torch.manual_seed(0)
    x1, x2, g1, g2 = device(img)
    assert x1.dtype == x2.dtype == torch.uint8 and x1.shape == x2.shape == (3, 32, 32)
    assert device.view1.photometric is None and device.view2.photometric is None
    full = TwoViewTransform.byol(size=32, output="uint8")
    assert full.view1.photometric is not None and full.view2.photometric is not None
    plain = TwoViewTransform.byol(size=32, photometric=False, output="uint8")
    torch.manual_seed(0)
    y1, y2, h1, h2 = plain(img)
    assert torch.equal(x1, y1) and torch.equal(x2, y2) and torch.equal(g2.crop, h2.crop)


@pytest.mark.parametrize("bad", ["gpu", "Device", None, 1, 0.0])
def test_bad_photometric_value(bad):
    with pytest.raises(ValueError, match="photometric must be True, False or 'device'"):
        byol_view(1, photometric=bad)
    with pytest.raises(ValueError, match="photometric"):
        TwoViewTransform.byol(photometric=bad)


def _colour_ramp(side: int = 24) -> Image.Image:
    ramp = np.linspace(0, 1, side)
    x, y = np.meshgrid(ramp, ramp)
    rgb = np.stack([x, y, 1 - x], -1)  # red grows to the right, green downwards, blue to the left
    return Image.fromarray((40 + 180 * rgb).astype(np.uint8))


# (view, image, per-view statistic). Jitter keeps a white image at levels >= 0.6 (brightness
# factor >= 0.6, the other steps leave gray alone), so exactly its solarised views are darker than 0.5.
PROBES = {
    "brightness": (1, _colour_ramp(), lambda v: v.mean(dim=(1, 2, 3))),
    "gray share": (2, _colour_ramp(), lambda v: (v.std(dim=1).amax(dim=(1, 2)) < 2e-3).float()),
    "solarised share": (2, Image.new("RGB", (24, 24), (255, 255, 255)), lambda v: (v.mean(dim=(1, 2, 3)) < 0.5).float()),
}


def _geometry_only_views(view: int, img: Image.Image, n: int, decode_on_device: bool) -> torch.Tensor:
    """``n`` uint8 views of ``img``: cropped in the worker, or drawn there and resampled by ViewDecoder."""
    if not decode_on_device:
        return torch.stack([byol_view(view, size=16, photometric="device")(img)[0] for _ in range(n)])
    items = [TwoViewCrops.byol(16)(img) for _ in range(n)]
    geoms = [default_collate([item[view] for item in items]) for view in (1, 2)]
    return ViewDecoder(16)([item[0] for item in items], *geoms)[view - 1]


@pytest.mark.parametrize("decode_on_device", [False, True], ids=["crop-in-workers", "decode-on-device"])
@pytest.mark.parametrize("name", PROBES)
def test_workers_plus_device_match_the_per_image_pipeline_in_distribution(name, decode_on_device):
    """Geometry-only uint8 views + BatchPhotometric against the full per-image pipeline, many draws of one image."""
    view, img, statistic = PROBES[name]
    n = 1000
    torch.manual_seed(0)
    raw = _geometry_only_views(view, img, n, decode_on_device)
    batched = statistic(BatchPhotometric(view=view, normalize=False)(raw, generator=torch.Generator().manual_seed(1)))
    per_image = statistic(torch.stack([byol_view(view, size=16, output="float")(img)[0] for _ in range(n)]))
    standard_error = ((batched.var() + per_image.var()) / n).sqrt().item()
    # The per-image steps round to 8 bits after each step, a bias of up to a few levels.
    assert abs(batched.mean().item() - per_image.mean().item()) < 4 * standard_error + 0.01
    if name == "brightness":  # its spread too; relative standard error of a std about 1 / sqrt(2n)
        assert abs(batched.std().item() / per_image.std().item() - 1) < 4 * (2 / (2 * n)) ** 0.5
    else:
        assert abs(batched.mean().item() - 0.2) < 4 * (0.16 / n) ** 0.5  # the paper's p = 0.2


def test_one_normalisation_equals_torchvisions_and_batch_photometrics_to_the_bit():
    import torchvision.transforms as T

    from scrl.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_images

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    pixels = T.ToTensor()(image)  # what benchmarks/augment.py's torchvision pipeline normalises
    assert torch.equal(normalize_images(pixels), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(pixels))
    views = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for view in (1, 2):
        normalised = BatchPhotometric(view=view)(views, generator=torch.Generator().manual_seed(2))
        plain = BatchPhotometric(view=view, normalize=False)(views, generator=torch.Generator().manual_seed(2))
        assert torch.equal(normalised, normalize_images(plain))
