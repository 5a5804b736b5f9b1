"""One process at a time in a folder: an exclusive operating-system lock that dies with its holder."""

from __future__ import annotations

import datetime
import os
import socket
from types import TracebackType

__all__ = ["FolderLock", "FolderLockedError", "LOCK_FILE"]

LOCK_FILE = ".scrl.lock"

if os.name == "nt":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class FolderLockedError(RuntimeError):
    """Another live process holds the folder; the message names the folder and that process."""


class FolderLock:
    """An exclusive lock on ``folder`` for as long as it is held, released by the OS if the holder dies.

    The lock is ``flock`` on ``<folder>/.scrl.lock`` (``msvcrt.locking`` on Windows), which the
    operating system drops with the process, so a ``kill -9`` leaves no stale lock behind: the
    file stays, but nothing holds it. The holder writes its process id, host and start time
    into the file, which is how a refused process learns whom to name. On network file systems
    the lock is only as good as their lock support (NFSv4 and Lustre honour ``flock``).

    Args:
        folder: the folder to hold; created if missing.

    Raises (from :meth:`acquire`):
        FolderLockedError: another process holds the lock.

    Example:
        >>> with FolderLock("runs/r50"):
        ...     train()  # a second process on runs/r50 is refused until this one ends
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock at once or raise :class:`FolderLockedError`; taking a held lock again does nothing."""
        if self._fd is not None:
            return
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            locked = _try_lock(fd)
        except OSError as exc:  # e.g. ENOLCK: a file system without locks
            os.close(fd)
            raise OSError(exc.errno, f"cannot lock {self.folder} ({exc.strerror}): its file system offers no file locks, "
                                     "so two runs could share it; use a folder on a local or lock-aware file system") from exc
        if not locked:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderLockedError(f"{self.folder} is in use by another run ({holder}); wait for it to end, or use another folder")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (idempotent); the OS does the same when the process ends."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.folder!r}, held={self.held})"


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 512).decode(errors="replace").strip()
    except OSError:  # Windows locks the bytes themselves against reading
        text = ""
    return text or "a process that has not written its name yet, or whose name cannot be read"
