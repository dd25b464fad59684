"""The "Ablations" section of a study with a [sweep]: accuracy against each swept axis, per task.

Figures follow Lester et al. 2021, Figure 3: one figure per swept axis, one panel per task, accuracy
(mean over seeds, bars: sample std) against the axis's values, with no prompt, the English prompt
and LoRA as horizontal reference lines. A numeric axis is drawn on its values (a log axis when they
span more than 10x), any other (init) at categorical positions. With two or more axes, each other-axes
combination is a line while there are at most `MAX_LINES` of them; beyond that the other axes are held
at the analysis cell. The comparisons behind the findings hold the other axes at the analysis cell and
pair the accuracies by seed: a difference is called a tie unless it is larger than its standard error.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from softprompt.analysis.common import exceeds_its_error, paired_difference
from softprompt.io import write_figure
from softprompt.records.ablations import AblationResults, AblationRow, Comparison
from softprompt.records.metrics import BaselineRow
from softprompt.records.results import RunSummary
from softprompt.records.stats import MeanSE
from softprompt.report.primitives import esc, figure, table
from softprompt.report.tables import mean_std, write_csv
from softprompt.tasks import task_name

MAX_LINES = 6
REFERENCES = {"no_prompt": ("no prompt", "grey", "--"), "english_prompt": ("English prompt", "tab:orange", ":")}
REFERENCES["lora"] = ("LoRA", "tab:green", "-.")


def _key(value: Any) -> str:
    return json.dumps(value)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _accuracies(runs: Sequence[RunSummary], task: str, cell: dict[str, Any]) -> dict[int, float]:
    """seed -> final accuracy of `task`'s runs in `cell`."""
    want = {k: _key(v) for k, v in cell.items()}
    return {
        r.seed: r.final.accuracy
        for r in runs
        if r.task == task
        and r.seed is not None
        and r.final.accuracy is not None
        and {k: _key(v) for k, v in (r.cell or {}).items()} == want
    }


def _rows(sweep: dict[str, list], runs: Sequence[RunSummary], tasks: list[str]) -> list[AblationRow]:
    rows = []
    for task in tasks:
        for combo in itertools.product(*sweep.values()):
            cell = dict(zip(sweep, combo, strict=True))
            acc = _accuracies(runs, task, cell)
            mean, std = mean_std(list(acc.values()))
            rows.append(
                AblationRow(
                    task=task_name(task),
                    cell=cell,
                    n=len(acc),
                    accuracy_mean=mean if acc else None,
                    accuracy_std=std if acc else None,
                    seeds=sorted(acc),
                    accuracies=[acc[s] for s in sorted(acc)],
                )
            )
    return rows


def _comparisons(sweep: dict[str, list], at: dict[str, Any], runs: Sequence[RunSummary], tasks: list[str]) -> list[Comparison]:
    """Per task and axis (other axes at the analysis cell): the best value against each other value, paired by seed."""
    out = []
    for task, axis in itertools.product(tasks, sweep):
        acc = {_key(v): _accuracies(runs, task, {**at, axis: v}) for v in sweep[axis]}
        scored = [v for v in sweep[axis] if acc[_key(v)]]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda v: mean_std(list(acc[_key(v)].values()))[0])
        for value in (v for v in scored if v != best):
            seeds = sorted(set(acc[_key(best)]) & set(acc[_key(value)]))
            diff = paired_difference([acc[_key(best)][s] for s in seeds], [acc[_key(value)][s] for s in seeds])
            stats = MeanSE.from_dict(diff, "paired difference")
            out.append(
                Comparison(
                    task=task_name(task),
                    axis=axis,
                    held={k: v for k, v in at.items() if k != axis},
                    best=best,
                    value=value,
                    difference=stats.mean,
                    se=stats.se,
                    n=stats.n,
                    verdict="ahead" if exceeds_its_error(diff) else "tie",
                )
            )
    return out


def ablation_results(
    sweep: dict[str, list],
    analysis_cell: Sequence[tuple[str, Any]],
    runs: Sequence[RunSummary],
    baselines: dict[str, dict[str, BaselineRow]],
) -> AblationResults:
    """results.json's "ablations": a row per (task, cell), the paired comparisons, the reference accuracies."""
    tasks = list(dict.fromkeys(r.task for r in runs))
    at = dict(analysis_cell)
    references = {  # runs and baselines are keyed by the task as given; the results by its name
        task_name(t): {m: baselines[t][m].accuracy for m in REFERENCES if m in baselines[t]} for t in tasks if t in baselines
    }
    return AblationResults(
        axes=sweep,
        analysis_cell=at,
        rows=_rows(sweep, runs, tasks),
        comparisons=_comparisons(sweep, at, runs, tasks),
        references=references,
    )


# ----------------------------------------------------------------------------- figure


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _lines(ab: AblationResults, axis: str) -> list[dict[str, Any]]:
    """The other-axes settings drawn as lines on `axis`'s figure (see the module docstring)."""
    others = [a for a in ab.axes if a != axis]
    combos = [dict(zip(others, c, strict=True)) for c in itertools.product(*(ab.axes[a] for a in others))]
    if len(combos) > MAX_LINES:
        return [{a: ab.analysis_cell[a] for a in others}]
    return combos


def _dodge(xs: list, line: int, lines: int, log: bool) -> list[float]:
    """x positions nudged per line, so the error bars of overlapping lines stay apart (log axes: by a factor)."""
    k = line - (lines - 1) / 2
    if log:
        return [x * 10 ** (0.015 * k) for x in xs]
    span = (max(xs) - min(xs)) or 1
    return [x + 0.012 * span * k if len(xs) > 1 else x + 0.03 * k for x in xs]


