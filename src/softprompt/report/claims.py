"""The seed study's claims, answered from a study's own numbers: results.json's `claims` and the report's first
table. The rules are `claim_rules`' (with the accuracy claims) and `claims_analyses`' (the analyses' claims)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from softprompt.records.claims import Claim
from softprompt.records.results import StudyResults
from softprompt.report.claim_rules import approaches_finetuning, beats_english_prompt, seeds_of, similar_accuracy
from softprompt.report.claims_analyses import ANALYSIS_CLAIMS
from softprompt.report.primitives import esc


def study_claims(results: StudyResults) -> list[Claim]:
    """Every claim of the seed study, in its order, answered from `results`."""
    seeds = seeds_of(results)
    builders: list[Callable[[StudyResults, list[int]], Claim]] = [
        approaches_finetuning,
        beats_english_prompt,
        *ANALYSIS_CLAIMS[:4],  # drift, key words, scripts, a recurring word
        similar_accuracy,
        *ANALYSIS_CLAIMS[4:],  # equidistance, transfer, faithfulness
    ]
    return [build(results, seeds) for build in builders]


# ----------------------------------------------------------------------------- the report's table


def claims_section(claims: Sequence[Claim]) -> str:
    """The claims table (verdict, statistic, n, seeds, where its numbers are) and each verdict's rule."""
    head = "".join(f"<th>{h}</th>" for h in ("claim of the seed study", "verdict", "statistic", "n", "seeds", "numbers in"))
    rows = []
    for c in claims:
        value = "" if c.statistic.value is None else f" = {c.statistic.value:.4g}"
        seeds = ", ".join(map(str, c.seeds)) or "none"
        rows.append(
            f"<tr><td>{esc(c.claim)}<div class='muted'>{esc(c.basis)}</div></td>"
            f"<td class='verdict {c.verdict.replace(' ', '-')}'>{esc(c.verdict)}</td>"
            f"<td>{esc(c.statistic.name)}{esc(value)}</td><td class='num'>{c.n}</td><td>{esc(seeds)}</td>"
            f"<td><a href='#{esc(c.section)}'>{esc(c.section)}</a></td></tr>"
        )
    rules = "".join(f"<li><b>{esc(c.claim)}</b> {esc(c.rule)}</li>" for c in claims)
    return (
        f"<table class='claims'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "<p class='muted'>Each verdict is computed from this study's numbers by the rule below (n: the observations the "
        "statistic is over; the grey line: the numbers behind the verdict, or why the claim is not testable here).</p>"
        f"<details><summary>How each verdict is decided</summary><ul>{rules}</ul></details>"
    )
