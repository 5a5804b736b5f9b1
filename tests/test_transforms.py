"""scrl.transforms: crop sampling, tracked geometry, flips, photometric steps, outputs, arguments."""

from __future__ import annotations

import inspect
import math
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from scrl import TwoViewTransform, ViewGeometry
from scrl.data import to_rgb
from scrl.transforms import (
    GaussianBlur,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ViewTransform,
    byol_photometric,
    byol_view,
    normalize_images,
)
from scrl.transforms.geometric import random_resized_crop_params
from scrl.transforms.photometric import blur_kernel_size


def noise_image(width: int = 300, height: int = 200, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------- crop parameters
@pytest.mark.parametrize("size", [(500, 375), (333, 640), (64, 64), (1000, 10), (10, 1000), (1, 1)])
@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0), (0.9, 1.0)])
def test_crop_params_match_torchvision_draw_for_draw(size, scale):
    width, height = size
    img = Image.new("RGB", size)
    ratio = (3 / 4, 4 / 3)
    for seed in range(20):
        torch.manual_seed(seed)
        i, j, h, w = T.RandomResizedCrop.get_params(img, list(scale), list(ratio))
        torch.manual_seed(seed)
        box = random_resized_crop_params(width, height, scale, ratio)
        assert box == (j, i, j + w, i + h)


def test_crop_params_cover_the_scale_and_ratio_ranges():
    # A square image keeps the ratio distribution symmetric: every crop that fits one way fits the other.
    width, height, scale, ratio = 400, 400, (0.2, 1.0), (3 / 4, 4 / 3)
    torch.manual_seed(0)
    boxes = torch.tensor([random_resized_crop_params(width, height, scale, ratio) for _ in range(3000)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (w >= 1).all() and (h >= 1).all()
    # w and h are rounded to whole pixels, so the drawn area and ratio hold up to half a pixel per side.
    area = width * height
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area).all() and ((w - 0.5) * (h - 0.5) <= scale[1] * area).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all() and ((w - 0.5) / (h + 0.5) <= ratio[1]).all()
    fraction = w * h / area
    assert fraction.quantile(0.05) < 0.3 and fraction.quantile(0.95) > 0.8  # the whole range is used
    log_ratio = torch.log(w / h)
    assert log_ratio.min() < math.log(0.8) and log_ratio.max() > math.log(1.25)
    assert abs(log_ratio.mean()) < 0.03  # log-uniform around 1


def test_default_crop_scale_is_scrls_not_byols():
    assert inspect.signature(random_resized_crop_params).parameters["scale"].default == (0.2, 1.0)
    assert RandomResizedCrop(8).scale == (0.2, 1.0)
    # On a 1000 x 1000 image rounding the sides to whole pixels moves the area fraction by < 0.001.
    torch.manual_seed(0)
    boxes = torch.tensor([random_resized_crop_params(1000, 1000) for _ in range(2000)])
    fraction = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 1e6
    assert 0.2 - 1e-3 <= fraction.min() < 0.22
    img = Image.new("RGB", (1000, 1000))
    crops = torch.stack([RandomResizedCrop(8)(img)[1].crop for _ in range(500)])
    fraction = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1]) / 1e6
    assert 0.2 - 1e-3 <= fraction.min() < 0.25


def test_crop_falls_back_to_a_ratio_clamped_centre_crop():
    # No 10%-area crop of a 1000x10 strip has a ratio <= 4/3 and fits: centre crop 13x10.
    assert random_resized_crop_params(1000, 10, (0.9, 1.0)) == (493.0, 0.0, 506.0, 10.0)


