"""Tables computed from results.json: the accuracy table and its CSV form."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from pathlib import Path

from softprompt.io import write_text
from softprompt.tasks import task_name

METHOD_LABELS = {
    "majority": "majority class",
    "no_prompt": "no prompt",
    "english_prompt": "English prompt (hard)",
    "soft_prompt": "soft prompt (mean ± std over seeds)",
    "soft_prompt_dev": "soft prompt, dev-selected (mean ± std)",
    "finetune": "full fine-tuning",
    "lora": "LoRA",
    "hard": "hard prompt (PEZ), its token rows",
    "hard_text": "hard prompt (PEZ), its text typed",
}


def method_label(row: dict) -> str:
    """A row's method in words; a hard prompt's row adds its text (newlines shown as \\n)."""
    label = METHOD_LABELS.get(row["method"], row["method"])
    text = row.get("prompt_text")
    if text is None:
        return label
    shown = text.replace("\n", "\\n")
    return f"{label}: “{shown}”"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _baseline_row(task: str, method: str, b: dict) -> dict:
    return {
        "task": task,
        "method": method,
        "accuracy": b["accuracy"],
        "accuracy_std": None,
        "f1_macro": b["f1_macro"],
        "calibrated_accuracy": b.get("calibrated_accuracy"),  # content-free calibration: a column next to the raw one
        "calibrated_f1_macro": b.get("calibrated_f1_macro"),
        "trainable_parameters": b.get("trainable_parameters", 0),
        "n_runs": 1,
    }


def calibrated_values(runs: Sequence[dict], metric: str) -> list[float] | None:
    """The runs' content-free calibrated `metric` (of their last prompt), one per run; None unless every run has it
    (runs trained before calibration existed, or a task it does not apply to)."""
    values = [((r.get("final") or {}).get("calibrated") or {}).get(metric) for r in runs]
    return None if not values or None in values else values


def accuracy_rows(results: dict) -> list[dict]:
    """One row per (task, method): metric values and trainable-parameter counts."""
    rows = []
    by_task: dict[str, list[dict]] = {}
    for r in results["runs"]:
        by_task.setdefault(r["task"], []).append(r)
    for key, runs in by_task.items():
        base = results.get("baselines", {}).get(key, {})
        task = task_name(key)  # runs and baselines are keyed by the task as given (a custom task's path)
        rows += [_baseline_row(task, m, base[m]) for m in ("majority", "no_prompt", "english_prompt") if m in base]
        m, s = mean_std([r["final"]["accuracy"] for r in runs])
        rows.append(
            {
                "task": task,
                "method": "soft_prompt",
                "accuracy": m,
                "accuracy_std": s,
                "f1_macro": mean_std([r["final"]["f1_macro"] for r in runs])[0],
                **{f"calibrated_{k}": _mean_or_none(calibrated_values(runs, k)) for k in ("accuracy", "f1_macro")},
                "trainable_parameters": runs[0]["parameters"].get("trainable", 0),
                "n_runs": len(runs),
            }
        )
        dev = _dev_selected_row(task, runs)
        if dev is not None:
            rows.append(dev)
        rows += [_baseline_row(task, m, base[m]) for m in ("finetune", "lora") if m in base]
        rows += _hard_rows(task, base["hard"]) if "hard" in base else []
    return rows


def _hard_rows(task: str, b: dict) -> list[dict]:
    """The hard baseline: its exact token rows (the row's accuracy) and, when scored, its text typed as a hard prompt."""
    text = b.get("hard_prompt")
    rows = [_baseline_row(task, "hard", b) | {"prompt_text": text}]
    if b.get("text_accuracy") is not None:
        typed = {
            "accuracy": b["text_accuracy"],
            "f1_macro": b["text_f1_macro"],
            "trainable_parameters": b.get("trainable_parameters", 0),
        }
        rows.append(_baseline_row(task, "hard_text", typed) | {"prompt_text": text})
    return rows


def _mean_or_none(values: list[float] | None) -> float | None:
    return None if values is None else statistics.fmean(values)


def dev_selected_values(runs: Sequence[dict]) -> tuple[str, list[float]] | None:
    """(metric, validation values) of the prompts chosen on the dev split carved from the training data, one per
    run; None unless every run chose one (a run without a dev split has no selection: its last prompt is its best)."""
    bests = [r.get("best") or {} for r in runs]
    if not bests or any(b.get("split") != "dev" or b.get("validation") is None for b in bests):
        return None
    metrics = {b.get("metric") for b in bests}
    if len(metrics) != 1 or None in metrics:
        return None
    return metrics.pop(), [b["validation"] for b in bests]


def _dev_selected_row(task: str, runs: Sequence[dict]) -> dict | None:
    """The dev-selected prompts' validation score, in the column of the task's metric (the best file is
    chosen on the task's metric alone, so the other column stays empty)."""
    found = dev_selected_values(runs)
    if found is None:
        return None
    metric, values = found
    m, s = mean_std(values)
    row = {"task": task, "method": "soft_prompt_dev", "accuracy": None, "accuracy_std": None, "f1_macro": None}
    if metric == "f1_macro":
        row["f1_macro"] = m
    else:
        row.update(accuracy=m, accuracy_std=s)
    return row | {"trainable_parameters": runs[0]["parameters"].get("trainable", 0), "n_runs": len(runs)}


def to_csv(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    write_text(path, to_csv(rows))
