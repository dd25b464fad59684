"""The study's analysis unit: every readout over the analysis cell's prompt runs, each cached by what it reads.

Run once all prompt runs are done (the transfer matrix and transferred-init comparison read several runs);
each analysis is keyed by the prompts' digests, its own settings and the model, so a re-run recomputes only
what a config or data change touches. Each analysis is timed (cached or computed, `study.timing`) and says what
it is doing, on which run, through `progress`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.model.prompt import PROMPT_FILE
from softprompt.preemption import safe_point
from softprompt.records.run import RUN_FILE
from softprompt.runs.directory import load_run
from softprompt.study.model_cache import ModelCache
from softprompt.study.plan import Unit, analysis_dir, file_digest, work_key
from softprompt.study.result_cache import cache_hit, read_entry, store
from softprompt.study.timing import timed
from softprompt.study.units import Study

Progress = Callable[[str], None]
PER_RUN_READOUTS = ("importance", "describe")  # the costliest analyses: they read only [analysis] readout_seeds' runs


def analysis_keys(study: Study, models: ModelCache, *parts: Any) -> tuple[str, str]:
    """An analysis's cache key (`parts`, the model's result key and the data location where it matters), and the key
    softprompt computed before the device and data folder left the keys (a cache it wrote is still a hit)."""
    return work_key(*parts, models.result_key, study.data_location(study.cfg.tasks)), work_key(*parts, models.key)


@dataclass
class _Analyses:
    """The analyses unit's state: the model cache, where progress goes, and each analysis's timing."""

    models: ModelCache
    progress: Progress | None = None
    timings: list[dict[str, Any]] = field(default_factory=list)

    def say(self, kind: str) -> Progress:
        """`progress` for one analysis: its name in front of what it reports (a run, a count)."""
        show = self.progress
        return (lambda text: show(f"analysis {kind}: {text}")) if show else (lambda _text: None)

    def cached(self, kind: str, path: Path, key, inputs, compute: Callable[[Progress], Any]) -> Any:
        """The cached value at `path` under `key`, or `compute(progress)`'s, stored with its seconds; timed either way
        (a model load inside it apart)."""
        self.say(kind)("checking its cache")
        start, loaded = time.perf_counter(), self.models.load_s
        value = cache_hit(path, key, inputs)
        cached = value is not None
        computed_s = read_entry(path).get("seconds") if cached else None
        if not cached:
            value = compute(self.say(kind))
            store(path, key, value, inputs, seconds=round(self._elapsed(start, loaded), 3))
        self.timings.append(
            {
                "unit": kind,
                "seconds": self._elapsed(start, loaded),
                "model_load_s": self.models.load_s - loaded,
                "cached": cached,
                "computed_s": computed_s,
            }
        )
        return value

    def _elapsed(self, start: float, loaded: float) -> float:
        """Seconds since `start`, without the model load since the cache's load counter was `loaded`."""
        return time.perf_counter() - start - (self.models.load_s - loaded)


def analysis_kinds(study: Study) -> list[str]:
    """The analyses this study's config asks for, in results.json's order (each independent of the others; the
    transferred-init comparison, which reads the transfer matrix, comes after them in `analyses_unit`)."""
    a = study.cfg.analysis
    wanted = {"neighbors": True, "geometry": True, "importance": a.importance, "describe": a.describe, "transfer": a.transfer}
    return [kind for kind, on in wanted.items() if on]


def analysis_unit(study: Study, models: ModelCache, kind: str, progress: Progress | None = None) -> dict[str, Any]:
    """One analysis over the analysis cell's runs (a worker process can do it while another does the next):
    {"value": ..., "timings": [its timing]}."""
    models.share_scores(study.scores)
    ctx = _Analyses(models, progress)
    seeds = study.cfg.analysis.readout_seeds if kind in PER_RUN_READOUTS else None
    # only the runs it reads: the others may still be training (the worker processes start a readout beside them)
    runs = [load_run(d) for _, seed, d in study.prompt_runs() if seeds is None or seed in seeds]
    digests = [file_digest(r.path / PROMPT_FILE) for r in runs]
    value = ANALYSES[kind](study, runs, digests, ctx)
    return {"value": value, "timings": ctx.timings}


def analyses_unit(study: Study, models: ModelCache, progress: Progress | None = None) -> dict[str, Any]:
    """Nearest tokens (+ projections), geometry (stochasticity), the per-run readouts and transfer over every prompt
    run, each cached by the prompts' digests; and the cache's setup facts (the model is loaded here anyway).
    `progress` (the local executor's bar) hears which analysis runs, on which run."""
    done = {}
    for kind in analysis_kinds(study):
        safe_point("analysis")  # between two analyses, a stop signal stops here (each one is cached once done)
        done[kind] = analysis_unit(study, models, kind, progress)
    return finish_analyses(study, models, done, progress)


