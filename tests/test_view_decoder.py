"""Decoding on the device: workers draw geometry only (TwoViewCrops), ViewDecoder decodes, crops, resizes and flips.

Checked against PIL (the worker path) pixel for pixel, against the pixel oracle of
``test_pixel_oracle.py``, and in distribution against the full per-image pipeline.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from test_pixel_oracle import assert_every_pixel_shows_its_source_point, coordinate_image, decode, to_source
from torch.utils.data import default_collate
from torchvision.transforms import InterpolationMode

from scrl import BoxPairSampler, ViewGeometry
from scrl.data import (
    EncodedImage,
    EncodedTwoViewBatch,
    EncodedTwoViewItem,
    ImageFolderDataset,
    SyntheticScenes,
    TwoViewDataset,
    collate_two_views,
    read_encoded,
)
from scrl.transforms import DamagedImageWarning, TwoViewCrops, TwoViewTransform, ViewDecoder, byol_view, resample_crops

IMAGENET_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
FILTERS = [InterpolationMode.BILINEAR, InterpolationMode.BICUBIC]


def photo_like(width: int = 150, height: int = 110, seed: int = 0) -> Image.Image:
    """Smooth colour fields with a few sharp edges, like a photograph (not white noise)."""
    return SyntheticScenes(1, image_size=max(width, height), seed=seed)[0][0].resize((width, height), Image.BILINEAR)


def pil_view(image: Image.Image, box, size, flip: bool, interpolation=InterpolationMode.BICUBIC) -> torch.Tensor:
    resample = Image.Resampling.BICUBIC if interpolation == InterpolationMode.BICUBIC else Image.Resampling.BILINEAR
    view = image.resize((size[1], size[0]), resample, box=tuple(box))
    return F.pil_to_tensor(view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else view)


def level_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean absolute difference in 8-bit levels, and the share of values more than one level apart."""
    d = (a.int() - b.int()).abs()
    return d.float().mean().item(), (d > 1).float().mean().item()


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **options)
    return buf.getvalue()


# ------------------------------------------------------------------------------ resampling = PIL's resize
@pytest.mark.parametrize("interpolation", FILTERS, ids=lambda m: m.value)
@pytest.mark.parametrize("size", [(96, 128), (40, 40), (150, 60)], ids=str)
def test_resampled_crops_are_pils_resize_with_a_float_box(size, interpolation):
    image = photo_like()
    boxes = [(0.0, 0.0, 150.0, 110.0), (10.0, 5.0, 90.0, 100.0), (33.37, 20.5, 140.21, 61.9), (70.2, 40.7, 95.6, 70.1)]
    flips = [False, True, True, False]
    views = resample_crops(F.pil_to_tensor(image), torch.tensor(boxes, dtype=torch.float64), torch.tensor(flips), size, interpolation)
    for view, box, flip in zip(views, boxes, flips):
        mean, beyond_one = level_difference(view, pil_view(image, box, size, flip, interpolation))
        # Pillow runs its two passes in either order and rounds in between; one level is that rounding.
        assert mean < 0.05 and beyond_one < 2e-3, (box, mean, beyond_one)


def test_a_full_crop_at_full_size_returns_the_image_itself():
    image = F.pil_to_tensor(photo_like())
    crops = torch.tensor([[0.0, 0.0, 150.0, 110.0]] * 2, dtype=torch.float64)
    views = resample_crops(image, crops, torch.tensor([False, True]), (110, 150))
    assert torch.equal(views[0], image) and torch.equal(views[1], image.flip(-1))


def test_resample_crops_takes_batches_of_one_size():
    images = torch.stack([F.pil_to_tensor(photo_like(seed=s)) for s in range(3)])
    crops = torch.tensor([[[5.0, 5.0, 100.0, 90.0], [20.5, 0.0, 150.0, 110.0]]] * 3, dtype=torch.float64)
    flipped = torch.tensor([[False, True]] * 3)
    batched = resample_crops(images, crops, flipped, (64, 64))
    assert batched.shape == (3, 2, 3, 64, 64)
    for i in range(3):
        assert torch.equal(batched[i], resample_crops(images[i], crops[i], flipped[i], (64, 64)))


