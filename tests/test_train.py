"""The pretraining engine, scrl.train: config, presets, and tiny CPU runs that log, checkpoint, resume, stop and export."""

import dataclasses
import functools
import io
import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

import scrl
from scrl.data import ResumableSampler, SyntheticScenes, TwoViewDataset, two_view_loader
from scrl.train import PRESETS, Callback, PretrainConfig, Pretrainer, build_dataset, build_model, build_transform, device_views, pretrainer
from scrl.runtime import load_checkpoint
from scrl.schedule import cosine_tau, warmup_cosine_factor

# resnet18 on 64-px views, 4 images per step, 2 steps per epoch, small heads.
TINY = dict(
    device="cpu", arch="resnet18", image_size=64, batch_size=4, synthetic_images=8, projector_hidden=32, projection_dim=16,
    epochs=2, warmup_epochs=0.5, log_every=1, workers=0, base_lr=0.45, weight_decay=1e-6, tau_base=0.97,
)


def run(out, **settings):
    return Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(out), **settings})).run()


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def checkpoint(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoint_last.pth")


def assert_same_weights(a, b):
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: 2 epochs (4 steps) of SCRL in one go.

    On one thread, as every test runs (tests/conftest.py): sums, and so the weights, depend on the
    thread count, and module fixtures are set up before the per-test thread setting.
    """
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run(out)
    finally:
        torch.set_num_threads(threads)
    return out, summary


# ---------------------------------------------------------------------------------------- config


def test_cpu_defaults_gpu_defaults_presets_and_their_precedence():
    config, filled = PretrainConfig().resolve(on_gpu=False)
    assert (config.arch, config.image_size, config.batch_size, config.workers, config.amp) == ("resnet18", 64, 32, 2, "off")
    assert (config.epochs, config.min_box_size, config.warmup_epochs) == (10, 16, 1.0)
    assert {"arch", "image_size", "batch_size", "workers", "warmup_epochs"} <= set(filled)
    # The paper's 1000-epoch setting (Sec. 4.1, Table A5); a given field wins over the preset.
    config, filled = PretrainConfig(preset="1000ep", tau_base=0.99).resolve(on_gpu=True, local_world_size=8)
    assert (config.arch, config.image_size, config.batch_size, config.amp, config.min_box_size) == ("resnet50", 224, 256, "bf16", 32)
    assert (config.epochs, config.base_lr, config.weight_decay, config.tau_base, config.warmup_epochs) == (1000, 0.45, 1.5e-6, 0.99, 10.0)
    assert "tau_base" not in filled and config.workers >= 1
    config, _ = PretrainConfig(preset="1000ep-released").resolve(on_gpu=True)  # the authors' released config
    assert (config.epochs, config.base_lr, config.weight_decay, config.tau_base) == (1000, 0.2, 1.5e-6, 0.996)
    config, _ = PretrainConfig(preset="200ep").resolve(on_gpu=False)
    assert (config.epochs, config.base_lr, config.weight_decay, config.tau_base) == (200, 0.45, 1.0e-6, 0.97)
    # An explicit preset beats the device defaults; without one the device's epochs win.
    assert PretrainConfig(preset="200ep").resolve(on_gpu=False)[0].epochs == 200
    assert PretrainConfig().resolve(on_gpu=True)[0].epochs == 1000
    # Resolving twice fills nothing more.
    config, _ = PretrainConfig().resolve(on_gpu=False)
    assert config.resolve(on_gpu=True) == (config, [])
    assert set(PRESETS) == {"200ep", "1000ep", "1000ep-released"}


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(base_lr=-1.0), "base_lr must be > 0 and finite, got -1.0"),
        (dict(base_lr=float("nan")), "base_lr must be > 0 and finite, got nan"),
        (dict(base_lr=float("inf")), "base_lr must be > 0 and finite, got inf"),
        (dict(weight_decay=-1e-6), "weight_decay must be >= 0 and finite, got -1e-06"),
        (dict(tau_base=1.5), "tau_base must be in [0, 1], got 1.5"),
        (dict(warmup_epochs=-1.0), "warmup_epochs must be >= 0 and finite, got -1.0"),
        (dict(image_size=16), "image_size must be >= 32, got 16"),
        (dict(batch_size=0), "batch_size must be >= 1, got 0"),
        (dict(save_every=-1), "save_every must be >= 0, got -1"),
        (dict(image_size=40, min_box_size=100.0), "min_box_size must be at most image_size=40, got 100.0"),
        (dict(method="simclr"), "method must be one of ['scrl', 'byol'], got 'simclr'"),
        (dict(preset="300ep"), "preset must be one of ['200ep', '1000ep', '1000ep-released'], got '300ep'"),
        (dict(resume="/no/such/checkpoint.pth"), "resume='/no/such/checkpoint.pth': no such checkpoint file"),
        (dict(max_consecutive_unreadable=0), "max_consecutive_unreadable must be >= 1, got 0"),
    ],
)
def test_out_of_range_setting_is_a_value_error_naming_the_field(settings, message):
    with pytest.raises(ValueError) as info:
        PretrainConfig(**settings)
    assert message in str(info.value)


def test_boundary_values_of_the_checked_settings_are_accepted():
    config = PretrainConfig(weight_decay=0.0, tau_base=0.0, warmup_epochs=0.0, image_size=32, roi_probe_size=32,
                            projector_hidden=1, projection_dim=1, min_box_size=32.0, save_every=0, workers=0)
    assert (config.weight_decay, config.tau_base, config.image_size, config.min_box_size) == (0.0, 0.0, 32, 32.0)
    assert PretrainConfig(tau_base=1, base_lr=1).tau_base == 1  # ints where floats go


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(batch_size=2.5), "batch_size must be an int, got 2.5"),
        (dict(epochs=True), "epochs must be an int, got True"),
        (dict(epochs="3"), "epochs must be an int, got '3'"),
        (dict(channels_last="no"), "channels_last must be a bool, got 'no'"),
        (dict(output_dir=None), "output_dir must be a str, got None"),
        (dict(base_lr="0.1"), "base_lr must be an int or float, got '0.1'"),
    ],
)
def test_a_setting_of_the_wrong_type_is_named(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PretrainConfig(**settings)


def test_config_is_frozen_and_round_trips_through_its_dict():
    config = PretrainConfig(**TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    assert PretrainConfig(**config.to_dict()) == config


def test_cpu_defaults_train_on_real_box_pairs():
    """The CPU demo's views, scenes and box settings fill most box slots (the run logs the share)."""
    config, _ = PretrainConfig().resolve(on_gpu=False)
    transform = scrl.TwoViewTransform.byol(size=config.image_size, output="uint8")
    dataset = TwoViewDataset(build_dataset(config), transform, seed=0)
    geoms = [dataset[i][2:4] for i in range(128)]
    geom1, geom2 = (torch.utils.data.default_collate([g[v] for g in geoms]) for v in (0, 1))
    model = build_model(dataclasses.replace(config, projector_hidden=8, projection_dim=4))
    share = model.sampler(geom1, geom2, generator=torch.Generator().manual_seed(0)).valid.float().mean()
    assert share >= 0.6
    assert scrl.BoxPairSampler(min_size=32)(geom1, geom2).valid.float().mean() < 0.3  # one whole C5 cell would not


@pytest.mark.parametrize("pooling, aligned", [("exact", None), ("aligned", True), ("unaligned", False)])
def test_roi_pooling_setting_selects_the_rule(pooling, aligned):
    config, _ = PretrainConfig(roi_pooling=pooling, projector_hidden=8, projection_dim=4).resolve(on_gpu=False)
    pool = build_model(config).roi_pool
    assert pool.aligned is aligned and pool.cell_offset == 0.5


def test_building_from_an_unresolved_config_says_so():
    with pytest.raises(ValueError, match="resolved config"):
        build_model(PretrainConfig())


# ---------------------------------------------------------------------------------------- runs


@pytest.mark.parametrize("method, extra", [("scrl", {}), ("byol", dict(amp="bf16", channels_last=True))])
def test_a_few_steps_log_checkpoint_and_export(tmp_path, method, extra, capsys):
    summary = run(tmp_path, method=method, max_steps=3, **extra)
    assert summary["step"] == 3 and summary["stopped_by"] is None
    out = capsys.readouterr().out
    assert "epoch 1 step 3/3 loss" in out and "img/s" in out and "data-wait" in out and "valid-boxes" in out

    records = metrics(tmp_path)
    start, steps, end = records[0], [r for r in records if "loss" in r], records[-1]
    assert start["event"] == "start" and start["lr"] == pytest.approx(0.45 * 4 / 256) and start["total_steps"] == 4
    assert start["arg_method"] == method and start["arg_image_size"] == 64
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert set(r) >= {"epoch", "loss", "lr", "tau", "images_per_s", "data_wait_share", "eta_s", "valid_box_share", "skipped_files"}
        assert 0 <= r["data_wait_share"] <= 1 and r["images_per_s"] > 0 and r["skipped_files"] == 0
    # lr = base * global batch / 256 with a 1-step warm-up (0.5 epochs) and cosine decay over 4 steps;
    # tau follows the cosine schedule from tau_base.
    lr = 0.45 * 4 / 256
    assert [r["lr"] for r in steps] == pytest.approx([lr * warmup_cosine_factor(k, 1, 4) for k in range(3)])
    assert [r["tau"] for r in steps] == pytest.approx([cosine_tau(k, 4, 0.97) for k in range(3)])
    share = [r["valid_box_share"] for r in steps]
    assert all(s == 1 for s in share) if method == "byol" else all(0 < s <= 1 for s in share)
    assert end["event"] == "end" and end["ranks_identical"] is True

    ckpt = checkpoint(tmp_path)
    assert ckpt["step"] == 3 and ckpt["epoch"] == 1 and ckpt["batch_in_epoch"] == 1
    assert ckpt["args"]["method"] == method and ckpt["args"]["arch"] == "resnet18"
    assert any(k.startswith("trunk.body.") for k in ckpt["model"]) and any(k.startswith("target.") for k in ckpt["model"])

    backbone = torch.load(tmp_path / "backbone_torchvision.pth", weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(backbone, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    assert torch.equal(backbone["conv1.weight"], ckpt["model"]["trunk.body.conv1.weight"])


def test_training_lowers_the_loss_on_a_fixed_image_set(tmp_path):
    # 16 epochs of one batch of the same 8 scenes (new views each epoch), at a high learning rate.
    run(tmp_path, epochs=16, synthetic_images=8, batch_size=8, base_lr=40.0, warmup_epochs=0.0, method="byol")
    losses = [r["loss"] for r in metrics(tmp_path) if "loss" in r]
    assert len(losses) == 16 and sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4


def test_stop_and_resume_equals_uninterrupted_run(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    # Stop inside epoch 1 (after 3 of 4 steps), then resume to the end.
    assert run(tmp_path, max_steps=3)["step"] == 3
    assert (checkpoint(tmp_path)["epoch"], checkpoint(tmp_path)["batch_in_epoch"]) == (1, 1)
    assert run(tmp_path)["step"] == 4  # resume="auto" is the default
    assert_same_weights(checkpoint(tmp_path), checkpoint(reference))
    assert torch.equal(torch.load(tmp_path / "backbone_torchvision.pth")["layer4.1.bn2.weight"],
                       torch.load(reference / "backbone_torchvision.pth")["layer4.1.bn2.weight"])


def test_train_state_round_trip_continues_exactly(uninterrupted, tmp_path):
    """TrainState.load_state_dict of a checkpoint, in a fresh run with resume='none', continues as resuming the file."""
    reference, _ = uninterrupted
    run(tmp_path / "a", max_steps=3)

    class LoadAtStart(Callback):
        def on_train_start(self, trainer):
            trainer.state.load_state_dict(checkpoint(tmp_path / "a"))
            self.position = (trainer.state.step, trainer.state.epoch, trainer.state.batch_in_epoch)

    loader = LoadAtStart()
    summary = Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(tmp_path / "b"), "resume": "none"}), callbacks=[loader]).run()
    assert loader.position == (3, 1, 1)
    assert summary["weights_sha256"] == Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(tmp_path / "a")})).run()["weights_sha256"]
    assert_same_weights(checkpoint(tmp_path / "b"), checkpoint(reference))