def finish_analyses(
    study: Study, models: ModelCache, done: dict[str, dict[str, Any]], progress: Progress | None = None
) -> dict[str, Any]:
    """The analyses unit's result from each analysis's (`analysis_unit`, in `analysis_kinds` order): the transferred
    init comparison (it reads the transfer matrix) and the setup facts added here."""
    models.share_scores(study.scores)
    ctx = _Analyses(models, progress)
    analyses = {kind: done[kind]["value"] for kind in analysis_kinds(study)}
    timings = [t for kind in analysis_kinds(study) for t in done[kind]["timings"]]
    if study.cfg.transfer.init:
        safe_point("analysis")
        analyses["transfer_init"] = _transfer_init(study, (analyses.get("transfer") or {}).get("task_level"), ctx)
    with timed(models) as t:  # the setup facts read the model: loaded here when every unit before was cached
        setup = models.facts()
    return {"analyses": analyses, "setup": setup, "timings": timings + ctx.timings, "model_load_s": t.model_load_s}


def _transfer_init(study: Study, zero_shot: dict[str, Any] | None, ctx: _Analyses) -> dict[str, Any]:
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

    def compute(say: Progress) -> dict[str, Any]:
        say(f"{len(pairs)} transferred runs against their own")
        return transfer_init_report(pairs, own_init, adir / "transfer_init", zero_shot=zero_shot)

    return ctx.cached("transfer_init", adir / "transfer_init.cache.json", key, None, compute)


def _neighbors(study: Study, runs, digests: list[str], ctx: _Analyses) -> dict[str, Any]:
    from softprompt.analysis.neighbors import neighbors_report

    cfg, a, adir, models = study.cfg, study.cfg.analysis, analysis_dir(study.out), ctx.models
    key = analysis_keys(study, models, "neighbors", digests, a.k, a.metric, a.project, cfg.max_eval)

    def compute(say: Progress) -> dict[str, Any]:
        return neighbors_report(
            models.backbone,
            runs,
            a.k,
            adir / "neighbors",
            metric=a.metric,
            project=a.project,
            evaluator=models.evaluator if a.project else None,
            limit=cfg.max_eval,
            progress=say,
        )

    name = "neighbors + projection" if a.project else "neighbors"
    return ctx.cached(name, adir / "neighbors.cache.json", key, study.task_inputs(cfg.tasks), compute)


def _importance(study: Study, runs, digests: list[str], ctx: _Analyses) -> dict[str, Any]:
    """Which positions matter: each put back to its init vector (and/or the mean embedding) on the validation subsample."""
    from softprompt.analysis.importance import importance_report

    cfg, adir, models = study.cfg, analysis_dir(study.out), ctx.models
    key = analysis_keys(study, models, "importance", digests, cfg.max_eval)

    def compute(say: Progress) -> dict[str, Any]:
        replacements = tuple(cfg.analysis.importance_replacements)
        return importance_report(
            models.evaluator, runs, adir / "importance", limit=cfg.max_eval, replacements=replacements, progress=say
        )

    return ctx.cached("importance", adir / "importance.cache.json", key, study.task_inputs(cfg.tasks), compute)


def _describe(study: Study, runs, digests: list[str], ctx: _Analyses) -> dict[str, Any]:
    """What the model says each prompt (and its init) asks for: depends on the prompts and the model only."""
    from softprompt.analysis.describe import describe_report

    a, adir, models = study.cfg.analysis, analysis_dir(study.out), ctx.models
    key = analysis_keys(study, models, "describe", digests, a.describe_samples)

    def compute(say: Progress) -> dict[str, Any]:
        return describe_report(models.backbone, runs, adir / "describe", samples=a.describe_samples, progress=say)

    return ctx.cached("describe", adir / "describe.cache.json", key, None, compute)


def _geometry(study: Study, runs, digests: list[str], ctx: _Analyses) -> dict[str, Any]:
    from softprompt.analysis.geometry import geometry_report

    a, adir = study.cfg.analysis, analysis_dir(study.out)
    key = work_key("geometry", digests, a.tsne_perplexity)
    inputs = study.task_inputs(study.cfg.tasks)  # drift vs difficulty reads the runs' no-prompt accuracy

    def compute(say: Progress) -> dict[str, Any]:
        say(f"drift, distances and t-SNE of {len(runs)} prompts")
        kwargs = {"perplexity": a.tsne_perplexity} if a.tsne_perplexity else {}
        return geometry_report(runs, adir / "geometry", **kwargs)

    return ctx.cached("geometry", adir / "geometry.cache.json", key, inputs, compute)


def _transfer(study: Study, runs, digests: list[str], ctx: _Analyses) -> dict[str, Any]:
    from softprompt.analysis.transfer import transfer_report

    cfg, adir, models = study.cfg, analysis_dir(study.out), ctx.models
    key = analysis_keys(study, models, "transfer", digests, cfg.tasks, cfg.max_eval)

    def compute(say: Progress) -> dict[str, Any]:
        return transfer_report(models.evaluator, runs, cfg.tasks, adir / "transfer", limit=cfg.max_eval, progress=say)

    return ctx.cached("transfer", adir / "transfer.cache.json", key, study.task_inputs(cfg.tasks), compute)


ANALYSES: dict[str, Callable[[Study, list, list[str], _Analyses], dict[str, Any]]] = {
    "neighbors": _neighbors,
    "geometry": _geometry,
    "importance": _importance,
    "describe": _describe,
    "transfer": _transfer,
}
