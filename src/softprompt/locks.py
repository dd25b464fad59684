"""Ownership of a directory while one process writes it: an OS file lock on `DIR/.softprompt.lock`.

A run directory (and a study directory) is written by one process at a time. `directory_lock`
takes an exclusive `fcntl.flock` on the lock file, which the kernel releases when the holder exits,
however it exits (SIGKILL, power loss of a local disk): a killed writer never leaves a directory
locked, and no stale lock needs cleaning. The holder writes its pid and host into the file, so a
second writer's one-line error names it. On NFS, Linux maps flock to NFS byte-range locks, which
work across hosts; where the filesystem has no locks at all, the directory is used unlocked with a
warning.

Creating the directory and the lock file is also the check that the directory is writable, done
before any model is loaded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from softprompt.errors import SoftPromptError, os_error_line, warn

try:  # POSIX; elsewhere directories are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".softprompt.lock"


def ensure_directory(path: Path, what: str) -> Path:
    """Create `path` (and its parents), or say in one line why it cannot be: a file in the way,
    no permission, a read-only filesystem. `what` names it in the message (`--out`, `run directory`)."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise SoftPromptError(f"{what} {path}: {parent} exists and is not a directory")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SoftPromptError(f"{what} {path}: cannot create it: {os_error_line(e)}") from None
    return path


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file (it may not have written yet)."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "null")
            if isinstance(info, dict):
                return f"pid {info.get('pid')} on {info.get('host')}"
        time.sleep(0.01)
    return "pid unknown"


@contextlib.contextmanager
def directory_lock(directory: str | Path, what: str = "run directory") -> Iterator[Path]:
    """Hold `directory` for this process until the block ends; a second writer gets a one-line error
    naming the holder. The directory is created if needed, and removed again (with the parents created for it) if
    the block fails leaving nothing in it but the lock: a refused command leaves no empty directory behind."""
    created = [p for p in (Path(directory), *Path(directory).parents) if not p.exists() and not p.is_symlink()]
    directory = ensure_directory(Path(directory), what)
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise SoftPromptError(f"{what} {directory} is not writable: {os_error_line(e)}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SoftPromptError(
                    f"{what} {directory} is being written by another softprompt process ({_holder(fd)}): "
                    "wait for it to finish or stop it, or use another directory"
                ) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                warn(f"{directory}: this filesystem does not support file locks; nothing stops a second writer")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        except OSError as e:
            raise SoftPromptError(f"{what} {directory} is not writable: {os_error_line(e)}") from None
        try:
            yield directory
        except BaseException:  # (only once the lock is ours: a refused second writer removes nothing)
            _remove_if_unused(created, path)
            raise
    finally:
        os.close(fd)  # releases the lock


def _remove_if_unused(created: list[Path], lock: Path) -> None:
    """Remove the directories this process created (leaf first) while they hold nothing but the lock file; the lock
    is unlinked while still held, so no other writer can be holding it. Never a directory that existed before."""
    with contextlib.suppress(OSError):
        if not created or [p.name for p in created[0].iterdir()] != [LOCK_FILE]:
            return
        lock.unlink()
        for d in created:
            d.rmdir()  # fails (and stops) at the first one something else was written into
