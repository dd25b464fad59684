"""The evaluation numbers that run.json, metrics.jsonl, baselines.json and results.json share.

`EvalMetrics` is `EvalResult.metrics()` (run.json's `final` and `baselines`, a metrics.jsonl line's
numbers); `BaselineRow` is one row of baselines.json (`baselines.baseline_row`); `Best` is how a run's best
prompt was chosen; `LearningVerdict` is `analysis.learning.learning_verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from softprompt.records.base import Record, optional


@dataclass(frozen=True)
class Calibrated(Record):
    """Content-free calibration (Zhao et al. 2021): the calibrated numbers, or why it was skipped."""

    accuracy: float | None = None
    f1_macro: float | None = None
    prior: list[float] | None = optional()
    content_free: list[str] | None = optional()
    skipped: str | None = optional()  # the reason, for a task it does not apply to


@dataclass(frozen=True)
class EvalMetrics(Record):
    """One evaluation's numbers (`EvalResult.metrics()`)."""

    accuracy: float | None  # (null only in hand-made records)
    f1_macro: float | None = None  # (every evaluation records it; hand-made records may not)
    acc_norm: float | None = None
    n: int | None = None
    truncated: int | None = None
    calibrated: Calibrated | None = optional()
    loss: float | None = None  # a dev split's (metrics.jsonl `dev`): what selection = dev_loss compares


@dataclass(frozen=True)
class MetricsLine(Record):
    """One line of metrics.jsonl: an evaluation between optimiser steps or at an epoch's end."""

    epoch: float
    accuracy: float
    step: int | None = None  # (absent from hand-made histories; every run writes it)
    train_loss: float | None = None
    f1_macro: float | None = None
    acc_norm: float | None = None
    n: int | None = None
    truncated: int | None = None
    calibrated: Calibrated | None = optional()
    dev: EvalMetrics | None = optional()  # the dev split carved from the training data, with its loss
    elapsed_s: float | None = None

    @property
    def x(self) -> float:
        """Where the point sits on a training curve: its optimiser step (its epoch where no step was recorded)."""
        return self.step if self.step is not None else self.epoch


@dataclass(frozen=True)
class Best(Record):
    """How a run's best prompt was chosen: the evaluation it came from, on which split, by which metric."""

    epoch: float | None = None
    step: int | None = None
    metric: str | None = None
    split: str | None = None  # "dev" when chosen on the dev split, None when the last prompt is the best
    value: float | None = None
    validation: float | None = None  # the validation metric beside the dev one
    dev_loss: float | None = None


@dataclass(frozen=True)
class Parameters(Record):
    trainable: int
    total: int | None = None


@dataclass(frozen=True)
class LearningVerdict(Record):
    """Whether a run left the chance-loss plateau (`analysis.learning.learning_verdict`)."""

    learned: bool | None
    text: str
    final_loss: float | None = None
    chance_loss: float | None = None


@dataclass(frozen=True)
class BaselineRow(Record):
    """One baseline's row (baselines.json, results.json's `baselines`)."""

    accuracy: float
    f1_macro: float | None = None  # (every evaluation records it; hand-made records may not)
    method: str | None = None
    calibrated_accuracy: float | None = None
    calibrated_f1_macro: float | None = None
    calibration_note: str | None = optional()
    acc_norm: float | None = None
    n: int | None = None
    truncated: int | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    majority_label: str | None = None
    train_examples: int | None = None
    run: str | None = None  # a trained baseline's run directory
    reused: bool | None = None
    best_epoch: float | None = None
    wall_time_s: float | None = None
    hard_prompt: str | None = None  # the English prompt's text, or the hard (PEZ) prompt's
    hard_prompt_tokens: list[str] | None = None
    retokenizes_to_same_ids: bool | None = None
    text_accuracy: float | None = None  # the hard prompt's text typed as a hard prompt
    text_f1_macro: float | None = None
    history: list[MetricsLine] | None = optional()  # a trained baseline's curve (its metrics.jsonl): accuracy per second


def metrics_or_none(data: dict[str, Any] | None, where: str) -> EvalMetrics | None:
    """`EvalMetrics` of a run.json field that may be missing or empty (a run that never finished an evaluation)."""
    return EvalMetrics.from_dict(data, where) if data else None
