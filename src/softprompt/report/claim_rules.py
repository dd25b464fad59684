"""How the seed study's claims are decided (`claims`), and the claims about accuracy.

Every verdict is one of supported / not supported / inconclusive / not testable, decided by the rule the claim
states (`RULES`, docs/studies.md "The seed study's claims") from numbers the study already computed (the accuracy
table, geometry, neighbours and scripts, the readouts, transfer), with the findings' standards: a difference counts
when it exceeds two standard errors over seeds, a correlation when its two-sided p-value is below 0.05, a share by
an exact binomial test; one seed gives no standard error, so a claim that needs one is not testable. Claims stated
per task are decided per task and combined: supported when every testable task supports it, not supported when any
task contradicts it, else inconclusive. This module holds those rules' shared parts and the accuracy claims; the claims
about what the prompts are and where they transfer are `claims_analyses`'.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from softprompt.records.claims import INCONCLUSIVE, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, Claim, ClaimStatistic
from softprompt.records.results import RunSummary, StudyResults
from softprompt.report.tables import METHOD_LABELS, runs_by_task
from softprompt.tasks import task_name

MARGIN = 0.03  # accuracy (3 points): "approaches" and "reads as well as" mean within this of the reference
SIGNIFICANCE = 0.05  # a correlation or a share counts below this two-sided p-value (as the findings)
EXACT_UP_TO = 8  # Spearman over this many points or fewer: the exact permutation p-value, not scipy's t approximation
COMBINED = "Over tasks: supported when every testable task supports it, not supported when any contradicts it, else inconclusive."

# id -> (the seed study's claim, the report section its numbers come from, the rule that decides it)
RULES: dict[str, tuple[str, str, str]] = {
    "approaches_finetuning": (
        "Soft prompts approach fine-tuning accuracy.",
        "accuracy",
        "Per task, the soft prompt's mean accuracy over seeds minus the best fine-tuning baseline that ran (full "
        "fine-tuning or LoRA; one run, taken as fixed). Supported on a task when the difference minus 2 standard errors "
        f"is above -{100 * MARGIN:g} points (within the margin or better), not supported when the difference plus 2 "
        f"standard errors is below -{100 * MARGIN:g} points, else inconclusive. {COMBINED}",
    ),
    "beats_english_prompt": (
        "Embedding-level (soft) prompts beat the English prompt.",
        "accuracy",
        "Per task, the soft prompt's mean accuracy over seeds minus the English prompt's (a hard prompt, one "
        "evaluation). Supported on a task when the difference exceeds 2 standard errors, not supported when it is "
        f"below -2 standard errors, else (a tie) inconclusive. {COMBINED}",
    ),
    "similar_accuracy": (
        "Distinct prompts reach similar accuracy.",
        "stochasticity",
        "Per task, the sample std of accuracy over seeds against the evaluation's own noise, the binomial standard "
        "error of one accuracy on its n validation examples. Not supported on a task when the std exceeds 2 such "
        "errors (seeds differ beyond noise); supported when it does not and the prompts are distinct (their mean "
        "pairwise distance at least their mean drift from the init, so the runs ended apart, not at one point); "
        f"inconclusive when similar but not distinct. {COMBINED}",
    ),
}


@dataclass(frozen=True)
class Outcome:
    """One task's answer to a per-task claim: its verdict, its statistic and the sentence with its numbers."""

    task: str
    verdict: str
    value: float | None
    text: str


