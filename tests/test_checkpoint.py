import errno
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from scrl.runtime import checkpoint as ckpt


def test_roundtrip_with_weights_only(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "step": 7,
        "args": {"arch": "resnet18", "data": None, "lr": 0.1},
        "skipped_files": ["/a/b.jpg"],
        "streams": [{"salt": [], "generators": {"boxes": torch.Generator().manual_seed(1).get_state()}}],
    }
    path = tmp_path / "run" / "checkpoint_last.pth"
    ckpt.save_checkpoint(state, path)
    loaded = ckpt.load_checkpoint(path)  # weights_only=True
    assert loaded["step"] == 7 and loaded["args"] == state["args"] and loaded["skipped_files"] == ["/a/b.jpg"]
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    assert ckpt.latest_checkpoint(tmp_path / "run") == str(path)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pth"
    ckpt.save_checkpoint({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint({"step": 2}, path)
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint_last.pth"]


def test_save_is_synced_and_renamed_and_cleans_leftovers(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pth"
    ckpt.save_checkpoint({"step": 1}, path)
    # A process killed mid-save leaves its temporary file behind; it is never mistaken for a checkpoint.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".tmp-checkpoint_last.pth.{socket.gethostname()}.{int(ended.stdout)}.x1").write_bytes(b"torn")
    assert ckpt.latest_checkpoint(tmp_path) == str(path)
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))

    def replace(src, dst):
        # At the moment of the rename the new data is complete and on disk, the old file still intact.
        assert calls == ["fsync"] and ckpt.load_checkpoint(dst)["step"] == 1 and ckpt.load_checkpoint(src)["step"] == 2
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    ckpt.save_checkpoint({"step": 2}, path)
    assert calls == ["fsync", "replace", "fsync"]  # file, rename, folder
    assert ckpt.load_checkpoint(path)["step"] == 2
    assert os.listdir(tmp_path) == ["checkpoint_last.pth"]


def test_a_save_leaves_the_temporary_files_of_live_writers_alone(tmp_path):
    # Another process saving into the same folder right now, or one on another host of a shared
    # file system (whose liveness cannot be checked from here), keeps its temporary file.
    live = tmp_path / f".tmp-checkpoint_last.pth.{socket.gethostname()}.{os.getpid()}.x2"
    remote = tmp_path / ".tmp-checkpoint_last.pth.other-node.17.x3"
    live.write_bytes(b"being written")
    remote.write_bytes(b"being written elsewhere")
    ckpt.save_checkpoint({"step": 1}, tmp_path / "checkpoint_last.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint_last.pth", live.name, remote.name])


def test_a_failing_write_names_the_path_and_the_cause_and_keeps_the_old_checkpoint(tmp_path):
    """A file-size limit makes the write fail part-way, as a full disk would."""
    path = tmp_path / "checkpoint_last.pth"
    ckpt.save_checkpoint({"step": 1}, path)
    script = (
        "import resource, sys, torch\n"
        "from scrl.runtime import save_checkpoint\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))\n"
        "try:\n"
        f"    save_checkpoint({{'weights': torch.zeros(100_000)}}, {str(path)!r})\n"
        "except OSError as err:\n"
        "    print(type(err).__name__, err.errno, err)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"could not write {path}: File too large" in result.stdout and f" {errno.EFBIG} " in result.stdout
    assert ckpt.load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_checkpoints_are_written_with_the_umask_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        ckpt.save_checkpoint({"step": 1}, tmp_path / "a.pth")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"not a checkpoint", "is not a readable checkpoint"), (None, "holds a Tensor, not a checkpoint dict")],
)
def test_unreadable_checkpoints_raise_a_checkpoint_error_naming_the_path(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if content is None:
        torch.save(torch.zeros(2), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=re.escape(str(path)) + ".*" + message):
        ckpt.load_checkpoint(path)
