"""Accuracy per second of training in the report: the time-to-accuracy table and the "approaching fine-tuning" finding are
computed from the runs' curves (a changed number changes them), and a study with LoRA and a deep prompt gets the figure."""

from __future__ import annotations

from softprompt.records.metrics import BaselineRow, EvalMetrics, MetricsLine
from softprompt.records.results import RunsAndBaselines, RunSummary
from softprompt.report.time_to_accuracy import approach_findings, task_curves, time_table


def _history(points: list[tuple[float, float]]) -> list[MetricsLine]:
    return [MetricsLine(epoch=i, accuracy=a, step=10 * i, elapsed_s=t) for i, (t, a) in enumerate(points)]


def _results(soft: list[list[tuple[float, float]]], lora: list[tuple[float, float]], deep=None) -> RunsAndBaselines:
    runs = [
        RunSummary(name=f"sst2-s{s}", task="sst2", seed=s, final=EvalMetrics(accuracy=h[-1][1], n=400), history=_history(h))
        for s, h in enumerate(soft)
    ]
    base = {"lora": BaselineRow(accuracy=lora[-1][1], method="lora", n=400, history=_history(lora))}
    if deep:
        base["deep"] = BaselineRow(accuracy=deep[-1][1], method="deep", n=400, history=_history(deep))
    return RunsAndBaselines(runs=runs, baselines={"sst2": base})


LORA = [(0, 0.5), (50, 0.8), (100, 0.9)]


def test_time_to_fractions_of_lora_from_the_curves():
    soft = [[(0, 0.5), (40, 0.6), (80, 0.86), (120, 0.9)], [(0, 0.5), (40, 0.82), (80, 0.88), (120, 0.89)]]
    rows = {r["method"]: r for r in time_table(_results(soft, LORA))}
    s = rows["soft prompt (mean ± std over seeds)"]
    assert s["runs"] == 2 and s["n"] == 400
    # 90% of 0.9 = 0.81: seed 0 at 80 s, seed 1 at 40 s -> median 60; 95% = 0.855: 80 and 80; 100% = 0.9: only seed 0
    assert s["to 90% of LoRA (s)"] == "60 (2/2)"
    assert s["to 95% of LoRA (s)"] == "80 (2/2)"
    assert s["to 100% of LoRA (s)"] == "120 (1/2)"
    assert rows["LoRA"]["to 100% of LoRA (s)"] == "100 (1/1)"


def test_the_finding_follows_the_numbers():
    late = [[(0, 0.5), (150, 0.86)]]  # reaches 95% of LoRA's 0.9 only after LoRA's 100 s
    (text,) = approach_findings(_results(late, LORA))
    assert "did not reach 95%" in text and "does not approach" in text
    early = [[(0, 0.5), (90, 0.86)]]  # the same accuracy, 60 s sooner: inside LoRA's time
    (text,) = approach_findings(_results(early, LORA))
    assert "reached 95% of it within LoRA's time in 1 of 1" in text and "approaches" in text
    deep = [(0, 0.5), (60, 0.88)]
    (text,) = approach_findings(_results(late, LORA, deep))
    assert "the deep prompt reached 95%" in text and " approaches " in text  # the best prompt method answers


def test_no_lora_curve_no_table_and_no_finding():
    results = _results([[(0, 0.5), (10, 0.9)]], LORA)
    results.baselines["sst2"]["lora"] = BaselineRow(accuracy=0.9, method="lora", n=400)  # no history: cached before
    assert time_table(results) == [] and approach_findings(results) == []
    assert [c.method for c in task_curves(results, "sst2")] == ["soft_prompt"]


def test_a_study_with_lora_and_a_deep_prompt_draws_accuracy_against_time(tmp_path, tiny_model_dir, toy_data):
    from softprompt.records.results import StudyResults
    from softprompt.study import run_study
    from tests.test_study import _write

    cfg = _write(tmp_path, tiny_model_dir, toy_data, methods='["no_prompt", "lora", "deep"]')
    cfg.write_text(cfg.read_text().replace("seeds = [0, 1, 2]", "seeds = [0]"))
    run_study(cfg, tmp_path / "study", progress=False)
    from softprompt.io import read_json

    results = StudyResults.from_dict(read_json(tmp_path / "study" / "results.json"))
    assert results.baseline("rte", "deep").history and results.baseline("rte", "lora").history
    assert {c.method for c in task_curves(results, "rte")} == {"soft_prompt", "deep", "lora"}
    page = (tmp_path / "study" / "report.html").read_text()
    assert "Per second of training" in page and (tmp_path / "study" / "figures" / "accuracy_vs_time.png").stat().st_size > 5000
    assert "deep prompt (keys/values at every layer)" in page
