"""End-to-end tests of examples/pretrain_imagenet.py on tiny CPU runs (in-process and as subprocesses)."""

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

import scrl
from scrl.train.checkpoint import load_checkpoint
from scrl.data import SyntheticScenes, TwoViewDataset
from scrl.train.schedule import cosine_tau
from scrl.train.schedule import warmup_cosine_factor

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "pretrain_imagenet.py"
# resnet18 on 64-px views, 4 images per step, 2 steps per epoch, small heads.
TINY = [
    "--device", "cpu", "--arch", "resnet18", "--image-size", "64", "--batch-size", "4", "--synthetic-images", "8",
    "--projector-hidden", "32", "--projection-dim", "16", "--epochs", "2", "--warmup-epochs", "0.5",
    "--log-every", "1", "--workers", "0", "--base-lr", "0.45", "--weight-decay", "1e-6", "--tau-base", "0.97",
]


def _load_script():
    spec = importlib.util.spec_from_file_location("pretrain_imagenet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _model_state(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoint_last.pth")


def _assert_same_weights(a, b):
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


@pytest.fixture(scope="module")
def uninterrupted(script, tmp_path_factory):
    """The reference: 2 epochs (4 steps) of SCRL in one go.

    On one thread, as every test runs (tests/conftest.py): sums, and so the weights, depend on the
    thread count, and module fixtures are set up before the per-test thread setting.
    """
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = script.main(TINY + ["--output-dir", str(out)])
    finally:
        torch.set_num_threads(threads)
    return out, summary


