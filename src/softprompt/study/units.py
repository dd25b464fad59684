"""The study's units of work, shared by every executor (local loop or Ray tasks).

Each unit function takes the `Study` and a `ModelCache` (the process's model and evaluator, loaded
on first use) and caches its result by key, so any process can run any unit and a re-run skips
finished work.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.baseline_runs import run_baselines
from softprompt.baselines import TRAINED, baseline_config, result_inputs
from softprompt.config import RUN_INIT, TASK_INIT, TrainConfig
from softprompt.errors import SoftPromptError, warn
from softprompt.inputs import MODEL_REVISION, input_changes
from softprompt.io import read_json, write_json
from softprompt.prompt import PROMPT_FILE
from softprompt.runs import (
    COMPLETE,
    CONFLICT,
    RESUMABLE,
    RUN_FILE,
    data_digests_known,
    load_run,
    package_versions,
    run_state,
    warn_unknown_inputs,
)
from softprompt.study.config import StudyConfig
from softprompt.study.plan import (
    Unit,
    analysis_dir,
    baseline_dir,
    file_digest,
    model_cache_key,
    model_result_key,
    run_dir,
    source_unit,
    units,
    work_key,
)
from softprompt.study.sweep import cell_name
from softprompt.train import compute_dtype_name, train

if TYPE_CHECKING:
    import torch

    from softprompt.backbones import Backbone
    from softprompt.evaluate import Evaluator


@dataclass
class Study:
    """A study being run: its config, its directory, whether units show progress bars."""

    cfg: StudyConfig
    out: Path
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> its digests (softprompt.inputs)

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
            train(cfg, out, resume=True, backbone=models.backbone, progress=self.progress)
            return "resumed"
        train(cfg, out, overwrite=state.kind == CONFLICT, backbone=models.backbone, progress=self.progress)
        return "retrained" if state.kind == CONFLICT else "trained"


class ModelCache:
    """The backbone and Evaluator that a process's units share, loaded on first use.

    Lazy, so units that need no model (a skipped run, the majority baseline) never load one.
    """

    def __init__(self, train: TrainConfig):
        self.train = train
        self.key = model_cache_key(train)
        self.result_key = model_result_key(train)
        self._backbone: Backbone | None = None
        self._evaluator: Evaluator | None = None

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            from softprompt.backbones import load_backbone

            self._backbone = load_backbone(self.train.model, dtype=self.train.dtype, device=self.train.device)
        return self._backbone

    @property
    def compute_dtype(self) -> torch.dtype:
        from softprompt.backbones import resolve_compute_dtype

        return resolve_compute_dtype(self.train.compute_dtype, self.backbone.device)

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            from softprompt.evaluate import evaluator_for

            # memoize: the units' shared backbone is frozen, and the analyses re-score some prompts
            self._evaluator = evaluator_for(self.train, self.backbone, memoize=True)
        return self._evaluator

    def facts(self) -> dict[str, Any]:
        """What results.json's "setup" says about the model and the machine this cache runs on."""
        import torch

        backbone = self.backbone
        return {
            "model": {
                "name": backbone.name,
                "source": backbone.source,
                "revision": backbone.revision,
                "hidden_size": backbone.hidden_size,
                "vocab_size": backbone.vocab_size,
                "parameters": sum(p.numel() for p in backbone.model.parameters()),
            },
            "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
            "device": str(backbone.device),
            "hardware": {
                "machine": platform.machine(),
                "processor": platform.processor() or platform.machine(),
                "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
                "torch_threads": torch.get_num_threads(),
            },
            "versions": package_versions(),
        }


_PROCESS_CACHE: ModelCache | None = None


def process_model_cache(train: TrainConfig) -> ModelCache:
    """This process's model cache for `train`, kept in a module global so a reused Ray worker does not reload
    the model. Only the latest one is kept, so a worker serving another study frees the old model."""
    global _PROCESS_CACHE
    if _PROCESS_CACHE is None or _PROCESS_CACHE.key != model_cache_key(train):
        _PROCESS_CACHE = None
        _PROCESS_CACHE = ModelCache(train)
    return _PROCESS_CACHE


# ----------------------------------------------------------------------------- units


def run_unit(study: Study, models: ModelCache, unit: Unit) -> dict[str, Any]:
    """Do one unit: {"action": ...} for a prompt run, {"row": ...} for a baseline; plus its seconds."""
    t0 = time.perf_counter()
    if unit.method is None:
        out: dict[str, Any] = {"action": study.ensure_run(study.run_config(unit), study.run_dir(unit), models)}
    else:
        out = {"row": baseline_unit(study, unit.task, unit.method, models)}
    out["seconds"] = time.perf_counter() - t0
    return out


def inputs_changed(saved: dict[str, Any] | None, current: dict[str, dict[str, Any]]) -> bool:
    """Whether any task's inputs (`{task: digests}`) differ from those a cached result recorded; a
    result cached before digests were recorded (`saved` None) is trusted, like an old run."""
    if saved is None:
        return False
    return any(input_changes(saved.get(task) or {}, digests) for task, digests in current.items())


