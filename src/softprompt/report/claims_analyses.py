"""The seed study's claims about what the prompts are and where they transfer, answered from the analyses' numbers
(geometry, neighbours and scripts, the readouts, transfer, the projections); the framework and the accuracy claims
are `claim_rules`'. Each rule is stated in `RULES` (and docs/studies.md)."""

from __future__ import annotations

import math
import statistics
from collections import Counter

from softprompt.analysis.scripts import BYTES, CONTROL, DIGITS, OTHER, PUNCT, SPECIAL, WHITESPACE
from softprompt.analysis.token_text import VISIBLE_SPACE
from softprompt.records.claims import INCONCLUSIVE, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, Claim
from softprompt.records.results import StudyResults
from softprompt.report.claim_rules import (
    COMBINED,
    EXACT_UP_TO,
    MARGIN,
    SIGNIFICANCE,
    Outcome,
    binomial_p,
    claim,
    correlation_verdict,
    mean_se,
    per_task_claim,
    spearman_p,
    untestable,
)

EQUIDISTANT_CV = 0.10  # pairwise distances within about 10% of their mean: equidistant
UNEVEN_CV = 0.20  # beyond 20%: not equidistant (between the two: inconclusive, the CV of few pairs is noisy)
NOT_A_SCRIPT = {SPECIAL, BYTES, WHITESPACE, DIGITS, PUNCT, CONTROL, OTHER}
P = f"p < {SIGNIFICANCE}"
EXACT = f"(two-sided; exact over {EXACT_UP_TO} points or fewer)"

RULES: dict[str, tuple[str, str, str]] = {
    "harder_tasks_drift_further": (
        "Harder tasks drift further from their initial prompt.",
        "stochasticity",
        "Spearman correlation over tasks between a task's mean drift (Frobenius distance from the init) and its "
        f"no-prompt accuracy (lower: harder). Supported when negative with {P} {EXACT}, not supported when positive "
        f"with {P}, else inconclusive; not testable below 3 tasks (and no order of 4 reaches {P}).",
    ),
    "important_tokens_persist": (
        "Key words persist: important tokens do not change.",
        "readouts",
        "Per task, Spearman correlation over prompt positions between importance (loss increase when the position is "
        "put back to its init vector, mean over seeds) and drift (relative to the gap to the nearest other token). "
        f"Supported on a task when negative with {P} {EXACT} (important positions moved less), not supported when "
        f"positive with {P}, else inconclusive; needs the importance analysis and runs sharing their init tokens. "
        f"{COMBINED}",
    ),
    "drift_into_other_scripts": (
        "Prompt tokens drift into other scripts and languages (the seed: Chinese).",
        "scripts",
        "Per trained prompt, the share of its top-k neighbour tokens in a letter script other than Latin (digits, "
        "punctuation, whitespace, byte fragments and special tokens are not a script); mean over the prompts with its "
        "standard error. Supported when the mean exceeds 2 standard errors, not supported when no prompt has any such "
        "neighbour, else inconclusive.",
    ),
    "word_recurs_across_tasks": (
        'A word like "accurate" recurs across tasks\' prompts.',
        "neighbors",
        "A word (a neighbour token's letters, case and spaces ignored) belongs to a task when it is among the top-k "
        "neighbours of at least half of the task's trained prompts and is none of their init tokens (it arrived in "
        "training). Supported when one word belongs to at least 2 tasks and at least half of them (the seed: 3 of 4), "
        "not supported when no word belongs to 2 tasks, else inconclusive; a count, not a significance test.",
    ),
    "runs_equidistant": (
        "Runs of a task are equidistant from each other.",
        "stochasticity",
        "Per task, the coefficient of variation (std / mean) of the pairwise Frobenius distances between its seeds' "
        f"prompts: supported at most {EQUIDISTANT_CV:g}, not supported above {UNEVEN_CV:g}, inconclusive between; "
        f"needs at least 3 seeds (3 pairs). {COMBINED}",
    ),
    "transfers_beat_no_prompt": (
        "Most cross-task transfers beat no prompt (the seed: 90%).",
        "transfer",
        "The prompts evaluated on the other tasks: the number scoring strictly above no prompt (a tie does not beat "
        f"it) out of all, exact two-sided binomial test against one half. Supported when most beat it with {P}, not "
        f"supported when most do not with {P}, else inconclusive (transfers from one source share its prompt: not "
        "independent).",
    ),
    "similar_prompts_transfer_better": (
        "More similar prompts transfer better.",
        "transfer",
        "Spearman correlation over cross-task transfers between the source prompt's similarity to the target task's "
        "prompts (Frobenius distance of B - A, the seed's measure, where the prompts have one shape) and the transfer's "
        f"gain over no prompt. Supported when more similar prompts gain more with {P} {EXACT}, not supported when they "
        f"gain less with {P}, else inconclusive; not testable below 3 transfers (pairs from one source prompt are not "
        "independent).",
    ),
    "nearest_tokens_unfaithful": (
        "Nearest-token text is not a faithful reading of a prompt.",
        "projection",
        "Per trained prompt, its accuracy minus the accuracy of its nearest tokens typed as text; mean over prompts "
        "with its standard error. Supported when the loss exceeds 2 standard errors; not supported when the loss plus 2 "
        f"standard errors is below {100 * MARGIN:g} points (the text reads as well as the prompt); else inconclusive; "
        "needs [analysis] project.",
    ),
}


