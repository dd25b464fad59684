"""The readouts past the nearest tokens: importance.json (`analysis.importance.importance_report`), describe.json
(`analysis.describe.describe_report`) and their per-task join, results.json's "readouts"
(`analysis.readouts.readouts_summary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from softprompt.records.base import Artifact, Record, optional
from softprompt.records.stats import CorrelationStats, MeanSE, RunMeta

# ----------------------------------------------------------------------------- importance.json


@dataclass(frozen=True)
class Scores(Record):
    accuracy: float | None
    loss: float | None
    metric: float | None = None
    accuracy_se: float | None = None  # binomial, sqrt(p (1 - p) / n)


@dataclass(frozen=True)
class Effect(Record):
    """One position put back to a replacement (its init vector, the mean embedding): the scores and the drops."""

    accuracy: float | None
    loss: float | None
    accuracy_drop: float | None
    loss_increase: float | None
    metric: float | None = None
    metric_drop: float | None = None
    unchanged: bool = False
    # paired over the examples (each scored with and without the replacement): the readout's own noise
    loss_increase_se: float | None = None
    accuracy_drop_se: float | None = None


@dataclass(frozen=True)
class ImportancePosition(Record):
    index: int
    loss_increase: float | None
    accuracy_drop: float | None = None
    metric_drop: float | None = None
    loss_increase_se: float | None = None
    accuracy_drop_se: float | None = None
    initial_token: str | None = None
    by_replacement: dict[str, Effect] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ImportanceRun(RunMeta):
    run: str
    positions: list[ImportancePosition]
    n: int | None = None
    base: Scores | None = None
    split: str | None = None
    metric: str | None = None
    primary: str | None = None
    ranking: list[int] = field(default_factory=list)
    evaluations: int | None = None
    trained_task: str | None = None
    wall_time_s: float | None = None
    warning: str | None = optional()
    # a deep prompt's run (method deep): each layer's keys and values put back to their initial values (index: layer)
    layers: list[ImportancePosition] | None = optional()
    layer_ranking: list[int] | None = optional()


@dataclass(frozen=True)
class ImportanceSettings(Record):
    which: str | None = None
    split: str | None = None
    limit: int | None = None
    seed: int | None = None
    task: str | None = None
    replacements: list[str] = field(default_factory=list)
    primary: str | None = None


@dataclass(frozen=True)
class ImportanceResult(Artifact):
    runs: list[ImportanceRun]
    model: str | None = None
    settings: ImportanceSettings | None = None
    note: str | None = None


# ----------------------------------------------------------------------------- describe.json


@dataclass(frozen=True)
class DescriptionScore(Record):
    """How much a description names the task's content words and label words (analysis.describe_scoring)."""

    score: float | None
    content_recall: float | None = None
    label_recall: float | None = None
    content_found: list[str] = field(default_factory=list)
    content_missing: list[str] = field(default_factory=list)
    labels_found: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Description(Record):
    """One thing the model said its prompt asks for: by which probe (and layer), greedy or sampled."""

    probe: str
    layer: int | None
    decoding: str
    text: str
    sample: int | None = None
    score: DescriptionScore | float | None = None  # (a number in hand-made records)

    @property
    def score_value(self) -> float | None:
        return self.score.score if isinstance(self.score, DescriptionScore) else self.score


@dataclass(frozen=True)
class Descriptions(Record):
    descriptions: list[Description]


@dataclass(frozen=True)
class DescribeSummary(Record):
    trained_score: float | None = None
    init_score: float | None = None
    best: Description | None = None


@dataclass(frozen=True, kw_only=True)
class DescribeRun(RunMeta):
    run: str
    descriptions: list[Description]
    init: Descriptions
    summary: DescribeSummary
    wall_time_s: float | None = None
    warning: str | None = optional()


@dataclass(frozen=True)
class IdentitySummary(Record):
    score: float | None = None
    best: Description | None = None


@dataclass(frozen=True)
class IdentityDescription(Record):
    """The identity probe: a text's own descriptions, scored against the text."""

    text: str
    descriptions: list[Description]
    summary: IdentitySummary
    wall_time_s: float | None = None


@dataclass(frozen=True)
class DescribeResult(Artifact):
    runs: list[DescribeRun]
    model: str | None = None
    settings: dict[str, Any] | None = None  # probes, layers, samples, the describing instruction, ...
    identity: IdentityDescription | None = optional()


# ----------------------------------------------------------------------------- results.json "readouts"


@dataclass(frozen=True)
class TokenRuns(Record):
    token: str
    runs: int


@dataclass(frozen=True)
class PositionReadout(Record):
    """One position over the seeds of a task: its init token, importance, survival, drift, where it moved."""

    index: int
    initial_token: str | None
    loss_increase: MeanSE
    accuracy_drop: MeanSE
    kept_top1: int
    survived: int
    runs: int
    relative_drift: MeanSE
    moved_toward: list[TokenRuns]


@dataclass(frozen=True)
class Carriers(Record):
    """The positions whose ablation raises the loss most, and those where the evidence holds (`clear`)."""

    top: list[int]
    clear: list[int]
    top_share: float | None


@dataclass(frozen=True)
class GreedyDescription(Record):
    probe: str | None
    layer: int | None
    text: str | None
    score: float | None


@dataclass(frozen=True)
class RunDescriptions(Record):
    greedy: list[GreedyDescription]
    init_greedy: list[GreedyDescription]
    trained_score: float | None = None
    init_score: float | None = None


@dataclass(frozen=True, kw_only=True)
class BestDescription(Description):
    run: str


@dataclass(frozen=True)
class DescribeReadout(Record):
    """Trained vs init self-description scores, paired by run, and the best trained description."""

    trained: MeanSE
    init: MeanSE
    difference: MeanSE
    best: BestDescription | None
    per_run: dict[str, RunDescriptions]


@dataclass(frozen=True)
class HardReadout(Record):
    """The PEZ discrete prompt next to the soft prompt and the English prompt."""

    text: str | None
    accuracy: float | None
    soft_accuracy: MeanSE
    text_accuracy: float | None = None
    english_accuracy: float | None = None


@dataclass(frozen=True)
class TaskReadouts(Record):
    runs: list[str]
    aligned: bool
    read_runs: list[str] | None = optional()  # the runs importance and describe read (readout_seeds)
    positions: list[PositionReadout] | None = None  # (when the runs' positions are aligned)
    carriers: Carriers | None = None
    importance_vs_drift: CorrelationStats | None = None
    n_examples: list[int | None] = field(default_factory=list)
    describe: DescribeReadout | None = None
    hard: HardReadout | None = None


@dataclass(frozen=True)
class ReadoutsSummary(Record):
    tasks: dict[str, TaskReadouts]
