"""One ablation's effect on a prompt's score, shared by the soft prompt's position importance (`importance`) and the
deep prompt's (`deep_importance`): the metric drop, the loss increase, and their paired standard errors over the
examples (the same examples score both prompts)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

SE_KEYS = ("loss_increase_se", "accuracy_drop_se")  # paired over the examples: the readout's own noise


def scores_of(res, metric: str) -> dict[str, float | None]:
    return {"accuracy": res.accuracy, "loss": res.loss, "metric": res.metric(metric)}


def accuracy_se(accuracy: float, n: int) -> float | None:
    """The binomial standard error of an accuracy over n examples, sqrt(p (1 - p) / n); None for n < 2."""
    return math.sqrt(accuracy * (1 - accuracy) / n) if n >= 2 else None


def paired_se(after: Sequence[float], before: Sequence[float]) -> float | None:
    """The standard error of the mean of the per-example differences after - before (the same examples scored
    twice); None for fewer than two examples."""
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    return statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) >= 2 else None


def per_example(res) -> tuple[list[float], list[float]]:
    """Each example's choice loss and correctness (1/0): what a paired standard error is computed from."""
    from softprompt.evaluate import choice_losses

    scores = res.scores
    return choice_losses(scores), [float(p == y) for p, y in zip(scores.predictions, scores.labels, strict=True)]


def effect(base: dict[str, Any], ablated: dict[str, Any], unchanged: bool, paired=None) -> dict[str, Any]:
    """One ablation against the unablated prompt: positive numbers mean the position helped. `paired`: the two
    results' per-example (losses, correctness), ablated then base, for the drops' standard errors."""
    (la, ca), (lb, cb) = paired or (([], []), ([], []))
    return {
        **ablated,
        "accuracy_drop": base["accuracy"] - ablated["accuracy"],
        "loss_increase": ablated["loss"] - base["loss"],
        "metric_drop": base["metric"] - ablated["metric"],
        "unchanged": unchanged,
        "loss_increase_se": 0.0 if unchanged else paired_se(la, lb),
        "accuracy_drop_se": 0.0 if unchanged else paired_se(cb, ca),
    }