def _claim(cid: str, *args, **kw) -> Claim:
    return claim(cid, *args, rules=RULES, **kw)


def _untestable(cid: str, seeds: list[int], why: str) -> Claim:
    return untestable(cid, seeds, why, RULES)


def _stats(r: float | None, p: float | None) -> str:
    return "undefined (constant values)" if r is None or p is None else f"{r:.2f} (p = {p:.3g})"


def harder_tasks_drift_further(results: StudyResults, seeds: list[int]) -> Claim:
    cid = "harder_tasks_drift_further"
    if results.geometry is None:
        return _untestable(cid, seeds, "no geometry analysis in these results")
    c = results.geometry.summary.drift_vs_difficulty
    if c.n < 3:
        return _untestable(cid, seeds, f"{c.n} task(s) with a no-prompt accuracy: a correlation over tasks needs at least 3")
    p = spearman_p(c.spearman_r, c.spearman_p, c.n)
    verdict = correlation_verdict(c.spearman_r, p, -1)
    basis = f"Spearman r = {_stats(c.spearman_r, p)} over {c.n} tasks"
    return _claim(cid, verdict, "Spearman r, task mean drift vs no-prompt accuracy", c.spearman_r, c.n, seeds, basis)


def important_tokens_persist(results: StudyResults, seeds: list[int]) -> Claim:
    cid = "important_tokens_persist"
    if results.importance is None:
        return _untestable(cid, seeds, "no importance analysis in this config ([analysis] importance = false)")
    survival = results.neighbors.summary.survival_by_task if results.neighbors else {}
    outcomes, n = [], 0
    for task, e in (results.readouts.tasks if results.readouts else {}).items():
        c = e.importance_vs_drift
        if not e.aligned or c is None or c.n < 3:
            why = "its runs did not start from the same tokens" if not e.aligned else "fewer than 3 positions scored"
            outcomes.append(Outcome(task, NOT_TESTABLE, None, f"{task}: {why}"))
            continue
        n += c.n
        s = survival.get(task)
        kept = "" if s is None or s.rate is None else f"; {100 * s.rate:.0f}% of init tokens still among the top-k"
        p = spearman_p(c.spearman_rho, c.spearman_p, c.n)
        text = f"{task}: Spearman rho = {_stats(c.spearman_rho, p)} over {c.n} positions{kept}"
        outcomes.append(Outcome(task, correlation_verdict(c.spearman_rho, p, -1), c.spearman_rho, text))
    if not outcomes:
        return _untestable(cid, seeds, "no task's readouts were computed")
    stat = "Spearman rho, importance vs drift over positions"
    return per_task_claim(cid, outcomes, stat, n, seeds, higher_supports=False, rules=RULES)


