"""A whole study from one TOML config: prompt runs (tasks x seeds), baselines, analyses, report.

Every piece of work has a key derived from what determines its result. Re-running skips work whose
key is unchanged and complete, resumes interrupted runs, and redoes only what a config change touches.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.config import EXECUTORS
from softprompt.data.inputs import MODEL_REVISION, input_changes, task_inputs
from softprompt.errors import SoftPromptError, warn
from softprompt.io import read_json, remove_stale_temporaries, write_json
from softprompt.locks import directory_lock
from softprompt.preemption import safe_point
from softprompt.records.files import StudyConfigFile, StudyInputs
from softprompt.records.results import StudyResults, StudyTiming
from softprompt.report import write_report
from softprompt.study.config import StudyConfig, check_execution, load_study_config
from softprompt.study.executors import StudyProgress, run_locally
from softprompt.study.results import RESULTS_FILE, study_results
from softprompt.study.timing import REPORT, RESULTS, StepClock, with_step
from softprompt.study.units import Study
from softprompt.threads import usable_cores
from softprompt.training.trackers import require_trackers

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
    workers: int | None = None,
    threads_per_worker: int | None = None,
) -> dict:
    """Run (or continue) a study and write results.json, CSV tables and report.html into `out`.

    `executor="local"` runs every unit in this process; `"ray"` runs them as Ray tasks (see
    `softprompt.study.ray_executor`; `ray_options` sets the cluster address and per-run resources).
    Both run the same unit functions, so they write the same results. `workers` (local only; default: the config's
    [execution] workers) runs the prompt runs and baselines in that many worker processes of `threads_per_worker`
    torch threads each (`softprompt.study.process_executor`).
    """
    started = time.perf_counter()  # the invocation's wall time (results.json `setup.timing`) starts here
    if executor not in EXECUTORS:
        raise SoftPromptError(f"unknown executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if executor != "local" and (workers is not None or threads_per_worker is not None):
        raise SoftPromptError("--workers applies to --executor local (Ray sizes its own workers: --cpus-per-run)")
    if executor == "local" and ray_options is not None:
        raise SoftPromptError("Ray options (address, resources per run, retries) apply to executor 'ray' only")
    out = study_dir(out)
    if executor == "ray":
        from softprompt.study.ray_executor import import_ray

        import_ray()  # fail before any work if Ray is missing
    cfg = load_study_config(config_path)
    if workers is not None or threads_per_worker is not None:
        cfg.execution = replace(
            cfg.execution,
            workers=cfg.execution.workers if workers is None else workers,
            threads_per_worker=threads_per_worker or cfg.execution.threads_per_worker,
        )
        check_execution(cfg.execution, "--workers / --threads")
    require_trackers(cfg.train.report_to)  # a missing tracker package fails before the model loads, not at the first run
    inputs = study_inputs(cfg)  # reads every task's data: a missing or unreadable file fails before any work
    with directory_lock(out, "study directory"):  # one process writes a study directory at a time
        return _run_study(cfg, out, inputs, progress, executor, ray_options, started)


def study_inputs(cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """Every task's input digests (`softprompt.data.inputs`) and the model revision where known without
    loading it: part of every run's, baseline's and analysis's identity."""
    from softprompt.model.backbones import known_revision

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
    write_json(path, StudyInputs.from_dict(inputs, str(path)).to_dict())


def _run_study(cfg: StudyConfig, out: Path, inputs, progress: bool, executor: str, ray_options, started: float) -> dict:
    """The study's units, results.json and the report; `started`: when this invocation began (its wall time's start)."""
    for d in {p.parent for p in out.rglob(".*.tmp")}:  # left by a killed earlier attempt; nothing writes now
        remove_stale_temporaries(d)
    write_json(out / "study_config.json", StudyConfigFile.from_dict(cfg.to_json(), "study_config.json").to_dict())
    _say_changed_inputs(out, inputs)
    study = Study(cfg, out, progress, inputs=inputs)
    units = study.units()
    bar = StudyProgress(len(units) + 1, cfg.name, progress)
    try:
        if executor == "ray":
            from softprompt.study.ray_executor import run_on_ray

            outcome = run_on_ray(study, units, bar, ray_options)
        elif cfg.execution.workers > 1:
            from softprompt.study.process_executor import run_in_processes

            cores = usable_cores()
            if cfg.execution.workers > cores:
                warn(f"{cfg.execution.workers} worker processes on {cores} usable core(s): they will take turns on it")
            threads = cfg.execution.threads_per_worker or max(1, cores // cfg.execution.workers)
            outcome = run_in_processes(study, units, bar, cfg.execution.workers, threads)
        else:
            outcome = run_locally(study, units, bar)
    finally:
        bar.close()
    safe_point("report")
    assembling = time.perf_counter()
    results = study_results(study, units, outcome, wall_time_s=round(assembling - started, 1))
    results = _with_timing(
        results, with_step(_timing(results), RESULTS, time.perf_counter() - assembling, time.perf_counter() - started)
    )
    write_json(out / RESULTS_FILE, results.to_dict())  # written before the report: a report that fails leaves the numbers
    safe_point("report")  # results.json is whole; a rerun writes the report from the caches
    clock = StepClock(_timing(results), REPORT, started)
    write_report(results, out, clock=clock)  # the report's phase table includes the report (`clock` closes it)
    results = _with_timing(results, clock.timing)
    data = results.to_dict()
    write_json(out / RESULTS_FILE, data)
    return data


def _timing(results: StudyResults) -> StudyTiming:
    assert results.setup.timing is not None  # `study_results` always sets it
    return results.setup.timing


def _with_timing(results: StudyResults, timing: StudyTiming) -> StudyResults:
    return replace(results, setup=replace(results.setup, timing=timing))