def _panel(ax, ab: AblationResults, axis: str, task: str) -> None:
    values = ab.axes[axis]
    numeric = _numeric(values)
    xs = list(values) if numeric else list(range(len(values)))
    log = numeric and min(values) > 0 and max(values) / min(values) > 10
    lines = _lines(ab, axis)
    for j, held in enumerate(lines):
        pts = []
        for x, v in zip(_dodge(xs, j, len(lines), log), values, strict=True):
            row = ab.row(task, {**held, axis: v})
            if row is not None and row.n:
                pts.append((x, row.accuracy_mean, row.accuracy_std))
        if pts:
            label = ", ".join(f"{k}={_text(v)}" for k, v in held.items()) or "soft prompt"
            ax.errorbar(
                [p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=esc(label)
            )
    for method, level in ab.references.get(task, {}).items():
        name, colour, style = REFERENCES[method]
        ax.axhline(level, color=colour, ls=style, lw=1.2, label=name)
    if log:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xticks(xs, labels=[esc(_text(v)) for v in values])
    ax.minorticks_off()
    ax.set_title(esc(task))
    ax.set_xlabel(esc(axis))
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=7)


def ablation_figure(ab: AblationResults, axis: str, out: Path) -> Path:
    """One panel per task: accuracy (mean, bars: std over seeds) against `axis`, reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in ab.rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        _panel(ax, ab, axis, task)
    fig.tight_layout()
    try:
        return write_figure(out / "figures" / f"ablation_{axis}.png", fig, dpi=110)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- section and findings


def _points(diff: float | None) -> str:
    return "n/a" if diff is None else f"{100 * diff:+.1f} points"


def _comparison_text(c: Comparison) -> str:
    se = "n/a" if c.se is None else f"{100 * c.se:.1f}"
    if c.verdict == "tie":
        return f"tie with {c.axis}={_text(c.value)} ({_points(c.difference)}, standard error {se}, n={c.n})"
    return f"ahead of {c.axis}={_text(c.value)} by {_points(c.difference)} (standard error {se}, n={c.n})"


def ablation_findings(ab: AblationResults) -> list[str]:
    """One sentence per task and axis: the best value and, against each other value, ahead or tie."""
    out = []
    groups: dict[tuple[str, str], list[Comparison]] = {}
    for c in ab.comparisons:
        groups.setdefault((c.task, c.axis), []).append(c)
    for (task, axis), cs in groups.items():
        held = ", ".join(f"{k}={_text(v)}" for k, v in cs[0].held.items())
        best = cs[0].best
        row = ab.row(task, {**cs[0].held, axis: best})
        if row is None or row.accuracy_mean is None or row.accuracy_std is None:
            continue
        out.append(
            f"{task}, {axis}{f' ({held})' if held else ''}: highest mean accuracy at {axis}={_text(best)} "
            f"({row.accuracy_mean:.3f} ± {row.accuracy_std:.3f}, n={row.n}); "
            + "; ".join(_comparison_text(c) for c in cs)
            + " (paired by seed; a difference smaller than its standard error is a tie; not a significance test)."
        )
    return out


def ablations_section(ab: AblationResults, out: Path) -> str:
    axes = list(ab.axes)
    rows = [
        {"task": r.task, **{k: _text(v) for k, v in r.cell.items()}, "n": r.n, "accuracy_mean": r.accuracy_mean,
         "accuracy_std": r.accuracy_std}
        for r in ab.rows
    ]  # fmt: skip
    csv_rows = [dict(r.to_dict(), accuracies=" ".join(f"{a:.4f}" for a in r.accuracies)) for r in ab.rows]
    write_csv(out / "tables" / "ablations.csv", csv_rows)
    comps = [dict(asdict(c), held=json.dumps(c.held), best=_text(c.best), value=_text(c.value)) for c in ab.comparisons]
    write_csv(out / "tables" / "ablation_comparisons.csv", comps)
    cell = ", ".join(f"{k}={_text(v)}" for k, v in ab.analysis_cell.items())
    swept = "; ".join(f"{k} in {{{', '.join(_text(v) for v in vs)}}}" for k, vs in ab.axes.items())
    body = [
        f"<p>Swept: {esc(swept)}. "
        "Accuracy is the last-epoch prompt's on the validation subsample, mean ± sample std over seeds (n per cell in "
        "the table); reference lines are the task's no-prompt, English-prompt and LoRA accuracies (trained and evaluated "
        f"at the [train] values). The sections below (nearest tokens, stochasticity, transfer) read the analysis cell: "
        f"<b>{esc(cell)}</b>.</p>",
        "<p class='note'>With two or more axes, each figure draws one line per combination of the other axes (the other "
        f"axes at the analysis cell when there are more than {MAX_LINES}). A difference between two settings is called a "
        "tie unless it is larger than its standard error (paired by seed); that bar is not a significance test.</p>",
    ]
    for axis in axes:
        body.append(
            figure(
                ablation_figure(ab, axis, out),
                f"Accuracy against {axis}, one panel per task; points: mean, bars: sample std over seeds (n per point in the table)",
            )
        )
    body.append(table(rows, headers={"accuracy_mean": "accuracy (mean)", "accuracy_std": "std", "n": "seeds (n)"}))
    findings = ablation_findings(ab)
    if findings:
        body.append("<ul>" + "".join(f"<li>{esc(f)}</li>" for f in findings) + "</ul>")
    return "".join(body)