def drift_into_other_scripts(results: StudyResults, seeds: list[int]) -> Claim:
    cid = "drift_into_other_scripts"
    prompts = results.neighbors.scripts.prompts if results.neighbors else {}
    if len(prompts) < 2:
        why = "no neighbour analysis" if results.neighbors is None else f"{len(prompts)} prompt(s) with script counts"
        return _untestable(cid, seeds, f"{why}: a mean with a standard error needs at least 2 prompts")
    shares, found = [], Counter()
    for p in prompts.values():
        other = {s: c for s, c in p.top_k.items() if s not in NOT_A_SCRIPT and s != "Latin"}
        found.update(other)
        shares.append(sum(other.values()) / max(1, sum(p.top_k.values())))
    mean, se = mean_se(shares)
    assert se is not None
    if mean > 2 * se:
        verdict = SUPPORTED
    else:
        verdict = NOT_SUPPORTED if not found else INCONCLUSIVE
    scripts = ", ".join(f"{s} ({c})" for s, c in found.most_common(4)) or "none"
    basis = f"{100 * mean:.1f}% of neighbour tokens (SE {100 * se:.1f}, n = {len(shares)} prompts) in other scripts: {scripts}"
    return _claim(cid, verdict, "share of top-k neighbours in a non-Latin script, %", 100 * mean, len(shares), seeds, basis)


def _word(token: str) -> str | None:
    """A neighbour token as a word (letters, case and spaces ignored), or None for a token without letters."""
    if "[special]" in token or "<0x" in token:
        return None
    word = token.replace(VISIBLE_SPACE, " ").strip().lower()
    return word if any(ch.isalpha() for ch in word) else None


def word_recurs_across_tasks(results: StudyResults, seeds: list[int]) -> Claim:
    cid = "word_recurs_across_tasks"
    if results.neighbors is None:
        return _untestable(cid, seeds, "no neighbour analysis in these results")
    by_task: dict[str, list] = {}
    for r in results.neighbors.runs.values():
        by_task.setdefault(r.task, []).append(r)
    if len(by_task) < 2:
        return _untestable(cid, seeds, f"{len(by_task)} task: a word recurring across tasks needs at least 2")
    tasks_of: dict[str, list[str]] = {}
    for task, runs in sorted(by_task.items()):
        init = {w for r in runs for p in r.positions if (w := _word(p.initial_token or ""))}
        counts = Counter(w for r in runs for w in {_word(t.token) for p in r.positions for t in p.tokens} if w and w not in init)
        for w, c in counts.items():
            if c >= math.ceil(len(runs) / 2):
                tasks_of.setdefault(w, []).append(task)
    best = sorted(tasks_of, key=lambda w: (-len(tasks_of[w]), w))
    top = len(tasks_of[best[0]]) if best else 0
    need = max(2, math.ceil(len(by_task) / 2))
    verdict = SUPPORTED if top >= need else NOT_SUPPORTED if top < 2 else INCONCLUSIVE
    shared = [w for w in best if len(tasks_of[w]) == top and top >= 2][:5]
    words = ", ".join(f"'{w}' ({', '.join(tasks_of[w])})" for w in shared) or "no word in 2 tasks"
    basis = f"most widespread word(s) arrived in training: {words}; {top} of {len(by_task)} tasks (needed: {need})"
    stat = f"tasks sharing the most widespread non-init neighbour word (of {len(by_task)})"
    return _claim(cid, verdict, stat, float(top), len(by_task), seeds, basis)


def runs_equidistant(results: StudyResults, seeds: list[int]) -> Claim:
    cid = "runs_equidistant"
    rows = results.geometry.summary.equidistance if results.geometry else []
    outcomes = []
    for e in rows:
        if e.pairs < 3 or e.cv is None:
            outcomes.append(Outcome(e.task, NOT_TESTABLE, None, f"{e.task}: {e.pairs} seed pair(s), needs 3 seeds"))
            continue
        verdict = SUPPORTED if e.cv <= EQUIDISTANT_CV else NOT_SUPPORTED if e.cv > UNEVEN_CV else INCONCLUSIVE
        outcomes.append(Outcome(e.task, verdict, e.cv, f"{e.task}: CV {e.cv:.3f} over {e.pairs} pairs (mean {e.mean:.2f})"))
    if not outcomes:
        return _untestable(cid, seeds, f"{len(seeds)} seed(s): equidistance needs at least 3 seeds per task")
    n = sum(e.pairs for e in rows)
    stat = "coefficient of variation of pairwise distances"
    return per_task_claim(cid, outcomes, stat, n, seeds, higher_supports=False, rules=RULES)