def test_resampling_stays_exact_under_autocast_and_reduced_matmul_precision():
    image = F.pil_to_tensor(photo_like())
    crops = torch.tensor([[3.5, 2.0, 140.0, 100.25]], dtype=torch.float64)
    exact = resample_crops(image, crops, torch.tensor([False]), (64, 96))
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(resample_crops(image, crops, torch.tensor([False]), (64, 96)), exact)
        assert torch.get_float32_matmul_precision() == "medium"  # the caller's setting is restored
    finally:
        torch.set_float32_matmul_precision(precision)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=(0, 4)), "size"),
        (dict(image=torch.zeros(3, 8, 8)), "uint8"),
        (dict(crops=torch.zeros(2, 3, dtype=torch.float64)), "crops must be"),
        (dict(flipped=torch.zeros(3, dtype=torch.bool)), "crops must be"),
        (dict(interpolation=InterpolationMode.NEAREST), "interpolation"),
    ],
)
def test_resample_crops_names_bad_arguments(kwargs, message):
    args = dict(image=torch.zeros(3, 8, 8, dtype=torch.uint8), crops=torch.zeros(2, 4, dtype=torch.float64),
                flipped=torch.zeros(2, dtype=torch.bool), size=(4, 4)) | kwargs
    with pytest.raises(ValueError, match=message):
        resample_crops(**args)


# ------------------------------------------------------------------------------ pixel oracle on the device path
def device_views(image: Image.Image, transform: TwoViewCrops, seed: int, interpolation=InterpolationMode.BICUBIC):
    """Both views of ``image`` made as a run with decode_on_device makes them (the image decoded in the worker)."""
    torch.manual_seed(seed)
    pixels, geom1, geom2, path = transform(image)
    batch = collate_two_views([EncodedTwoViewItem(pixels, geom1, geom2, path, {})])
    size = tuple(int(s) for s in geom1.size.tolist())
    views = ViewDecoder(size, interpolation)(batch.images, batch.geom1, batch.geom2, batch.paths)
    return views.view1[0], views.view2[0], geom1, geom2


def crops_with(interpolation: InterpolationMode, size=(120, 160)) -> TwoViewCrops:
    return TwoViewCrops(
        byol_view(1, size, photometric="device", interpolation=interpolation),
        byol_view(2, size, photometric="device", interpolation=interpolation),
    )


@pytest.mark.parametrize("interpolation", FILTERS, ids=lambda m: m.value)
@pytest.mark.parametrize("size", [(120, 160), (48, 48)], ids=str)
@pytest.mark.parametrize("seed", range(8))
def test_every_device_view_pixel_shows_the_source_point_its_geometry_predicts(seed, size, interpolation):
    view, _, geom, _ = device_views(coordinate_image(), crops_with(interpolation, size), seed, interpolation)
    assert_every_pixel_shows_its_source_point(view, geom, interpolation)  # the PIL path's bound


@pytest.mark.parametrize("seed", range(12))
def test_device_box_pairs_show_the_same_source_point_within_half_a_pixel(seed):
    view1, view2, geom1, geom2 = device_views(coordinate_image(), crops_with(InterpolationMode.BICUBIC), seed)
    pairs = BoxPairSampler(num_boxes=10, min_size=16)(geom1, geom2, generator=torch.Generator().manual_seed(seed))
    valid = pairs.valid[0]
    assert valid.sum() >= 5
    errors = []
    for view, geom, boxes in ((view1, geom1, pairs.boxes1[0][valid]), (view2, geom2, pairs.boxes2[0][valid])):
        centres = (boxes[:, :2] + boxes[:, 2:]).double() / 2
        truth = to_source(geom, centres)
        errors.append((decode(view, centres) - truth).abs())
    error = torch.cat(errors)
    # The pixel containing the centre is up to half a view pixel off it, then 8-bit rounding.
    assert error.mean() < 0.5 and (error <= 0.5 / geom1.scale.min() + 0.5 + 0.5).all()


