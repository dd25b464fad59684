"""metrics.jsonl: one evaluation a line, written by the trainer; `read_metrics` checks every line, `read_history`
reads them as `MetricsLine` records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.records.metrics import MetricsLine

METRICS_FILE = "metrics.jsonl"

# the fields the study's summary and the report read, by JSON type
_METRIC_FIELDS = {"epoch": (int, float), "step": int, "accuracy": (int, float)}
_OPTIONAL_METRIC_FIELDS = {"train_loss": (int, float), "f1_macro": (int, float), "acc_norm": (int, float), "dev": dict}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl (empty if absent), every line checked: a JSON object with the fields the study's
    summary, the learning verdict and the report read, of their types. A damaged line is one error, FILE:LINE."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SoftPromptError(f"{path}: cannot read it ({e})") from None
    history = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            history.append(_metrics_line(line, f"{path}:{number}"))
    return history


def _metrics_line(line: str, where: str) -> dict[str, Any]:
    fix = "the run's metrics file is damaged: restore it, or retrain the run (in a study, delete its directory)"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise SoftPromptError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); {fix}") from None
    if not isinstance(record, dict):
        raise SoftPromptError(f"{where}: expected a JSON object, got {type(record).__name__}; {fix}")
    for name, kind in (*_METRIC_FIELDS.items(), *_OPTIONAL_METRIC_FIELDS.items()):
        value = record.get(name)
        if value is None and name in _OPTIONAL_METRIC_FIELDS:
            continue
        if name not in record:
            raise SoftPromptError(f"{where}: missing field {name!r}; {fix}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SoftPromptError(f"{where}: field {name!r} is {value!r:.60}, not {_type_name(kind)}; {fix}")
    return record


def _type_name(kind: Any) -> str:
    return {int: "an integer", dict: "a JSON object"}.get(kind, "a number")


def read_history(run_dir: str | Path) -> list[MetricsLine]:
    """metrics.jsonl as typed lines (`read_metrics`, each line then read through `MetricsLine`)."""
    where = str(Path(run_dir) / METRICS_FILE)
    return [MetricsLine.from_dict(r, f"{where}:{i}") for i, r in enumerate(read_metrics(run_dir), 1)]
