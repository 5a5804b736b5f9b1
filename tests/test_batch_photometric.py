import pytest
import torch
import torchvision.transforms.v2.functional as TF

from scrl.transforms import BatchPhotometric, normalize_images
from scrl.transforms.batch_photometric import adjust_hue, gaussian_blur

STEPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def images(batch: int = 6, size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Smooth colour gradients plus noise: every channel differs, every hue occurs.
    ramp = torch.linspace(0, 1, size)
    base = torch.stack([ramp[None].expand(size, size), ramp[:, None].expand(size, size), 1 - ramp[None].expand(size, size)])
    noise = torch.rand(batch, 3, size, size, generator=g)
    # A strong colour cast per image, so that the mean of the RGB values and the mean luma differ.
    cast = 0.25 + 0.75 * torch.rand(batch, 3, 1, 1, generator=g)
    return ((0.6 * base + 0.4 * noise) * cast * 255).round().to(torch.uint8)


def reference(image: torch.Tensor, params: dict[str, torch.Tensor], i: int, kernel_size: int) -> torch.Tensor:
    """The per-image torchvision ops with sample ``i``'s parameters, on a float image in [0, 1]."""
    x = image.float() / 255
    for step in params["order"][i].tolist():
        x = STEPS[step](x, params["factors"][i, step].item())
    if params["grayscale"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if params["blur"][i]:
        sigma = params["sigma"][i].item()
        x = TF.gaussian_blur(x, [kernel_size, kernel_size], [sigma, sigma])
    if params["solarize"][i]:
        x = TF.solarize(x, 0.5)
    return x


@pytest.mark.parametrize("shift", [-0.5, -0.1, 0.0, 0.05, 0.3])
def test_adjust_hue_matches_torchvision(shift):
    x = images().float() / 255
    expected = torch.stack([TF.adjust_hue(im, shift) for im in x])
    torch.testing.assert_close(adjust_hue(x, torch.full((len(x),), shift)), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.1, 0.8, 2.0])
def test_gaussian_blur_matches_torchvision(sigma):
    x = images().float() / 255
    expected = torch.stack([TF.gaussian_blur(im, [9, 9], [sigma, sigma]) for im in x])
    torch.testing.assert_close(gaussian_blur(x, torch.full((len(x),), sigma), 9), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("view", [1, 2])
@pytest.mark.parametrize("seed", range(4))
def test_each_sample_matches_the_torchvision_ops_with_its_parameters(view, seed):
    x = images(seed=seed)
    augment = BatchPhotometric(view=view, kernel_size=7, normalize=False, grayscale_p=0.5, solarize_p=0.5)
    params = augment.sample_parameters(len(x), x.device, torch.Generator().manual_seed(seed))
    out = augment(x, params=params)
    for i in range(len(x)):
        # Both sides compute in float32: they agree to float rounding.
        torch.testing.assert_close(out[i], reference(x[i], params, i, 7), rtol=0, atol=1e-5)


def test_normalisation_and_uint8_float_inputs_agree():
    x = images()
    augment = BatchPhotometric(view=1)
    params = augment.sample_parameters(len(x), x.device, torch.Generator().manual_seed(0))
    from_uint8 = augment(x, params=params)
    from_float = augment(x.float() / 255, params=params)
    torch.testing.assert_close(from_uint8, from_float)
    plain = BatchPhotometric(view=1, normalize=False)(x, params=params)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(from_uint8, (plain - mean) / std)
    assert torch.equal(from_uint8, normalize_images(plain))  # the library's one normalisation
    other = BatchPhotometric(view=1, mean=(0.5,) * 3, std=(0.25,) * 3)(x, params=params)
    assert torch.equal(other, normalize_images(plain, mean=(0.5,) * 3, std=(0.25,) * 3))


def test_parameters_differ_across_the_batch_and_follow_the_generator():
    augment = BatchPhotometric(view=2)
    params = augment.sample_parameters(64, torch.device("cpu"), torch.Generator().manual_seed(1))
    jittered = params["factors"][:, 0] != 1.0
    assert params["factors"][jittered, 0].unique().numel() == int(jittered.sum())
    assert len({tuple(o) for o in params["order"].tolist()}) > 10
    again = augment.sample_parameters(64, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert all(torch.equal(params[k], again[k]) for k in params)
    x = images(batch=8)
    out = augment(x, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out, augment(x, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("view, blur_p, solarize_p", [(1, 1.0, 0.0), (2, 0.1, 0.2)])
def test_statistics_match_the_paper_probabilities(view, blur_p, solarize_p):
    n = 20000
    augment = BatchPhotometric(view=view)
    params = augment.sample_parameters(n, torch.device("cpu"), torch.Generator().manual_seed(0))
    tolerance = 4 * (0.25 / n) ** 0.5  # four standard errors of a share
    jittered = params["factors"][:, 3] != 0
    assert abs(jittered.float().mean().item() - 0.8) < tolerance
    assert abs(params["grayscale"].float().mean().item() - 0.2) < tolerance
    assert abs(params["blur"].float().mean().item() - blur_p) < tolerance
    assert abs(params["solarize"].float().mean().item() - solarize_p) < tolerance
    # Brightness, contrast, saturation U(1 - s, 1 + s) with s = 0.4, 0.4, 0.2; hue shift U(-0.1, 0.1);
    # sigma U(0.1, 2.0): each checked by its range, mean and standard deviation.
    draws = {
        "brightness": (params["factors"][jittered, 0], 0.6, 1.4),
        "contrast": (params["factors"][jittered, 1], 0.6, 1.4),
        "saturation": (params["factors"][jittered, 2], 0.8, 1.2),
        "hue": (params["factors"][jittered, 3], -0.1, 0.1),
        "sigma": (params["sigma"], 0.1, 2.0),
    }
    for name, (values, low, high) in draws.items():
        width = high - low
        assert low <= values.min() < low + 0.01 * width and high - 0.01 * width < values.max() <= high, name
        assert abs(values.mean().item() - (low + high) / 2) < 4 * width * (1 / 12 / len(values)) ** 0.5, name
        assert abs(values.std().item() - width / 12**0.5) < 0.02 * width, name
    # Independent draws: every pair of decisions co-occurs at the product of their rates, and the
    # continuous parameters are uncorrelated.
    decisions = {"jitter": jittered, "grayscale": params["grayscale"], "blur": params["blur"], "solarize": params["solarize"]}
    names = list(decisions)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            joint = (decisions[a] & decisions[b]).float().mean().item()
            product = decisions[a].float().mean().item() * decisions[b].float().mean().item()
            assert abs(joint - product) < tolerance, (a, b)
    columns = [params["factors"][jittered, k] for k in range(4)] + [params["sigma"][jittered]]
    columns += [d[jittered].float() for d in decisions.values() if 0 < d[jittered].float().mean() < 1]
    correlation = torch.corrcoef(torch.stack(columns)) - torch.eye(len(columns))
    assert correlation.abs().max() < 4 / jittered.sum().item() ** 0.5
    # Every one of the 24 orders of the four jitter steps occurs about equally often.
    codes = (params["order"] * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.bincount(codes, minlength=256)
    counts = counts[counts > 0]
    assert counts.numel() == 24 and (counts.float() / n - 1 / 24).abs().max() < 0.01


def test_batched_pipeline_statistics_match_the_per_image_pipeline():
    """Mean brightness and the share of gray and solarised views of the whole pipelines agree."""
    from PIL import Image

    from scrl.transforms import byol_photometric

    x = images(batch=1, size=32)[0]
    n = 600
    batched = BatchPhotometric(view=2, normalize=False)(x.expand(n, -1, -1, -1), generator=torch.Generator().manual_seed(0))
    per_image_step = byol_photometric(view=2, size=32)
    pil = Image.fromarray(x.permute(1, 2, 0).numpy())
    torch.manual_seed(0)
    per_image = torch.stack([TF.pil_to_tensor(per_image_step(pil)).float() / 255 for _ in range(n)])
    for name, stat in (
        ("mean level", lambda v: v.mean(dim=(1, 2, 3))),
        ("gray share", lambda v: (v.std(dim=1).mean(dim=(1, 2)) < 1e-3).float()),
    ):
        a, b = stat(batched), stat(per_image)
        standard_error = ((a.var() + b.var()) / n).sqrt().item()
        assert abs(a.mean().item() - b.mean().item()) < 4 * standard_error + 0.01, name


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"view": 3}, "view"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"brightness": 1.5}, "brightness"),
        ({"hue": 0.7}, "hue"),
        ({"jitter_p": 1.2}, "jitter_p"),
        ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BatchPhotometric(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="images"):
        BatchPhotometric()(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def _one_step_parameters(step: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameters under which BatchPhotometric applies only ``step``, with per-sample ``values``."""
    batch = len(values)
    no = torch.zeros(batch, dtype=torch.bool)
    params = {
        "factors": torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(batch, 1),
        "order": torch.arange(4).repeat(batch, 1),
        "grayscale": no,
        "blur": no,
        "solarize": no,
        "sigma": torch.ones(batch),
    }
    if step in ("brightness", "contrast", "saturation", "hue"):
        params["factors"][:, ("brightness", "contrast", "saturation", "hue").index(step)] = values
    else:
        params[step] = ~no
        params["sigma"] = values if step == "blur" else params["sigma"]
    return params


@pytest.mark.parametrize(
    "step, values, reference",
    [
        ("brightness", [0.6, 0.9, 1.2, 1.4], TF.adjust_brightness),
        ("contrast", [0.6, 0.9, 1.2, 1.4], TF.adjust_contrast),
        ("saturation", [0.8, 0.9, 1.1, 1.2], TF.adjust_saturation),
        ("hue", [-0.1, -0.03, 0.04, 0.1], TF.adjust_hue),
        ("grayscale", [0, 0, 0, 0], lambda x, _: TF.rgb_to_grayscale(x, num_output_channels=3)),
        ("blur", [0.1, 0.7, 1.3, 2.0], lambda x, sigma: TF.gaussian_blur(x, [7, 7], [sigma, sigma])),
        ("solarize", [0, 0, 0, 0], lambda x, _: TF.solarize(x, 128)),
    ],
)
def test_each_step_matches_torchvision_on_uint8_images_within_rounding(step, values, reference):
    x = images(batch=4)
    params = _one_step_parameters(step, torch.tensor(values, dtype=torch.float32))
    out = BatchPhotometric(view=2, kernel_size=7, normalize=False)(x, params=params) * 255
    expected = torch.stack([reference(x[i], v) for i, v in enumerate(values)])
    # torchvision's uint8 path truncates the result, and for contrast and saturation its gray image too.
    levels = 2 if step in ("contrast", "saturation") else 1
    assert expected.dtype == torch.uint8 and (out - expected.float()).abs().max() <= levels + 1e-3
    if step not in ("grayscale", "solarize"):  # each sample got its own value
        assert all(not torch.allclose(out[0], reference(x[0], v).float(), atol=1.5) for v in values[1:])


def test_blur_kernel_follows_each_axis_of_a_non_square_view():
    x = torch.rand(2, 3, 40, 100)
    sigma = torch.tensor([1.5, 2.0])
    ours = gaussian_blur(x, sigma, (11, 5))  # (along x, along y), as torchvision
    expected = torch.stack([TF.gaussian_blur(x[i], [11, 5], [sigma[i].item()] * 2) for i in range(2)])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    augment = BatchPhotometric(view=1, normalize=False, jitter_p=0.0, grayscale_p=0.0)
    params = augment.sample_parameters(2, x.device, torch.Generator().manual_seed(0))
    # Default kernel: about 10 % of each side, as the per-image pipeline's GaussianBlur((k_w, k_h)).
    expected = torch.stack([TF.gaussian_blur(x[i], [11, 5], [params["sigma"][i].item()] * 2) for i in range(2)])
    torch.testing.assert_close(augment(x, params=params), expected, rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("view", [1, 2])
def test_cuda_matches_cpu_with_the_same_parameters(view):
    x = images(batch=16, size=64)
    augment = BatchPhotometric(view=view, normalize=False)
    params = augment.sample_parameters(len(x), torch.device("cpu"), torch.Generator().manual_seed(0))
    expected = augment(x, params=params)
    out = augment.cuda()(x.cuda(), params={k: v.cuda() for k, v in params.items()})
    # cuDNN may run the blur's convolutions in TF32: within half a uint8 level.
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0.5 / 255)
