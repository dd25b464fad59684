"""The study's units of work, shared by every executor (local loop or Ray tasks).

Each unit function takes the `Study` and a `ModelCache` (the process's model and evaluator, loaded
on first use) and caches its result by key, so any process can run any unit and a re-run skips
finished work. The prompt-run and baseline units are here; the analyses unit is `analysis_units`', the
shared model `model_cache`'s and the cache entries `result_cache`'s.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from softprompt.config import RUN_INIT, TASK_INIT, TrainConfig
from softprompt.data.inputs import MODEL_REVISION
from softprompt.io import write_json
from softprompt.records.run import RunRecord
from softprompt.runs.baselines import TRAINED, baseline_config, result_inputs
from softprompt.runs.state import COMPLETE, CONFLICT, RESUMABLE, data_digests_known, run_state, warn_unknown_inputs
from softprompt.score_store import ScoreStore
from softprompt.study.config import StudyConfig
from softprompt.study.model_cache import ModelCache
from softprompt.study.plan import SCORES_DIR, Unit, baseline_dir, model_result_key, run_dir, source_unit, units, work_key
from softprompt.study.result_cache import cache_hit, inputs_changed, read_entry, store
from softprompt.study.sweep import cell_name
from softprompt.study.timing import Timed, timed
from softprompt.training import compute_dtype_name, train
from softprompt.training.baseline_runs import run_baselines


@dataclass
class Study:
    """A study being run: its config, its directory, whether units show progress bars."""

    cfg: StudyConfig
    out: Path
    progress: bool = True
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> its digests (softprompt.data.inputs)

    @cached_property
    def scores(self) -> ScoreStore:
        """The evaluation results every process of this study shares (`score_store`): a seed's step-0 point, the
        no-prompt and English references, a run's own-task score in the readouts, each computed once."""
        return ScoreStore(self.out / SCORES_DIR, namespace=model_result_key(self.cfg.train))

    def run_dir(self, unit: Unit) -> Path:
        cell_dir = cell_name(self.cfg.sweep, unit.cell) if self.cfg.sweep else ""
        assert unit.seed is not None
        return run_dir(self.out, unit.task, unit.seed, cell_dir, unit.source)

    def run_label(self, unit: Unit) -> str:
        """The run's directory under runs/: `rte-s0`, `tokens=20,init=text/rte-s0`, `rte-from-sst2-s0`."""
        return self.run_dir(unit).relative_to(self.out / "runs").as_posix()

    def analysis_units(self) -> list[Unit]:
        """The prompt runs of the analysis cell: what the accuracy table and the interpretation sections read."""
        cell = self.cfg.analysis_cell()
        return [Unit(t, seed=s, cell=cell) for t in self.cfg.tasks for s in self.cfg.seeds]

    def prompt_runs(self) -> list[tuple[str, int, Path]]:
        """(task, seed, directory) of the analysis cell's prompt runs."""
        return [(u.task, u.seed, self.run_dir(u)) for u in self.analysis_units() if u.seed is not None]

    def units(self) -> list[Unit]:
        return units(self.cfg)

    def run_config(self, unit: Unit) -> TrainConfig:
        """A prompt unit's config: an init from another task's trained prompt becomes `run:` its run directory (its
        content hash is checked by `run_state`); a `task:NAME` init of NAME's own run becomes text."""
        assert unit.seed is not None
        cfg = self.cfg.run_config(unit.task, unit.seed, unit.cell)
        source = source_unit(self.cfg, unit)
        if source is not None:
            return replace(cfg, init=f"{RUN_INIT}{self.run_dir(source)}")
        if cfg.init.startswith(TASK_INIT):
            return replace(cfg, init="text")
        return cfg

    def ensure_run(self, cfg: TrainConfig, out: Path, models: ModelCache) -> str:
        """Train `cfg` into `out` unless an identical complete run is there; returns what was done.

        A run left `running`, `interrupted` or `failed` (a killed process, a Ray worker that died)
        resumes from its checkpoint; a run of another config, or of changed data or task definition,
        is replaced."""
        inputs = self.inputs.get(cfg.task)
        state = run_state(out, cfg, inputs)
        if state.kind == COMPLETE:
            if state.inputs_unknown:
                warn_unknown_inputs(out)
            return "skipped"
        if state.kind == RESUMABLE and inputs is not None:  # it trains, so the model loads: compare its revision too
            here = compute_dtype_name(cfg, models.backbone)  # a run is not continued in another precision
            state = run_state(out, cfg, {**inputs, MODEL_REVISION: models.backbone.revision}, compute_dtype=here)
        if state.kind == RESUMABLE:
            train(cfg, out, resume=True, backbone=models.backbone, progress=self.progress, scores=self.scores)
            return "resumed"
        train(cfg, out, overwrite=state.kind == CONFLICT, backbone=models.backbone, progress=self.progress, scores=self.scores)
        return "retrained" if state.kind == CONFLICT else "trained"

    def task_inputs(self, tasks: list[str]) -> dict[str, dict[str, Any]]:
        """The digests of `tasks`' inputs (those known), as a cache entry records them."""
        return {t: self.inputs[t] for t in tasks if t in self.inputs}

    def data_location(self, tasks: list[str]) -> str | None:
        """The data folder, as part of a cache key only where the digests cannot vouch for the data (an unpinned Hub
        split): elsewhere the data's location is how the study is executed, and the digests are compared instead."""
        known = all(t in self.inputs and data_digests_known(self.inputs[t], self.inputs[t]) for t in tasks)
        return None if known else self.cfg.data_dir