# ---------------------------------------------------------------- geometric steps
INTERPOLATIONS = [InterpolationMode.NEAREST, InterpolationMode.BILINEAR, InterpolationMode.BICUBIC]


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_geometric_view_equals_torchvision_pipeline(interpolation):
    """Same seed, same crop and flip as torchvision; same pixels except at the view border.

    At the border the one-step resample reads source pixels just outside the crop, where
    torchvision's crop-then-resize repeats the crop's edge pixels (nearest has no border).
    """
    img = noise_image(320, 240)
    view = byol_view(1, size=64, photometric=False, output="float", interpolation=interpolation)
    plain = T.Compose(
        [T.RandomResizedCrop(64, (0.2, 1.0), interpolation=interpolation), T.RandomHorizontalFlip(), T.ToTensor()]
    )
    for seed in range(10):
        torch.manual_seed(seed)
        x, geom = view(img)
        torch.manual_seed(seed)
        y = plain(img)
        border = 0 if interpolation == InterpolationMode.NEAREST else 4  # crops >= 143 px: filter reach < 3 view px
        inner = (slice(None), slice(border, 64 - border), slice(border, 64 - border))
        assert torch.equal(x[inner], y[inner])
        torch.manual_seed(seed)
        i, j, h, w = T.RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3])
        assert geom.crop.tolist() == [j, i, j + w, i + h]
        assert bool(geom.flipped) == bool(torch.rand(1) < 0.5)
        assert geom.size.tolist() == [64.0, 64.0]


