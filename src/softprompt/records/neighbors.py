"""neighbors.json (`analysis.neighbors.neighbors_report`): every position's nearest vocabulary tokens, survival of
the initial tokens, drift relative to the gap to the next token, scripts, and the projected prompts' accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

from softprompt.records.base import Artifact, HasFigures, Record, optional
from softprompt.records.stats import RunMeta


@dataclass(frozen=True)
class NeighborToken(Record):
    token: str
    similarity: float
    id: int | None = None
    script: str | None = optional()  # (displacement tokens have none)


@dataclass(frozen=True)
class PositionDrift(Record):
    """How far a position moved: its norm, relative to the init vector and to the gap to the nearest other token."""

    norm: float | None = None
    relative_to_init: float | None = None
    relative_to_gap: float | None = None
    gap: float | None = None


@dataclass(frozen=True)
class Position(Record):
    position: int
    initial_token: str | None
    survived: bool | None
    cos_to_initial: float | None
    tokens: list[NeighborToken]
    initial_id: int | None = None
    initial_rank: int | None = None
    l2_to_initial: float | None = None
    drift: PositionDrift | None = None
    top1_changed: bool | None = None
    displacement_tokens: list[NeighborToken] | None = None  # nearest tokens of the direction final - init


@dataclass(frozen=True)
class TokenCount(Record):
    token: str
    positions: int


@dataclass(frozen=True)
class RunNeighborsSummary(Record):
    n_tokens: int | None = None
    survival_rate: float | None = None
    top1_is_initial_rate: float | None = None
    surviving_positions: list[int] = field(default_factory=list)
    surviving_words: list[str] = field(default_factory=list)
    median_initial_rank: float | None = None
    mean_cos_to_initial: float | None = None
    mean_top1_similarity: float | None = None
    mean_relative_drift: float | None = None
    mean_relative_to_gap: float | None = None
    past_gap_rate: float | None = None
    top1_changed_positions: list[int] = field(default_factory=list)
    top1_changed_rate: float | None = None
    common_displacement_tokens: list[TokenCount] = field(default_factory=list)


@dataclass(frozen=True)
class ProjectedPrompt(Record):
    """The prompt's nearest tokens as a discrete prompt (analysis.projection)."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    similarities: list[float] = field(default_factory=list)
    retokenizes_to_same_ids: bool | None = None


@dataclass(frozen=True)
class ProjectionResult(Record):
    """The soft prompt against its projections (soft, projected_soft, projected_text, no_prompt), on one task."""

    task: str
    n: int
    projection: ProjectedPrompt
    accuracy: dict[str, float | None]
    f1_macro: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RunNeighbors(RunMeta):
    positions: list[Position]
    k: int | None = None
    metric: str | None = None
    summary: RunNeighborsSummary | None = None
    projection: ProjectionResult | None = optional()
    warning: str | None = optional()


@dataclass(frozen=True)
class TaskSurvival(Record):
    runs: int
    rate: float | None
    words: list[str]
    word_runs: dict[str, int]


@dataclass(frozen=True)
class ProjectionRow(Record):
    """A run's soft prompt next to its nearest-token projections, as accuracies."""

    run: str
    task: str
    n: int
    text: str
    soft: float | None
    projected_soft: float | None
    projected_text: float | None
    no_prompt: float | None = None


@dataclass(frozen=True)
class TaskScripts(Record):
    top_k: dict[str, int]
    top_1: dict[str, int] | None = None
    top_k_over_vocabulary: dict[str, float] | None = None


@dataclass(frozen=True)
class PromptScripts(Record):
    task: str
    top_k: dict[str, int]
    top_1: dict[str, int]


@dataclass(frozen=True)
class Scripts(Record):
    tasks: dict[str, TaskScripts]
    prompts: dict[str, PromptScripts] = field(default_factory=dict)
    vocabulary: dict[str, int] | None = optional()


@dataclass(frozen=True)
class TaskDriftSummary(Record):
    """Per task, over its runs: drift relative to the init and to the gap, top-1 changes, shared displacement tokens."""

    runs: int
    mean_relative_drift: float | None = None
    mean_relative_to_gap: float | None = None
    top1_changed_rate: float | None = None
    displacement_tokens: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NeighborsSummary(Record):
    k: int
    survival_by_task: dict[str, TaskSurvival]
    projection: list[ProjectionRow]
    drift_by_task: dict[str, TaskDriftSummary] | None = None


@dataclass(frozen=True)
class NeighborsResult(HasFigures, Artifact):
    k: int
    metric: str
    note: str
    figures: dict[str, str]
    runs: dict[str, RunNeighbors]
    scripts: Scripts
    summary: NeighborsSummary
    model: str | None = None
    which: str | None = None
    vocabulary_size: int | None = None
