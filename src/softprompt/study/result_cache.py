"""The study's result cache: one JSON entry per unit of work, kept under its key and the inputs it read.

A re-run skips work whose entry is complete under the current key (or the key an older softprompt computed
for the same work, then upgraded) and whose tasks' inputs (data and definition digests) are unchanged; a
damaged entry is a miss, said in a warning, and recomputed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.data.inputs import input_changes
from softprompt.errors import SoftPromptError, warn
from softprompt.io import read_json, write_json


def inputs_changed(saved: dict[str, Any] | None, current: dict[str, dict[str, Any]]) -> bool:
    """Whether any task's inputs (`{task: digests}`) differ from those a cached result recorded; a
    result cached before digests were recorded (`saved` None) is trusted, like an old run."""
    if saved is None:
        return False
    return any(input_changes(saved.get(task) or {}, digests) for task, digests in current.items())


def cache_hit(path: Path, key: str | tuple[str, ...], inputs: dict[str, dict[str, Any]] | None = None) -> Any | None:
    """The cached value at `path` if it was stored under `key` (or one of `key`s: the current key first, then the
    key an older softprompt computed for the same work, which is then upgraded to the current one) and its inputs."""
    keys = (key,) if isinstance(key, str) else key
    if path.exists():
        saved = read_entry(path)
        done = saved.get("key") in keys and saved.get("status") == "complete" and "value" in saved
        if done and not inputs_changed(saved.get("inputs"), inputs or {}):
            if saved["key"] != keys[0]:
                store(path, keys[0], saved["value"], saved.get("inputs"), seconds=saved.get("seconds"))
            return saved["value"]
    return None


def read_entry(path: Path) -> dict[str, Any]:
    """A cache entry or key file of the study (results it can recompute), checked: a JSON object whose `inputs`, if
    any, map tasks to digests. A damaged one (invalid JSON, another shape) is a miss, said in a warning, and redone."""
    try:
        saved = read_json(path)
    except SoftPromptError as e:
        warn(f"{e}: this cached result is recomputed")
        return {}
    inputs = saved.get("inputs") if isinstance(saved, dict) else None
    if not isinstance(saved, dict) or not (
        inputs is None or (isinstance(inputs, dict) and all(isinstance(v, dict) for v in inputs.values()))
    ):
        warn(f"{path}: not a cache entry of this study (expected a JSON object with a key and its inputs): it is recomputed")
        return {}
    return saved


def store(
    path: Path,
    key: str | tuple[str, ...],
    value: Any,
    inputs: dict[str, dict[str, Any]] | None = None,
    *,
    seconds: float | None = None,
) -> Any:
    """Cache `value` under `key` (the first, current one of `analysis_units.analysis_keys`), with the `seconds` computing
    it took when given (a later invocation that reads it back reports that time as what the result cost)."""
    entry = {"key": key if isinstance(key, str) else key[0], "status": "complete", "value": value, "inputs": inputs or {}}
    write_json(path, entry if seconds is None else {**entry, "seconds": seconds})
    return value
