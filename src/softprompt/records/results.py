"""results.json (`StudyResults`): a study's config, its setup, the analysis cell's runs, every baseline, every
analysis, the readouts; with a sweep its cells and ablations, with [transfer] init its transfer-initialised runs.

Written by `study.run` (the typed object's `to_dict()`), read by the report through attributes only. A
results.json written before schema versions were recorded loads as version 0 (the same layout); one written before
`claims` and `setup.timing` existed loads without them (they are additions, not a new layout: the version stays 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from softprompt.records.ablations import AblationResults
from softprompt.records.base import Artifact, Record, optional
from softprompt.records.claims import Claim
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
    readout_seeds: list[int] | None = optional()
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
    """How the study was executed: locally (in one process, or in worker processes: how many, how many threads each),
    or on a Ray cluster (its nodes and resources, and each run's share)."""

    name: str
    workers: int | None = optional()
    threads_per_worker: int | None = optional()
    nodes: int | None = optional()
    resources: dict[str, float] | None = optional()
    cpus_per_run: float | None = optional()
    gpus_per_run: float | None = optional()


@dataclass(frozen=True)
class UnitTiming(Record):
    """One unit of work's wall time in the invocation that wrote results.json (`study.timing`)."""

    phase: str  # the phase-table row it counts in: "model load", "prompt runs", "baseline lora", "analysis neighbors", ...
    unit: str  # which one: a run's label, "TASK METHOD", an analysis, a process
    seconds: float  # its wall time in this invocation; a cached unit's is the time spent finding its result
    cached: bool = False  # done by an earlier invocation: its result was read back, not computed
    computed_s: float | None = None  # a cached unit: the seconds of the invocation that computed it, where recorded


@dataclass(frozen=True)
class PhaseRow:
    """One row of the phase table: a phase's units, how many were cached, their seconds and share of the wall time."""

    phase: str
    units: int
    cached: int
    seconds: float
    share: float | None


MODEL_LOAD_PHASE = "model load"
OTHER_PHASE = "other (start-up, input digests, bookkeeping)"


@dataclass(frozen=True)
class StudyTiming(Record):
    """Where an invocation's wall time went: every unit it ran or skipped, in order (results.json `setup.timing`).

    With `concurrent` units ran side by side (Ray workers), so their seconds add up to more than the wall time."""

    wall_time_s: float  # the whole invocation, start-up to the report written
    units: list[UnitTiming]
    concurrent: bool = False

    def phases(self) -> list[PhaseRow]:
        """The units grouped by phase, the model load first and then in order of first appearance; then the wall time no
        unit accounts for."""
        grouped: dict[str, list[UnitTiming]] = {}
        for u in sorted(self.units, key=lambda u: u.phase != MODEL_LOAD_PHASE):  # (a stable sort)
            grouped.setdefault(u.phase, []).append(u)
        wall = self.wall_time_s
        rows = [
            PhaseRow(phase, len(us), sum(u.cached for u in us), sum(u.seconds for u in us), None) for phase, us in grouped.items()
        ]
        rest = wall - sum(r.seconds for r in rows)
        if not self.concurrent and rest > 0:
            rows.append(PhaseRow(OTHER_PHASE, 0, 0, rest, None))
        return [PhaseRow(r.phase, r.units, r.cached, r.seconds, r.seconds / wall if wall > 0 else None) for r in rows]


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
    timing: StudyTiming | None = optional()  # (absent from results.json written before phases were timed)


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
    claims: list[Claim] | None = optional()  # the seed study's claims, answered (absent from older results.json)
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