def test_roi_probe_logs_accuracy_each_epoch_without_changing_the_training(uninterrupted, tmp_path, capsys):
    reference, _ = uninterrupted
    run(tmp_path, roi_probe="synthetic:16", roi_probe_size=64)
    probes = [r for r in metrics(tmp_path) if r.get("event") == "roi_probe"]
    # After epoch 1, and once at the end of epoch 2 (the end of the run).
    assert [(r["step"], r["epoch"]) for r in probes] == [(2, 0), (4, 2)]
    for r in probes:
        assert 0 <= r["roi_linear_top1"] <= 100 and 0 <= r["roi_knn_top1"] <= 100
        assert r["roi_chance"] == pytest.approx(100 / 18) and r["roi_test_boxes"] > 0
    assert "roi probe at step 2: linear top-1" in capsys.readouterr().out
    assert_same_weights(checkpoint(tmp_path), checkpoint(reference))


def test_signal_saves_at_the_next_step_and_resume_is_exact(uninterrupted, tmp_path, monkeypatch, capsys):
    reference, ref_summary = uninterrupted
    calls = []
    normalize = device_views.normalize_images

    def normalize_then_signal(batch):
        calls.append(1)
        if len(calls) == 2 * 2:  # second view of step 2: SIGTERM arrives in the middle of a step
            os.kill(os.getpid(), signal.SIGTERM)
        return normalize(batch)

    monkeypatch.setattr(device_views, "normalize_images", normalize_then_signal)
    stopped = run(tmp_path, workers=2)
    assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 2
    assert "stopped by SIGTERM at step 2" in capsys.readouterr().out
    assert (checkpoint(tmp_path)["epoch"], checkpoint(tmp_path)["batch_in_epoch"]) == (1, 0)
    assert metrics(tmp_path)[-1]["event"] == "stopped"
    assert not (tmp_path / "backbone_torchvision.pth").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored

    monkeypatch.setattr(device_views, "normalize_images", normalize)
    # Resumed with data workers: augmentations do not depend on workers or on where a run restarts.
    resumed = run(tmp_path, workers=2)
    assert resumed["weights_sha256"] == ref_summary["weights_sha256"]
    assert_same_weights(checkpoint(tmp_path), checkpoint(reference))


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = []
    normalize = device_views.normalize_images

    def poisoned(batch):
        calls.append(1)
        views = normalize(batch)
        return views * float("nan") if len(calls) > 2 * 2 else views  # from step 3 on

    monkeypatch.setattr(device_views, "normalize_images", poisoned)
    # Checked at the log step 3 and before every save: the checkpoint of step 2 stays as it was.
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3 \(epoch 1\).*checkpoint_last.pth \(step 2\)"):
        run(tmp_path, log_every=4, save_every=1)
    ckpt = checkpoint(tmp_path)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_augment_on_device_finishes_geometry_only_views_and_resumes_exactly(tmp_path, monkeypatch):
    calls = []

    class Recording(device_views.BatchPhotometric):
        def forward(self, images, generator=None, params=None):
            calls.append((self.view, images.dtype, tuple(images.shape), params))
            return super().forward(images, generator, params)

    def not_called(batch):
        raise AssertionError("normalize_images must not run: BatchPhotometric normalises")

    monkeypatch.setattr(device_views, "BatchPhotometric", Recording)
    monkeypatch.setattr(device_views, "normalize_images", not_called)
    reference = run(tmp_path / "reference", augment_on_device=True)
    assert reference["step"] == 4 and [c[0] for c in calls] == [1, 2] * 4
    # Parameters drawn outside the (compilable) augmentation, from the run's "augment" stream.
    assert all(dtype == torch.uint8 and shape == (4, 3, 64, 64) and set(p) >= {"factors", "order"} for _, dtype, shape, p in calls)
    ckpt = checkpoint(tmp_path / "reference")
    assert ckpt["args"]["augment_on_device"] is True and set(ckpt["streams"][0]["generators"]) == {"boxes", "augment"}

    assert run(tmp_path / "resumed", augment_on_device=True, max_steps=3)["step"] == 3
    resumed = run(tmp_path / "resumed", augment_on_device=True)
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert_same_weights(checkpoint(tmp_path / "resumed"), ckpt)


