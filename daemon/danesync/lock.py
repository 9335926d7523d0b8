"""One danesync per state directory: an exclusive lock on `<state.dir>/lock`.

`run` and `sync` hold it for as long as they run; `status` and `check` only
read, and take no lock. The kernel drops the lock when the process dies, so a
crash never leaves it behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from danesync.errors import DanesyncError

LOCK_FILE = "lock"


class LockHeld(DanesyncError):
    """Another danesync process holds the state directory's lock."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        who = f" (pid {holder})" if holder else ""
        super().__init__(
            f"another danesync process{who} holds {path}: the daemon is running and does "
            "the passes itself (send it SIGUSR1 for a full pass now)"
        )


class StateLock:
    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def release(self) -> None:
        os.close(self.fd)


def acquire_lock(state_dir: Path) -> StateLock:
    """Take the lock without waiting; LockHeld if another process has it."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise LockHeld(path, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(fd, path)
