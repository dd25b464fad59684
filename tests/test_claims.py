"""The seed study's claims (results.json `claims`, the report's first table) and where a study's time went
(`setup.timing`, the phase table): verdicts computed from the numbers, one seed deciding nothing about seeds, a
changed number flipping a verdict; the phase table's arithmetic; a tiny study end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from softprompt.errors import SoftPromptError
from softprompt.records.claims import INCONCLUSIVE, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, VERDICTS, Claim, ClaimStatistic
from softprompt.records.geometry import DriftVsDifficulty, Equidistance
from softprompt.records.metrics import BaselineRow
from softprompt.records.neighbors import NeighborToken, ProjectionRow, PromptScripts
from softprompt.records.results import OTHER_PHASE, StudyResults, StudyTiming, UnitTiming
from softprompt.records.stats import CorrelationStats
from softprompt.report.claims import study_claims

LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "study" / "results.json"
IDS = [
    "approaches_finetuning",
    "beats_english_prompt",
    "harder_tasks_drift_further",
    "important_tokens_persist",
    "drift_into_other_scripts",
    "word_recurs_across_tasks",
    "similar_accuracy",
    "runs_equidistant",
    "transfers_beat_no_prompt",
    "similar_prompts_transfer_better",
    "nearest_tokens_unfaithful",
]


@pytest.fixture
def legacy() -> StudyResults:
    """A real (tiny) study's results: rte and a custom toy task x seeds 0 and 1, LoRA, every analysis."""
    return StudyResults.from_dict(json.loads(LEGACY.read_text()), "results.json")


def _claims(results: StudyResults) -> dict[str, Claim]:
    return {c.id: c for c in study_claims(results)}


def _with_baseline(results: StudyResults, method: str, accuracy: float, task: str | None = None) -> StudyResults:
    """`results` with `method`'s accuracy on `task` (default: every task) replaced."""
    baselines = {
        t: {**rows, method: replace(rows[method], accuracy=accuracy)} if task in (None, t) else rows
        for t, rows in results.baselines.items()
    }
    return replace(results, baselines=baselines)


def test_every_claim_is_answered_in_the_seed_studys_order(legacy):
    claims = study_claims(legacy)
    assert [c.id for c in claims] == IDS
    assert all(c.verdict in VERDICTS and c.seeds == [0, 1] and c.rule and c.basis for c in claims)
    by_id = {c.id: c for c in claims}
    # rte: 0.5 and 0.75 over two seeds (mean 0.625, SE 0.125) against LoRA's 0.75: -12.5 points, within 2 SE of the margin
    first = by_id["approaches_finetuning"]
    assert first.verdict == INCONCLUSIVE and first.n == 4 and first.section == "accuracy"
    assert first.statistic.value == pytest.approx(-12.5) and "weakest task: rte" in first.statistic.name
    assert first.by_task == {"rte": pytest.approx(-12.5), "toy": pytest.approx(0.0)}
    assert "rte: 0.625 vs LoRA 0.750, -12.5 points (SE 12.5, n = 2 seeds)" in first.basis
    # two tasks: no correlation over tasks; two seeds: one pair per task, equidistance needs three
    assert by_id["harder_tasks_drift_further"].verdict == NOT_TESTABLE
    assert "needs at least 3" in by_id["harder_tasks_drift_further"].basis
    assert by_id["runs_equidistant"].verdict == NOT_TESTABLE and "needs 3 seeds" in by_id["runs_equidistant"].basis
    # 0 of 4 transfers beat no prompt (3 ties): binomial p = 0.125, not below 0.05
    transfer = by_id["transfers_beat_no_prompt"]
    assert transfer.verdict == INCONCLUSIVE and transfer.n == 4 and "binomial p = 0.125" in transfer.basis


def test_a_claim_about_seeds_needs_more_than_one_seed(legacy):
    """With one seed there is no standard error and nothing to compare seeds with: those claims are not testable, and
    say so; claims over tasks or prompts are still answered."""
    one = replace(legacy, runs=[r for r in legacy.runs if r.seed == 0])
    geo = legacy.geometry
    one = replace(one, geometry=replace(geo, summary=replace(geo.summary, equidistance=[])))
    claims = _claims(one)
    for cid in ("approaches_finetuning", "beats_english_prompt", "similar_accuracy", "runs_equidistant"):
        assert claims[cid].verdict == NOT_TESTABLE, cid
        assert "seed" in claims[cid].basis and claims[cid].seeds == [0] and claims[cid].n in (0, 2), cid
        assert claims[cid].statistic.value is None
    assert "one seed" in claims["approaches_finetuning"].basis
    assert claims["drift_into_other_scripts"].verdict != NOT_TESTABLE  # four prompts: a mean with its standard error