def _jpeg_folder(root: Path, seed: int) -> Path:
    """Eight synthetic scenes saved as JPEG files: a folder the device decodes."""
    root.mkdir()
    scenes = SyntheticScenes(8, image_size=96, seed=seed)
    for i in range(len(scenes)):
        scenes[i][0].save(root / f"img{i}.jpg", quality=90)
    return root


def test_decode_on_device_trains_on_the_same_geometry_and_resumes_exactly(tmp_path, monkeypatch):
    data = _jpeg_folder(tmp_path / "data", seed=2)
    decoded = []

    class Recording(device_views.ViewDecoder):
        def forward(self, images, geom1, geom2, paths=None):
            decoded.append((sorted({image.dim() for image in images}), geom1.crop.clone()))
            return super().forward(images, geom1, geom2, paths)

    monkeypatch.setattr(device_views, "ViewDecoder", Recording)
    settings = dict(data=str(data), synthetic_images=None, decode_on_device=True)
    reference = run(tmp_path / "reference", **settings)
    assert reference["step"] == 4 and len(decoded) == 4
    assert all(dims == [1] for dims, _ in decoded)  # every JPEG reached the decoder undecoded
    ckpt = checkpoint(tmp_path / "reference")
    assert ckpt["args"]["decode_on_device"] is True and set(ckpt["streams"][0]["generators"]) == {"boxes", "augment"}
    # The workers drew the crops the worker-decoding path draws (TwoViewTransform with photometric="device").
    geometry_only, _ = PretrainConfig(**{**TINY, **settings, "augment_on_device": True, "decode_on_device": False}).resolve(False)
    dataset = TwoViewDataset(build_dataset(geometry_only), build_transform(geometry_only), seed=geometry_only.seed)
    sampler = ResumableSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=geometry_only.seed, drop_last=True)
    sampler.set_epoch(0)
    first = next(iter(two_view_loader(dataset, sampler, geometry_only.batch_size, workers=0)))
    torch.testing.assert_close(first.geom1.crop, decoded[0][1], rtol=0, atol=0)

    assert run(tmp_path / "resumed", **settings, max_steps=3)["step"] == 3
    resumed = run(tmp_path / "resumed", **settings)
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert_same_weights(checkpoint(tmp_path / "resumed"), ckpt)


