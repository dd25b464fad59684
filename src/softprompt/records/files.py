"""The study's and the trainer's bookkeeping files: input digests (inputs.json, a run's `inputs`), cache entries
(`*.cache.json`, a baseline's result.json) and their keys (key.json), baselines.json, study_config.json and the
trackers' run ids (trackers.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.records.base import Artifact, Record, optional
from softprompt.records.metrics import BaselineRow
from softprompt.records.results import StudySettings


@dataclass(frozen=True)
class TaskInputs(Record):
    """A task's input digests (`softprompt.data.inputs`): its definition, each data split, the model revision where known."""

    task: str | None = None
    data: dict[str, str | None] = field(default_factory=dict)
    model_revision: str | None = None


def _by_task(data: Any, where: str) -> dict[str, TaskInputs]:
    if not isinstance(data, dict):
        raise SoftPromptError(f"{where}: expected an object of tasks, got {type(data).__name__}")
    return {task: TaskInputs.from_dict(v, f"{where}.{task}") for task, v in data.items()}


@dataclass(frozen=True)
class StudyInputs(Record):
    """inputs.json: every task's input digests at the study's last invocation (an object keyed by task)."""

    tasks: dict[str, TaskInputs]

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> StudyInputs:
        return cls(_by_task(data, where or "inputs.json"))

    def to_dict(self) -> dict[str, Any]:
        return {task: v.to_dict() for task, v in self.tasks.items()}


@dataclass(frozen=True)
class CacheKey(Record):
    """A baseline's key.json: the key its cached result was computed under, and the inputs then."""

    key: str
    inputs: dict[str, TaskInputs] | None = None


@dataclass(frozen=True)
class CacheEntry(Record):
    """A cached result of the study (`*.cache.json`, a baseline's result.json): its key, status, value and inputs.
    The value is the analysis's own record (the registry reads it through that record's schema)."""

    key: str
    status: str
    value: Any
    inputs: dict[str, TaskInputs] | None = None
    seconds: float | None = optional()  # how long computing the value took (absent from entries written before)


@dataclass(frozen=True)
class BaselineSettings(Record):
    max_train: int | None = None
    max_eval: int | None = None
    epochs: int | None = None
    seed: int | None = None
    batch_size: int | None = None
    max_length: int | None = None
    data_dir: str | None = None


@dataclass(frozen=True)
class BaselinesFile(Record):
    """baselines.json (`baseline_runs.run_baselines`): one row per method, rewritten as each finishes."""

    task: str
    status: str
    methods: list[str]
    rows: list[BaselineRow]
    task_spec: str | None = None
    model: str | None = None
    split: str | None = None
    settings: BaselineSettings | None = None


@dataclass(frozen=True)
class StudyConfigFile(StudySettings, Artifact):
    """study_config.json: the study's config as last run (results.json's `study`)."""


@dataclass(frozen=True)
class TrackerIds(Record):
    """trackers.json: the MLflow and W&B run ids that a resumed run reopens."""

    mlflow: str | None = optional()
    wandb: str | None = optional()
