"""results.json of a study, as a typed `StudyResults`: the config, the setup, the analysis cell's prompt runs, every
baseline row and every analysis, the readouts; with a sweep every cell's runs and the ablations, with [transfer]
init the transfer-initialised runs. The report reads this object; results.json is its `to_dict()`."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from softprompt.analysis.learning import learning_verdict
from softprompt.analysis.readouts import readouts_summary
from softprompt.errors import SoftPromptError
from softprompt.records.history import METRICS_FILE, read_metrics
from softprompt.records.metrics import BaselineRow, LearningVerdict, MetricsLine
from softprompt.records.readouts import ReadoutsSummary
from softprompt.records.registry import ANALYSES
from softprompt.records.results import RunSummary, Setup, StudyResults, StudySettings, StudyTiming, SweepResults, UnitTiming
from softprompt.report.ablations import ablation_results
from softprompt.report.claims import study_claims
from softprompt.runs.directory import load_run
from softprompt.study.executors import ExecutorResult
from softprompt.study.plan import Unit
from softprompt.study.timing import MODEL_LOAD, PROMPT_RUNS, unit_timing
from softprompt.tasks import task_name

if TYPE_CHECKING:
    from softprompt.study.units import Study

RESULTS_FILE = "results.json"


def study_results(study: Study, units: list[Unit], outcome: ExecutorResult, *, wall_time_s: float) -> StudyResults:
    """The study's results from its finished units (`outcome`) and its run directories."""
    done, final, executor_info = outcome
    actions: dict[str, str] = {}
    rows: dict[str, dict[str, dict]] = {}
    for unit in units:
        if unit.method is None:
            actions[study.run_label(unit)] = done[unit]["action"]
        else:
            rows.setdefault(unit.task, {})[unit.method] = done[unit]["row"]  # keyed as runs name their task
    baselines = {
        task: {m: BaselineRow.from_dict(row, f"baseline {m} of {task}") for m, row in by_method.items()}
        for task, by_method in rows.items()
    }
    setup = {**final["setup"], "executor": executor_info, "wall_time_s": wall_time_s, "actions": actions, "inputs": study.inputs}
    timing = StudyTiming(
        wall_time_s=wall_time_s,
        units=unit_timings(study, units, outcome),
        concurrent=executor_info["name"] != "local" or executor_info.get("workers", 1) > 1,
    )
    setup["timing"] = timing.to_dict()
    analyses = final["analyses"]
    runs = [run_summary(study, u) for u in study.analysis_units()]
    readouts = readouts_summary(
        analyses.get("neighbors"), analyses.get("importance"), analyses.get("describe"), rows, _soft_accuracy(runs)
    )
    cfg = study.cfg
    sweep = ablations = None
    if cfg.sweep:
        cell_runs = [run_summary(study, u) for u in units if u.method is None and u.source is None]
        sweep = SweepResults(axes=cfg.sweep, analysis_cell=dict(cfg.analysis_cell()), runs=cell_runs)
        by_task = {t: baselines.get(t, {}) for t in cfg.tasks}
        ablations = ablation_results(cfg.sweep, cfg.analysis_cell(), cell_runs, by_task)
    transfer_init_runs = [run_summary(study, u) for u in units if u.source is not None] if cfg.transfer.init else None
    results = StudyResults(
        study=StudySettings.from_dict(cfg.to_json(), f"{RESULTS_FILE} study"),
        setup=Setup.from_dict(setup, f"{RESULTS_FILE} setup"),
        runs=runs,
        baselines=baselines,
        **{name: ANALYSES[name].from_dict(value, f"{RESULTS_FILE} {name}") for name, value in analyses.items()},
        readouts=ReadoutsSummary.from_dict(readouts, f"{RESULTS_FILE} readouts"),
        sweep=sweep,
        ablations=ablations,
        transfer_init_runs=transfer_init_runs,
    )
    return replace(results, claims=study_claims(results))


def unit_timings(study: Study, units: list[Unit], outcome: ExecutorResult) -> list[UnitTiming]:
    """Every unit's timing in plan order, then each analysis's; a model load counted where it happened."""
    done, final, _ = outcome
    rows: list[UnitTiming] = []
    for unit in units:
        if unit.method is None:
            rows += unit_timing(PROMPT_RUNS, study.run_label(unit), done[unit])
        else:
            rows += unit_timing(f"baseline {unit.method}", f"{task_name(unit.task)} {unit.method}", done[unit])
    for a in final.get("timings", []):
        rows += unit_timing(f"analysis {a['unit']}", a["unit"], a)
    if final.get("model_load_s"):
        rows.insert(0, UnitTiming(phase=MODEL_LOAD, unit="for the setup facts", seconds=round(final["model_load_s"], 3)))
    return rows


def _soft_accuracy(runs: list[RunSummary]) -> dict[str, list[float]]:
    """The analysis cell's final validation accuracies per task (by name), for the readouts' hard-prompt comparison."""
    out: dict[str, list[float]] = {}
    for r in runs:
        if r.final.accuracy is not None:
            out.setdefault(task_name(r.task), []).append(r.final.accuracy)
    return out


def run_summary(study: Study, unit: Unit) -> RunSummary:
    """One prompt run as results.json summarises it: run.json's numbers, its checked metrics history, its verdict."""
    run = load_run(study.run_dir(unit))
    record = run.record
    history = read_metrics(run.path)  # every line checked: a damaged one is FILE:LINE, not a traceback
    where = run.path / METRICS_FILE
    final = record.final
    if final is None:
        raise SoftPromptError(f"run {run.path} is complete but records no final metrics: retrain it")
    prompt = record.prompt
    verdict: dict[str, Any] = learning_verdict(history, record.train_label_counts, run.config.get("loss", "choices"))
    return RunSummary(
        name=study.run_label(unit),
        path=str(run.path),
        task=run.task,
        seed=run.config["seed"],
        cell=dict(unit.cell) if unit.cell else None,
        source=unit.source or None,
        final=final,
        best=record.best,
        baselines=record.baselines or {},
        parameters=record.parameters,
        wall_time_s=record.wall_time_s,
        init_text=prompt.init.text if prompt and prompt.init else None,
        history=[MetricsLine.from_dict(h, f"{where}:{i}") for i, h in enumerate(history, 1)],
        learning=LearningVerdict.from_dict(verdict, f"{run.path}: learning verdict"),
    )
