"""Atomic file writes: every artifact is written to a temporary name and renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


def read_json(path: str | Path) -> Any:
    from softprompt.errors import SoftPromptError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoftPromptError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise SoftPromptError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