def _cached(path: Path, key: str | tuple[str, ...], inputs: dict[str, dict[str, Any]] | None = None) -> Any | None:
    """The cached value at `path` if it was stored under `key` (or one of `key`s: the current key first, then the
    key an older softprompt computed for the same work, which is then upgraded to the current one) and its inputs."""
    keys = (key,) if isinstance(key, str) else key
    if path.exists():
        saved = _bookkeeping(path)
        done = saved.get("key") in keys and saved.get("status") == "complete" and "value" in saved
        if done and not inputs_changed(saved.get("inputs"), inputs or {}):
            if saved["key"] != keys[0]:
                _store(path, keys[0], saved["value"], saved.get("inputs"))
            return saved["value"]
    return None


def _bookkeeping(path: Path) -> dict[str, Any]:
    """A cache entry or key file of the study (results it can recompute), checked: a JSON object whose `inputs`, if
    any, map tasks to digests. A damaged one (invalid JSON, another shape) is a miss, said in a warning, and redone."""
    try:
        saved = read_json(path)
    except SoftPromptError as e:
        warn(f"{e}: this cached result is recomputed")
        return {}
    inputs = saved.get("inputs") if isinstance(saved, dict) else None
    if not isinstance(saved, dict) or not (
        inputs is None or (isinstance(inputs, dict) and all(isinstance(v, dict) for v in inputs.values()))
    ):
        warn(f"{path}: not a cache entry of this study (expected a JSON object with a key and its inputs): it is recomputed")
        return {}
    return saved


def _store(path: Path, key: str | tuple[str, ...], value: Any, inputs: dict[str, dict[str, Any]] | None = None) -> Any:
    """Cache `value` under `key` (the first, current one of `_analysis_keys`)."""
    write_json(
        path, {"key": key if isinstance(key, str) else key[0], "status": "complete", "value": value, "inputs": inputs or {}}
    )
    return value


def _task_inputs(study: Study, tasks: list[str]) -> dict[str, dict[str, Any]]:
    return {t: study.inputs[t] for t in tasks if t in study.inputs}


def _data_location(study: Study, tasks: list[str]) -> str | None:
    """The data folder, as part of a cache key only where the digests cannot vouch for the data (an unpinned Hub
    split): elsewhere the data's location is how the study is executed, and the digests are compared instead."""
    known = all(t in study.inputs and data_digests_known(study.inputs[t], study.inputs[t]) for t in tasks)
    return None if known else study.cfg.data_dir


def _analysis_keys(study: Study, models: ModelCache, *parts: Any) -> tuple[str, str]:
    """An analysis's cache key (`parts`, the model's result key and the data location where it matters), and the key
    softprompt computed before the device and data folder left the keys (a cache it wrote is still a hit)."""
    return work_key(*parts, models.result_key, _data_location(study, study.cfg.tasks)), work_key(*parts, models.key)


def baseline_unit(study: Study, task: str, method: str, models: ModelCache) -> dict[str, Any]:
    """One baseline of `task`, cached per method, so a config change redoes only the methods it touches."""
    base = study.cfg.baseline_base(task)
    overrides = study.cfg.baselines.overrides()
    resolved = baseline_config(base, method, overrides[method]) if method in TRAINED else base
    key = work_key("baseline", method, result_inputs(resolved, method), _data_location(study, [task]))
    base_dir = baseline_dir(study.out, task, method)
    cache = base_dir / "result.json"
    inputs = _task_inputs(study, [task])
    hit = _cached(cache, key, inputs)
    if hit is not None:
        return hit
    previous = base_dir / "key.json"
    before = _bookkeeping(previous) if previous.exists() else {}
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
    return _store(cache, key, rows[0], inputs)


def analyses_unit(study: Study, models: ModelCache) -> dict[str, Any]:
    """Nearest tokens (+ projections), geometry (stochasticity) and transfer over every prompt run, each
    cached by the prompts' digests; and the cache's setup facts (the model is loaded here anyway)."""
    runs = [load_run(d) for _, _, d in study.prompt_runs()]
    digests = [file_digest(r.path / PROMPT_FILE) for r in runs]
    analyses = {"neighbors": _neighbors(study, runs, digests, models), "geometry": _geometry(study, runs, digests)}
    if study.cfg.analysis.importance:
        analyses["importance"] = _importance(study, runs, digests, models)
    if study.cfg.analysis.describe:
        analyses["describe"] = _describe(study, runs, digests, models)
    if study.cfg.analysis.transfer:
        analyses["transfer"] = _transfer(study, runs, digests, models)
    if study.cfg.transfer.init:
        analyses["transfer_init"] = _transfer_init(study, (analyses.get("transfer") or {}).get("task_level"))
    return {"analyses": analyses, "setup": models.facts()}


