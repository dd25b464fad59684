"""What a folder keeps of interrupted work, in words: the message after Ctrl-C or SIGTERM says only what exists.

`run_progress` reads one run directory (its run.json and its checkpoint's step), `folder_progress` every run
directory under a study or baselines folder. Nothing here loads a model or a tensor: the checkpoint's step is read
from its header.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from softprompt.records.run import RUN_FILE
from softprompt.runs.directory import CHECKPOINT_FILE

_HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is not one softprompt wrote


def checkpoint_step(path: Path) -> int | None:
    """The optimiser step a checkpoint holds, from its header's metadata (None: no file, or not readable as one)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _HEADER_LIMIT:
                return None
            state = json.loads(json.loads(f.read(size))["__metadata__"]["state"])
        step = state["optimizer_step"]
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _status(run_dir: Path) -> str | None:
    try:
        status = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def run_progress(run_dir: Path) -> tuple[str, str]:
    """(what `run_dir` holds, what to do): `nothing was written to DIR` / `DIR holds a complete run` / `progress was
    checkpointed at step N in DIR` / `DIR holds the run's settings but no checkpoint yet`, with the command's
    continuation (`start`, `none`, `resume`)."""
    if not (run_dir / RUN_FILE).is_file():
        return f"nothing was written to {run_dir}", "start"
    if _status(run_dir) == "complete":
        return f"{run_dir} holds the complete run", "none"
    step = checkpoint_step(run_dir / CHECKPOINT_FILE)
    if step is None:
        return f"{run_dir} holds no checkpoint yet", "resume"
    return f"progress was checkpointed at step {step} in {run_dir}", "resume"


def folder_progress(folder: Path) -> str | None:
    """What the run directories under a study's or baselines' `folder` keep (`2 runs complete, runs/rte-s1
    checkpointed at step 40`); None when it holds no run directory."""
    if not folder.is_dir():
        return None
    complete, checkpointed, started = 0, [], 0
    for record in sorted(folder.rglob(RUN_FILE)):
        run_dir = record.parent
        if _status(run_dir) == "complete":
            complete += 1
            continue
        step = checkpoint_step(run_dir / CHECKPOINT_FILE)
        if step is None:
            started += 1
        else:
            checkpointed.append(f"{run_dir.relative_to(folder).as_posix()} checkpointed at step {step}")
    if not (complete or checkpointed or started):
        return None
    parts = [f"{complete} run{'s' * (complete != 1)} complete"] if complete else []
    parts += checkpointed
    if started:
        parts.append(f"{started} run{'s' * (started != 1)} started without a checkpoint yet")
    return ", ".join(parts)
