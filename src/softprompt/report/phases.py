"""The report's "Where the time went": results.json's `setup.timing` as the phase table and the per-unit table.

The setup section is rendered before the report is finished, so it holds `PHASES_MARK` and `WALL_MARK`, which
`html.write_report` replaces once the report's own time is known (`phases_html`, `wall_text`).
"""

from __future__ import annotations

from softprompt.records.results import StudyTiming
from softprompt.report.primitives import table

PHASES_MARK = "<!--softprompt:phases-->"
WALL_MARK = "softprompt-wall-time-mark"


def wall_text(timing: StudyTiming | None, wall_time_s: float) -> str:
    """The setup table's wall-time line: the whole invocation when timed (start-up to the report written)."""
    if timing is None:
        return f"{wall_time_s:.0f} s (work already done earlier is skipped)"
    cached = sum(u.cached for u in timing.units)
    skipped = f"; {cached} unit(s) done earlier were read back, not redone" if cached else ""
    return f"{timing.wall_time_s:.0f} s, start-up to this report{skipped}"


def phases_html(timing: StudyTiming | None) -> str:
    """The phase table (phase, units, cached, seconds, share of the wall time) and every unit's row, folded."""
    if timing is None:
        return ""
    rows = [
        {
            "phase": r.phase,
            "units": r.units or None,
            "cached": r.cached or None,
            "seconds": f"{r.seconds:.1f}",
            "share": "" if r.share is None else f"{100 * r.share:.1f}%",
        }
        for r in timing.phases()
    ]
    units = [
        {
            "phase": u.phase,
            "unit": u.unit,
            "seconds": f"{u.seconds:.2f}",
            "cached": "yes" if u.cached else "",
            "seconds when computed": "" if u.computed_s is None else f"{u.computed_s:.1f}",
        }
        for u in timing.units
    ]
    overlap = (
        " Units ran side by side (Ray workers), so the seconds add up to more than the wall time." if timing.concurrent else ""
    )
    return (
        "<h3>Where the time went</h3>"
        + f"<div class='phases'>{table(rows)}</div>"
        + "<p class='muted'>Wall time of this invocation by phase; a unit's seconds leave out a model load inside it (its "
        "own phase). A cached unit was done by an earlier invocation: its seconds here are the time to find its result, "
        f"and the unit table keeps what computing it took then, where recorded.{overlap}</p>"
        + f"<details><summary>Every unit ({len(units)})</summary>{table(units)}</details>"
    )
