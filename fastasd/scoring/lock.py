"""The run-folder lock: one process at a time writes a run folder's journal (``scores.csv``,
``errors.csv``, ``run.json``, the submission files), so two ``--resume`` runs cannot score every
clip twice and two ``--overwrite`` runs cannot lose each other's rows.

The lock is an exclusive ``flock`` on ``DIR/.fastasd.lock`` (which holds the owner's pid for the
message). The kernel releases it when the process ends, however it ends, so a stale lock file of
a dead process never blocks. On systems without ``fcntl`` nothing is locked.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

LOCK_FILE = ".fastasd.lock"
# never follow a link planted where the lock file goes (nor for any journal file)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class RunLocked(RuntimeError):
    """Another process holds the lock of the run folder (the message names its pid and the folder)."""


class RunLock:
    """An exclusive lock on a run folder, taken at construction, released by :meth:`release`
    (also a context manager).

    Raises:
        RunLocked: another live process holds it.
        OSError: the lock file cannot be created (e.g. ``DIR/.fastasd.lock`` is a symbolic link).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {owner}" if owner else "pid unknown"
                raise RunLocked(f"another fastasd process ({who}) is writing to {Path(run_dir)}; "
                                "wait for it to finish or stop it") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent); the file stays, empty of meaning once unlocked."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


__all__ = ["RunLock", "RunLocked", "LOCK_FILE", "O_NOFOLLOW"]