# ----------------------------------------------------------------------------- units


def run_unit(study: Study, models: ModelCache, unit: Unit) -> dict[str, Any]:
    """Do one unit: {"action": ...} for a prompt run, {"row": ...} for a baseline; plus its timing (`study.timing`:
    seconds without a model load inside it, that load, whether its result was already there and what it cost then)."""
    models.share_scores(study.scores)
    with timed(models) as t:
        if unit.method is None:
            out: dict[str, Any] = {"action": study.ensure_run(study.run_config(unit), study.run_dir(unit), models)}
            if out["action"] == "skipped":
                t.cached, t.computed_s = True, RunRecord.read(study.run_dir(unit)).wall_time_s
        else:
            out = {"row": baseline_unit(study, unit.task, unit.method, models, t)}
    return {**out, **t.fields()}


def baseline_unit(study: Study, task: str, method: str, models: ModelCache, timing: Timed | None = None) -> dict[str, Any]:
    """One baseline of `task`, cached per method, so a config change redoes only the methods it touches (a cache hit
    marks `timing` cached, with the seconds its row recorded)."""
    base = study.cfg.baseline_base(task)
    overrides = study.cfg.baselines.overrides()
    resolved = baseline_config(base, method, overrides[method]) if method in TRAINED else base
    key = work_key("baseline", method, result_inputs(resolved, method), study.data_location([task]))
    base_dir = baseline_dir(study.out, task, method)
    cache = base_dir / "result.json"
    inputs = study.task_inputs([task])
    hit = cache_hit(cache, key, inputs)
    if hit is not None:
        if timing is not None:
            timing.cached, timing.computed_s = True, hit.get("wall_time_s")
        return hit
    previous = base_dir / "key.json"
    before = read_entry(previous) if previous.exists() else {}
    run = base_dir / method
    redo = before.get("key") != key or inputs_changed(before.get("inputs"), inputs)
    if run.exists() and redo and run_state(run, resolved, study.inputs.get(task)).kind == CONFLICT:
        shutil.rmtree(run)  # its identity or inputs changed: this baseline's run is redone from scratch
    write_json(base_dir / "key.json", {"key": key, "inputs": inputs})
    needs_model = method != "majority"  # the majority class is counted from the data alone
    rows = run_baselines(
        base,
        base_dir,
        methods=[method],
        overrides={method: overrides[method]} if method in TRAINED else None,
        backbone=models.backbone if needs_model else None,
        evaluator=models.evaluator if needs_model else None,
        progress=study.progress,
    )
    return store(cache, key, rows[0], inputs)
