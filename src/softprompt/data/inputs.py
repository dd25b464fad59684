"""What a result is computed from besides its config: the task's definition and its data files' content.

A run's identity is its TrainConfig, these digests and the model revision. run.json records them
(`RunRecord.inputs`); `train --resume` refuses a run whose inputs changed, and a study's work keys
include them, so a changed data file (labels fixed, rows added) or task definition (template, label
words, description) is noticed instead of silently kept, or mixed with the old inputs.

- a built-in task's definition: its template, label words and values, description, metric, data
  source and the source code of its formatting functions (COPA, WSC);
- a task file's definition: the parsed TOML (a comment or spacing change is not a change);
- a split's data: the SHA-256 of the file's bytes; a Hub split: its repository, config and pinned
  revision (the content of a commit never changes); an unpinned Hub split is unknown (None).

Computing the digests reads every data file a run needs, so a missing or unreadable one is a
one-line error before any model is loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import tomllib
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError, os_error_line
from softprompt.tasks import Task, get_task
from softprompt.tasks.data import split_file

TASK_SPLITS = ("train", "validation")  # what a run (and a study's baselines) reads
MODEL_REVISION = "model_revision"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes; an unreadable file is a one-line error naming it."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise SoftPromptError(f"cannot read {os_error_line(e)}") from None
    return h.hexdigest()


def _code(fn: Any) -> str | None:
    if fn is None:
        return None
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def task_definition(task: Task, spec: str) -> dict[str, Any]:
    """What defines `task` (named `spec`: a built-in name or a .toml path), as plain JSON."""
    if spec.endswith(".toml"):
        path = Path(spec).expanduser()
        try:
            return {"toml": tomllib.loads(path.read_bytes().decode("utf-8-sig"))}
        except OSError as e:
            raise SoftPromptError(f"task file {os_error_line(e)}") from None
    src = task.source
    return {
        "name": task.name,
        "description": task.description,
        "template": task.template,
        "label_words": list(task.label_words),
        "label_values": list(task.label_values),
        "label_field": task.label_field,
        "metric": task.metric,
        "answer_prefix": task.answer_prefix,
        "source": {"files": src.files, "hub": src.hub, "hub_revision": src.hub_revision, "hub_splits": src.hub_splits},
        "context_fn": _code(task.context_fn),
        "choices_fn": _code(task.choices_fn),
    }


def split_digest(task: Task, split: str, data_dir: str | Path | None) -> str | None:
    """The content digest of one split's data (None: an unpinned Hub split, whose content is unknown)."""
    path = split_file(task, split, data_dir)
    if path is not None:
        return file_sha256(path)
    repo, config = task.source.hub or ("", None)
    if not task.source.hub_revision:
        return None
    hub_split = task.source.hub_splits.get(split, split)
    return _sha256(f"hub:{repo}/{config}@{task.source.hub_revision}:{hub_split}".encode())


def task_inputs(spec: str, data_dir: str | Path | None, splits: tuple[str, ...] = TASK_SPLITS) -> dict[str, Any]:
    """{"task": digest of the definition, "data": {split: digest}} of the task named `spec`."""
    task = get_task(spec)
    definition = json.dumps(task_definition(task, spec), sort_keys=True, default=str)
    return {"task": _sha256(definition.encode()), "data": {s: split_digest(task, s, data_dir) for s in splits}}


def input_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between the inputs a result was computed from and today's, in words (`train data`,
    `task definition`, `model revision`). A digest unknown on either side (a run older than the
    digests, an unpinned Hub split, a model not loaded yet) is not a change."""
    changed = []
    if saved.get("task") and current.get("task") and saved["task"] != current["task"]:
        changed.append("task definition")
    old, new = saved.get("data") or {}, current.get("data") or {}
    changed += [f"{s} data" for s in sorted(set(old) & set(new)) if old[s] and new[s] and old[s] != new[s]]
    a, b = saved.get(MODEL_REVISION), current.get(MODEL_REVISION)
    if a and b and a != b:
        changed.append("model revision")
    return changed
