"""Where a study's time goes: each unit timed apart from the model's load, cached units marked, the phase table.

A unit's `seconds` is its wall time in this invocation; a unit whose result an earlier invocation computed (a
skipped run, a cached baseline or analysis) is marked `cached`, its seconds are the time spent finding that result,
and `computed_s` keeps the time the computing invocation recorded (run.json's wall time, a baseline row's, an
analysis cache entry's), so a reader sees both what this invocation cost and what the result cost to make. The
model's load (and its evaluator's construction) is its own phase, timed inside whichever unit first needed it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from softprompt.records.results import MODEL_LOAD_PHASE, StudyTiming, UnitTiming
from softprompt.study.model_cache import ModelCache

MODEL_LOAD = MODEL_LOAD_PHASE
PROMPT_RUNS = "prompt runs"
RESULTS = "results.json"
REPORT = "report"


@dataclass
class Timed:
    """What one timed unit reports: its seconds without the model's load, that load, and whether it was cached."""

    seconds: float = 0.0
    model_load_s: float = 0.0
    cached: bool = False
    computed_s: float | None = None

    def fields(self) -> dict[str, Any]:
        """The keys a unit's result carries (plain values: a Ray worker sends them back)."""
        return {"seconds": self.seconds, "model_load_s": self.model_load_s, "cached": self.cached, "computed_s": self.computed_s}


@contextmanager
def timed(models: ModelCache) -> Iterator[Timed]:
    """Time the block; a model load inside it (the first unit that needs the model) is counted apart."""
    t = Timed()
    start, loaded = time.perf_counter(), models.load_s
    try:
        yield t
    finally:
        t.model_load_s = models.load_s - loaded
        t.seconds = time.perf_counter() - start - t.model_load_s


def unit_timing(phase: str, unit: str, result: dict[str, Any]) -> list[UnitTiming]:
    """A unit's row from its result's timing keys, and a model-load row if the model was loaded inside it."""
    rows = [
        UnitTiming(
            phase=phase,
            unit=unit,
            seconds=round(result.get("seconds", 0.0), 3),
            cached=bool(result.get("cached")),
            computed_s=_rounded(result.get("computed_s")),
        )
    ]
    if result.get("model_load_s"):
        rows.insert(0, UnitTiming(phase=MODEL_LOAD, unit=f"for {unit}", seconds=round(result["model_load_s"], 3)))
    return rows


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def with_step(timing: StudyTiming, phase: str, seconds: float, wall_time_s: float) -> StudyTiming:
    """`timing` with one more step (results.json, the report) and the invocation's wall time so far."""
    return StudyTiming(
        wall_time_s=round(wall_time_s, 3),
        units=[*timing.units, UnitTiming(phase=phase, unit=phase, seconds=round(seconds, 3))],
        concurrent=timing.concurrent,
    )


class StepClock:
    """Times a last step whose own output shows the timing (the report's phase table): calling it closes the step
    and returns the timing with it, which it keeps as `timing` for results.json."""

    def __init__(self, timing: StudyTiming, phase: str, started: float):
        self.timing, self.phase, self.started = timing, phase, started
        self.start = time.perf_counter()

    def __call__(self) -> StudyTiming:
        now = time.perf_counter()
        self.timing = with_step(self.timing, self.phase, now - self.start, now - self.started)
        return self.timing


def phase_lines(timing: StudyTiming) -> list[str]:
    """The phase table as text lines for the end of `softprompt study` (phase, units, seconds, share)."""
    rows = timing.phases()
    width = max([len(r.phase) for r in rows] + [5])
    lines = [
        f"where the time went ({timing.wall_time_s:.1f} s"
        + (", units side by side: shares add up to more than 100%" if timing.concurrent else "")
        + "):",
        f"  {'phase':<{width}}  {'units':>5}  {'cached':>6}  {'seconds':>8}  {'share':>6}",
    ]
    for r in rows:
        share = "" if r.share is None else f"{100 * r.share:.1f}%"
        lines.append(f"  {r.phase:<{width}}  {r.units or '':>5}  {r.cached or '':>6}  {r.seconds:>8.1f}  {share:>6}")
    return lines