def test_a_changed_number_flips_the_accuracy_claims(legacy):
    """The same study with another fine-tuning or English-prompt accuracy: the verdict follows the number."""
    verdict = {
        lora: _claims(_with_baseline(legacy, "lora", lora, "rte"))["approaches_finetuning"].verdict for lora in (0.4, 0.75, 0.99)
    }
    # rte 0.625 (SE 0.125): +22.5 - 25 > -3 supported; -12.5 inconclusive; -36.5 + 25 < -3 not supported (toy: a tie)
    assert verdict == {0.4: SUPPORTED, 0.75: INCONCLUSIVE, 0.99: NOT_SUPPORTED}
    english = {
        acc: _claims(_with_baseline(legacy, "english_prompt", acc))["beats_english_prompt"].verdict for acc in (0.25, 0.5, 0.9)
    }
    # toy 0.5 (SE 0): above 0.25, tied at 0.5; rte 0.625 (SE 0.125): +37.5 > 25, -27.5 < -25
    assert english == {0.25: SUPPORTED, 0.5: INCONCLUSIVE, 0.9: NOT_SUPPORTED}


def test_not_testable_says_why(legacy):
    without = replace(
        legacy, baselines={t: {m: b for m, b in rows.items() if m != "lora"} for t, rows in legacy.baselines.items()}
    )
    c = _claims(without)["approaches_finetuning"]
    assert c.verdict == NOT_TESTABLE and c.basis.startswith("no fine-tuning baseline in this config") and c.n == 0
    assert _claims(replace(legacy, transfer=None))["transfers_beat_no_prompt"].basis.startswith("no transfer analysis")
    assert "importance" in _claims(replace(legacy, importance=None))["important_tokens_persist"].basis
    full = {t: {**rows, "finetune": BaselineRow(accuracy=0.2)} for t, rows in without.baselines.items()}
    assert _claims(replace(without, baselines=full))["approaches_finetuning"].verdict == SUPPORTED  # full fine-tuning counts too


