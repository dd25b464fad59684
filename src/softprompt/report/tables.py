"""Tables computed from results.json: the accuracy table and its CSV form."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from pathlib import Path

from softprompt.io import write_text

METHOD_LABELS = {
    "majority": "majority class",
    "no_prompt": "no prompt",
    "english_prompt": "English prompt (hard)",
    "soft_prompt": "soft prompt (mean ± std over seeds)",
    "finetune": "full fine-tuning",
    "lora": "LoRA",
}


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
        "trainable_parameters": b.get("trainable_parameters", 0),
        "n_runs": 1,
    }


def accuracy_rows(results: dict) -> list[dict]:
    """One row per (task, method): metric values and trainable-parameter counts."""
    rows = []
    by_task: dict[str, list[dict]] = {}
    for r in results["runs"]:
        by_task.setdefault(r["task"], []).append(r)
    for task, runs in by_task.items():
        base = results.get("baselines", {}).get(task, {})
        rows += [_baseline_row(task, m, base[m]) for m in ("majority", "no_prompt", "english_prompt") if m in base]
        m, s = mean_std([r["final"]["accuracy"] for r in runs])
        rows.append(
            {
                "task": task,
                "method": "soft_prompt",
                "accuracy": m,
                "accuracy_std": s,
                "f1_macro": mean_std([r["final"]["f1_macro"] for r in runs])[0],
                "trainable_parameters": runs[0]["parameters"].get("trainable", 0),
                "n_runs": len(runs),
            }
        )
        rows += [_baseline_row(task, m, base[m]) for m in ("finetune", "lora") if m in base]
    return rows


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
