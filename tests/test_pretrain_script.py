"""examples/pretrain_imagenet.py as a user runs it: its flags, a short run, SIGTERM to a real process, torchrun."""

import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scrl.data import SyntheticScenes
from scrl.train import PretrainConfig, Pretrainer
from scrl.runtime import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "pretrain_imagenet.py"
# resnet18 on 64-px views, 4 images per step, 2 steps per epoch, small heads (tests/test_train.py's TINY as flags).
TINY = [
    "--device", "cpu", "--arch", "resnet18", "--image-size", "64", "--batch-size", "4", "--synthetic-images", "8",
    "--projector-hidden", "32", "--projection-dim", "16", "--epochs", "2", "--warmup-epochs", "0.5",
    "--log-every", "1", "--workers", "0", "--base-lr", "0.45", "--weight-decay", "1e-6", "--tau-base", "0.97",
]


@pytest.fixture(scope="module")
def script_main():
    return runpy.run_path(str(SCRIPT))["main"]


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _checkpoint(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoint_last.pth")


def _assert_same_weights(a, b):
    assert a["step"] == b["step"] and a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """2 epochs (4 steps) of SCRL through the library, on one thread like the subprocesses below."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = PretrainConfig(
            device="cpu", arch="resnet18", image_size=64, batch_size=4, synthetic_images=8, projector_hidden=32,
            projection_dim=16, epochs=2, warmup_epochs=0.5, log_every=1, workers=0, base_lr=0.45, weight_decay=1e-6,
            tau_base=0.97, output_dir=str(out),
        )
        summary = Pretrainer(config).run()
    finally:
        torch.set_num_threads(threads)
    return out, summary


def test_flags_run_the_same_training_as_the_library(script_main, reference, tmp_path, capsys):
    ref_dir, ref_summary = reference
    summary = script_main(TINY + ["--output-dir", str(tmp_path)])
    assert summary["weights_sha256"] == ref_summary["weights_sha256"] and summary["step"] == 4
    out = capsys.readouterr().out
    assert "scrl resnet18: 8 images, 1 process(es) x 4 = 4 per step" in out and "epoch 1 step 4/4 loss" in out
    assert f"finished at step 4; checkpoint {tmp_path / 'checkpoint_last.pth'}" in out
    assert (tmp_path / "backbone_torchvision.pth").exists()
    _assert_same_weights(_checkpoint(tmp_path), _checkpoint(ref_dir))


def test_a_refused_resume_and_a_warning_name_the_flags(script_main, reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    with pytest.raises(SystemExit) as exit_info:
        script_main(TINY + ["--output-dir", str(out), "--base-lr", "4.5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--base-lr: 0.45 in the checkpoint, 4.5 now" in err and "with --overwrite, which moves the old run aside" in err
    with pytest.raises(SystemExit):
        script_main(TINY + ["--output-dir", str(out), "--resume", "none"])
    assert "--resume='none' starts a new run" in capsys.readouterr().err
    script_main(TINY + ["--output-dir", str(tmp_path / "byol"), "--method", "byol", "--num-boxes", "4", "--max-steps", "1"])
    assert "warning: --num-boxes has no effect with --method='byol'" in capsys.readouterr().err


def test_cpu_defaults_are_announced(script_main, tmp_path, capsys):
    summary = script_main(["--device", "cpu", "--synthetic-images", "32", "--max-steps", "1", "--projector-hidden", "32",
                           "--projection-dim", "16", "--workers", "0", "--output-dir", str(tmp_path)])
    assert summary["step"] == 1
    out = capsys.readouterr().out
    assert "no GPU: using CPU defaults epochs=10 base_lr=0.45" in out and "arch=resnet18" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--base-lr", "-1"], "--base-lr must be > 0 and finite, got -1.0"),
        (["--base-lr", "0"], "--base-lr must be > 0 and finite, got 0.0"),
        (["--base-lr", "nan"], "--base-lr must be > 0 and finite, got nan"),
        (["--weight-decay=-1e-6"], "--weight-decay must be >= 0 and finite, got -1e-06"),
        (["--tau-base", "-0.1"], "--tau-base must be in [0, 1], got -0.1"),
        (["--tau-base", "1.5"], "--tau-base must be in [0, 1], got 1.5"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0 and finite, got -1.0"),
        (["--image-size", "16"], "--image-size must be >= 32, got 16"),
        (["--roi-probe-size", "31"], "--roi-probe-size must be >= 32, got 31"),
        (["--projector-hidden", "0"], "--projector-hidden must be >= 1, got 0"),
        (["--projection-dim", "-4"], "--projection-dim must be >= 1, got -4"),
        (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
        (["--save-every", "-1"], "--save-every must be >= 0, got -1"),
        (["--min-box-size", "0"], "--min-box-size must be > 0 and finite, got 0.0"),
        (["--image-size", "40", "--min-box-size", "100"], "--min-box-size must be at most --image-size=40, got 100.0"),
        (["--resume", "/no/such/checkpoint.pth"], "--resume='/no/such/checkpoint.pth': no such checkpoint file"),
        (["--method", "simclr"], "invalid choice: 'simclr'"),
        (["--arch", "vgg16"], "--arch='vgg16' is not a supported trunk"),
    ],
)
def test_out_of_range_flag_is_an_argparse_error_naming_it(script_main, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage:")


# Subprocesses on one thread too, so that their results can match the in-process runs bit for bit.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=ONE_THREAD)


def test_help_lists_every_setting():
    result = _run([sys.executable, str(SCRIPT), "--help"])
    assert result.returncode == 0, result.stderr
    for field in PretrainConfig.__dataclass_fields__:
        assert f"--{field.replace('_', '-')}" in result.stdout, field


@pytest.mark.slow
def test_sigterm_to_a_real_process_saves_and_exits_cleanly(reference, tmp_path):
    ref_dir, _ = reference
    cmd = [sys.executable, str(SCRIPT), *TINY, "--output-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ONE_THREAD)
    deadline = time.time() + 180
    while time.time() < deadline and not any("loss" in r for r in (_metrics(tmp_path) if (tmp_path / "metrics.jsonl").exists() else [])):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    stopped_at = _checkpoint(tmp_path)["step"]
    assert f"stopped by SIGTERM at step {stopped_at}" in output
    if stopped_at < 4:  # otherwise the run had finished before the signal arrived
        result = _run(cmd)
        assert result.returncode == 0, result.stderr
        assert f"resumed from {tmp_path / 'checkpoint_last.pth'}: step {stopped_at}" in result.stdout
    _assert_same_weights(_checkpoint(tmp_path), _checkpoint(ref_dir))


@pytest.mark.slow
def test_two_processes_with_gloo_keep_identical_weights_and_resume(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(SCRIPT)]
    args = [*TINY, "--batch-size", "2", "--output-dir", str(tmp_path)]
    first = _run(torchrun + args + ["--max-steps", "1"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert "deprecated" not in first.stderr, first.stderr  # e.g. DDP's broadcast_buffers since torch 2.13
    digests = {line.split()[1].rstrip(":"): line.split()[-1] for line in first.stdout.splitlines() if "weights sha256" in line}
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], first.stdout
    ckpt = _checkpoint(tmp_path)
    assert ckpt["world_size"] == 2 and len(ckpt["streams"]) == 2 and ckpt["step"] == 1
    start = _metrics(tmp_path)[0]
    assert start["world_size"] == 2 and start["lr"] == pytest.approx(0.45 * 4 / 256)

    second = _run(torchrun + args + ["--max-steps", "2"])
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from" in second.stdout and "step 1, epoch 0, batch 1" in second.stdout
    assert _metrics(tmp_path)[-1]["event"] == "end" and _metrics(tmp_path)[-1]["ranks_identical"] is True
    assert _checkpoint(tmp_path)["step"] == 2

    # One process with twice the batch: the same 4 images per step and schedule, so it continues (and says how).
    third = _run([sys.executable, str(SCRIPT), *TINY, "--batch-size", "4", "--output-dir", str(tmp_path)])
    assert third.returncode == 0, third.stdout + third.stderr
    assert "2 process(es) x --batch-size=2, this run has 1 x 4: the same 4 images per step" in third.stderr
    assert "step 2, epoch 1, batch 0" in third.stdout and _checkpoint(tmp_path)["step"] == 4
    # Another global batch would change the schedule: refused.
    fourth = _run([sys.executable, str(SCRIPT), *TINY, "--batch-size", "2", "--output-dir", str(tmp_path), "--epochs", "3"])
    assert fourth.returncode == 2 and "--epochs: 2 in the checkpoint, 3 now" in fourth.stderr
    assert "images per step (batch_size x processes): 4 in the checkpoint, 2 now" in fourth.stderr


@pytest.mark.slow
def test_two_processes_decode_on_the_device_with_identical_weights_and_resume(tmp_path):
    data = tmp_path / "jpegs"
    data.mkdir()
    scenes = SyntheticScenes(8, image_size=96, seed=3)
    for i in range(len(scenes)):
        scenes[i][0].save(data / f"img{i}.jpg", quality=90)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(SCRIPT)]
    tiny = TINY[: TINY.index("--synthetic-images")] + TINY[TINY.index("--synthetic-images") + 2 :]
    args = [*tiny, "--data", str(data), "--batch-size", "2", "--decode-on-device", "--output-dir", str(tmp_path / "run")]
    first = _run(torchrun + args + ["--max-steps", "1"])
    assert first.returncode == 0, first.stdout + first.stderr
    assert "(decoded, cropped and augmented on the device)" in first.stdout
    second = _run(torchrun + args + ["--max-steps", "3"])
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from" in second.stdout and "step 1, epoch 0, batch 1" in second.stdout
    digests = {line.split()[1].rstrip(":"): line.split()[-1] for line in second.stdout.splitlines() if "weights sha256" in line}
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], second.stdout
    ckpt = _checkpoint(tmp_path / "run")
    assert ckpt["step"] == 3 and ckpt["args"]["decode_on_device"] is True
    assert all(set(state["generators"]) == {"boxes", "augment"} for state in ckpt["streams"])  # one device stream per rank


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("folder, message", [
    ("empty", r"image folder '.*empty' contains no images"),
    ("unreadable", r"unreadable images in a row from '.*unreadable.*' on \(--max-consecutive-unreadable=3\): the folder looks broken"),
    ("missing", r"image folder '.*missing' does not exist"),
])
def test_unusable_data_is_a_named_error_with_exit_status_2(script_main, tmp_path, capsys, folder, message, workers):
    data = tmp_path / folder
    if folder != "missing":
        data.mkdir()
    if folder == "unreadable":
        for i in range(5):
            (data / f"{i}.jpg").write_text("not an image")
    with pytest.raises(SystemExit) as exit_info:
        script_main(TINY + ["--output-dir", str(tmp_path / "run"), "--data", str(data), "--workers", str(workers),
                            "--max-consecutive-unreadable", "3", "--min-box-size", "8"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and re.search(message, err), err
    assert "Traceback" not in err and "DataLoader worker" not in err