# ------------------------------------------------------------------------------ the same pictures as the PIL path
def jpeg_folder(root: Path, count: int = 12) -> Path:
    root.mkdir()
    for i in range(count):
        image = photo_like(120 + 7 * i, 90 + 5 * (i % 4), seed=i)
        (root / f"img{i:02d}.jpg").write_bytes(jpeg_bytes(image.convert("L") if i % 5 == 4 else image, quality=92))
    return root


@pytest.mark.parametrize("subsampling", [0, 2], ids=["4:4:4", "4:2:0"])
def test_decoded_jpegs_are_pils_pixels_in_rgb_and_gray(tmp_path, subsampling):
    for mode in ("RGB", "L"):
        path = tmp_path / f"{mode}.jpg"
        path.write_bytes(jpeg_bytes(photo_like(97, 61).convert(mode), quality=90, subsampling=subsampling))
        encoded = read_encoded(path)
        assert isinstance(encoded, EncodedImage) and (encoded.width, encoded.height) == (97, 61)
        full = ViewGeometry.full(97, 61)
        geom = ViewGeometry(full.crop[None], full.flipped[None], full.size[None])
        views = ViewDecoder((61, 97))([encoded.data], geom, geom, [str(path)])
        expected = F.pil_to_tensor(Image.open(path).convert("RGB"))
        assert torch.equal(views.view1[0], expected) and torch.equal(views.view2[0], expected) and views.skipped == {}


def test_device_views_match_the_worker_views_of_the_same_geometry(tmp_path):
    folder = ImageFolderDataset(jpeg_folder(tmp_path / "jpegs"))
    encoded = TwoViewDataset(folder, TwoViewCrops.byol(64), seed=5)
    worker = TwoViewDataset(folder, TwoViewTransform.byol(64, photometric="device"), seed=5)
    keys = [(2, i) for i in range(len(folder))]
    batch = collate_two_views([encoded[k] for k in keys])
    reference = collate_two_views([worker[k] for k in keys])
    assert isinstance(batch, EncodedTwoViewBatch) and all(image.dim() == 1 for image in batch.images)
    for field in ("crop", "flipped", "size"):
        assert torch.equal(getattr(batch.geom1, field), getattr(reference.geom1, field))
        assert torch.equal(getattr(batch.geom2, field), getattr(reference.geom2, field))
    views = ViewDecoder(64)(batch.images, batch.geom1, batch.geom2, batch.paths)
    for mine, theirs in ((views.view1, reference.view1), (views.view2, reference.view2)):
        mean, beyond_one = level_difference(mine, theirs)
        assert mean < 0.05 and beyond_one < 2e-3


@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason="../shared/data/imagenet-sample is not available")
def test_real_photos_device_views_match_the_worker_views():
    folder = ImageFolderDataset(IMAGENET_SAMPLE)
    keys = [(0, i) for i in range(0, len(folder), 40)]
    batch = collate_two_views([TwoViewDataset(folder, TwoViewCrops.byol(224), seed=1)[k] for k in keys])
    reference = collate_two_views([TwoViewDataset(folder, TwoViewTransform.byol(224, photometric="device"), seed=1)[k] for k in keys])
    assert torch.equal(batch.geom1.crop, reference.geom1.crop) and torch.equal(batch.geom2.flipped, reference.geom2.flipped)
    views = ViewDecoder(224)(batch.images, batch.geom1, batch.geom2, batch.paths)
    for mine, theirs in ((views.view1, reference.view1), (views.view2, reference.view2)):
        mean, beyond_one = level_difference(mine, theirs)
        assert mean < 0.05 and beyond_one < 1e-3  # measured: 0.01 levels, 8e-5 of the values more than one level apart


