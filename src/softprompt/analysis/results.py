"""The analyses' results as the report reads them: typed views of neighbors.json, geometry.json, transfer.json.

Each `*_report` returns (and writes) a JSON dict; `NeighborsResult.from_json(d)` and its siblings read
the parts the report and its findings use, strictly: a field the view declares and the JSON lacks
(a renamed key) is an error naming it, raised when the analysis runs (each report checks its own
output) and when the report is written, never an empty table. Keys the view does not declare are
left to the JSON (results.json holds every number).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from softprompt.errors import SoftPromptError

T = TypeVar("T")


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise SoftPromptError(f"{where}: null where a value is expected")
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise SoftPromptError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SoftPromptError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value


def from_json(cls: type[T], data: Any, where: str) -> T:
    """`cls` (a dataclass) from a JSON object: every declared field must be present; others are ignored."""
    if not isinstance(data, dict):
        raise SoftPromptError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            if f.default is not dataclasses.MISSING:
                continue
            raise SoftPromptError(f"{where}: no field {f.name!r} (found {sorted(data)})")
        values[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
    return cls(**values)


class _View:
    @classmethod
    def from_json(cls, data: Any, where: str | None = None):
        return from_json(cls, data, where or cls.__name__)


# ----------------------------------------------------------------------------- neighbors


@dataclass(frozen=True)
class NeighborToken(_View):
    token: str
    similarity: float


@dataclass(frozen=True)
class Position(_View):
    position: int
    initial_token: str | None
    survived: bool | None
    cos_to_initial: float | None
    tokens: list[NeighborToken]


@dataclass(frozen=True)
class RunNeighbors(_View):
    positions: list[Position]


@dataclass(frozen=True)
class TaskSurvival(_View):
    runs: int
    rate: float | None
    words: list[str]
    word_runs: dict[str, int]


@dataclass(frozen=True)
class ProjectionRow(_View):
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
class TaskScripts(_View):
    top_k: dict[str, int]
    top_k_over_vocabulary: dict[str, float] | None = None


@dataclass(frozen=True)
class Scripts(_View):
    tasks: dict[str, TaskScripts]


@dataclass(frozen=True)
class NeighborsSummary(_View):
    k: int
    survival_by_task: dict[str, TaskSurvival]
    projection: list[ProjectionRow]


@dataclass(frozen=True)
class NeighborsResult(_View):
    k: int
    metric: str
    note: str
    figures: dict[str, str]
    runs: dict[str, RunNeighbors]
    scripts: Scripts
    summary: NeighborsSummary


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Drift(_View):
    frobenius: float | None
    relative: float | None
    rms_token: float | None
    mean_token_cosine: float | None


@dataclass(frozen=True)
class GeometryRun(_View):
    id: str
    task: str
    seed: int | None
    drift: Drift


@dataclass(frozen=True)
class TaskDrift(_View):
    task: str
    runs: int
    mean_frobenius: float | None
    std_frobenius: float | None


@dataclass(frozen=True)
class Equidistance(_View):
    """Pairwise Frobenius distances between the runs of one task."""

    task: str
    pairs: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    cv: float | None


@dataclass(frozen=True)
class DriftVsDifficulty(_View):
    against: str
    spearman_r: float | None
    spearman_p: float | None
    n: int


@dataclass(frozen=True)
class GeometrySummary(_View):
    task_drift: list[TaskDrift]
    equidistance: list[Equidistance]
    drift_vs_difficulty: DriftVsDifficulty


@dataclass(frozen=True)
class GeometryResult(_View):
    note: str
    figures: dict[str, str]
    runs: list[GeometryRun]
    summary: GeometrySummary


# ----------------------------------------------------------------------------- transfer


@dataclass(frozen=True)
class TransferMatrix(_View):
    runs: list[str]
    tasks: list[str]
    accuracy: list[list[float]]
    no_prompt: dict[str, float]


@dataclass(frozen=True)
class Correlation(_View):
    """Prompt similarity against transfer gain, over off-diagonal pairs."""

    similarity: str
    direction: str
    pearson_r: float | None
    pearson_p: float | None
    spearman_r: float | None
    spearman_p: float | None
    n: int


@dataclass(frozen=True)
class TransferSummary(_View):
    share_beat_no_prompt: float | None
    n_transfers: int
    correlations: list[Correlation]
    n_beat: int | None = None  # (absent from summaries written before they were recorded)
    n_ties: int | None = None  # transfers scoring exactly no prompt's accuracy


@dataclass(frozen=True)
class TransferResult(_View):
    figures: dict[str, str]
    matrix: TransferMatrix
    summary: TransferSummary
    similarity_note: str | None


# ----------------------------------------------------------------------------- transfer initialisation


@dataclass(frozen=True)
class TransferInitPair(_View):
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


@dataclass(frozen=True)
class TransferInitCorrelation(Correlation):
    """Prompt similarity against the gain of transfer initialisation, over ordered task pairs ("task pairs") or over
    (task pair, seed) points ("task pairs x seeds", not independent)."""

    level: str = "task pairs"


@dataclass(frozen=True)
class TransferInitResult(_View):
    own_init: str
    pairs: list[TransferInitPair]
    correlations: list[TransferInitCorrelation]
    similarity_note: str | None
    figures: dict[str, str]
