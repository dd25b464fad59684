"""Tables computed from results.json: the accuracy table (`AccuracyRow`s) and its CSV form."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from softprompt.io import write_text
from softprompt.records.metrics import BaselineRow
from softprompt.records.results import RunsAndBaselines, RunSummary, StudyResults
from softprompt.tasks import task_name

METHOD_LABELS = {
    "majority": "majority class",
    "no_prompt": "no prompt",
    "english_prompt": "English prompt (hard)",
    "soft_prompt": "soft prompt (mean ± std over seeds)",
    "soft_prompt_dev": "soft prompt, dev-selected (mean ± std)",
    "finetune": "full fine-tuning",
    "lora": "LoRA",
    "deep": "deep prompt (keys/values at every layer)",
    "hard": "hard prompt (PEZ), its token rows",
    "hard_text": "hard prompt (PEZ), its text typed",
}


@dataclass(frozen=True)
class AccuracyRow:
    """One (task, method) row of the accuracy table; `prompt_text` names a hard prompt's text."""

    task: str
    method: str
    accuracy: float | None
    accuracy_std: float | None
    f1_macro: float | None
    calibrated_accuracy: float | None = None  # content-free calibration: a column next to the raw one
    calibrated_f1_macro: float | None = None
    trainable_parameters: int = 0
    n_runs: int = 1
    prompt_text: str | None = None

    def as_dict(self) -> dict:
        """The row as accuracy.csv holds it (the prompt's text only on the rows that have one)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k != "prompt_text"}


BEFORE_SOFT = ("majority", "no_prompt", "english_prompt")  # the baselines above the soft prompt's rows, in order
AFTER_SOFT = ("deep", "finetune", "lora")  # and below them (then the hard prompt's)
Results = RunsAndBaselines | StudyResults  # what the accuracy table reads: the runs and the baselines


def method_label(row: AccuracyRow | Mapping) -> str:
    """A row's method in words; a hard prompt's row adds its text (newlines shown as \\n)."""
    if not isinstance(row, AccuracyRow):  # a row of accuracy.csv (`accuracy_rows`)
        row = AccuracyRow(**{"task": "", "accuracy": None, "accuracy_std": None, "f1_macro": None, **row})
    label = METHOD_LABELS.get(row.method, row.method)
    if row.prompt_text is None:
        return label
    shown = row.prompt_text.replace("\n", "\\n")
    return f"{label}: “{shown}”"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _baseline_row(task: str, method: str, b: BaselineRow) -> AccuracyRow:
    return AccuracyRow(
        task,
        method,
        b.accuracy,
        None,
        b.f1_macro,
        b.calibrated_accuracy,
        b.calibrated_f1_macro,
        b.trainable_parameters or 0,
    )


def calibrated_values(runs: Sequence[RunSummary], metric: str) -> list[float] | None:
    """The runs' content-free calibrated `metric` (of their last prompt), one per run; None unless every run has it
    (runs trained before calibration existed, or a task it does not apply to)."""
    values = [getattr(r.final.calibrated, metric) if r.final.calibrated else None for r in runs]
    return None if not values or None in values else values  # type: ignore[return-value]


def runs_by_task(runs: Sequence[RunSummary]) -> dict[str, list[RunSummary]]:
    by_task: dict[str, list[RunSummary]] = {}
    for r in runs:
        by_task.setdefault(r.task, []).append(r)
    return by_task


def accuracy_table(results: Results) -> list[AccuracyRow]:
    """One row per (task, method): metric values and trainable-parameter counts."""
    rows: list[AccuracyRow] = []
    for key, runs in runs_by_task(results.runs).items():
        base = {m: row for m in (*BEFORE_SOFT, *AFTER_SOFT, "hard") if (row := results.baseline(key, m))}
        task = task_name(key)  # runs and baselines are keyed by the task as given (a custom task's path)
        rows += [_baseline_row(task, m, row) for m, row in base.items() if m in BEFORE_SOFT]
        m, s = mean_std([r.final.accuracy for r in runs if r.final.accuracy is not None])
        f1 = [r.final.f1_macro for r in runs if r.final.f1_macro is not None]
        calibrated = [_mean_or_none(calibrated_values(runs, k)) for k in ("accuracy", "f1_macro")]
        rows.append(AccuracyRow(task, "soft_prompt", m, s, mean_std(f1)[0], *calibrated, runs[0].trainable_parameters, len(runs)))
        dev = _dev_selected_row(task, runs)
        if dev is not None:
            rows.append(dev)
        rows += [_baseline_row(task, m, row) for m, row in base.items() if m in AFTER_SOFT]
        hard = results.baseline(key, "hard")
        rows += _hard_rows(task, hard) if hard else []
    return rows


def accuracy_rows(results: Results) -> list[dict]:
    """The accuracy table as accuracy.csv holds it, one dict per row."""
    return [row.as_dict() for row in accuracy_table(results)]


def _hard_rows(task: str, b: BaselineRow) -> list[AccuracyRow]:
    """The hard baseline: its exact token rows (the row's accuracy) and, when scored, its text typed as a hard prompt."""
    rows = [replace(_baseline_row(task, "hard", b), prompt_text=b.hard_prompt)]
    if b.text_accuracy is not None:
        typed = AccuracyRow(task, "hard_text", b.text_accuracy, None, b.text_f1_macro, None, None, b.trainable_parameters or 0)
        rows.append(replace(typed, prompt_text=b.hard_prompt))
    return rows


def _mean_or_none(values: list[float] | None) -> float | None:
    return None if values is None else statistics.fmean(values)


def dev_selected_values(runs: Sequence[RunSummary]) -> tuple[str, list[float]] | None:
    """(metric, validation values) of the prompts chosen on the dev split carved from the training data, one per
    run; None unless every run chose one (a run without a dev split has no selection: its last prompt is its best)."""
    bests = [r.best for r in runs]
    if not bests or any(b is None or b.split != "dev" or b.validation is None for b in bests):
        return None
    metrics = {b.metric for b in bests if b is not None}
    if len(metrics) != 1 or None in metrics:
        return None
    return str(metrics.pop()), [b.validation for b in bests if b is not None and b.validation is not None]


def _dev_selected_row(task: str, runs: Sequence[RunSummary]) -> AccuracyRow | None:
    """The dev-selected prompts' validation score, in the column of the task's metric (the best file is
    chosen on the task's metric alone, so the other column stays empty)."""
    found = dev_selected_values(runs)
    if found is None:
        return None
    metric, values = found
    m, s = mean_std(values)
    if metric == "f1_macro":
        return AccuracyRow(task, "soft_prompt_dev", None, None, m, None, None, runs[0].trainable_parameters, len(runs))
    return AccuracyRow(task, "soft_prompt_dev", m, s, None, None, None, runs[0].trainable_parameters, len(runs))


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