def test_resume_may_switch_to_fp16_loss_scaling_and_back(tmp_path):
    run(tmp_path, max_steps=1)
    assert checkpoint(tmp_path)["scaler"] == {}  # no loss scaling without fp16
    with pytest.warns(pretrainer.RunWarning, match="amp='fp16' on the CPU"):
        run(tmp_path, amp="fp16", max_steps=2)
    assert checkpoint(tmp_path)["scaler"]["scale"] in (2.0**16, 2.0**15)  # a fresh scale after one step (halved if it overflowed)
    assert run(tmp_path, max_steps=3)["step"] == 3


def _write_folder(root: Path) -> tuple[Path, Path]:
    scenes = SyntheticScenes(14, image_size=80, seed=1)
    for i in range(len(scenes)):  # PNGs and JPEGs: with decode_on_device the first are decoded in the workers
        scenes[i][0].save(root / ("class_a" if i % 2 else "class_b") / f"img{i}.{'png' if i % 3 else 'jpg'}")
    truncated, text = root / "class_a" / "broken.JPG", root / "class_b" / "notes.jpg"
    buf = io.BytesIO()
    Image.effect_noise((80, 80), 40).convert("RGB").save(buf, format="JPEG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    text.write_text("this is a text file, not a JPEG")
    return truncated, text


@pytest.mark.parametrize("decode_on_device", [False, True], ids=["decode-in-workers", "decode-on-device"])
def test_folder_with_corrupt_files_trains_and_reports_them(tmp_path, capsys, decode_on_device):
    data = tmp_path / "data"
    (data / "class_a").mkdir(parents=True)
    (data / "class_b").mkdir()
    truncated, text = _write_folder(data)
    out = tmp_path / "run"
    summary = run(out, data=str(data), synthetic_images=None, epochs=1, workers=2, decode_on_device=decode_on_device)
    assert summary["step"] == 4 and summary["skipped_files"] == sorted([str(truncated), str(text)])
    printed = capsys.readouterr()
    assert str(truncated) in printed.out and str(text) in printed.out
    records = [r for r in metrics(out) if "loss" in r]
    assert records[-1]["skipped_files"] == 2
    named = [path for r in metrics(out) if r.get("event") == "skipped_files" for path in r["files"]]
    assert sorted(named) == sorted([str(truncated), str(text)])
    assert sorted(checkpoint(out)["skipped_files"]) == sorted([str(truncated), str(text)])
    # Each file once per run, with its reason, though two workers met it (and met it again in epoch 2).
    lines = [line for line in printed.out.splitlines() if line.startswith("skipped unreadable file")]
    assert sorted(lines) == sorted(f"skipped unreadable file: {p} ({checkpoint(out)['skipped_files'][p]})" for p in (str(truncated), str(text)))
    assert "skipp" not in printed.err


def test_unreadable_files_are_named_at_any_log_cadence_with_workers(tmp_path, capsys):
    # Met by a worker between two log steps, named at the checkpoint that comes first.
    data = tmp_path / "data"
    (data / "class_a").mkdir(parents=True)
    (data / "class_b").mkdir()
    broken = sorted(str(path) for path in _write_folder(data))
    out = tmp_path / "run"
    run(out, data=str(data), synthetic_images=None, epochs=2, workers=1, log_every=10)
    printed = capsys.readouterr().out
    assert sorted(line.split(": ", 1)[1].split(" (")[0] for line in printed.splitlines() if line.startswith("skipped unreadable")) == broken
    events = [r for r in metrics(out) if r.get("event") == "skipped_files"]
    assert sorted(path for r in events for path in r["files"]) == broken and all(r["files"][p] for r in events for p in r["files"])


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty.*contains no images"):
        run(tmp_path / "run", data=str(tmp_path / "empty"), synthetic_images=None, workers=2)


def test_too_few_images_for_one_batch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="3 images give no full batch of batch_size=4"):
        run(tmp_path, synthetic_images=3)


