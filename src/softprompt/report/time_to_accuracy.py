"""Accuracy per second of training (issue 38): each method's validation accuracy against its run's wall time, the time
each method takes to reach 90 / 95 / 100% of LoRA's final accuracy, and the seed study's "approaching fine-tuning"
answered per task from those numbers.

Every curve point carries `elapsed_s`: the run's wall time when the point was evaluated, its earlier evaluations
included (every method evaluates the same validation subsample and dev split, so the cost they add is alike), model
loading not. A soft prompt task has one curve per seed; a trained baseline (LoRA, fine-tuning, deep or hard prompt) has
the study's one run. Times are this machine's, under whatever else ran beside the study (the setup names the machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from softprompt.io import write_figure
from softprompt.records.metrics import MetricsLine
from softprompt.records.results import RunsAndBaselines, StudyResults
from softprompt.report.tables import METHOD_LABELS
from softprompt.tasks import task_name

FRACTIONS = (0.9, 0.95, 1.0)  # of LoRA's final accuracy
TRAINED_CURVES = ("deep", "hard", "lora", "finetune")  # baselines with a training curve, after the soft prompt
REFERENCE = "lora"


@dataclass(frozen=True)
class Curve:
    """One run's (wall time, validation accuracy) points."""

    method: str
    seed: int | None
    points: list[tuple[float, float]]

    @property
    def final(self) -> float | None:
        return self.points[-1][1] if self.points else None

    def time_to(self, target: float) -> float | None:
        """The wall time of the first point at or above `target` (None if the run never got there)."""
        return next((t for t, a in self.points if a >= target - 1e-12), None)


def _points(history: list[MetricsLine] | None) -> list[tuple[float, float]]:
    return [(h.elapsed_s, h.accuracy) for h in history or [] if h.elapsed_s is not None]


def task_curves(results: RunsAndBaselines | StudyResults, task: str) -> list[Curve]:
    """Every curve of `task` (as runs name it): the soft prompt's seeds, then each trained baseline that has one."""
    curves = [Curve("soft_prompt", r.seed, _points(r.history)) for r in results.runs if r.task == task]
    for method in TRAINED_CURVES:
        row = results.baseline(task, method)
        if row is not None and row.history:
            curves.append(Curve(method, None, _points(row.history)))
    return [c for c in curves if c.points]


def time_table(results: RunsAndBaselines | StudyResults) -> list[dict]:
    """Per task and method: final accuracy, wall time, and the time to reach each fraction of LoRA's final accuracy
    (the median over the method's runs that reached it; how many did, of how many)."""
    rows = []
    for task in sorted({r.task for r in results.runs}):
        curves = task_curves(results, task)
        lora = next((c for c in curves if c.method == REFERENCE), None)
        if lora is None or lora.final is None:
            continue
        n = results.baseline(task, REFERENCE).n if results.baseline(task, REFERENCE) else None
        for method in dict.fromkeys(c.method for c in curves):
            mine = [c for c in curves if c.method == method]
            row = {
                "task": task_name(task),
                "method": METHOD_LABELS.get(method, method),
                "runs": len(mine),
                "n": n,
                "final accuracy": _mean([c.final for c in mine if c.final is not None]),
                "wall time (s)": _mean([c.points[-1][0] for c in mine]),
            }
            for f in FRACTIONS:
                times = [t for c in mine if (t := c.time_to(f * lora.final)) is not None]
                row[f"to {f:.0%} of LoRA (s)"] = (
                    f"{_median(times):.0f} ({len(times)}/{len(mine)})" if times else f"- (0/{len(mine)})"
                )
            rows.append(row)
    return rows


def approach_findings(results: RunsAndBaselines | StudyResults) -> list[str]:
    """Per task with a LoRA curve: does the best prompt method approach it per second of training? Computed: the soft
    (and deep) prompt's time to 95% of LoRA's final accuracy against LoRA's own wall time."""
    out = []
    for task in sorted({r.task for r in results.runs}):
        curves = task_curves(results, task)
        lora = next((c for c in curves if c.method == REFERENCE), None)
        if lora is None or lora.final is None:
            continue
        budget, target = lora.points[-1][0], 0.95 * lora.final
        parts = []
        for method in ("soft_prompt", "deep"):
            mine = [c for c in curves if c.method == method]
            if not mine:
                continue
            reached = [t for c in mine if (t := c.time_to(target)) is not None and t <= budget]
            at_budget = _mean([_accuracy_at(c, budget) for c in mine])
            label = METHOD_LABELS.get(method, method).split(" (")[0]
            verdict = (
                f"reached 95% of it within LoRA's time in {len(reached)} of {len(mine)} run(s)"
                if reached
                else f"did not reach 95% of it within LoRA's time in any of {len(mine)} run(s)"
            )
            parts.append(f"the {label} {verdict} (accuracy at that time {at_budget:.3f})")
        if parts:
            parts_text = "; ".join(parts)
            out.append(
                f"Per second of training on {task_name(task)}: LoRA ended at {lora.final:.3f} after {budget:.0f} s; "
                f"{parts_text}. So embedding-level prompting "
                f"{'approaches' if any('reached 95%' in p for p in parts) else 'does not approach'} LoRA here at "
                "equal training time."
            )
    return out


def _accuracy_at(curve: Curve, t: float) -> float:
    """The accuracy of the last point at or before wall time `t` (the first point if none is)."""
    before = [a for x, a in curve.points if x <= t]
    return before[-1] if before else curve.points[0][1]


def time_figure(results: RunsAndBaselines | StudyResults, out: Path) -> Path | None:
    """Per task: validation accuracy against wall time, one line per run (the soft prompt's seeds thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in sorted({r.task for r in results.runs}) if any(c.method != "soft_prompt" for c in task_curves(results, t))]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False)
    colors = {"soft_prompt": "tab:blue", "deep": "tab:purple", "hard": "tab:brown", "lora": "tab:orange", "finetune": "tab:green"}
    for ax, task in zip(axes[0], tasks, strict=True):
        shown: set[str] = set()
        for c in task_curves(results, task):
            label = None if c.method in shown else METHOD_LABELS.get(c.method, c.method)
            shown.add(c.method)
            thin = c.method == "soft_prompt"
            ax.plot(*zip(*c.points, strict=True), marker="o", ms=2.5, lw=1 if thin else 2, alpha=0.6 if thin else 1,
                    color=colors.get(c.method), label=label)  # fmt: skip
        ax.set_title(task_name(task))
        ax.set_xlabel("wall time of the run (s), evaluations included")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return write_figure(out / "figures" / "accuracy_vs_time.png", fig, dpi=110)
    finally:
        plt.close(fig)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