def _transfer_init(study: Study, zero_shot: dict[str, Any] | None) -> dict[str, Any]:
    """Each transfer-initialised run against its target's own run, cached by every involved run's files."""
    from softprompt.analysis.transfer_init import TransferredRun, transfer_init_report

    pairs = []
    for unit in (u for u in study.units() if u.source is not None):
        assert unit.seed is not None
        own, source = Unit(unit.task, seed=unit.seed, cell=unit.cell), Unit(unit.source, seed=unit.seed, cell=unit.cell)
        runs = [load_run(study.run_dir(u)) for u in (unit, own, source)]
        pairs.append(TransferredRun(unit.source, unit.task, unit.seed, *runs))
    files = [file_digest(r.path / name) for p in pairs for r in (p.run, p.own, p.source_run) for name in (PROMPT_FILE, RUN_FILE)]
    own_init = dict(study.cfg.analysis_cell()).get("init", study.cfg.train.init)
    adir = analysis_dir(study.out)
    key = work_key("transfer_init", files, own_init, zero_shot)
    hit = _cached(adir / "transfer_init.cache.json", key)
    if hit is None:
        hit = _store(
            adir / "transfer_init.cache.json",
            key,
            transfer_init_report(pairs, own_init, adir / "transfer_init", zero_shot=zero_shot),
        )
    return hit


def _neighbors(study: Study, runs, digests: list[str], models: ModelCache) -> dict[str, Any]:
    from softprompt.analysis.neighbors import neighbors_report

    cfg, a, adir = study.cfg, study.cfg.analysis, analysis_dir(study.out)
    key = _analysis_keys(study, models, "neighbors", digests, a.k, a.metric, a.project, cfg.max_eval)
    inputs = _task_inputs(study, cfg.tasks)
    hit = _cached(adir / "neighbors.cache.json", key, inputs)
    if hit is None:
        hit = neighbors_report(
            models.backbone,
            runs,
            a.k,
            adir / "neighbors",
            metric=a.metric,
            project=a.project,
            evaluator=models.evaluator,
            limit=cfg.max_eval,
        )
        _store(adir / "neighbors.cache.json", key, hit, inputs)
    return hit


def _importance(study: Study, runs, digests: list[str], models: ModelCache) -> dict[str, Any]:
    """Which positions matter: each put back to its init vector (and/or the mean embedding) on the validation subsample."""
    from softprompt.analysis.importance import importance_report

    cfg, adir = study.cfg, analysis_dir(study.out)
    key = _analysis_keys(study, models, "importance", digests, cfg.max_eval)
    inputs = _task_inputs(study, cfg.tasks)
    hit = _cached(adir / "importance.cache.json", key, inputs)
    if hit is None:
        replacements = tuple(cfg.analysis.importance_replacements)
        hit = importance_report(models.evaluator, runs, adir / "importance", limit=cfg.max_eval, replacements=replacements)
        _store(adir / "importance.cache.json", key, hit, inputs)
    return hit


def _describe(study: Study, runs, digests: list[str], models: ModelCache) -> dict[str, Any]:
    """What the model says each prompt (and its init) asks for: depends on the prompts and the model only."""
    from softprompt.analysis.describe import describe_report

    a, adir = study.cfg.analysis, analysis_dir(study.out)
    key = _analysis_keys(study, models, "describe", digests, a.describe_samples)
    hit = _cached(adir / "describe.cache.json", key)
    if hit is None:
        hit = describe_report(models.backbone, runs, adir / "describe", samples=a.describe_samples)
        _store(adir / "describe.cache.json", key, hit)
    return hit


def _geometry(study: Study, runs, digests: list[str]) -> dict[str, Any]:
    from softprompt.analysis.geometry import geometry_report

    a, adir = study.cfg.analysis, analysis_dir(study.out)
    key = work_key("geometry", digests, a.tsne_perplexity)
    inputs = _task_inputs(study, study.cfg.tasks)  # drift vs difficulty reads the runs' no-prompt accuracy
    hit = _cached(adir / "geometry.cache.json", key, inputs)
    if hit is None:
        kwargs = {"perplexity": a.tsne_perplexity} if a.tsne_perplexity else {}
        hit = geometry_report(runs, adir / "geometry", **kwargs)
        _store(adir / "geometry.cache.json", key, hit, inputs)
    return hit


def _transfer(study: Study, runs, digests: list[str], models: ModelCache) -> dict[str, Any]:
    from softprompt.analysis.transfer import transfer_report

    cfg, adir = study.cfg, analysis_dir(study.out)
    key = _analysis_keys(study, models, "transfer", digests, cfg.tasks, cfg.max_eval)
    inputs = _task_inputs(study, cfg.tasks)
    hit = _cached(adir / "transfer.cache.json", key, inputs)
    if hit is None:
        hit = transfer_report(models.evaluator, runs, cfg.tasks, adir / "transfer", limit=cfg.max_eval)
        _store(adir / "transfer.cache.json", key, hit, inputs)
    return hit