def test_a_changed_number_flips_the_analysis_claims(legacy):
    geo, tr, nb = legacy.geometry, legacy.transfer, legacy.neighbors

    def drift(r: float, p: float, tasks: int = 6) -> str:
        summary = replace(geo.summary, drift_vs_difficulty=DriftVsDifficulty("no-prompt accuracy", r, p, tasks))
        return _claims(replace(legacy, geometry=replace(geo, summary=summary)))["harder_tasks_drift_further"].verdict

    assert (drift(-1.0, 0.0), drift(1.0, 0.0), drift(-0.6, 0.4)) == (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
    # scipy calls a perfect order of 4 tasks p = 0; exactly, 2 of the 24 orders are as extreme (p = 0.083)
    assert drift(-1.0, 0.0, tasks=4) == INCONCLUSIVE

    def spread(cv: float) -> str:
        rows = [Equidistance(t, 3, 10.0, 10.0 * cv, 9.0, 11.0, cv) for t in ("rte", "toy")]
        summary = replace(geo.summary, equidistance=rows)
        return _claims(replace(legacy, geometry=replace(geo, summary=summary)))["runs_equidistant"].verdict

    assert (spread(0.05), spread(0.15), spread(0.3)) == (SUPPORTED, INCONCLUSIVE, NOT_SUPPORTED)

    def beat(k: int) -> str:
        summary = replace(tr.summary, n_transfers=10, n_beat=k, n_ties=0, share_beat_no_prompt=k / 10)
        return _claims(replace(legacy, transfer=replace(tr, summary=summary)))["transfers_beat_no_prompt"].verdict

    assert (beat(9), beat(6), beat(1)) == (SUPPORTED, INCONCLUSIVE, NOT_SUPPORTED)  # p = 0.021, 0.75, 0.021

    def similar(r: float) -> str:
        corr = [replace(c, spearman_r=r, spearman_p=0.01, n=12) for c in tr.summary.correlations]
        summary = replace(tr.summary, correlations=corr)
        return _claims(replace(legacy, transfer=replace(tr, summary=summary)))["similar_prompts_transfer_better"].verdict

    assert (similar(-0.8), similar(0.8)) == (SUPPORTED, NOT_SUPPORTED)  # Frobenius is a distance: closer gains more

    def faithful(text: float) -> str:
        rows = [ProjectionRow(f"r{i}", "rte", 4, "x", 0.8 + 0.03 * i, text, text) for i in range(4)]
        summary = replace(nb.summary, projection=rows)
        return _claims(replace(legacy, neighbors=replace(nb, summary=summary)))["nearest_tokens_unfaithful"].verdict

    # soft 0.80-0.89: 34.5 points lost (SE 1.9); 1.5 gained (+ 2 SE below the 3-point margin); 1.5 lost (within 2 SE)
    assert (faithful(0.5), faithful(0.86), faithful(0.83)) == (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)


def test_scripts_words_and_important_tokens_follow_their_numbers(legacy):
    nb = legacy.neighbors
    han = {
        label: PromptScripts(p.task, {**p.top_k, "Han": 2 + i}, p.top_1)
        for i, (label, p) in enumerate(nb.scripts.prompts.items())
    }
    scripts = replace(nb.scripts, prompts=han)
    assert _claims(replace(legacy, neighbors=replace(nb, scripts=scripts)))["drift_into_other_scripts"].verdict == SUPPORTED
    assert _claims(legacy)["drift_into_other_scripts"].verdict == NOT_SUPPORTED  # no other script in any prompt
    # the same non-init word among every run's top-k neighbours: it recurs in both tasks
    runs = {
        label: replace(r, positions=[replace(p, tokens=[*p.tokens, NeighborToken("␣Accurate", 0.5)]) for p in r.positions])
        for label, r in nb.runs.items()
    }
    word = _claims(replace(legacy, neighbors=replace(nb, runs=runs)))["word_recurs_across_tasks"]
    assert word.verdict == SUPPORTED and word.statistic.value == 2 and "'accurate' (rte, toy)" in word.basis
    assert _claims(legacy)["word_recurs_across_tasks"].verdict == NOT_SUPPORTED
    tasks = {
        t: replace(e, aligned=True, importance_vs_drift=CorrelationStats(8, spearman_rho=-0.9, spearman_p=0.002))
        for t, e in legacy.readouts.tasks.items()
    }
    persist = _claims(replace(legacy, readouts=replace(legacy.readouts, tasks=tasks)))["important_tokens_persist"]
    assert persist.verdict == SUPPORTED and persist.n == 16 and persist.section == "readouts"


def test_small_spearman_correlations_get_their_exact_p_value():
    from softprompt.report.claim_rules import spearman_p

    assert spearman_p(1.0, 0.0, 3) == pytest.approx(1 / 3) and spearman_p(-1.0, 0.0, 5) == pytest.approx(2 / 120)
    assert spearman_p(0.9, 0.0, 5) == pytest.approx(10 / 120)  # the textbook table's two-sided value for n = 5
    assert spearman_p(0.5, 0.02, 30) == 0.02 and spearman_p(None, None, 5) is None  # scipy's above 8 points


def test_a_claim_record_takes_only_the_four_verdicts():
    kw = dict(id="x", claim="c", statistic=ClaimStatistic("s", 1.0), n=1, seeds=[0], section="accuracy", rule="r", basis="b")
    assert Claim(verdict=SUPPORTED, **kw).to_dict()["verdict"] == "supported"
    with pytest.raises(SoftPromptError, match="verdict 'true': expected one of supported, not supported"):
        Claim(verdict="true", **kw)


# ----------------------------------------------------------------------------- the phase table


def test_the_phase_table_groups_units_and_accounts_for_the_rest():
    units = [
        UnitTiming("prompt runs", "rte-s0", 30.0),
        UnitTiming("model load", "for rte-s0", 5.0),
        UnitTiming("prompt runs", "rte-s1", 0.5, cached=True, computed_s=29.0),
        UnitTiming("analysis neighbors", "neighbors", 10.0),
        UnitTiming("report", "report", 2.0),
    ]
    rows = StudyTiming(wall_time_s=50.0, units=units).phases()
    assert [(r.phase, r.units, r.cached, r.seconds) for r in rows] == [
        ("model load", 1, 0, 5.0),  # first, wherever it happened
        ("prompt runs", 2, 1, 30.5),
        ("analysis neighbors", 1, 0, 10.0),
        ("report", 1, 0, 2.0),
        (OTHER_PHASE, 0, 0, 2.5),
    ]
    assert [r.share for r in rows] == pytest.approx([0.1, 0.61, 0.2, 0.04, 0.05])
    side_by_side = StudyTiming(wall_time_s=20.0, units=units, concurrent=True).phases()  # Ray: no "other", shares > 1
    assert OTHER_PHASE not in [r.phase for r in side_by_side] and sum(r.share for r in side_by_side) > 1


def test_results_json_without_claims_or_timing_still_loads_and_renders(legacy, tmp_path):
    """A results.json from before claims and phases loads (they are absent, not a new schema) and its report computes
    the claims and leaves out the phase table."""
    from softprompt.report import write_report

    assert legacy.claims is None and legacy.setup.timing is None and "claims" not in legacy.to_dict()
    page = write_report(legacy, tmp_path).read_text()
    assert page.index("The seed study&#x27;s claims") < page.index("<h2>Findings") and "Where the time went" not in page
    assert "softprompt-wall-time-mark" not in page and "<!--softprompt:phases-->" not in page


# ----------------------------------------------------------------------------- a tiny study end to end


STUDY = """
[study]
name = "claims"
model = "{model}"
tasks = ["rte"]
seeds = [0]
data_dir = "{data}"

[train]
tokens = 3
epochs = 1
batch_size = 4
lr = 0.1
compute_dtype = "float32"
max_length = 128

[baselines]
methods = ["majority", "no_prompt", "english_prompt"]

[analysis]
k = 3
describe_samples = 0
"""


def test_a_tiny_study_answers_the_claims_and_says_where_its_time_went(tmp_path, tiny_model_dir, toy_data, capsys):
    from softprompt.cli import main
    from softprompt.records.registry import load_record
    from softprompt.study import load_study_config, run_study
    from softprompt.study.analysis_units import analyses_unit
    from softprompt.study.model_cache import ModelCache
    from softprompt.study.units import Study

    config = tmp_path / "study.toml"
    config.write_text(STUDY.format(model=tiny_model_dir, data=toy_data))
    out = tmp_path / "study"
    data = run_study(config, out, progress=False)
    results = StudyResults.from_dict(json.loads((out / "results.json").read_text()), "results.json")
    claims = {c.id: c for c in results.claims or []}
    assert list(claims) == IDS and results.to_dict()["claims"] == data["claims"]
    # one seed, one task, no fine-tuning: nothing about seeds, tasks or fine-tuning is decided
    assert claims["approaches_finetuning"].basis.startswith("no fine-tuning baseline in this config")
    assert claims["similar_accuracy"].verdict == NOT_TESTABLE and "one seed" in claims["similar_accuracy"].basis
    assert claims["transfers_beat_no_prompt"].basis == "one task: no cross-task transfer"
    assert claims["word_recurs_across_tasks"].verdict == NOT_TESTABLE
    timing = results.setup.timing
    assert timing is not None and not timing.concurrent
    phases = {r.phase: r for r in timing.phases()}
    for phase in ("model load", "prompt runs", "baseline english_prompt", "analysis neighbors + projection", "analysis geometry",
                  "analysis importance", "analysis describe", "analysis transfer", "results.json", "report"):  # fmt: skip
        assert phase in phases and phases[phase].seconds >= 0, phase
    assert phases["model load"].units >= 1 and not any(u.cached for u in timing.units)
    assert sum(r.seconds for r in phases.values()) == pytest.approx(timing.wall_time_s, abs=0.01)
    page = (out / "report.html").read_text()
    assert page.index("The seed study&#x27;s claims") < page.index("<h2>Findings") < page.index("Where the time went")
    assert page.count("<td class='verdict ") == len(IDS) and "softprompt-wall-time-mark" not in page
    # the analyses' cache entries keep what computing them took
    assert load_record(out / "analysis" / "geometry.cache.json").seconds >= 0

    # again, through the command: every unit read back, marked cached, with the time it took when computed
    capsys.readouterr()
    assert main(["study", str(config), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "where the time went" in printed and "prompt runs" in printed and "share" in printed
    again = StudyResults.from_dict(json.loads((out / "results.json").read_text()), "results.json")
    work = [u for u in again.setup.timing.units if u.phase.startswith(("prompt", "baseline", "analysis"))]
    assert work and all(u.cached for u in work) and all(u.computed_s is not None for u in work)
    assert [c.verdict for c in again.claims] == [c.verdict for c in results.claims]

    # each analysis says what it is doing, on which run
    for cache in (out / "analysis").glob("*.cache.json"):
        cache.unlink()
    seen: list[str] = []
    cfg = load_study_config(config)
    analyses_unit(Study(cfg, out, progress=False, inputs=data["setup"]["inputs"]), ModelCache(cfg.train), seen.append)
    assert "analysis neighbors + projection: rte-s0 (1/1), projecting it" in seen
    assert any(s.startswith("analysis importance: rte-s0 (1/1), 3 positions") for s in seen)
    assert (
        "analysis transfer: rte-s0 (1/1) on 1 task(s)" in seen
        and "analysis describe: rte-s0 (1/1), trained and initial prompt" in seen
    )
