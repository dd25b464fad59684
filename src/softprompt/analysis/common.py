"""Small helpers shared by the analyses: run handles and labels, JSON-safe numbers, correlations."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.runs.directory import Run, load_run
from softprompt.tasks import task_name


def as_run(run: Run | str | Path) -> Run:
    """Accept a loaded Run or a run directory, so every report takes either."""
    return run if isinstance(run, Run) else load_run(run)


def as_runs(runs: Iterable[Run | str | Path]) -> list[Run]:
    out = [as_run(r) for r in runs]
    if not out:
        raise SoftPromptError("no runs given: pass at least one run directory")
    return out


def run_seed(run: Run) -> int | None:
    seed = run.config.get("seed")
    return int(seed) if isinstance(seed, int) else None


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Short unique labels `task-sSEED` (the directory name is appended where two runs would collide)."""
    base = [f"{task_name(r.task)}-s{run_seed(r)}" if run_seed(r) is not None else task_name(r.task) for r in runs]
    out = []
    for label, run in zip(base, runs, strict=True):
        out.append(label if base.count(label) == 1 else f"{label} ({run.path.name})")
    if len(set(out)) != len(out):  # same task, seed and folder name in different parents
        out = [f"{label} #{i}" for i, label in enumerate(out)]
    return out


def run_meta(run: Run, label: str) -> dict[str, Any]:
    """What a report says about a run: where it is, what it trained, how well it did."""
    record = run.record
    init = record.prompt.init if record.prompt else None
    final = record.final
    no_prompt = (record.baselines or {}).get("no_prompt")
    return {
        "id": label,
        "path": str(run.path),
        "task": task_name(run.task),
        "seed": run_seed(run),
        "model": run.config.get("model"),
        "init_method": init.method if init else None,
        "init_text": init.text if init else None,
        "final_accuracy": final.accuracy if final else None,
        "no_prompt_accuracy": no_prompt.accuracy if no_prompt else None,
    }


def finite(x: Any) -> float | None:
    """A float for JSON, or None for NaN/inf/missing (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Pearson and Spearman correlation with two-sided p-values (scipy.stats).

    Undefined cases (fewer than 3 points, a constant input) give None rather than NaN, so the
    JSON stays valid and a report can print "n/a".
    """
    from scipy import stats

    if len(x) != len(y):
        raise SoftPromptError(f"correlation needs paired values, got {len(x)} and {len(y)}")
    out: dict[str, Any] = {"n": len(x), "pearson_r": None, "pearson_p": None, "spearman_rho": None, "spearman_p": None}
    if len(x) < 3 or len(set(map(float, x))) < 2 or len(set(map(float, y))) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = stats.pearsonr(x, y)
        sr = stats.spearmanr(x, y)
    out.update(
        pearson_r=finite(pr.statistic),
        pearson_p=finite(pr.pvalue),
        spearman_rho=finite(sr.statistic),
        spearman_p=finite(sr.pvalue),
    )
    return out


def paired_difference(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Mean of x_i - y_i over paired values (e.g. two settings' accuracies per seed) and its standard error
    (sample std / sqrt(n); None below two pairs), with n."""
    if len(x) != len(y):
        raise SoftPromptError(f"a paired difference needs paired values, got {len(x)} and {len(y)}")
    d = [float(a) - float(b) for a, b in zip(x, y, strict=True)]
    if not d:
        return {"mean": None, "se": None, "n": 0}
    mean = sum(d) / len(d)
    se = None
    if len(d) > 1:
        se = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1) / len(d))
    return {"mean": mean, "se": se, "n": len(d)}


def exceeds_its_error(diff: dict[str, Any]) -> bool:
    """Whether a paired difference is larger than its standard error (the bar below which a report says "tie")."""
    return diff["mean"] is not None and diff["se"] is not None and abs(diff["mean"]) > diff["se"]


def json_safe(obj: Any) -> Any:
    """Plain JSON types all the way down: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, float | np.floating):
        return finite(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return obj
