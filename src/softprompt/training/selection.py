"""Which prompt is the run's best (best.safetensors, run.json's `best`, `selection`).

Issue 27: choosing on 40 dev examples by accuracy picked worse prompts than the last;
`bench/convergence.py --recipes dev-loss` compares the rules. Pure functions of the evaluations: the loop
saves the prompt when `choose` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from softprompt.evaluate import EvalResult, choice_losses

MIN_SELECTION_DEV = 30  # below this many dev examples a choice is noise (the normal approximation of a mean): the last
SELECTION_MARGIN_SE = 1.0  # dev_loss keeps a candidate only if its paired loss gain over the last exceeds this many SEs


def selection_rule(selection: str, dev_size: int) -> tuple[str, str | None]:
    """The rule in force for a run (`last` unless a dev split large enough to choose on exists) and why, if it is
    not the configured one."""
    if selection == "last":
        return "last", None
    if dev_size == 0:
        return "last", "no dev split to choose on: the last prompt"
    if dev_size < MIN_SELECTION_DEV:
        return "last", f"a dev split of {dev_size} < {MIN_SELECTION_DEV} examples is too small to choose on: the last prompt"
    return selection, None


def selection_point(record: dict, res: EvalResult, dev: EvalResult | None, metric: str) -> dict[str, Any]:
    """One evaluation as `best` records it: on the dev split (its metric and loss, the validation metric
    beside), or without one the validation metric alone."""
    point = {"epoch": record["epoch"], "step": record["step"], "metric": metric}
    if dev is None:
        return {**point, "split": None, "value": res.metric(metric)}
    return {**point, "split": "dev", "value": dev.metric(metric), "validation": res.metric(metric), "dev_loss": dev.loss}


def improves(rule: str, point: dict, candidate: dict | None) -> bool:
    """Whether `point` replaces `candidate` as the best so far: a lower dev loss (`dev_loss`) or a higher dev
    metric (`dev_accuracy`); ties keep the earlier prompt."""
    if candidate is None or candidate.get("split") != "dev":
        return True
    if rule == "dev_loss":
        return point["dev_loss"] < candidate["dev_loss"]
    return point["value"] > candidate["value"]


def paired_gain(candidate_losses: list[float], last_losses: list[float]) -> tuple[float, float]:
    """The mean over dev examples of (last prompt's loss - candidate's loss) and its standard error (inf for n < 2)."""
    d = [b - a for a, b in zip(candidate_losses, last_losses, strict=True)]
    n = len(d)
    mean = math.fsum(d) / n if n else 0.0
    se = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else math.inf
    return mean, se


def settle_selection(
    selection: str, candidate: dict, last: dict, candidate_losses: list[float], last_losses: list[float], dev_size: int
) -> tuple[dict, dict[str, Any]]:
    """(the best prompt's point: `candidate` or `last`, the facts run.json's `selection` records). `dev_loss` keeps
    its candidate only if it beats the last prompt by SELECTION_MARGIN_SE paired standard errors of the
    per-example loss difference; `dev_accuracy` keeps its candidate (the rule before issue 27)."""
    rule, why = selection_rule(selection, dev_size)
    facts: dict[str, Any] = {"rule": selection, "dev_size": dev_size, "applied": rule}
    if rule == "last" or candidate["step"] == last["step"]:
        why = why or ("selection = last: the last prompt" if rule == "last" else f"the last prompt is the best by {rule}")
        return last if rule == "last" else candidate, {**facts, "chosen": "last", "step": last["step"], "why": why}
    facts["candidate_step"] = candidate["step"]
    if rule == "dev_accuracy":
        why = f"the highest dev {candidate['metric']} ({candidate['value']:.4f}; the first of ties): step {candidate['step']}"
        return candidate, {**facts, "chosen": "candidate", "step": candidate["step"], "why": why}
    gain, se = paired_gain(candidate_losses, last_losses)
    facts.update(loss_gain=gain, loss_gain_se=se if math.isfinite(se) else None, margin_se=SELECTION_MARGIN_SE)
    text = f"step {candidate['step']}'s dev loss is {gain:.4f} below the last prompt's (paired SE {se:.4f}, n={len(last_losses)})"
    if gain > SELECTION_MARGIN_SE * se:
        return candidate, {**facts, "chosen": "candidate", "step": candidate["step"], "why": text + ": kept"}
    why = f"{text}, within {SELECTION_MARGIN_SE:g} SE: the last prompt"
    return last, {**facts, "chosen": "last", "step": last["step"], "why": why}


def select_prompt(selection: str, points: list[dict], losses: list[list[float]], dev_size: int) -> tuple[dict, dict]:
    """The same choice over a whole history at once (`points` as `selection_point` makes them, in order, and each
    one's per-example dev losses): what a run with these evaluations records (tests, benchmarks)."""
    rule, _ = selection_rule(selection, dev_size)
    best, best_losses = None, []
    for point, point_losses in zip(points, losses, strict=True):
        if rule == "last" or improves(rule, point, best):
            best, best_losses = point, point_losses
    return settle_selection(selection, best, points[-1], best_losses, losses[-1], dev_size)


@dataclass
class Choice:
    """What one evaluation does to the run's best prompt."""

    best: dict  # the best point so far (state["best"])
    save: bool  # the current prompt becomes best.safetensors
    candidate_losses: list[float] | None = None  # the new candidate's per-example dev losses (None: unchanged)
    selection: dict[str, Any] | None = None  # the final choice's facts (the run's last evaluation only)


def choose(
    selection: str,
    dev_size: int,
    metric: str,
    best: dict | None,
    evaluation: tuple[dict, EvalResult, EvalResult | None],
    candidate_losses: list[float] | None,
    *,
    last: bool = False,
) -> Choice:
    """The best prompt so far by the run's `selection` rule on a dev split of `dev_size` (`improves`); the latest
    without one, or with one too small to choose on (the validation examples the report scores never choose).
    At the run's last evaluation (`last`), the final choice between that candidate and the last prompt
    (`settle_selection`). `evaluation`: (history record, validation result, dev result)."""
    record, res, dev_res = evaluation
    rule, _ = selection_rule(selection, dev_size)
    here = selection_point(record, res, dev_res if rule != "last" else None, metric)
    losses = choice_losses(dev_res.scores) if rule != "last" and dev_res is not None and dev_res.scores is not None else []
    choice = Choice(best, save=False)
    if rule == "last" or improves(rule, here, best):
        choice = Choice(here, save=True, candidate_losses=losses)
        candidate_losses = losses
    if last:
        chosen, facts = settle_selection(selection, choice.best, here, candidate_losses or [], losses, dev_size)
        # the candidate did not beat the last prompt by the margin: the last one (the current prompt) is the best
        choice.save = choice.save or chosen is not choice.best
        choice.best, choice.selection = chosen, facts
    return choice