def transfers_beat_no_prompt(results: StudyResults, seeds: list[int]) -> Claim:
    cid = "transfers_beat_no_prompt"
    if results.transfer is None:
        return _untestable(cid, seeds, "no transfer analysis in this config ([analysis] transfer = false)")
    s = results.transfer.summary
    if not s.n_transfers or s.share_beat_no_prompt is None:
        return _untestable(cid, seeds, "one task: no cross-task transfer")
    n = s.n_transfers
    beat = s.n_beat if s.n_beat is not None else round(s.share_beat_no_prompt * n)
    p = binomial_p(beat, n)
    verdict = INCONCLUSIVE if p >= SIGNIFICANCE or 2 * beat == n else SUPPORTED if 2 * beat > n else NOT_SUPPORTED
    ties = f", {s.n_ties} tie(s)" if s.n_ties else ""
    basis = f"{beat} of {n} transfers beat no prompt{ties} ({100 * beat / n:.0f}%; binomial p = {p:.3g})"
    return _claim(cid, verdict, "share of transfers beating no prompt, %", 100 * beat / n, n, seeds, basis)


def similar_prompts_transfer_better(results: StudyResults, seeds: list[int]) -> Claim:
    cid = "similar_prompts_transfer_better"
    corr = results.transfer.summary.correlations if results.transfer else []
    if not corr:
        why = "no transfer analysis in this config" if results.transfer is None else "one task: no cross-task transfer"
        return _untestable(cid, seeds, why)
    c = next((c for c in corr if c.similarity == "frobenius"), corr[0])
    if c.n < 3:
        return _untestable(cid, seeds, f"{c.n} cross-task transfer(s): a correlation needs at least 3")
    sign = -1 if c.direction == "distance" else 1  # a distance shrinks as prompts grow similar
    p = spearman_p(c.spearman_r, c.spearman_p, c.n)
    verdict = correlation_verdict(c.spearman_r, p, sign)
    basis = f"Spearman r = {_stats(c.spearman_r, p)} over {c.n} transfers ({c.similarity}, a {c.direction})"
    return _claim(cid, verdict, f"Spearman r, {c.similarity} vs transfer gain", c.spearman_r, c.n, seeds, basis)


def nearest_tokens_unfaithful(results: StudyResults, seeds: list[int]) -> Claim:
    cid = "nearest_tokens_unfaithful"
    rows = results.neighbors.summary.projection if results.neighbors else []
    losses = [r.soft - r.projected_text for r in rows if r.soft is not None and r.projected_text is not None]
    if len(losses) < 2:
        why = "no projected prompts ([analysis] project = false)" if not rows else f"{len(losses)} projected prompt(s)"
        return _untestable(cid, seeds, f"{why}: a mean with a standard error needs at least 2")
    mean, se = mean_se(losses)
    assert se is not None
    verdict = SUPPORTED if mean > 2 * se else NOT_SUPPORTED if mean + 2 * se < MARGIN else INCONCLUSIVE
    text = statistics.fmean(r.projected_text for r in rows if r.projected_text is not None)
    basis = (
        f"the nearest tokens typed as text score {100 * mean:.1f} points below the soft prompts (SE {100 * se:.1f}, "
        f"n = {len(losses)} prompts; the text's mean accuracy {text:.3f})"
    )
    return _claim(cid, verdict, "soft prompt minus its nearest-token text, points", 100 * mean, len(losses), seeds, basis)


# in the seed study's order, around `claim_rules.similar_accuracy` (claim 7)
ANALYSIS_CLAIMS = [
    harder_tasks_drift_further,
    important_tokens_persist,
    drift_into_other_scripts,
    word_recurs_across_tasks,
    runs_equidistant,
    transfers_beat_no_prompt,
    similar_prompts_transfer_better,
    nearest_tokens_unfaithful,
]
