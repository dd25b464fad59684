"""The local executor, and what every executor shares: the study's progress bar and the shape of its result.

Both executors (this one and `ray_executor`) run the same unit functions (`study.units`, `study.analysis_units`), so they
write the same results.
"""

from __future__ import annotations

from typing import Any

from softprompt.study.analysis_units import analyses_unit
from softprompt.study.model_cache import ModelCache
from softprompt.study.plan import Unit
from softprompt.study.units import Study, run_unit


class StudyProgress:
    """The study's one progress bar: units done out of all, the current unit, ETA (silent when off)."""

    def __init__(self, total: int, name: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"study {name}", unit="unit", position=0, dynamic_ncols=True)

    def current(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def done(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# What every executor returns: each unit's result, the analyses unit's result, and results.json's "executor".
ExecutorResult = tuple[dict[Unit, dict[str, Any]], dict[str, Any], dict[str, Any]]


def run_locally(study: Study, units: list[Unit], bar: StudyProgress) -> ExecutorResult:
    """The default executor: every unit in order in this process, one model load for all of them."""
    models = ModelCache(study.cfg.train)
    done: dict[Unit, dict[str, Any]] = {}
    for unit in units:
        bar.current(str(unit))
        done[unit] = run_unit(study, models, unit)
        bar.done()
    bar.current("analyses")
    final = analyses_unit(study, models, bar.current)
    bar.done()
    return done, final, {"name": "local"}
