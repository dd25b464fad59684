"""A whole study from one TOML config: prompt runs (tasks x seeds), baselines, analyses, report.

Every piece of work has a key derived from what determines its result. Re-running skips work whose
key is unchanged and complete, resumes interrupted runs, and redoes only what a config change touches.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.analysis.readouts import readouts_summary
from softprompt.config import EXECUTORS
from softprompt.errors import SoftPromptError, warn
from softprompt.inputs import MODEL_REVISION, input_changes, task_inputs
from softprompt.io import read_json, remove_stale_temporaries, write_json
from softprompt.learning import learning_verdict
from softprompt.locks import directory_lock
from softprompt.report import write_report
from softprompt.report.ablations import ablation_results
from softprompt.runs import load_run, read_metrics
from softprompt.study.config import StudyConfig, load_study_config
from softprompt.study.executors import ExecutorResult, StudyProgress, run_locally
from softprompt.study.plan import Unit
from softprompt.study.units import Study
from softprompt.tasks import task_name
from softprompt.trackers import require_trackers

if TYPE_CHECKING:
    from softprompt.study.ray_executor import RayOptions

INPUTS_FILE = "inputs.json"  # every task's input digests at the last invocation, to say what changed
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def study_dir(out: str | Path) -> Path:
    """`out` as an absolute directory path; URLs are refused, since every unit reads and writes plain files there."""
    if _URL.match(str(out)):
        raise SoftPromptError(
            f"--out {out}: URLs (fsspec, s3://, gs://, ...) are not supported; give a directory path, one that every "
            "Ray worker sees (a shared filesystem) with --executor ray"
        )
    return Path(out).absolute()


def run_study(
    config_path: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    executor: str = "local",
    ray_options: RayOptions | None = None,
) -> dict:
    """Run (or continue) a study and write results.json, CSV tables and report.html into `out`.

    `executor="local"` runs every unit in this process; `"ray"` runs them as Ray tasks (see
    `softprompt.study.ray_executor`; `ray_options` sets the cluster address and per-run resources).
    Both run the same unit functions, so they write the same results.
    """
    if executor not in EXECUTORS:
        raise SoftPromptError(f"unknown executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if executor == "local" and ray_options is not None:
        raise SoftPromptError("Ray options (address, resources per run, retries) apply to executor 'ray' only")
    out = study_dir(out)
    if executor == "ray":
        from softprompt.study.ray_executor import import_ray

        import_ray()  # fail before any work if Ray is missing
    cfg = load_study_config(config_path)
    require_trackers(cfg.train.report_to)  # a missing tracker package fails before the model loads, not at the first run
    inputs = study_inputs(cfg)  # reads every task's data: a missing or unreadable file fails before any work
    with directory_lock(out, "study directory"):  # one process writes a study directory at a time
        return _run_study(cfg, out, inputs, progress, executor, ray_options)


def study_inputs(cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """Every task's input digests (`softprompt.inputs`) and the model revision where known without
    loading it: part of every run's, baseline's and analysis's identity."""
    from softprompt.backbones import known_revision

    revision = known_revision(cfg.model)
    return {task: {**task_inputs(task, cfg.data_dir), MODEL_REVISION: revision} for task in cfg.tasks}


def _say_changed_inputs(out: Path, inputs: dict[str, dict[str, Any]]) -> None:
    """A line per task whose data, definition or model changed since the study's last invocation."""
    path = out / INPUTS_FILE
    try:
        before = read_json(path) if path.exists() else {}
    except SoftPromptError as e:  # only what this note compares with: rewritten below
        warn(f"{e}: the inputs of the study's last invocation are unknown, so changes since then are not listed")
        before = {}
    for task, digests in inputs.items():
        saved = before.get(task) if isinstance(before, dict) else None
        changed = input_changes(saved, digests) if isinstance(saved, dict) else []
        if changed:
            warn(
                f"task {task}: {', '.join(changed)} changed since this study last ran: its runs, baselines and analyses are redone"
            )
    write_json(path, inputs)


