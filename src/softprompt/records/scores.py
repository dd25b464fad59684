"""A study's shared evaluation results (`score_store`, `DIR/scores/KK/KEY.score.json`): one evaluation each, with the
per-example choice scores that calibration and the ablation readouts read back."""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.records.base import Record
from softprompt.records.metrics import EvalMetrics

SCORE_SUFFIX = ".score.json"


@dataclass(frozen=True)
class StoredScores(Record):
    """`scoring.Scores`: each example's choice log-likelihoods, its label, its choices' lengths in characters."""

    logprobs: list[list[float]]
    labels: list[int]
    choice_chars: list[list[int]]
    truncated: int


@dataclass(frozen=True)
class StoredEvaluation(Record):
    """`eval_metrics.EvalResult`: its numbers (`metrics`, the mean choice loss included), predictions and scores."""

    task: str
    split: str
    metrics: EvalMetrics
    predictions: list[int]
    scores: StoredScores


@dataclass(frozen=True)
class ScoreEntry(Record):
    """One file of the score store: its format, the key it was stored under (its file name) and the evaluation."""

    format: int
    key: str
    result: StoredEvaluation