def test_own_dataset_and_own_model(tmp_path, capsys):
    """A user's Dataset of PIL images and their own SCRL instance train, checkpoint and export."""
    images = [SyntheticScenes(8, image_size=96, seed=3)[i][0] for i in range(8)]
    torch.manual_seed(0)
    model = scrl.SCRL(scrl.resnet_trunk("resnet18"), num_boxes=4, min_size=16, projector_hidden=32, projection_dim=16)
    settings = {k: v for k, v in TINY.items() if k not in ("arch", "projector_hidden", "projection_dim", "tau_base", "synthetic_images")}
    trainer = Pretrainer(PretrainConfig(**settings, output_dir=str(tmp_path), max_steps=2), dataset=images, model=model)
    summary = trainer.run()
    assert trainer.model is model and len(trainer.dataset) == 8
    assert summary["step"] == 2 and "SCRL (given model): 8 images" in capsys.readouterr().out
    assert checkpoint(tmp_path)["model"]["projector.fc1.weight"].shape == (32, 512)
    backbone = torch.load(tmp_path / "backbone_torchvision.pth", weights_only=True)
    assert torch.equal(backbone["conv1.weight"], model.trunk.body.conv1.weight.detach())


def test_a_pretrainer_runs_once(tmp_path):
    trainer = Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(tmp_path), "max_steps": 1}))
    trainer.run()
    with pytest.raises(RuntimeError, match="runs once"):
        trainer.run()


