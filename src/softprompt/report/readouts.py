"""The report's "What the prompts say" section and its findings, from results.json's `readouts`
(`softprompt.analysis.readouts.readouts_summary`): self-descriptions trained vs init, an importance strip
aligned with the neighbour table and drift, what each position moved toward, and the PEZ hard prompt."""

from __future__ import annotations

from pathlib import Path

from softprompt.analysis.readouts import LOSS_NOISE_FLOOR
from softprompt.io import write_figure
from softprompt.records.readouts import (
    Carriers,
    DescribeReadout,
    HardReadout,
    PositionReadout,
    ReadoutsSummary,
    TaskReadouts,
)
from softprompt.records.stats import CorrelationStats, MeanSE
from softprompt.report.primitives import esc, figure, table
from softprompt.report.tables import write_csv

SIGNIFICANCE = 0.05


def _pm(s: MeanSE | None, digits: int = 3, scale: float = 1.0) -> str:
    """`mean ± SE` (or the mean alone with one value, or empty)."""
    if s is None or s.mean is None:
        return ""
    m = f"{scale * s.mean:+.{digits}f}"
    if s.se is None:
        return m
    se = scale * s.se
    return f"{m} ± {se:.{digits}f}" if se >= 0.5 * 10**-digits else f"{m} ± <{10**-digits:g}"