def test_geometry_round_trips_source_view_source():
    img = noise_image(300, 200)
    view = byol_view(2, size=(48, 80), photometric=False)
    for seed in range(50):
        torch.manual_seed(seed)
        _, geom = view(img)
        x0, y0, x1, y1 = geom.crop.tolist()
        corner = torch.rand(2, 20, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        low = torch.minimum(corner[0], corner[1]) * torch.tensor([x1 - x0, y1 - y0]) + torch.tensor([x0, y0])
        high = torch.maximum(corner[0], corner[1]) * torch.tensor([x1 - x0, y1 - y0]) + torch.tensor([x0, y0])
        boxes = torch.cat([low, high], dim=-1)
        in_view = geom.source_to_view(boxes)
        assert (in_view >= -1e-9).all()
        assert (in_view[:, 0::2] <= 80 + 1e-9).all() and (in_view[:, 1::2] <= 48 + 1e-9).all()
        torch.testing.assert_close(geom.view_to_source(in_view), boxes, rtol=0, atol=1e-9)
        whole_view = torch.tensor([0.0, 0.0, 80.0, 48.0], dtype=torch.float64)
        torch.testing.assert_close(geom.source_to_view(geom.crop), whole_view)


def test_chained_steps_compose_geometry():
    img = noise_image(300, 200)
    first = RandomResizedCrop((120, 150), scale=(0.5, 1.0))
    second = RandomResizedCrop((40, 40), scale=(0.3, 1.0))
    torch.manual_seed(3)
    view, geom = first(img)
    view, geom = RandomHorizontalFlip(1.0)(view, geom)
    view, geom = second(view, geom)
    torch.manual_seed(3)
    box_a = random_resized_crop_params(300, 200, (0.5, 1.0))
    torch.rand(1)  # the flip's draw
    box_b = random_resized_crop_params(150, 120, (0.3, 1.0))
    expected = ViewGeometry.full(300, 200).crop_to(box_a).resize(120, 150).hflip().crop_to(box_b).resize(40, 40)
    for got, want in zip(geom, expected):
        torch.testing.assert_close(got, want)
    assert view.size == (40, 40)


def test_flip_frequency_and_extremes():
    img = Image.new("RGB", (4, 4))
    torch.manual_seed(0)
    flips = [bool(RandomHorizontalFlip(0.5)(img)[1].flipped) for _ in range(4000)]
    assert abs(np.mean(flips) - 0.5) < 0.04  # 5 binomial standard deviations
    assert not any(RandomHorizontalFlip(0.0)(img)[1].flipped for _ in range(50))
    assert all(RandomHorizontalFlip(1.0)(img)[1].flipped for _ in range(50))


def test_flip_mirrors_pixels_and_geometry():
    img = noise_image(30, 20)
    mirrored, geom = RandomHorizontalFlip(1.0)(img)
    assert np.array_equal(np.asarray(mirrored), np.asarray(img)[:, ::-1])
    box = torch.tensor([2.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    assert geom.source_to_view(box).tolist() == [25.0, 3.0, 28.0, 7.0]


# ---------------------------------------------------------------- randomness
def test_global_rng_seed_makes_views_reproducible():
    img = noise_image()
    transform = TwoViewTransform.byol(size=48)
    torch.manual_seed(7)
    first = transform(img)
    torch.manual_seed(7)
    second = transform(img)
    other = transform(img)
    for a, b in zip(first[:2], second[:2]):
        assert torch.equal(a, b)
    for a, b in zip(first[2:], second[2:]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(first[0], other[0])


def test_worker_side_transforms_take_no_generator():
    # One randomness rule: PIL-side steps draw from the global RNG, which TwoViewDataset seeds per sample.
    for fn in (
        random_resized_crop_params,
        RandomResizedCrop.forward,
        RandomHorizontalFlip.forward,
        ViewTransform.forward,
        TwoViewTransform.forward,
    ):
        assert "generator" not in inspect.signature(fn).parameters, fn.__qualname__


def test_transform_pickles_for_dataloader_workers():
    transform = pickle.loads(pickle.dumps(TwoViewTransform.byol(size=32)))
    img = noise_image()
    torch.manual_seed(0)
    a = transform(img)
    torch.manual_seed(0)
    b = TwoViewTransform.byol(size=32)(img)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------- photometric steps
def test_photometric_steps_follow_table_a1():
    def steps(view):
        found = byol_photometric(view, 224).transforms
        return {type(s.transforms[0] if isinstance(s, T.RandomApply) else s).__name__: s for s in found}

    for view, blur_p, solarize_p in ((1, 1.0, 0.0), (2, 0.1, 0.2)):
        found = steps(view)
        jitter = found["ColorJitter"]
        assert jitter.p == 0.8
        cj = jitter.transforms[0]
        assert (cj.brightness, cj.contrast, cj.saturation, cj.hue) == ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
        assert found["RandomGrayscale"].p == 0.2
        blur = found["GaussianBlur"]
        assert getattr(blur, "p", 1.0) == blur_p
        blur = blur.transforms[0] if isinstance(blur, T.RandomApply) else blur
        assert blur.kernel_size == (23, 23) and blur.sigma == (0.1, 2.0)
        if solarize_p:
            assert found["RandomSolarize"].p == solarize_p and found["RandomSolarize"].threshold == 128
        else:
            assert "RandomSolarize" not in found
    assert list(steps(2)) == ["ColorJitter", "RandomGrayscale", "GaussianBlur", "RandomSolarize"]


def test_photometric_steps_change_pixels_not_geometry():
    img = noise_image()
    torch.manual_seed(0)
    plain, g_plain = byol_view(1, size=48, photometric=False, output="float")(img)
    torch.manual_seed(0)
    noisy, g_noisy = byol_view(1, size=48, output="float")(img)
    assert torch.equal(g_plain.crop, g_noisy.crop) and torch.equal(g_plain.flipped, g_noisy.flipped)
    assert not torch.equal(plain, noisy)
    assert noisy.std() < plain.std()  # view 1 is always blurred: noise is smoothed


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_separable_blur_equals_torchvision_dense_blur(sigma):
    img = noise_image(64, 48)
    ours, dense = GaussianBlur(23, (sigma, sigma)), T.GaussianBlur(23, (sigma, sigma))
    diff = np.abs(np.asarray(ours(img)).astype(int) - np.asarray(dense(img)).astype(int))
    assert diff.max() <= 1  # float rounding before the final cast to 8 bits
    pixels = F.pil_to_tensor(img).float() / 255
    torch.testing.assert_close(ours(pixels), dense(pixels), rtol=0, atol=1e-5)
    uint8 = F.pil_to_tensor(img)
    assert ours(uint8).dtype == torch.uint8 and (ours(uint8).int() - dense(uint8).int()).abs().max() <= 1


def test_blur_kernel_is_odd_and_about_a_tenth_of_the_side():
    assert blur_kernel_size(224) == 23 and blur_kernel_size(96) == 9 and blur_kernel_size(10) == 1
    assert all(blur_kernel_size(s) % 2 == 1 and abs(blur_kernel_size(s) - 0.1 * s) <= 2 for s in range(8, 600))


# ---------------------------------------------------------------- outputs
def test_output_kinds_agree():
    img = noise_image()
    made = {}
    for output in ("float", "normalized", "uint8"):
        torch.manual_seed(5)
        made[output] = byol_view(2, size=40, output=output)(img)
    (unit, _), (normed, _), (raw, geom) = made["float"], made["normalized"], made["uint8"]
    assert unit.dtype == normed.dtype == torch.float32 and raw.dtype == torch.uint8
    assert raw.shape == unit.shape == normed.shape == (3, 40, 40)
    assert 0 <= unit.min() and unit.max() <= 1
    assert torch.equal(raw, (unit * 255).round().to(torch.uint8))
    torch.testing.assert_close(normed, F.normalize(unit, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    # Normalised in the worker or as uint8 on the device: the same bits.
    assert torch.equal(normalize_images(raw[None])[0], normed)
    assert isinstance(geom, ViewGeometry)
    torch.manual_seed(5)
    assert torch.equal(byol_view(2, size=40)(img)[0], normed)  # output=None means "normalized"


def test_output_none_follows_where_the_photometric_steps_run():
    assert byol_view(1).output == "normalized" and byol_view(1, photometric=False).output == "normalized"
    assert byol_view(1, photometric="device").output == "uint8"
    assert byol_view(1, photometric="device", output="uint8").output == "uint8"
    transform = TwoViewTransform.byol(photometric=False, output="float")
    assert transform.view1.output == transform.view2.output == "float"


@pytest.mark.parametrize("output", ["float", "normalized"])
def test_device_photometric_refuses_other_outputs_saying_why(output):
    with pytest.raises(ValueError, match="output must be 'uint8'.*BatchPhotometric"):
        byol_view(1, photometric="device", output=output)
    with pytest.raises(ValueError, match="output"):
        TwoViewTransform.byol(photometric="device", output=output)


@pytest.mark.parametrize("output", ["uint", "normalised", "", None])
def test_bad_output_raises_naming_the_choices(output):
    with pytest.raises(ValueError, match="output must be one of 'normalized', 'float', 'uint8'"):
        ViewTransform([], output=output)
    if output is not None:  # None is byol_view's default
        with pytest.raises(ValueError, match="output"):
            byol_view(1, output=output)


def _old_uint8_affine(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8-bit scale and shift as the training runs computed them: float64, rounded once."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[:, None, None]
    return (1.0 / (255.0 * std)).to(dtype), (-mean / std).to(dtype)


def test_normalize_images_matches_torchvision_for_uint8_and_float_any_leading_dims():
    batch = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    unit = batch.float() / 255
    want = F.normalize(unit, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(normalize_images(batch), want, rtol=0, atol=1e-5)
    scale, shift = _old_uint8_affine(torch.float32)
    assert torch.equal(normalize_images(batch), torch.addcmul(shift, batch.float(), scale))  # bit for bit
    assert torch.equal(normalize_images(unit), want)  # floats: torchvision's arithmetic exactly
    for images in (batch, unit):
        assert torch.equal(normalize_images(images[0]), normalize_images(images)[0])  # [3, H, W]
        nested = images.expand(4, -1, -1, -1, -1)  # [T, B, 3, H, W]
        assert torch.equal(normalize_images(nested), normalize_images(images).expand(4, -1, -1, -1, -1))
    before = unit.clone()
    normalize_images(unit)
    assert torch.equal(unit, before)  # the input is left alone
    assert normalize_images(unit.double()).dtype == torch.float32
    for dtype in (torch.float64, torch.bfloat16):
        assert normalize_images(batch, dtype=dtype).dtype == normalize_images(unit, dtype=dtype).dtype == dtype
    torch.testing.assert_close(normalize_images(batch, mean=(0.5,) * 3, std=(0.5,) * 3), batch.float() / 127.5 - 1)
    for bad, match in (
        (dict(batch=batch.int()), "uint8"),
        (dict(batch=batch[:, :2]), "C"),
        (dict(batch=batch, std=(0.2, 0.0, 0.2)), "std"),
        (dict(batch=batch, dtype=torch.int32), "dtype"),
    ):
        with pytest.raises(ValueError, match=match):
            normalize_images(**bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalize_images_on_cuda_matches_cpu_without_host_syncs():
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    for images in (batch, batch.float() / 255):
        want = normalize_images(images)
        on_device = images.cuda()
        normalize_images(on_device)  # the first call puts the constants on the device
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = normalize_images(on_device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert got.device == on_device.device
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-6)


def test_two_view_transform_accepts_plain_callables():
    def plain_view(img):
        return F.to_tensor(img), ViewGeometry.full(img.width, img.height)

    x1, x2, g1, g2 = TwoViewTransform(plain_view, plain_view)(Image.new("L", (6, 4), 9))
    assert x1.shape == (3, 4, 6) and torch.equal(g1.crop, g2.crop)
    with pytest.raises(TypeError, match="view2"):
        TwoViewTransform(plain_view, None)


# ---------------------------------------------------------------- image modes and arguments
CONVERTIBLE_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"]
BLANK_ONLY_MODES = ["PA", "LAB", "HSV", "I;16", "I;16B"]  # PIL cannot convert RGBA into these


@pytest.mark.parametrize(
    "mode, content",
    [(m, "noise") for m in CONVERTIBLE_MODES] + [(m, "blank") for m in CONVERTIBLE_MODES + BLANK_ONLY_MODES],
)
def test_every_pil_mode_becomes_an_rgb_view(mode, content):
    img = noise_image(50, 40).convert("RGBA").convert(mode) if content == "noise" else Image.new(mode, (50, 40))
    if mode == "P":
        img.info["transparency"] = 0
    torch.manual_seed(0)
    x1, x2, g1, g2 = TwoViewTransform.byol(size=24)(img)
    assert x1.shape == x2.shape == (3, 24, 24) and torch.isfinite(x1).all() and torch.isfinite(x2).all()
    assert (g1.crop[2:] <= torch.tensor([50.0, 40.0], dtype=torch.float64)).all()


def test_sixteen_bit_images_are_rescaled_not_clipped():
    values = np.array([[0, 255, 0x8000, 0xFFFF]], dtype=np.uint16)
    for mode in ("I;16", "I;16B"):
        img = Image.frombytes(mode, (4, 1), values.astype(">u2" if mode.endswith("B") else "<u2").tobytes())
        grey = [to_rgb(img).getpixel((i, 0))[0] for i in range(4)]
        assert grey == [0, 0, 128, 255] and to_rgb(img).mode == "RGB"


def test_sixteen_bit_values_in_a_32_bit_image_are_rescaled_not_clipped():
    # How Pillow 9.x opens a 16-bit grayscale PNG.
    img = Image.new("I", (4, 1))
    img.putdata([0, 255, 32768, 65535])
    assert [to_rgb(img).getpixel((i, 0)) for i in range(4)] == [(0, 0, 0), (0, 0, 0), (128,) * 3, (255,) * 3]
    assert to_rgb(img).mode == "RGB" and to_rgb(img).size == (4, 1)


def test_an_8_bit_image_stored_as_32_bit_keeps_its_values():
    img = Image.new("I", (4, 1))
    img.putdata([0, 1, 128, 255])
    assert [to_rgb(img).getpixel((i, 0)) for i in range(4)] == [(0, 0, 0), (1, 1, 1), (128,) * 3, (255,) * 3]


@pytest.mark.parametrize("size", [(0, 7), (7, 0), (0, 0)])
def test_empty_image_raises_naming_its_size(size):
    with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}"):
        TwoViewTransform.byol(size=16)(Image.new("RGB", size))
    with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}"):
        byol_view(1, size=16)(Image.new("L", size))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(view=0), "view"),
        (dict(view=3), "view"),
        (dict(view=True), "view"),
        (dict(view=1, size=0), "size"),
        (dict(view=1, size=-4), "size"),
        (dict(view=1, size=(0, 8)), "size"),
        (dict(view=1, size=2.5), "size"),
        (dict(view=1, scale=(0.0, 1.0)), "scale"),
        (dict(view=1, scale=(0.5, 0.2)), "scale"),
        (dict(view=1, scale=(0.2, 1.5)), "scale"),
        (dict(view=1, scale=(0.2,)), "scale"),
        (dict(view=1, ratio=(0.0, 1.0)), "ratio"),
        (dict(view=1, ratio=(2.0, 1.0)), "ratio"),
        (dict(view=1, ratio=(1.0, math.inf)), "ratio"),
        (dict(view=1, interpolation="bicubic"), "interpolation"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        byol_view(**kwargs)


def test_bad_step_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="p must"):
        RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(32, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="size"):
        TwoViewTransform.byol(size=0)
    with pytest.raises(TypeError, match="PIL"):
        RandomResizedCrop(32)(torch.zeros(3, 8, 8))


def test_view_transform_without_geometric_steps_is_the_identity_view():
    img = noise_image(20, 10)
    x, geom = ViewTransform([], output="float")(img)
    assert torch.equal(x, F.to_tensor(img))
    assert geom.crop.tolist() == [0.0, 0.0, 20.0, 10.0] and geom.size.tolist() == [10.0, 20.0]
