"""Small statistics records that several analyses write: correlations, pairwise-distance spreads, mean ± SE,
and the facts every analysis states about a run (`RunMeta`, `analysis.common.run_meta`)."""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.records.base import Record


@dataclass(frozen=True)
class CorrelationStats(Record):
    """Pearson and Spearman with two-sided p-values (`analysis.common.correlation`); None where undefined."""

    n: int
    pearson_r: float | None = None
    pearson_p: float | None = None
    spearman_rho: float | None = None
    spearman_p: float | None = None


@dataclass(frozen=True)
class PairStats(Record):
    """Spread of the pairwise distances between runs (`analysis.geometry.off_diagonal_stats`)."""

    pairs: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    cv: float | None


@dataclass(frozen=True)
class MeanSE(Record):
    """Mean, standard error (None below two values) and n (`analysis.readouts.mean_se`, a paired difference)."""

    mean: float | None
    se: float | None
    n: int


@dataclass(frozen=True, kw_only=True)
class RunMeta(Record):
    """What an analysis says about a run it read: where it is, what it trained, how well it did."""

    id: str
    task: str
    seed: int | None = None
    path: str | None = None
    model: str | None = None
    init_method: str | None = None
    init_text: str | None = None
    final_accuracy: float | None = None
    no_prompt_accuracy: float | None = None
