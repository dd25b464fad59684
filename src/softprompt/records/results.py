"""results.json (`StudyResults`): a study's config, its setup, the analysis cell's runs, every baseline, every
analysis, the readouts; with a sweep its cells and ablations, with [transfer] init its transfer-initialised runs.

Written by `study.run` (the typed object's `to_dict()`), read by the report through attributes only. A
results.json written before schema versions were recorded loads as version 0 (the same layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from softprompt.records.ablations import AblationResults
from softprompt.records.base import Artifact, Record, optional
from softprompt.records.geometry import GeometryResult
from softprompt.records.metrics import BaselineRow, Best, EvalMetrics, LearningVerdict, MetricsLine, Parameters
from softprompt.records.neighbors import NeighborsResult
from softprompt.records.readouts import DescribeResult, ImportanceResult, ReadoutsSummary
from softprompt.records.transfer import TransferInitResult, TransferResult


@dataclass(frozen=True)
class AnalysisSettings(Record):
    """The study's [analysis] table; `cell` is the analysis cell of a sweep."""

    cell: dict[str, Any] | None = optional()
    k: int | None = None
    metric: str | None = None
    project: bool | None = None
    transfer: bool | None = None
    importance: bool | None = None
    importance_replacements: list[str] | None = None
    describe: bool | None = None
    describe_samples: int | None = None
    tsne_perplexity: float | None = None


@dataclass(frozen=True)
class TransferSettings(Record):
    init: bool = False


@dataclass(frozen=True)
class StudySettings(Record):
    """The study's config as run (`StudyConfig.to_json()`, study_config.json); [train] stays the config's dict."""

    name: str
    tasks: list[str]
    seeds: list[int]
    train: dict[str, Any]
    model: str | None = None
    data_dir: str | None = None
    max_eval: int | None = None
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, Any] | None = None  # methods, and each trained method's overrides
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    transfer: TransferSettings = field(default_factory=TransferSettings)


@dataclass(frozen=True)
class SetupModel(Record):
    name: str
    source: str
    revision: str | None
    hidden_size: int
    vocab_size: int
    parameters: int


@dataclass(frozen=True)
class Hardware(Record):
    machine: str
    processor: str
    cpus: int
    torch_threads: int


@dataclass(frozen=True)
class ExecutorFacts(Record):
    """How the study was executed: locally, or on a Ray cluster (its nodes and resources, and each run's share)."""

    name: str
    nodes: int | None = optional()
    resources: dict[str, float] | None = optional()
    cpus_per_run: float | None = optional()
    gpus_per_run: float | None = optional()


@dataclass(frozen=True)
class Setup(Record):
    model: SetupModel
    compute_dtype: str
    device: str
    hardware: Hardware
    versions: dict[str, str]
    wall_time_s: float
    executor: ExecutorFacts = field(default_factory=lambda: ExecutorFacts("local"))
    actions: dict[str, str] = field(default_factory=dict)  # run -> trained | resumed | retrained | skipped
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> its input digests


@dataclass(frozen=True, kw_only=True)
class RunSummary(Record):
    """One prompt run as results.json summarises it: its numbers from run.json and its metrics history."""

    name: str
    path: str | None = None
    task: str
    seed: int | None = None
    cell: dict[str, Any] | None = optional()  # a sweep's cell
    source: str | None = optional()  # a transfer-initialised run's source task
    final: EvalMetrics
    best: Best | None = None
    baselines: dict[str, EvalMetrics] = field(default_factory=dict)
    parameters: Parameters | None = None
    wall_time_s: float | None = None
    init_text: str | None = None
    history: list[MetricsLine] = field(default_factory=list)
    learning: LearningVerdict | None = None

    @property
    def trainable_parameters(self) -> int:
        return self.parameters.trainable if self.parameters else 0


@dataclass(frozen=True)
class SweepResults(Record):
    axes: dict[str, list[Any]]
    analysis_cell: dict[str, Any]
    runs: list[RunSummary]


class _Baselines:
    baselines: dict[str, dict[str, BaselineRow]]

    def baseline(self, task: str, method: str) -> BaselineRow | None:
        """`method`'s baseline row of `task` (named as the runs name it), or None."""
        return self.baselines.get(task, {}).get(method)


@dataclass(frozen=True, kw_only=True)
class RunsAndBaselines(_Baselines, Record):
    """What the accuracy table and its findings read: the analysis cell's runs and the baselines by task and method
    (runs and baselines name a task as it was given: a custom task by its file). `StudyResults` has both too."""

    runs: list[RunSummary]
    baselines: dict[str, dict[str, BaselineRow]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class StudyResults(_Baselines, Artifact):
    study: StudySettings
    setup: Setup
    runs: list[RunSummary]
    baselines: dict[str, dict[str, BaselineRow]] = field(default_factory=dict)
    neighbors: NeighborsResult | None = optional()
    geometry: GeometryResult | None = optional()
    importance: ImportanceResult | None = optional()
    describe: DescribeResult | None = optional()
    transfer: TransferResult | None = optional()
    transfer_init: TransferInitResult | None = optional()
    readouts: ReadoutsSummary | None = optional()
    sweep: SweepResults | None = optional()
    ablations: AblationResults | None = optional()
    transfer_init_runs: list[RunSummary] | None = optional()