# ------------------------------------------------------------------------------ the same distribution of views
def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def test_crop_scale_aspect_and_flips_are_distributed_as_in_the_full_worker_pipeline():
    """TwoViewCrops against TwoViewTransform.byol with the photometric steps in the workers, which draws in another order."""
    n = 1500
    image = photo_like(160, 120)
    crops = TwoViewDataset([image] * n, TwoViewCrops.byol(32), seed=0)
    full = TwoViewDataset([image] * n, TwoViewTransform.byol(32), seed=0)

    def statistics(dataset):
        geoms = [(item.geom1, item.geom2) for item in (dataset[i] for i in range(n))]
        out = {}
        for v in (0, 1):
            crop = torch.stack([g[v].crop for g in geoms])
            w, h = crop[:, 2] - crop[:, 0], crop[:, 3] - crop[:, 1]
            out[f"area{v}"] = (w * h / (160 * 120)).numpy()
            out[f"aspect{v}"] = (w / h).log().numpy()
            out[f"flip{v}"] = torch.stack([g[v].flipped for g in geoms]).float().numpy()
        return out

    mine, theirs = statistics(crops), statistics(full)
    critical = 1.95 * (2 / n) ** 0.5  # two-sample Kolmogorov-Smirnov at alpha = 0.001
    for name in mine:
        assert ks_statistic(mine[name], theirs[name]) < critical, name
    # View 1 is drawn first on both paths; view 2 comes after view 1's photometric draws in the full pipeline.
    assert np.array_equal(mine["area0"], theirs["area0"]) and not np.array_equal(mine["area1"], theirs["area1"])


