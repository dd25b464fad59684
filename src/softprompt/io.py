"""Atomic file writes: every artifact is written to a temporary name and renamed into place.

Artifacts get the mode an ordinary `open(path, "w")` would give them (0o666 less the process umask),
not the 0o600 of `tempfile.mkstemp`: a results directory shared by a group (umask 002) stays
readable by the group, and a private umask (077) keeps files private.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError

_UMASK_LOCK = threading.Lock()
SYMLINK_LOOP = "is a symbolic link loop (the link leads back to itself): fix or replace the link"


def symlink_loop(path: str | Path) -> bool:
    """Whether `path` is, or passes through, a symbolic link loop (`Path.exists()` then just says False)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def resolve_path(path: str | Path) -> Path:
    """`Path(path).resolve()`; a symbolic link loop is a one-line error naming the path (Python 3.11 raises
    `RuntimeError: Symlink loop`, which reads as a bug)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        if isinstance(e, RuntimeError) or e.errno == errno.ELOOP:
            raise SoftPromptError(f"{path} {SYMLINK_LOOP}") from None
        raise


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status);
    elsewhere set-and-restored under a lock, so two writers in this process never race."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")


def _as_os_error(e: BaseException, path: Path) -> BaseException:
    """The failure of a write to `path` as an OSError naming `path` (not its temporary name), so every
    writer's disk-full or permission error reads the same; safetensors reports the OS error only in
    its message (`... (os error 28)`). Anything else is returned unchanged."""
    if isinstance(e, OSError):
        return OSError(e.errno, e.strerror or str(e), str(path))
    m = _OS_ERROR_CODE.search(str(e)) if type(e).__name__ == "SafetensorError" else None
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code), str(path))
    return e


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (with the mode the umask
    gives new files), on error it is removed and `path` is left as it was. A filesystem failure
    (disk full, no permission) is raised as an OSError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _as_os_error(e, path) from e
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        translated = _as_os_error(e, path)
        if translated is e:
            raise
        raise translated from e


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files `atomic_path` left in `directory` when its writer was killed
    (SIGKILL, power loss) before it could rename or remove them. Call only while no other process
    writes there (a run directory is owned by the run resuming it)."""
    directory = Path(directory)
    stale = [p for p in directory.glob(".*.tmp") if p.is_file()] if directory.is_dir() else []
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_figure(path: str | Path, fig: Any, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure atomically: a failed or interrupted save leaves the previous image.
    The format comes from the suffix of `path` (the temporary name has none); closing `fig` is the caller's."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".").lower() or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return path


def read_json(path: str | Path) -> Any:
    from softprompt.errors import SoftPromptError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoftPromptError(f"{path} does not exist") from None
    except UnicodeDecodeError as e:
        raise SoftPromptError(f"{path}: not UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except OSError as e:  # a directory, no permission, ...
        raise SoftPromptError(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise SoftPromptError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