@pytest.mark.parametrize("method, extra", [("scrl", []), ("byol", ["--amp", "bf16", "--channels-last"])])
def test_a_few_steps_log_checkpoint_and_export(script, tmp_path, method, extra, capsys):
    summary = script.main(TINY + extra + ["--method", method, "--max-steps", "3", "--output-dir", str(tmp_path)])
    assert summary["step"] == 3 and summary["stopped_by"] is None
    out = capsys.readouterr().out
    assert "epoch 1 step 3/3 loss" in out and "img/s" in out and "data-wait" in out and "valid-boxes" in out

    records = _metrics(tmp_path)
    start, steps, end = records[0], [r for r in records if "loss" in r], records[-1]
    assert start["event"] == "start" and start["lr"] == pytest.approx(0.45 * 4 / 256) and start["total_steps"] == 4
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert set(r) >= {"epoch", "loss", "lr", "tau", "images_per_s", "data_wait_share", "eta_s", "valid_box_share", "skipped_files"}
        assert 0 < r["loss"] < 8 and 0 <= r["data_wait_share"] <= 1 and r["images_per_s"] > 0 and r["skipped_files"] == 0
        assert 0.97 <= r["tau"] < 1
    # lr = base * global batch / 256 with a 1-step warm-up (0.5 epochs) and cosine decay over 4 steps;
    # tau follows the cosine schedule from tau_base.
    lr = 0.45 * 4 / 256
    assert [r["lr"] for r in steps] == pytest.approx([lr * warmup_cosine_factor(k, 1, 4) for k in range(3)])
    assert [r["tau"] for r in steps] == pytest.approx([cosine_tau(k, 4, 0.97) for k in range(3)])
    share = [r["valid_box_share"] for r in steps]
    assert all(s == 1 for s in share) if method == "byol" else all(0 < s <= 1 for s in share)
    assert end["event"] == "end" and end["ranks_identical"] is True

    ckpt = _model_state(tmp_path)
    assert ckpt["step"] == 3 and ckpt["epoch"] == 1 and ckpt["batch_in_epoch"] == 1
    assert ckpt["args"]["method"] == method and ckpt["args"]["arch"] == "resnet18"
    assert any(k.startswith("trunk.body.") for k in ckpt["model"]) and any(k.startswith("target.") for k in ckpt["model"])

    backbone = torch.load(tmp_path / "backbone_torchvision.pth", weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(backbone, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    assert torch.equal(backbone["conv1.weight"], ckpt["model"]["trunk.body.conv1.weight"])


def test_stop_and_resume_equals_uninterrupted_run(script, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    # Stop inside epoch 1 (after 3 of 4 steps), then resume to the end.
    first = script.main(TINY + ["--max-steps", "3", "--output-dir", str(tmp_path)])
    assert first["step"] == 3
    ckpt = _model_state(tmp_path)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (1, 1)
    resumed = script.main(TINY + ["--output-dir", str(tmp_path)])  # --resume auto is the default
    assert resumed["step"] == 4
    _assert_same_weights(_model_state(tmp_path), _model_state(reference))
    assert torch.equal(torch.load(tmp_path / "backbone_torchvision.pth")["layer4.1.bn2.weight"],
                       torch.load(reference / "backbone_torchvision.pth")["layer4.1.bn2.weight"])


def test_roi_probe_logs_accuracy_each_epoch_without_changing_the_training(script, uninterrupted, tmp_path, capsys):
    reference, _ = uninterrupted
    script.main(TINY + ["--roi-probe", "synthetic:16", "--roi-probe-size", "64", "--output-dir", str(tmp_path)])
    probes = [r for r in _metrics(tmp_path) if r.get("event") == "roi_probe"]
    # After epoch 1, and once at the end of epoch 2 (the end of the run).
    assert [(r["step"], r["epoch"]) for r in probes] == [(2, 0), (4, 2)]
    for r in probes:
        assert 0 <= r["roi_linear_top1"] <= 100 and 0 <= r["roi_knn_top1"] <= 100
        assert r["roi_chance"] == pytest.approx(100 / 18) and r["roi_test_boxes"] > 0
    assert "roi probe at step 2: linear top-1" in capsys.readouterr().out
    _assert_same_weights(_model_state(tmp_path), _model_state(reference))


def test_signal_saves_at_the_next_step_and_resume_is_exact(script, uninterrupted, tmp_path, monkeypatch, capsys):
    reference, ref_summary = uninterrupted
    calls = []
    normalize = script.normalize_uint8

    def normalize_then_signal(batch):
        calls.append(1)
        if len(calls) == 2 * 2:  # second view of step 2: SIGTERM arrives in the middle of a step
            os.kill(os.getpid(), signal.SIGTERM)
        return normalize(batch)

    monkeypatch.setattr(script, "normalize_uint8", normalize_then_signal)
    stopped = script.main(TINY + ["--workers", "2", "--output-dir", str(tmp_path)])
    assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 2
    assert "stopped by SIGTERM at step 2" in capsys.readouterr().out
    assert (_model_state(tmp_path)["epoch"], _model_state(tmp_path)["batch_in_epoch"]) == (1, 0)
    assert _metrics(tmp_path)[-1]["event"] == "stopped"
    assert not (tmp_path / "backbone_torchvision.pth").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored

    monkeypatch.setattr(script, "normalize_uint8", normalize)
    # Resumed with data workers: augmentations do not depend on workers or on where a run restarts.
    resumed = script.main(TINY + ["--workers", "2", "--output-dir", str(tmp_path)])
    assert resumed["weights_sha256"] == ref_summary["weights_sha256"]
    _assert_same_weights(_model_state(tmp_path), _model_state(reference))


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(script, tmp_path, monkeypatch):
    calls = []
    normalize = script.normalize_uint8

    def poisoned(batch):
        calls.append(1)
        views = normalize(batch)
        return views * float("nan") if len(calls) > 2 * 2 else views  # from step 3 on

    monkeypatch.setattr(script, "normalize_uint8", poisoned)
    # Checked at the log step 3 and before every save: the checkpoint of step 2 stays as it was.
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3 \(epoch 1\).*checkpoint_last.pth \(step 2\)"):
        script.main(TINY + ["--log-every", "4", "--save-every", "1", "--output-dir", str(tmp_path)])
    ckpt = _model_state(tmp_path)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_augment_on_device_finishes_geometry_only_views_and_resumes_exactly(script, tmp_path, monkeypatch):
    calls = []

    class Recording(script.BatchPhotometric):
        def forward(self, images, generator=None, params=None):
            calls.append((self.view, images.dtype, tuple(images.shape), generator))
            return super().forward(images, generator, params)

    def not_called(batch):
        raise AssertionError("normalize_uint8 must not run: BatchPhotometric normalises")

    monkeypatch.setattr(script, "BatchPhotometric", Recording)
    monkeypatch.setattr(script, "normalize_uint8", not_called)
    augmented = TINY + ["--augment-on-device"]
    reference = script.main(augmented + ["--output-dir", str(tmp_path / "reference")])
    assert reference["step"] == 4 and [c[0] for c in calls] == [1, 2] * 4
    assert all(dtype == torch.uint8 and shape == (4, 3, 64, 64) and isinstance(g, torch.Generator) for _, dtype, shape, g in calls)
    assert calls[0][3] is calls[1][3]  # one per-rank stream for both views
    ckpt = _model_state(tmp_path / "reference")
    assert ckpt["args"]["augment_on_device"] is True and set(ckpt["rng"][0]["generators"]) == {"boxes", "augment"}

    first = script.main(augmented + ["--max-steps", "3", "--output-dir", str(tmp_path / "resumed")])
    assert first["step"] == 3
    resumed = script.main(augmented + ["--output-dir", str(tmp_path / "resumed")])
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    _assert_same_weights(_model_state(tmp_path / "resumed"), ckpt)


def _write_folder(root: Path) -> tuple[Path, Path]:
    scenes = SyntheticScenes(14, image_size=80, seed=1)
    for i in range(len(scenes)):
        scenes[i][0].save(root / ("class_a" if i % 2 else "class_b") / f"img{i}.png")
    truncated, text = root / "class_a" / "broken.JPG", root / "class_b" / "notes.jpg"
    buf = io.BytesIO()
    Image.effect_noise((80, 80), 40).convert("RGB").save(buf, format="JPEG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    text.write_text("this is a text file, not a JPEG")
    return truncated, text


def test_resume_may_switch_to_fp16_loss_scaling_and_back(script, tmp_path):
    script.main(TINY + ["--max-steps", "1", "--output-dir", str(tmp_path)])
    assert _model_state(tmp_path)["scaler"] == {}  # no loss scaling without fp16
    script.main(TINY + ["--amp", "fp16", "--max-steps", "2", "--output-dir", str(tmp_path)])
    scaler = _model_state(tmp_path)["scaler"]
    assert scaler["scale"] in (2.0**16, 2.0**15)  # a fresh scale after one step (halved if it overflowed)
    summary = script.main(TINY + ["--max-steps", "3", "--output-dir", str(tmp_path)])
    assert summary["step"] == 3


def test_folder_with_corrupt_files_trains_and_reports_them(script, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "class_a").mkdir(parents=True)
    (data / "class_b").mkdir()
    truncated, text = _write_folder(data)
    out = tmp_path / "run"
    summary = script.main(TINY + ["--data", str(data), "--epochs", "1", "--workers", "2", "--output-dir", str(out)])
    assert summary["step"] == 4 and summary["skipped_files"] == sorted([str(truncated), str(text)])
    printed = capsys.readouterr()
    assert str(truncated) in printed.out and str(text) in printed.out
    records = [r for r in _metrics(out) if "loss" in r]
    assert records[-1]["skipped_files"] == 2
    assert sorted(p for r in records for p in r["new_skipped_files"]) == sorted([str(truncated), str(text)])
    assert _model_state(out)["skipped_files"] == sorted([str(truncated), str(text)])


def test_empty_folder_is_a_clear_error(script, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty.*contains no images"):
        script.main(TINY + ["--data", str(tmp_path / "empty"), "--workers", "2", "--output-dir", str(tmp_path / "run")])


def test_defaults_presets_and_learning_rate_scaling(script):
    args = script.parse_args([])
    filled = script.resolve_defaults(args, on_gpu=False, local_world_size=1)
    assert (args.arch, args.image_size, args.batch_size, args.workers, args.amp) == ("resnet18", 64, 32, 2, "off")
    assert {"arch", "image_size", "batch_size", "workers"} <= set(filled)
    assert args.min_box_size == 16
    args = script.parse_args(["--preset", "1000ep", "--tau-base", "0.99"])
    script.resolve_defaults(args, on_gpu=True, local_world_size=8)
    assert (args.arch, args.image_size, args.batch_size, args.amp, args.min_box_size) == ("resnet50", 224, 256, "bf16", 32)
    # The paper's 1000-epoch setting (Sec. 4.1, Table A5); the command line wins over the preset.
    assert (args.epochs, args.base_lr, args.weight_decay, args.tau_base, args.warmup_epochs) == (1000, 0.45, 1.5e-6, 0.99, 10.0)
    args = script.parse_args(["--preset", "1000ep-released"])  # the authors' released config
    script.resolve_defaults(args, on_gpu=True, local_world_size=8)
    assert (args.epochs, args.base_lr, args.weight_decay, args.tau_base) == (1000, 0.2, 1.5e-6, 0.996)
    args = script.parse_args(["--preset", "200ep"])
    script.resolve_defaults(args, on_gpu=False, local_world_size=1)
    assert (args.epochs, args.base_lr, args.weight_decay, args.tau_base) == (200, 0.45, 1.0e-6, 0.97)
    with pytest.raises(SystemExit):
        script.parse_args(["--resume", "/no/such/checkpoint.pth"])


def test_cpu_defaults_train_on_real_box_pairs(script):
    """The CPU demo's views, scenes and box settings fill most box slots (the run logs the share)."""
    args = script.parse_args([])
    script.resolve_defaults(args, on_gpu=False, local_world_size=1)
    transform = scrl.TwoViewTransform.byol(size=args.image_size, uint8=True)
    dataset = TwoViewDataset(script.build_dataset(args), transform, seed=0)
    geoms = [dataset[i][2:4] for i in range(128)]
    geom1, geom2 = (torch.utils.data.default_collate([g[v] for g in geoms]) for v in (0, 1))
    model = script.build_model(args)
    share = model.sampler(geom1, geom2, generator=torch.Generator().manual_seed(0)).valid.float().mean()
    assert share >= 0.6
    assert scrl.BoxPairSampler(min_size=32)(geom1, geom2).valid.float().mean() < 0.3  # one whole C5 cell would not


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--base-lr", "-1"], "--base-lr must be > 0, got -1.0"),
        (["--base-lr", "0"], "--base-lr must be > 0, got 0.0"),
        (["--base-lr", "nan"], "--base-lr must be > 0, got nan"),
        (["--weight-decay=-1e-6"], "--weight-decay must be >= 0, got -1e-06"),
        (["--tau-base", "-0.1"], "--tau-base must be in [0, 1], got -0.1"),
        (["--tau-base", "1.5"], "--tau-base must be in [0, 1], got 1.5"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0, got -1.0"),
        (["--image-size", "16"], "--image-size must be >= 32, got 16"),
        (["--roi-probe-size", "31"], "--roi-probe-size must be >= 32, got 31"),
        (["--projector-hidden", "0"], "--projector-hidden must be >= 1, got 0"),
        (["--projection-dim", "-4"], "--projection-dim must be >= 1, got -4"),
        (["--min-box-size", "0"], "--min-box-size must be > 0, got 0.0"),
        (["--image-size", "40", "--min-box-size", "100"], "--min-box-size must be at most --image-size (40), got 100.0"),
    ],
)
def test_out_of_range_flag_is_an_argparse_error_naming_it(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage:")


@pytest.mark.parametrize("pooling, aligned", [("exact", None), ("aligned", True), ("unaligned", False)])
def test_roi_pooling_flag_selects_the_rule(script, pooling, aligned):
    args = script.parse_args(["--roi-pooling", pooling, "--projector-hidden", "8", "--projection-dim", "4"])
    script.resolve_defaults(args, on_gpu=False, local_world_size=1)
    pool = script.build_model(args).roi_pool
    assert pool.aligned is aligned and pool.cell_offset == 0.5


def test_boundary_values_of_the_checked_flags_are_accepted(script):
    args = script.parse_args(["--weight-decay", "0", "--tau-base", "0", "--warmup-epochs", "0", "--image-size", "32",
                              "--roi-probe-size", "32", "--projector-hidden", "1", "--projection-dim", "1"])
    assert (args.weight_decay, args.tau_base, args.warmup_epochs, args.image_size) == (0.0, 0.0, 0.0, 32)
    assert script.parse_args(["--tau-base", "1"]).tau_base == 1.0


# Subprocesses on one thread too, so that their results can match the in-process runs bit for bit.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=ONE_THREAD)


@pytest.mark.slow
def test_sigterm_to_a_real_process_saves_and_exits_cleanly(uninterrupted, tmp_path):
    reference, ref_summary = uninterrupted
    cmd = [sys.executable, str(SCRIPT), *TINY, "--output-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ONE_THREAD)
    deadline = time.time() + 180
    while time.time() < deadline and not any("loss" in r for r in (_metrics(tmp_path) if (tmp_path / "metrics.jsonl").exists() else [])):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    stopped_at = _model_state(tmp_path)["step"]
    assert f"stopped by SIGTERM at step {stopped_at}" in output
    if stopped_at < 4:  # otherwise the run had finished before the signal arrived
        result = _run(cmd)
        assert result.returncode == 0, result.stderr
        assert f"resumed from {tmp_path / 'checkpoint_last.pth'}: step {stopped_at}" in result.stdout
    _assert_same_weights(_model_state(tmp_path), _model_state(reference))


@pytest.mark.slow
def test_two_processes_with_gloo_keep_identical_weights_and_resume(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(SCRIPT)]
    args = [*TINY, "--batch-size", "2", "--output-dir", str(tmp_path)]
    first = _run(torchrun + args + ["--max-steps", "1"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert "deprecated" not in first.stderr, first.stderr  # e.g. DDP's broadcast_buffers since torch 2.13
    digests = {line.split()[1].rstrip(":"): line.split()[-1] for line in first.stdout.splitlines() if "weights sha256" in line}
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], first.stdout
    ckpt = _model_state(tmp_path)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == 1
    start = _metrics(tmp_path)[0]
    assert start["world_size"] == 2 and start["lr"] == pytest.approx(0.45 * 4 / 256)

    second = _run(torchrun + args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from" in second.stdout and "step 1, epoch 0, batch 1" in second.stdout
    assert _metrics(tmp_path)[-1]["event"] == "end" and _metrics(tmp_path)[-1]["ranks_identical"] is True
    assert _model_state(tmp_path)["step"] == 4