# ------------------------------------------------------------------------------ files the device cannot decode
def test_workers_keep_jpegs_encoded_and_decode_everything_else(tmp_path):
    image = photo_like(80, 60)
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(image))
    image.save(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_bytes(jpeg_bytes(image.convert("CMYK")))
    whole = jpeg_bytes(image)
    (tmp_path / "d.jpg").write_bytes(whole[: len(whole) // 2])  # truncated: no end-of-image marker
    (tmp_path / "e.jpg").write_text("not an image")
    assert read_encoded(tmp_path / "a.jpg") is not None
    assert all(read_encoded(tmp_path / name) is None for name in ("b.png", "c.jpg", "d.jpg", "e.jpg"))

    folder = ImageFolderDataset(tmp_path)
    loaded = [folder.load_encoded(i) for i in range(len(folder))]
    assert isinstance(loaded[0][0], EncodedImage) and loaded[0][1] == {}
    assert isinstance(loaded[1][0], Image.Image) and isinstance(loaded[2][0], Image.Image)  # PNG and CMYK: decoded here
    # The truncated and the text file are replaced by the next readable file and reported, as load() does.
    assert set(loaded[3][1]) == {str(tmp_path / "d.jpg"), str(tmp_path / "e.jpg")}
    assert all("cannot read image" not in reason and reason for reason in loaded[3][1].values())
    assert isinstance(loaded[3][0], EncodedImage) and loaded[3][0].path == str(tmp_path / "a.jpg")

    items = [TwoViewDataset(folder, TwoViewCrops.byol(32), seed=0)[i] for i in range(len(folder))]
    batch = collate_two_views(items)
    assert [image.dim() for image in batch.images] == [1, 3, 3, 1, 1]
    assert batch.skipped.keys() == loaded[3][1].keys()
    views = ViewDecoder(32)(batch.images, batch.geom1, batch.geom2, batch.paths)
    assert views.view1.shape == (5, 3, 32, 32) and views.skipped == {}


def test_a_file_no_decoder_reads_becomes_a_mean_coloured_image_and_is_named(tmp_path):
    good = jpeg_bytes(photo_like(80, 60))
    bad = good[: len(good) // 2]
    images = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in (good, bad, good)]
    geom = ViewGeometry(torch.tensor([[4.0, 2.0, 70.0, 58.0]] * 3, dtype=torch.float64), torch.tensor([False, True, False]),
                        torch.tensor([[24.0, 24.0]] * 3, dtype=torch.float64))
    views = ViewDecoder(24)(images, geom, geom, ["good.jpg", "cut.jpg", "good2.jpg"])
    assert list(views.skipped) == ["cut.jpg"] and "truncated" in views.skipped["cut.jpg"]
    mean_colour = torch.tensor([124, 116, 104], dtype=torch.uint8)[:, None, None].expand(3, 24, 24)
    assert torch.equal(views.view1[1], mean_colour)
    alone = ViewDecoder(24)(images[:1], *(ViewGeometry(*(f[:1] for f in geom)),) * 2)
    assert torch.equal(views.view1[0], alone.view1[0]) and torch.equal(views.view1[2], alone.view1[0])


def test_decoder_and_crops_name_bad_arguments():
    with pytest.raises(ValueError, match="output"):
        ViewDecoder(32, output="normalized")
    with pytest.raises(ValueError, match="interpolation"):
        ViewDecoder(32, interpolation=InterpolationMode.NEAREST)
    with pytest.raises(ValueError, match="without photometric steps"):
        TwoViewCrops(byol_view(1, 32), byol_view(2, 32, photometric="device"))
    geom = ViewGeometry.full(8, 8)
    batched = ViewGeometry(geom.crop[None], geom.flipped[None], geom.size[None])
    with pytest.raises(ValueError, match=r"images\[0\] must be uint8"):
        ViewDecoder(8)([torch.zeros(3, 8, 8)], batched, batched)
    with pytest.raises(ValueError, match="paths must name the 1 images"):
        ViewDecoder(8)([torch.zeros(3, 8, 8, dtype=torch.uint8)], batched, batched, ["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match="batched over the 2 images"):
        ViewDecoder(8)([torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2, batched, batched)
    with pytest.raises(ValueError, match="view1"):  # geometry recording another view size
        ViewDecoder(4)([torch.zeros(3, 8, 8, dtype=torch.uint8)], batched, batched)
    with pytest.raises(TypeError, match="EncodedImage or a PIL image"):
        TwoViewCrops.byol(8)(torch.zeros(3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_match_the_cpu_views(tmp_path):
    folder = ImageFolderDataset(jpeg_folder(tmp_path / "jpegs"))
    batch = collate_two_views([TwoViewDataset(folder, TwoViewCrops.byol(64), seed=0)[i] for i in range(len(folder))])
    on_cpu = ViewDecoder(64)(batch.images, batch.geom1, batch.geom2, batch.paths)
    on_gpu = ViewDecoder(64)(batch.images, batch.geom1.to("cuda"), batch.geom2.to("cuda"), batch.paths)
    assert on_gpu.view1.is_cuda and on_gpu.skipped == {}
    for gpu, cpu in ((on_gpu.view1, on_cpu.view1), (on_gpu.view2, on_cpu.view2)):
        mean, _ = level_difference(gpu.cpu(), cpu)
        assert mean < 1.0  # nvJPEG's inverse DCT and upsampling differ from libjpeg-turbo's by a level here and there


def test_libjpegs_complaint_about_a_damaged_file_names_that_file(capfd):
    whole = jpeg_bytes(photo_like(seed=1))
    damaged = whole[: len(whole) // 2] + b"\xff\xd9"  # cut short, end marker kept: libjpeg decodes it, complaining
    images = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in (whole, damaged, whole)]
    geom = default_collate([ViewGeometry.full(150, 110)] * 3)
    with pytest.warns(DamagedImageWarning) as caught:
        views = ViewDecoder((110, 150))(images, geom, geom, ["good.jpg", "cut.jpg", "also-good.jpg"])
    assert [str(w.message) for w in caught] == ["cut.jpg: Corrupt JPEG data: premature end of data segment (decoded anyway)"]
    assert views.skipped == {} and views.view1.shape == (3, 3, 110, 150)
    assert "Corrupt JPEG" not in capfd.readouterr().err  # said once, with its file, and not also bare