def combine(outcomes: Sequence[Outcome]) -> str:
    """The claim's verdict over tasks (see the module docstring)."""
    tested = [o.verdict for o in outcomes if o.verdict != NOT_TESTABLE]
    if not tested:
        return NOT_TESTABLE
    if NOT_SUPPORTED in tested:
        return NOT_SUPPORTED
    return SUPPORTED if all(v == SUPPORTED for v in tested) else INCONCLUSIVE


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std / sqrt(n); None below two values)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def binomial_p(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n trials against one half."""
    tail = sum(math.comb(n, i) for i in range(max(k, n - k), n + 1)) / 2**n
    return min(1.0, 2 * tail)


@functools.cache
def _spearman_null(n: int) -> tuple[float, ...]:
    """|rho| of every ordering of n untied ranks against the identity: Spearman's exact null distribution."""
    scale = n * (n * n - 1) / 6
    return tuple(abs(1 - sum((i - j) ** 2 for i, j in enumerate(perm)) / scale) for perm in itertools.permutations(range(n)))


def spearman_p(rho: float | None, p: float | None, n: int) -> float | None:
    """The two-sided p-value of a Spearman rho over n points: exact (every ordering of n ranks) up to EXACT_UP_TO
    points, where scipy's t approximation is liberal (it gives p = 0 to any perfect order, even of 3 points, whose
    exact p is 1/3); scipy's `p` above."""
    if rho is None or n < 3:
        return None
    if n > EXACT_UP_TO:
        return p
    null = _spearman_null(n)
    return sum(r >= abs(rho) - 1e-9 for r in null) / len(null)


def correlation_verdict(r: float | None, p: float | None, sign: int) -> str:
    """Supported when the correlation has the claimed sign with p below SIGNIFICANCE, not supported when it has the
    other sign so, else inconclusive."""
    if r is None or p is None or p >= SIGNIFICANCE or r == 0:
        return INCONCLUSIVE
    return SUPPORTED if (r > 0) == (sign > 0) else NOT_SUPPORTED


def seeds_of(results: StudyResults) -> list[int]:
    return sorted({r.seed for r in results.runs if r.seed is not None})


def claim(cid: str, verdict: str, statistic: str, value: float | None, n: int, seeds: list[int], basis: str, **kw) -> Claim:
    """A claim's record with its fixed text, section and rule from `RULES` (or `rules` given)."""
    text, section, rule = kw.pop("rules", RULES)[cid]
    return Claim(
        id=cid,
        claim=text,
        verdict=verdict,
        statistic=ClaimStatistic(statistic, None if value is None else round(value, 4)),
        n=n,
        seeds=seeds,
        section=section,
        rule=rule,
        basis=basis,
        **kw,
    )


def untestable(cid: str, seeds: list[int], why: str, rules: dict = RULES) -> Claim:
    return claim(cid, NOT_TESTABLE, "none", None, 0, seeds, why, rules=rules)


def per_task_claim(
    cid: str, outcomes: list[Outcome], stat: str, n: int, seeds: list[int], *, higher_supports: bool, rules: dict = RULES
) -> Claim:
    """A per-task claim: the verdict `combine`d; its statistic is the weakest testable task's (the one closest to
    failing the claim), every task's value in `by_task`."""
    verdict = combine(outcomes)
    basis = "; ".join(o.text for o in outcomes) + "."
    if verdict == NOT_TESTABLE:
        return untestable(cid, seeds, basis, rules)
    scored = [o for o in outcomes if o.verdict != NOT_TESTABLE and o.value is not None]
    pick = min if higher_supports else max
    weakest = pick(scored, key=lambda o: o.value or 0.0) if scored else None  # (values of `scored` are not None)
    where = "" if weakest is None else f", {'weakest task: ' if len(scored) > 1 else ''}{weakest.task}"
    by_task = {o.task: None if o.value is None else round(o.value, 4) for o in outcomes}
    value = weakest.value if weakest else None
    return claim(cid, verdict, stat + where, value, n, seeds, basis, by_task=by_task, rules=rules)


def _accuracies(runs: Sequence[RunSummary]) -> list[float]:
    return [r.final.accuracy for r in runs if r.final.accuracy is not None]


def _difference(task: str, values: list[float], ref: float, label: str) -> tuple[float, float | None, str]:
    mean, se = mean_se(values)
    d = mean - ref
    se_text = "no standard error (one seed)" if se is None else f"SE {100 * se:.1f}"
    return d, se, f"{task}: {mean:.3f} vs {label} {ref:.3f}, {100 * d:+.1f} points ({se_text}, n = {len(values)} seeds)"


def approaches_finetuning(results: StudyResults, seeds: list[int]) -> Claim:
    outcomes, n = [], 0
    for key, runs in runs_by_task(results.runs).items():
        refs = {m: b.accuracy for m in ("finetune", "lora") if (b := results.baseline(key, m)) is not None}
        values = _accuracies(runs)
        if not refs or not values:
            continue
        method = max(refs, key=refs.__getitem__)
        d, se, text = _difference(task_name(key), values, refs[method], METHOD_LABELS[method])
        n += len(values)
        if se is None:
            outcomes.append(Outcome(task_name(key), NOT_TESTABLE, 100 * d, text))
            continue
        verdict = SUPPORTED if d - 2 * se > -MARGIN else NOT_SUPPORTED if d + 2 * se < -MARGIN else INCONCLUSIVE
        outcomes.append(Outcome(task_name(key), verdict, 100 * d, text))
    if not outcomes:
        why = 'no fine-tuning baseline in this config: add "lora" or "finetune" to [baselines] methods'
        return untestable("approaches_finetuning", seeds, why)
    stat = "soft prompt minus fine-tuning accuracy, points"
    return per_task_claim("approaches_finetuning", outcomes, stat, n, seeds, higher_supports=True)


def beats_english_prompt(results: StudyResults, seeds: list[int]) -> Claim:
    outcomes, n = [], 0
    for key, runs in runs_by_task(results.runs).items():
        english, values = results.baseline(key, "english_prompt"), _accuracies(runs)
        if english is None or not values:
            continue
        d, se, text = _difference(task_name(key), values, english.accuracy, "the English prompt")
        n += len(values)
        verdict = NOT_TESTABLE if se is None else SUPPORTED if d > 2 * se else NOT_SUPPORTED if d < -2 * se else INCONCLUSIVE
        outcomes.append(Outcome(task_name(key), verdict, 100 * d, text))
    if not outcomes:
        why = 'no English prompt baseline in this config: add "english_prompt" to [baselines] methods'
        return untestable("beats_english_prompt", seeds, why)
    stat = "soft prompt minus English prompt accuracy, points"
    return per_task_claim("beats_english_prompt", outcomes, stat, n, seeds, higher_supports=True)


def similar_accuracy(results: StudyResults, seeds: list[int]) -> Claim:
    within = (results.geometry.within_task or {}) if results.geometry else {}
    outcomes, n = [], 0
    for key, runs in runs_by_task(results.runs).items():
        task, values = task_name(key), _accuracies(runs)
        sizes = [r.final.n for r in runs if r.final.n]
        if len(values) < 2 or not sizes:
            why = "one seed: nothing to compare" if len(values) < 2 else "validation size not recorded"
            outcomes.append(Outcome(task, NOT_TESTABLE, None, f"{task}: {why}"))
            continue
        n += len(values)
        mean, std = statistics.fmean(values), statistics.stdev(values)
        noise = math.sqrt(mean * (1 - mean) / min(sizes))
        w = within.get(task)
        ratio = w.between_runs_over_drift if w else None
        text = (
            f"{task}: accuracy std {100 * std:.1f} points over {len(values)} seeds vs evaluation noise {100 * noise:.1f} "
            f"(n = {min(sizes)} examples); distance between seeds / drift " + ("unknown" if ratio is None else f"{ratio:.2f}")
        )
        if std > 2 * noise:
            verdict = NOT_SUPPORTED
        else:
            verdict = SUPPORTED if ratio is not None and ratio >= 1.0 else INCONCLUSIVE
        outcomes.append(Outcome(task, verdict, 100 * std, text))
    stat = "accuracy std over seeds, points"
    return per_task_claim("similar_accuracy", outcomes, stat, n, seeds, higher_supports=False)
