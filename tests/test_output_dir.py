"""One run per output folder: the folder lock, and a run that died before its first checkpoint."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scrl.runtime import FolderLock, FolderLockedError
from scrl.runtime.folder_lock import LOCK_FILE
from scrl.train import PretrainConfig, Pretrainer, RunWarning, pretrainer

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    device="cpu", arch="resnet18", image_size=64, batch_size=4, synthetic_images=8, projector_hidden=32, projection_dim=16,
    epochs=1, warmup_epochs=0.5, log_every=1, workers=0,
)


def run(out, **settings):
    return Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(out), **settings})).run()


def hold(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder`` until it is killed."""
    code = f"from scrl.runtime import FolderLock; FolderLock({str(folder)!r}).acquire(); print('held', flush=True); import time; time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_is_refused_naming_the_folder_and_the_holder(tmp_path):
    holder = hold(tmp_path)
    try:
        with pytest.raises(FolderLockedError, match=rf"{tmp_path} is in use by another run \(process {holder.pid} on .*, since .*UTC\)"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = hold(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # the file stays, the lock went with the process
    with FolderLock(tmp_path) as lock:
        assert lock.held and f"process {os.getpid()} " in (tmp_path / LOCK_FILE).read_text()
    assert not lock.held
    FolderLock(tmp_path).acquire()  # released on exit: free again


def test_a_run_is_refused_at_once_while_another_holds_its_folder_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    holder = hold(out)
    try:
        trainer = Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(out)}))
        with pytest.raises(FolderLockedError, match=rf"output_dir='{out}': .*process {holder.pid} "):
            trainer.run()
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert run(out)["step"] == 2  # the holder is gone: the same folder now works


def test_the_script_exits_2_naming_the_process_that_holds_the_folder(tmp_path):
    out = tmp_path / "run"
    holder = hold(out)
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "pretrain_imagenet.py"), "--output-dir", str(out), "--epochs", "1", "--workers", "0"],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2, done.stderr
    assert f"error: --output-dir='{out}': {out} is in use by another run (process {holder.pid} on " in done.stderr
    assert not (out / "metrics.jsonl").exists()


def test_the_lock_is_released_when_a_run_fails(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pretrainer, "save_checkpoint", fail)
    with pytest.raises(OSError, match="No space left"):
        run(tmp_path)
    FolderLock(tmp_path).acquire()


def test_a_run_that_died_before_its_first_checkpoint_starts_afresh_with_a_notice(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):  # the disk fills before the first checkpoint: only metrics.jsonl is left
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(pretrainer, "save_checkpoint", fail)
        with pytest.raises(OSError):
            run(tmp_path)
    first_log = (tmp_path / "metrics.jsonl").read_text()
    assert not (tmp_path / "checkpoint_last.pth").exists() and '"event": "start"' in first_log
    capsys.readouterr()

    summary = run(tmp_path)  # the same command, resume="auto" as before
    assert summary["step"] == 2 and summary["stopped_by"] is None
    printed = capsys.readouterr().out
    (moved,) = tmp_path.glob("replaced-*")
    assert f"{tmp_path} held only the log of a run that never saved a checkpoint: starting afresh, the old log moved to {moved}" in printed
    assert (moved / "metrics.jsonl").read_text() == first_log  # nothing lost
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records if r.get("event") in ("start", "end")] == ["start", "end"]


def test_batch_size_one_without_sync_batchnorm_warns(tmp_path):
    with pytest.warns(RunWarning, match=r"batch_size=1 per process without SyncBatchNorm"):
        Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(tmp_path), "batch_size": 1, "synthetic_images": 2, "max_steps": 1})).run()


def test_a_run_that_is_not_started_holds_nothing(tmp_path):
    Pretrainer(PretrainConfig(**{**TINY, "output_dir": str(tmp_path)}))
    FolderLock(tmp_path).acquire()
