"""transfer.json (`analysis.transfer.transfer_report`: every prompt on every task, and prompt similarity against the
gain) and transfer_init.json (`analysis.transfer_init.transfer_init_report`: B's prompt started from A's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from softprompt.records.base import Artifact, HasFigures, Record
from softprompt.records.stats import RunMeta


@dataclass(frozen=True)
class TransferMatrix(Record):
    runs: list[str]
    tasks: list[str]
    accuracy: list[list[float | None]]
    no_prompt: dict[str, float | None]
    source_tasks: list[str] = field(default_factory=list)
    n: dict[str, int] = field(default_factory=dict)
    limit: int | None = None
    f1_macro: list[list[float | None]] = field(default_factory=list)
    no_prompt_f1_macro: dict[str, float | None] = field(default_factory=dict)
    own_task: dict[str, float | None] = field(default_factory=dict)
    gain: list[list[float | None]] = field(default_factory=list)


@dataclass(frozen=True)
class TaskLevelMatrix(Record):
    """The run x task matrices averaged over the runs of each source task."""

    source_tasks: list[str]
    tasks: list[str]
    accuracy: list[list[float | None]]
    gain: list[list[float | None]]


@dataclass(frozen=True)
class ShareBeatingNoPrompt(Record):
    transfers: int
    beat_no_prompt: int
    ties: int
    share: float | None


@dataclass(frozen=True)
class GainPair(Record):
    run: str
    target: str
    similarity: float | None
    gain: float | None


@dataclass(frozen=True)
class SimilarityVsGain(Record):
    direction: str
    n: int
    pearson_r: float | None = None
    pearson_p: float | None = None
    spearman_rho: float | None = None
    spearman_p: float | None = None
    pairs: list[GainPair] = field(default_factory=list)


@dataclass(frozen=True)
class Correlation(Record):
    """Prompt similarity against transfer gain, over off-diagonal pairs."""

    similarity: str
    direction: str
    pearson_r: float | None
    pearson_p: float | None
    spearman_r: float | None
    spearman_p: float | None
    n: int


@dataclass(frozen=True)
class TransferSummary(Record):
    share_beat_no_prompt: float | None
    n_transfers: int
    correlations: list[Correlation]
    n_beat: int | None = None  # (absent from summaries written before they were recorded)
    n_ties: int | None = None  # transfers scoring exactly no prompt's accuracy


@dataclass(frozen=True)
class TransferResult(HasFigures, Artifact):
    figures: dict[str, str]
    matrix: TransferMatrix
    summary: TransferSummary
    similarity_note: str | None
    runs: list[RunMeta] | None = None
    task_level: TaskLevelMatrix | None = None
    share_beating_no_prompt: ShareBeatingNoPrompt | None = None
    similarity: dict[str, list[Any]] | None = None  # labels, and one matrix per similarity
    similarity_vs_gain: dict[str, SimilarityVsGain] | None = None


# ----------------------------------------------------------------------------- transfer initialisation


@dataclass(frozen=True)
class TransferInitPair(Record):
    """B's prompt started from A's: accuracies per seed, the paired gain over B's own prompt, the prompts' similarity."""

    source: str
    target: str
    seeds: list[int]
    transferred: list[float]
    own: list[float]
    transferred_mean: float
    own_mean: float
    gain_mean: float | None
    gain_se: float | None
    n: int
    similarity: dict[str, float | None]
    zero_shot_gain: float | None
    seed_similarity: dict[str, list[float | None]] | None = None


@dataclass(frozen=True)
class TransferInitCorrelation(Correlation):
    """Prompt similarity against the gain of transfer initialisation, over ordered task pairs ("task pairs") or over
    (task pair, seed) points ("task pairs x seeds", not independent)."""

    level: str = "task pairs"


@dataclass(frozen=True)
class TransferInitResult(HasFigures, Artifact):
    own_init: str
    pairs: list[TransferInitPair]
    correlations: list[TransferInitCorrelation]
    similarity_note: str | None
    figures: dict[str, str]