def importance_strip(task: str, rows: list[PositionReadout], out: Path) -> Path | None:
    """Per position, aligned: the loss increase when it is put back to its init vector (mean ± SE over seeds), and
    its drift relative to the gap to the next vocabulary token; x labels are the init tokens."""
    if not rows or all(r.loss_increase.mean is None for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(rows)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(rows) + 2), 4.6), sharex=True)
    means = [r.loss_increase.mean or 0.0 for r in rows]
    errs = [r.loss_increase.se or 0.0 for r in rows]
    colors = ["#2b6cb0" if r.kept_top1 == r.runs else "#dd6b20" for r in rows]
    top.bar(x, means, yerr=errs, color=colors, capsize=2)
    top.axhline(0, color="grey", lw=0.8)
    top.set_ylabel("loss increase\n(put back to init)")
    top.set_title(f"{task} (blue: top-1 neighbour still the init token in every seed; orange: not)", fontsize=9)
    drift = [r.relative_drift.mean or 0.0 for r in rows]
    bottom.bar(x, drift, color="#718096")
    bottom.axhline(1.0, color="#c53030", ls=":", lw=1)
    bottom.set_ylabel("drift / gap to\nnearest other token")
    bottom.set_xticks(x, [f"{r.index}:{r.initial_token or '?'}" for r in rows], rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    try:
        return write_figure(out / "figures" / f"readouts_{_slug(task)}.png", fig, dpi=110)
    finally:
        plt.close(fig)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _position_table(task: str, positions: list[PositionReadout], out: Path) -> str:
    rows = [
        {
            "position": r.index,
            "init token": r.initial_token,
            "loss increase (± SE)": _pm(r.loss_increase),
            "accuracy drop (points)": _pm(r.accuracy_drop, 1, 100.0),
            "top-1 still init (runs)": f"{r.kept_top1}/{r.runs}",
            "drift / gap": _pm(r.relative_drift).lstrip("+"),
            "moved toward": ", ".join(f"{m.token} ({m.runs})" for m in r.moved_toward),
        }
        for r in positions
    ]
    write_csv(out / "tables" / f"readouts_{_slug(task)}.csv", rows)
    return table(rows)


def _describe_table(d: DescribeReadout) -> str:
    rows = []
    for run, descriptions in d.per_run.items():
        init = {(g.probe, g.layer): g for g in descriptions.init_greedy}
        for g in descriptions.greedy:
            i = init.get((g.probe, g.layer))
            probe = g.probe if g.layer is None else f"{g.probe} @ layer {g.layer}"
            rows.append(
                {
                    "run": run,
                    "probe": probe,
                    "trained prompt says": g.text,
                    "score": g.score,
                    "init prompt says": i.text if i else None,
                    "init score": i.score if i else None,
                }
            )
    return table(rows)


def _hard_line(hard: HardReadout | None) -> str:
    if not hard:
        return ""
    soft = hard.soft_accuracy
    parts = [
        f"PEZ discrete prompt (projected gradients, Wen et al. 2023): <code>{esc(hard.text)}</code>",
        f"accuracy {_acc(hard.accuracy)} as token embeddings",
    ]
    if hard.text_accuracy is not None:
        parts.append(f"{_acc(hard.text_accuracy)} as typed text")
    parts.append(f"soft prompt {_acc(soft.mean)} (mean of {soft.n} seeds); English prompt {_acc(hard.english_accuracy)}")
    return "<p>" + "; ".join(parts) + ".</p>"


def _acc(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def readouts_section(readouts: ReadoutsSummary, out: Path) -> str:
    """Per task: descriptions, the importance strip and position table, and the hard prompt."""
    body = [
        "<p>Readouts that go past the nearest tokens. <b>Importance</b>: the mean cross-entropy over the label words "
        "rises by this much when one position is put back to its initial vector (the validation subsample; mean ± "
        "standard error over seeds). <b>Drift / gap</b>: how far the position moved, relative to the distance from its "
        "init token to the nearest other token (below 1: it cannot have changed its nearest token). <b>Moved toward</b>: "
        "the token nearest the direction final − init, in how many runs. <b>Self-description</b>: the model asked what "
        "its prompt says, with the prompt's vectors as input embeddings (embed) or its hidden states patched into a "
        "describe prompt (patch, Patchscopes/InSPEcT), scored by the share of the task description's content words and "
        "label words it names; the same for the initial prompt shows what training changed.</p>"
    ]
    for task, entry in readouts.tasks.items():
        body.append(f"<h3>{esc(task)}</h3>")
        if entry.read_runs and set(entry.read_runs) != set(entry.runs):
            body.append(
                f'<p class="muted">Importance and self-descriptions read {len(entry.read_runs)} of the task\'s '
                f"{len(entry.runs)} runs ([analysis] readout_seeds): {esc(', '.join(entry.read_runs))}.</p>"
            )
        if entry.describe:
            body.append("<h4>What the model says its prompt asks for</h4>" + _describe_table(entry.describe))
        if entry.positions:
            body.append("<h4>Which positions matter, and where they went</h4>")
            body.append(
                figure(
                    importance_strip(task, entry.positions, out),
                    f"{task}: importance (top) and drift relative to the gap to the nearest other token (bottom) per "
                    "position, labelled by the init token",
                )
            )
            body.append(_position_table(task, entry.positions, out))
        elif entry.runs:
            body.append('<p class="muted">The runs of this task did not start from the same tokens, so positions are not '
                        "compared across seeds (see importance.json per run).</p>")  # fmt: skip
        body.append(_hard_line(entry.hard))
    return "".join(body)


# ----------------------------------------------------------------------------- findings


def readout_findings(readouts: ReadoutsSummary | None) -> list[str]:
    """Sentences from the readouts' numbers only, with n and seeds; weak evidence is said to be weak."""
    out: list[str] = []
    for task, e in (readouts.tasks if readouts else {}).items():
        if e.carriers:
            out.append(_carrier_finding(task, e, e.carriers))
        c = e.importance_vs_drift
        if c and c.spearman_rho is not None:
            out.append(_drift_finding(task, c))
        if e.describe:
            out.append(_describe_finding(task, e.describe))
        if e.hard:
            out.append(_hard_finding(task, e.hard))
    return out


def _carrier_finding(task: str, e: TaskReadouts, car: Carriers) -> str:
    rows = {r.index: r for r in e.positions or []}
    n = ", ".join(str(x) for x in e.n_examples) or "?"
    runs = max((r.runs for r in rows.values()), default=0)
    where = f"{runs} seed{'s' if runs != 1 else ''}, n = {n} validation examples each"
    if not car.clear:
        top = rows[car.top[0]] if car.top else None
        largest = f"; the largest is position {top.index} ({_pm(top.loss_increase)})" if top else ""
        return (
            f"{task}: no position's ablation (put back to its init vector) raises the loss by more than 2 standard "
            f"errors and the {LOSS_NOISE_FLOOR:g} noise floor over {where}: the evidence for individually important "
            f"positions is weak{largest}."
        )
    named = [rows[i] for i in car.clear]
    desc = " and ".join(f"{r.index} ({r.initial_token}, loss {_pm(r.loss_increase)})" for r in named)
    kept = sum(r.kept_top1 == r.runs for r in named)
    keep = (
        f"{'both' if len(named) == 2 else 'all' if len(named) > 2 else 'it'} kept "
        f"{'their' if len(named) > 1 else 'its'} init token as top-1 neighbour in every seed"
        if kept == len(named)
        else f"{kept} of {len(named)} kept their init token as top-1 neighbour in every seed"
    )
    share = f"; {100 * car.top_share:.0f}% of the total increase is in the top {len(car.top)}" if car.top_share else ""
    verb = "carries" if len(named) == 1 else "carry"
    return f"{task}: position{'s' if len(named) > 1 else ''} {desc} {verb} the most (over {where}){share}; {keep}."


def _drift_finding(task: str, c: CorrelationStats) -> str:
    rho, p = c.spearman_rho, c.spearman_p
    direction = "moved less" if (rho or 0) < 0 else "moved more"
    verdict = f"the important positions {direction}" if p is not None and p < SIGNIFICANCE else "no evidence either way"
    return (
        f"{task}: importance vs drift over {c.n} positions: Spearman rho = {rho:.2f} (p = {p:.3g}); {verdict} "
        "(the seed study's claim was that important tokens do not change)."
    )


def _describe_finding(task: str, d: DescribeReadout) -> str:
    t, i, diff = d.trained, d.init, d.difference
    if t.mean is None or i.mean is None:
        return f"{task}: no self-description could be scored."
    change = "changed"
    if diff.se is None or diff.mean is None or abs(diff.mean) <= 2 * diff.se:
        change = "did not measurably change"
    best = d.best
    quote = f' Best trained description ({best.run}): "{best.text}".' if best and best.text else ""
    return (
        f"{task}: the model's descriptions of its trained prompts score {t.mean:.2f} vs {i.mean:.2f} for the init "
        f"prompt (paired difference {_pm(diff, 2)}, {diff.n} seeds; share of the task's content and label words named): "
        f"training {change} what the model says the prompt asks for.{quote}"
    )


def _hard_finding(task: str, h: HardReadout) -> str:
    soft = h.soft_accuracy
    text = f", {_acc(h.text_accuracy)} typed as text" if h.text_accuracy is not None else ""
    shown = (h.text or "").replace("\n", "\\n")
    return (
        f'{task}: the PEZ discrete prompt "{shown}" scores {_acc(h.accuracy)}{text} (one seed) vs the soft '
        f"prompt's {_acc(soft.mean)} (mean of {soft.n} seeds) and the English prompt's {_acc(h.english_accuracy)}."
    )
