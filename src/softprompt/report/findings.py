"""Findings: sentences computed from a study's numbers (never fixed text)."""

from __future__ import annotations

import statistics

from softprompt.analysis.learning import LEARNED_BELOW
from softprompt.records.geometry import GeometrySummary
from softprompt.records.neighbors import NeighborsSummary
from softprompt.records.results import RunsAndBaselines, RunSummary, StudyResults
from softprompt.records.transfer import TransferInitCorrelation, TransferInitResult, TransferSummary
from softprompt.report.ablations import ablation_findings
from softprompt.report.tables import METHOD_LABELS, AccuracyRow, accuracy_table, calibrated_values
from softprompt.tasks import task_name

SIGNIFICANCE = 0.05  # the p-value below which a correlation counts as evidence


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def compare(values: list[float], reference: float) -> str:
    """`values` (one per seed) against a fixed reference: the mean difference in points, n, and whether it
    exceeds twice its standard error over seeds (else a tie); never a claim from one seed."""
    n = len(values)
    d = statistics.mean(values) - reference
    above = sum(v > reference for v in values)
    text = f"{'+' if d >= 0 else ''}{100 * d:.1f} points (n={n}, {above}/{n} seeds above"
    if n < 2:
        return text + "; one seed: no standard error, not a finding)"
    se = statistics.stdev(values) / n**0.5
    verdict = ("above" if d > 0 else "below") if abs(d) > 2 * se else "a tie within 2 standard errors"
    return text + f"; SE {100 * se:.1f}: {verdict})"


def accuracy_findings(results: RunsAndBaselines | StudyResults) -> list[str]:
    out = []
    rows = accuracy_table(results)
    tasks = sorted({r.task for r in rows})
    for task in tasks:
        tr = {r.method: r for r in rows if r.task == task}
        soft = next((r for r in rows if r.task == task and r.method == "soft_prompt"), None)
        if soft is None or soft.accuracy is None:
            continue
        runs = [r for r in results.runs if task_name(r.task) == task]
        values = [r.final.accuracy for r in runs if r.final.accuracy is not None]
        if not values:
            continue
        seeds = f"{soft.n_runs} seed{'s' if soft.n_runs != 1 else ''}"
        s = f"{task}: soft prompt {_pct(soft.accuracy)} ± {_pct(soft.accuracy_std or 0)} over {seeds}"
        comps = [
            f"vs {METHOD_LABELS[m]} {compare(values, acc)}" for m in REFERENCES if m in tr and (acc := tr[m].accuracy) is not None
        ]
        if comps:
            s += "; " + "; ".join(comps)
        out.append(s + ".")
        out += _calibrated_finding(task, tr, runs, values)
        out += _plateau_findings(task, runs)
    return out


def _calibrated_finding(task: str, rows: dict[str, AccuracyRow], runs: list[RunSummary], values: list[float]) -> list[str]:
    """The soft prompt against the best baseline after content-free calibration (rank classification otherwise
    inherits the model's prior over the label words, which can sink an English prompt below no prompt)."""
    calibrated = {
        m: r.calibrated_accuracy for m, r in rows.items() if not m.startswith("soft_prompt") and r.calibrated_accuracy is not None
    }
    if not calibrated:
        return []
    best = max(calibrated, key=calibrated.__getitem__)
    label = METHOD_LABELS.get(best, best)
    s = f"{task}: vs the best calibrated baseline ({label}, calibrated accuracy {_pct(calibrated[best])}) the soft prompt is {compare(values, calibrated[best])}"
    own = calibrated_values(runs, "accuracy")
    if own is not None:
        s += f"; calibrated too, the soft prompt scores {_pct(statistics.mean(own))}"
    return [s + "."]


REFERENCES = ("no_prompt", "english_prompt", "majority", "lora", "finetune")


def _plateau_findings(task: str, runs: list[RunSummary]) -> list[str]:
    learned = [r.learning.learned if r.learning else None for r in runs]
    judged = [v for v in learned if v is not None]
    if not judged:
        return []
    stuck = [r for r, v in zip(runs, learned, strict=True) if v is False]
    if not stuck:
        return [f"{task}: all {len(judged)} runs left the chance-loss plateau (training loss below {LEARNED_BELOW:.0%} of it)."]
    names = ", ".join(f"seed {r.seed}" for r in stuck)
    return [
        f"{task}: {len(stuck)} of {len(judged)} runs never left the chance-loss plateau ({names}): those prompts did "
        "not learn the task, so their neighbours, drift and transfer describe an untrained prompt."
    ]


def analysis_findings(results: StudyResults) -> list[str]:
    out: list[str] = []
    if results.geometry:
        out += _geometry_findings(results.geometry.summary)
    if results.transfer:
        out += _transfer_findings(results.transfer.summary)
    if results.neighbors:
        out += _neighbors_findings(results.neighbors.summary)
    if results.transfer_init:
        out += transfer_init_findings(results.transfer_init)
    return out