def test_config_must_be_a_pretrain_config():
    with pytest.raises(TypeError, match="PretrainConfig"):
        Pretrainer(dict(TINY))


def test_the_snippet_in_docs_pretraining_runs_resumes_and_exports(tmp_path, monkeypatch, capsys):
    text = (Path(__file__).resolve().parents[1] / "docs" / "pretraining.md").read_text()
    section = text[text.index("## From Python"):]
    snippet = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    assert len(snippet.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "docs/pretraining.md", "exec"), namespace)
    assert namespace["summary"]["step"] == 4 and namespace["summary"]["stopped_by"] is None
    assert "resumed from runs/demo/checkpoint_last.pth: step 2" in capsys.readouterr().out
    assert checkpoint(tmp_path / "runs" / "demo")["step"] == 4


# ---------------------------------------------------------------------------------------- a run never lies


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A run stopped after 2 of its 4 steps (a checkpoint to resume), copied afresh for each test."""
    out = tmp_path_factory.mktemp("two_steps")
    run(out, max_steps=2)
    return out


def copy_of(run_dir, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


@pytest.mark.parametrize(
    "change, field, saved, given",
    [
        (dict(method="byol"), "method", "'scrl'", "'byol'"),
        (dict(arch="resnet34"), "arch", "'resnet18'", "'resnet34'"),
        (dict(image_size=96), "image_size", "64", "96"),
        (dict(num_boxes=5), "num_boxes", "10", "5"),
        (dict(seed=1), "seed", "0", "1"),
        (dict(synthetic_images=12), "images", "8", "12"),
        (dict(projection_dim=8), "projection_dim", "16", "8"),
        (dict(base_lr=4.5), "base_lr", "0.45", "4.5"),
        (dict(weight_decay=1e-5), "weight_decay", "1e-06", "1e-05"),
        (dict(epochs=3), "epochs", "2", "3"),
        (dict(batch_size=2), re.escape("images per step (batch_size x processes)"), "4", "2"),
    ],
)
def test_resume_refuses_another_run_naming_the_field_and_both_values(two_steps, tmp_path, change, field, saved, given):
    out = copy_of(two_steps, tmp_path)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=rf"cannot resume {out / 'checkpoint_last.pth'}: it is another run \(.*{field}: {saved} in the checkpoint, {given} now"):
        run(out, **change)
    assert (out / "metrics.jsonl").read_text() == before and checkpoint(out)["step"] == 2  # nothing written


def test_resume_may_change_what_does_not_change_the_run(two_steps, tmp_path):
    out = copy_of(two_steps, tmp_path)
    summary = run(out, workers=2, log_every=3, save_every=1, amp="bf16", roi_probe="synthetic:8", roi_probe_size=64)
    assert summary["step"] == 4


def test_overwrite_starts_a_new_run_with_other_settings_and_moves_the_old_one_aside(two_steps, tmp_path):
    out = copy_of(two_steps, tmp_path)
    old_checkpoint = (out / "checkpoint_last.pth").read_bytes()
    summary = run(out, base_lr=4.5, max_steps=1, overwrite=True)
    assert summary["step"] == 1 and checkpoint(out)["args"]["base_lr"] == 4.5
    (aside,) = out.glob("replaced-*")
    assert (aside / "checkpoint_last.pth").read_bytes() == old_checkpoint and (aside / "metrics.jsonl").exists()
    assert [r["event"] for r in metrics(out) if "event" in r][0] == "start"
    assert sum(r.get("event") == "start" for r in metrics(out)) == 1  # the new metrics.jsonl holds this run only


@pytest.mark.parametrize("settings", [dict(resume="none"), dict(resume="auto")])
def test_a_new_run_is_refused_in_a_folder_that_holds_another(two_steps, tmp_path, settings):
    out = copy_of(two_steps, tmp_path)
    if settings["resume"] == "auto":  # a finished run's backbone stays a run to keep, checkpoint or not
        (out / "checkpoint_last.pth").unlink()
    with pytest.raises(ValueError, match=rf"output_dir='{out}' holds another run \(.*metrics.jsonl.*\).*overwrite=True"):
        run(out, **settings)
    summary = run(out, **settings, overwrite=True, max_steps=1)
    assert summary["step"] == 1 and len(list(out.glob("replaced-*"))) == 1


def test_resuming_another_runs_checkpoint_into_a_folder_with_a_run_is_refused(two_steps, tmp_path):
    out = copy_of(two_steps, tmp_path)
    elsewhere = copy_of(two_steps, tmp_path / "b")
    with pytest.raises(ValueError, match=rf"holds another run .* this run resumes {elsewhere / 'checkpoint_last.pth'} instead"):
        run(out, resume=str(elsewhere / "checkpoint_last.pth"))
    assert run(tmp_path / "fresh", resume=str(elsewhere / "checkpoint_last.pth"))["step"] == 4  # into an empty folder


def test_torn_empty_and_foreign_checkpoints_are_named(two_steps, tmp_path):
    out = copy_of(two_steps, tmp_path)
    path = out / "checkpoint_last.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{path} is not a readable checkpoint .*torn"):
        run(out)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{path} is empty"):
        run(out)
    backbone = out / "backbone.pth"
    torch.save(torchvision.models.resnet18().state_dict(), backbone)
    with pytest.raises(ValueError, match=rf"{backbone} is not a training checkpoint of scrl.train \(it holds only weights"):
        run(tmp_path / "other", resume=str(backbone))


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        run(tmp_path, max_steps=1)
    finally:
        os.umask(old)
    for name in ("checkpoint_last.pth", "backbone_torchvision.pth", "metrics.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_boxes_that_cannot_fit_stop_the_run_at_the_start(tmp_path):
    with pytest.raises(ValueError, match=r"no box pair fits: min_box_size=33 px boxes in image_size=33 px views .*raise image_size=33 or lower min_box_size=33"):
        run(tmp_path, image_size=33, min_box_size=33.0)
    assert not tmp_path.joinpath("metrics.jsonl").exists()


def test_few_boxes_warn_at_the_start_and_in_the_run(tmp_path):
    with pytest.warns(pretrainer.RunWarning) as caught:
        run(tmp_path, image_size=33, min_box_size=16.0, epochs=6, log_every=5)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("only ") and "of the box slots hold a pair" in m for m in messages)
    assert any("held a pair in the steps logged up to step 10" in m for m in messages)
    logged = [r["message"] for r in metrics(tmp_path) if r.get("event") == "warning"]
    assert logged == [m for m in messages if "box slots" in m]


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(epochs=1, warmup_epochs=5.0), "warmup_epochs=5.0 is as long as the whole run (epochs=1)"),
        (dict(amp="fp16"), "amp='fp16' on the CPU is emulated"),
        (dict(method="byol", num_boxes=5), "num_boxes has no effect with method='byol'"),
        (dict(roi_probe_every=2), "roi_probe_every has no effect when roi_probe=None"),
    ],
)
def test_settings_that_will_not_do_what_they_say_warn(tmp_path, settings, message):
    with pytest.warns(pretrainer.RunWarning, match=re.escape(message)):
        run(tmp_path, **{"max_steps": 1, **settings})
    assert any(r.get("event") == "warning" and message in r["message"] for r in metrics(tmp_path))


def test_model_settings_beside_a_given_model_warn(tmp_path):
    model = scrl.BYOL("resnet18", projector_hidden=32, projection_dim=16)
    with pytest.warns(pretrainer.RunWarning) as caught:
        Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(tmp_path), "max_steps": 1}), model=model).run()
    ignored = {str(w.message).split()[0] for w in caught if "has no effect with a given model" in str(w.message)}
    assert ignored == {"arch", "projector_hidden", "projection_dim", "tau_base"}


def test_the_first_progress_line_comes_at_step_one(tmp_path, capsys):
    run(tmp_path, log_every=10, max_steps=3)
    out = capsys.readouterr().out
    assert "epoch 0 step 1/3 loss" in out and "step 2/3" not in out and "step 3/3 loss" in out


def test_a_refused_resume_moves_nothing_even_with_overwrite(two_steps, tmp_path):
    out = copy_of(two_steps, tmp_path)
    elsewhere = copy_of(two_steps, tmp_path / "b")
    with pytest.raises(ValueError, match="base_lr: 0.45 in the checkpoint, 4.5 now"):
        run(out, resume=str(elsewhere / "checkpoint_last.pth"), base_lr=4.5, overwrite=True)
    assert not list(out.glob("replaced-*")) and checkpoint(out)["step"] == 2


def test_overwrite_replaces_a_torn_or_old_checkpoint_of_the_folder(two_steps, tmp_path):
    out = copy_of(two_steps, tmp_path)
    state = checkpoint(out)
    del state["run"]  # as an earlier version of scrl wrote it
    torch.save(state, out / "checkpoint_last.pth")
    with pytest.raises(ValueError, match="written by an earlier version of scrl.*overwrite=True"):
        run(out)
    (out / "checkpoint_last.pth").write_bytes(b"torn")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        run(out)
    assert run(out, overwrite=True, max_steps=1)["step"] == 1 and len(list(out.glob("replaced-*"))) == 1


def test_a_given_models_box_settings_belong_to_the_run(tmp_path):
    def given(num_boxes):
        torch.manual_seed(0)
        return scrl.SCRL("resnet18", num_boxes=num_boxes, min_size=16, projector_hidden=32, projection_dim=16)

    settings = {k: v for k, v in TINY.items() if k not in ("arch", "projector_hidden", "projection_dim", "tau_base")}
    Pretrainer(PretrainConfig(**settings, output_dir=str(tmp_path), max_steps=1), model=given(10)).run()
    with pytest.raises(ValueError, match=r'sampler: "BoxPairSampler\(num_boxes=10.* in the checkpoint, "BoxPairSampler\(num_boxes=3'):
        Pretrainer(PretrainConfig(**settings, output_dir=str(tmp_path)), model=given(3)).run()


@pytest.mark.slow
def test_decode_on_device_runs_compiled_and_resumes_exactly(tmp_path, monkeypatch):
    # aot_eager traces as inductor does (the same graphs and graph breaks) without needing a C++ compiler.
    compile_for_test = functools.partial(torch.compile, backend="aot_eager")
    monkeypatch.setattr(torch, "compile", compile_for_test)
    torch._dynamo.reset()
    data = _jpeg_folder(tmp_path / "data", seed=4)
    settings = dict(data=str(data), synthetic_images=None, decode_on_device=True, compile=True, epochs=1)
    try:
        reference = run(tmp_path / "reference", **settings)
        assert run(tmp_path / "resumed", **settings, max_steps=1)["step"] == 1
        resumed = run(tmp_path / "resumed", **settings)
    finally:
        torch._dynamo.reset()
    assert reference["step"] == 2 and resumed["weights_sha256"] == reference["weights_sha256"]
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path / "reference") if "loss" in r)


def test_init_from_starts_a_new_longer_run_from_a_finished_runs_weights(tmp_path):
    """Continuing a finished run with a longer schedule: a new run (fresh optimiser, schedule and step) from its weights."""
    run(tmp_path / "short")
    finished = checkpoint(tmp_path / "short")
    seen = {}

    class Start(Callback):
        def on_train_start(self, trainer):
            seen["weights"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            seen["step"], seen["total"] = trainer.state.step, trainer.total_steps

    source = str(tmp_path / "short" / "checkpoint_last.pth")
    Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(tmp_path / "long"), "epochs": 4, "init_from": source}),
               callbacks=[Start()]).run()
    assert seen["step"] == 0 and seen["total"] == 8
    assert all(torch.equal(seen["weights"][k], v) for k, v in finished["model"].items())
    assert checkpoint(tmp_path / "long")["run"]["identity"]["init_from"] == source


def test_init_from_another_model_names_the_keys_that_differ(tmp_path):
    run(tmp_path / "byol", method="byol", max_steps=1)
    source = str(tmp_path / "byol" / "checkpoint_last.pth")
    with pytest.raises(ValueError, match=r"init_from=.* holds another model than this run's: 21 reshaped keys \(e.g. \['predictor"):
        run(tmp_path / "scrl", init_from=source, projector_hidden=64)
    torch.save({"conv1.weight": torch.ones(1)}, tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="is not a training checkpoint of scrl.train"):
        run(tmp_path / "scrl", init_from=str(tmp_path / "backbone.pth"))
