"""results.json's `claims`: the seed study's claims, each answered from the study's own numbers
(`report.claims.study_claims`): a verdict, the statistic behind it, n, the seeds and the section it comes from."""

from __future__ import annotations

from dataclasses import dataclass, field

from softprompt.errors import SoftPromptError
from softprompt.records.base import Record

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
NOT_TESTABLE = "not testable"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_TESTABLE)


@dataclass(frozen=True)
class ClaimStatistic(Record):
    """The number a verdict rests on, named with its unit and where it was taken (None when not testable)."""

    name: str
    value: float | None


@dataclass(frozen=True, kw_only=True)
class Claim(Record):
    """One claim of the seed study and this study's answer to it."""

    id: str  # a stable name, e.g. "approaches_finetuning"
    claim: str  # the seed study's claim, in words
    verdict: str  # one of VERDICTS
    statistic: ClaimStatistic
    n: int  # the observations the statistic is computed over (runs, tasks, positions, transfers); 0 when not testable
    seeds: list[int]  # the seeds whose runs it reads
    section: str  # the report section (its anchor) whose numbers it reads
    rule: str  # the test the verdict applies, stated
    basis: str  # the numbers behind the verdict; for "not testable", why not
    by_task: dict[str, float | None] = field(default_factory=dict)  # the statistic per task, for per-task claims

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise SoftPromptError(f"claim {self.id}: verdict {self.verdict!r}: expected one of {', '.join(VERDICTS)}")