def similarity_verdict(c: TransferInitCorrelation) -> str:
    """Whether prompt similarity predicted the gain of transfer initialisation, from one correlation, measured."""
    closer = "more similar prompts" if c.direction == "similarity" else "closer prompts (smaller distance)"
    stats = (
        f"Pearson r = {c.pearson_r:.2f} (p = {c.pearson_p:.3g}), Spearman r = {c.spearman_r:.2f} (p = {c.spearman_p:.3g})"
        if c.pearson_r is not None and c.pearson_p is not None and c.spearman_r is not None and c.spearman_p is not None
        else "no correlation computable"
    )
    head = f"Prompt similarity ({c.similarity}) vs the gain of transfer initialisation over {c.level}: {stats}, n = {c.n}"
    ps = [p for p in (c.pearson_p, c.spearman_p) if p is not None]
    if not ps or min(ps) >= SIGNIFICANCE:
        why = " (at least 3 points are needed)" if c.n < 3 else " (constant values)" if c.pearson_r is None else ""
        return f"{head}: no evidence that prompt similarity predicted the gain{why}."
    r = c.pearson_r if c.pearson_p is not None and c.pearson_p < SIGNIFICANCE else c.spearman_r
    helped = (r or 0) > 0 if c.direction == "similarity" else (r or 0) < 0
    return f"{head}: {closer} gave {'larger' if helped else 'smaller'} gains (p < {SIGNIFICANCE})."


def transfer_init_findings(tri: TransferInitResult) -> list[str]:
    out = []
    for p in tri.pairs:
        if p.gain_mean is None:
            continue
        se = "n/a" if p.gain_se is None else f"{100 * p.gain_se:.1f}"
        verdict = (
            "within its standard error: a tie"
            if p.gain_se is None or abs(p.gain_mean) <= p.gain_se
            else "beyond its standard error"
        )
        out.append(
            f"{p.target} started from {p.source}'s prompt: {p.transferred_mean:.3f} vs {p.own_mean:.3f} from "
            f"{tri.own_init} ({100 * p.gain_mean:+.1f} points, standard error {se}, paired over n = {p.n} seeds; {verdict})."
        )
    out += [similarity_verdict(c) for c in tri.correlations if c.level == "task pairs"]
    return out


def _geometry_findings(geo: GeometrySummary) -> list[str]:
    out = []
    if geo.task_drift:
        ranked = sorted(geo.task_drift, key=lambda d: d.mean_frobenius, reverse=True)
        out.append(
            "Prompts drifted furthest from their initial prompt on "
            + ", ".join(f"{d.task} (mean Frobenius distance {d.mean_frobenius:.2f})" for d in ranked)
            + "."
        )
    for e in geo.equidistance:
        if e.mean is not None and e.cv is not None and e.pairs < 3:
            out.append(f"{e.task}: {e.pairs} seed pair(s) only; whether runs are equidistant needs at least 3 seeds.")
        elif e.mean is not None and e.cv is not None:
            out.append(
                f"{e.task}: pairwise Frobenius distances between its {e.pairs} seed pair(s) have mean {e.mean:.2f}, "
                f"std {e.std:.2f} (coefficient of variation {e.cv:.2f}; a small value means equidistant runs)."
            )
    diff = geo.drift_vs_difficulty
    if diff.spearman_r is not None:
        out.append(
            f"Across tasks, drift vs no-prompt accuracy: Spearman r = {diff.spearman_r:.2f} "
            f"(p = {diff.spearman_p:.3g}, {diff.n} tasks)."
        )
    return out


def _transfer_findings(tr: TransferSummary) -> list[str]:
    out = []
    if tr.share_beat_no_prompt is not None:
        counts = ""
        if tr.n_beat is not None and tr.n_ties is not None:
            below = tr.n_transfers - tr.n_beat - tr.n_ties
            counts = f"{tr.n_beat} of {tr.n_transfers}; exact ties with it: {tr.n_ties}, below it: {below}"
        out.append(
            f"{_pct(tr.share_beat_no_prompt)} of cross-task transfers ({counts or tr.n_transfers}) beat no prompt on "
            "the target task (the original study reported 90%)."
        )
    for c in tr.correlations:
        if c.pearson_r is not None:
            out.append(
                f"Similarity ({c.similarity}) vs transfer gain: Pearson r = {c.pearson_r:.2f} (p = {c.pearson_p:.3g}), "
                f"Spearman r = {c.spearman_r:.2f} (p = {c.spearman_p:.3g}), n = {c.n}."
            )
    return out


def _neighbors_findings(nb: NeighborsSummary) -> list[str]:
    out = []
    for task, s in nb.survival_by_task.items():
        if s.rate is None:
            continue
        words = ", ".join(repr(w) for w in s.words[:8]) or "none"
        out.append(
            f"{task}: {_pct(s.rate)} of initial tokens are still among their position's top-{nb.k} "
            f"neighbours after training; surviving words: {words}."
        )
    if nb.projection:
        worse = sum(1 for p in nb.projection if p.projected_text is not None and p.soft is not None and p.projected_text < p.soft)
        out.append(
            f"Projecting prompts to their nearest tokens: the text projection scores below the soft prompt for "
            f"{worse} of {len(nb.projection)} runs (prompt waywardness: neighbour readouts are not faithful explanations)."
        )
    return out


def findings(results: StudyResults) -> list[str]:
    ablations = ablation_findings(results.ablations) if results.ablations else []
    return accuracy_findings(results) + ablations + analysis_findings(results)