def _run_study(cfg: StudyConfig, out: Path, inputs, progress: bool, executor: str, ray_options) -> dict:
    for d in {p.parent for p in out.rglob(".*.tmp")}:  # left by a killed earlier attempt; nothing writes now
        remove_stale_temporaries(d)
    write_json(out / "study_config.json", cfg.to_json())
    _say_changed_inputs(out, inputs)
    started = time.perf_counter()
    study = Study(cfg, out, progress, inputs=inputs)
    units = study.units()
    bar = StudyProgress(len(units) + 1, cfg.name, progress)
    try:
        if executor == "ray":
            from softprompt.study.ray_executor import run_on_ray

            outcome = run_on_ray(study, units, bar, ray_options)
        else:
            outcome = run_locally(study, units, bar)
    finally:
        bar.close()
    results = _results(study, units, outcome, wall_time_s=round(time.perf_counter() - started, 1))
    write_json(out / "results.json", results)
    write_report(results, out)
    return results


def _results(study: Study, units: list[Unit], outcome: ExecutorResult, *, wall_time_s: float) -> dict[str, Any]:
    """results.json: the config, the setup, the analysis cell's prompt runs, every baseline row and every analysis;
    with a sweep, every cell's runs and the ablation table; with [transfer] init, the transfer-initialised runs."""
    done, final, executor_info = outcome
    actions: dict[str, str] = {}
    baselines: dict[str, dict] = {}
    for unit in units:
        if unit.method is None:
            name = study.run_label(unit)
            actions[name] = done[unit]["action"]
            study.timings[name] = done[unit]["seconds"]
        else:
            baselines.setdefault(unit.task, {})[unit.method] = done[unit]["row"]  # keyed as runs name their task
    results = {
        "study": study.cfg.to_json(),
        "setup": {
            **final["setup"],
            "executor": executor_info,
            "wall_time_s": wall_time_s,
            "actions": actions,
            "inputs": study.inputs,
        },
        "runs": [_run_summary(study, u) for u in study.analysis_units()],
        "baselines": baselines,
        **final["analyses"],
    }
    results["readouts"] = readouts_summary(
        results.get("neighbors"), results.get("importance"), results.get("describe"), baselines, _soft_accuracy(results["runs"])
    )
    if study.cfg.sweep:
        cell_runs = [_run_summary(study, u) for u in units if u.method is None and u.source is None]
        results["sweep"] = {"axes": study.cfg.sweep, "analysis_cell": dict(study.cfg.analysis_cell()), "runs": cell_runs}
        by_task = {t: baselines.get(t, {}) for t in study.cfg.tasks}
        results["ablations"] = ablation_results(study.cfg.sweep, study.cfg.analysis_cell(), cell_runs, by_task)
    if study.cfg.transfer.init:
        results["transfer_init_runs"] = [_run_summary(study, u) for u in units if u.source is not None]
    return results


def _soft_accuracy(runs: list[dict]) -> dict[str, list[float]]:
    """The analysis cell's final validation accuracies per task (by name), for the readouts' hard-prompt comparison."""
    out: dict[str, list[float]] = {}
    for r in runs:
        if r["final"].get("accuracy") is not None:
            out.setdefault(task_name(r["task"]), []).append(r["final"]["accuracy"])
    return out


def _run_summary(study: Study, unit: Unit) -> dict:
    run = load_run(study.run_dir(unit))
    record = run.record
    history = read_metrics(run.path)  # every line checked: a damaged one is FILE:LINE, not a traceback
    return {
        "name": study.run_label(unit),
        "path": str(run.path),
        "task": run.task,
        "seed": run.config["seed"],
        **({"cell": dict(unit.cell)} if unit.cell else {}),
        **({"source": unit.source} if unit.source else {}),
        "final": record.final or {},
        "best": record.best,
        "baselines": record.baselines or {},
        "parameters": record.parameters or {},
        "wall_time_s": record.wall_time_s,
        "init_text": ((record.prompt or {}).get("init") or {}).get("text"),
        "history": history,
        "learning": learning_verdict(history, record.train_label_counts, run.config.get("loss", "choices")),
    }
