"""geometry.json (`analysis.geometry.geometry_report`): drift from the init, distances between seeds, the 2-D
projections, and drift against task difficulty."""

from __future__ import annotations

from dataclasses import dataclass, field

from softprompt.records.base import Artifact, HasFigures, Record, optional
from softprompt.records.stats import CorrelationStats, PairStats, RunMeta


@dataclass(frozen=True)
class Drift(Record):
    frobenius: float | None
    relative: float | None
    rms_token: float | None
    mean_token_cosine: float | None


@dataclass(frozen=True, kw_only=True)
class GeometryRun(RunMeta):
    seed: int | None
    drift: Drift
    n_tokens: int | None = None


@dataclass(frozen=True)
class WithinTask(Record):
    """One task's runs: their pairwise distances and spread, and that spread against their drift."""

    runs: list[str]
    frobenius: list[list[float]] | None = optional()
    mean_token_cosine: list[list[float]] | None = optional()
    frobenius_stats: PairStats | None = optional()
    mean_token_cosine_stats: PairStats | None = optional()
    mean_drift: float | None = optional()
    between_runs_over_drift: float | None = None
    error: str | None = optional()  # prompts of different shapes: no per-position distance


@dataclass(frozen=True)
class AllPairs(Record):
    labels: list[str]
    frobenius: list[list[float]] | None = optional()
    mean_token_cosine: list[list[float]] | None = optional()
    error: str | None = optional()


@dataclass(frozen=True)
class Point2D(Record):
    x: float
    y: float
    kind: str  # soft | initial
    task: str
    run: str | None = None
    seed: int | None = None
    initial_of: list[str] = field(default_factory=list)
    position: int | None = None


@dataclass(frozen=True)
class Centroids(Record):
    runs: list[str]
    between_runs: PairStats
    from_initial: dict[str, float]


@dataclass(frozen=True)
class Projection2D(Record):
    points: list[Point2D]
    centroids: dict[str, Centroids]
    perplexity: float | None = optional()


@dataclass(frozen=True)
class TaskDifficulty(Record):
    task: str
    runs: int
    mean_drift: float | None
    std_drift: float | None
    no_prompt_accuracy: float | None = None
    final_accuracy: float | None = None


@dataclass(frozen=True)
class DriftAgainstDifficulty(Record):
    """Each run's drift against its task's difficulty, run by run and over task means."""

    drift: str
    no_prompt_accuracy: CorrelationStats
    final_accuracy: CorrelationStats
    tasks: list[TaskDifficulty]
    task_level_no_prompt_accuracy: CorrelationStats


@dataclass(frozen=True)
class TaskDrift(Record):
    task: str
    runs: int
    mean_frobenius: float | None
    std_frobenius: float | None


@dataclass(frozen=True)
class Equidistance(Record):
    """Pairwise Frobenius distances between the runs of one task."""

    task: str
    pairs: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    cv: float | None


@dataclass(frozen=True)
class DriftVsDifficulty(Record):
    against: str
    spearman_r: float | None
    spearman_p: float | None
    n: int


@dataclass(frozen=True)
class GeometrySummary(Record):
    task_drift: list[TaskDrift]
    equidistance: list[Equidistance]
    drift_vs_difficulty: DriftVsDifficulty


@dataclass(frozen=True)
class GeometryResult(HasFigures, Artifact):
    note: str
    figures: dict[str, str]
    runs: list[GeometryRun]
    summary: GeometrySummary
    level: str | None = None
    seed: int | None = None
    which: str | None = None
    within_task: dict[str, WithinTask] | None = None
    all_pairs: AllPairs | None = None
    projections: dict[str, Projection2D] | None = None
    drift_vs_difficulty: DriftAgainstDifficulty | None = None
