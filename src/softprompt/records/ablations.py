"""results.json's "ablations" (a study with a [sweep]): accuracy per task and cell, the paired comparisons behind
the findings, and the reference accuracies (`report.ablations.ablation_results`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.records.base import Record


@dataclass(frozen=True)
class AblationRow(Record):
    """One task in one cell: the last-epoch accuracies of its seeds. In the file the cell's settings are keys of the
    row itself (`{"task": "rte", "tokens": 20, "n": 3, ...}`), one per swept axis."""

    task: str
    cell: dict[str, Any]
    n: int
    accuracy_mean: float | None
    accuracy_std: float | None
    seeds: list[int]
    accuracies: list[float]

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> AblationRow:
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise SoftPromptError(f"{where}: expected an object, got {type(data).__name__}")
        own = ("task", "n", "accuracy_mean", "accuracy_std", "seeds", "accuracies")
        cell = {k: v for k, v in data.items() if k not in own}
        return super().from_dict({**{k: data[k] for k in own if k in data}, "cell": cell}, where)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        return {"task": out.pop("task"), **out.pop("cell"), **out}


@dataclass(frozen=True)
class Comparison(Record):
    """Per task and axis, the other axes at the analysis cell: the best value against another, paired by seed."""

    task: str
    axis: str
    held: dict[str, Any]
    best: Any
    value: Any
    difference: float | None
    se: float | None
    n: int
    verdict: str  # ahead | tie


@dataclass(frozen=True)
class AblationResults(Record):
    axes: dict[str, list[Any]]
    analysis_cell: dict[str, Any]
    rows: list[AblationRow]
    comparisons: list[Comparison]
    references: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> method -> accuracy

    def row(self, task: str, cell: dict[str, Any]) -> AblationRow | None:
        """`task`'s row in the cell whose settings include `cell` (values compared as JSON)."""
        want = {k: _key(v) for k, v in cell.items()}
        return next((r for r in self.rows if r.task == task and all(_key(r.cell.get(k)) == v for k, v in want.items())), None)


def _key(value: Any) -> str:
    return json.dumps(value)
