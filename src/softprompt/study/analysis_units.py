"""The study's analysis unit: every readout over the analysis cell's prompt runs, each cached by what it reads.

Run once all prompt runs are done (the transfer matrix and transferred-init comparison read several runs);
each analysis is keyed by the prompts' digests, its own settings and the model, so a re-run recomputes only
what a config or data change touches.
"""

from __future__ import annotations

from typing import Any

from softprompt.model.prompt import PROMPT_FILE
from softprompt.preemption import safe_point
from softprompt.records.run import RUN_FILE
from softprompt.runs.directory import load_run
from softprompt.study.model_cache import ModelCache
from softprompt.study.plan import Unit, analysis_dir, file_digest, work_key
from softprompt.study.result_cache import cache_hit, store
from softprompt.study.units import Study


def analysis_keys(study: Study, models: ModelCache, *parts: Any) -> tuple[str, str]:
    """An analysis's cache key (`parts`, the model's result key and the data location where it matters), and the key
    softprompt computed before the device and data folder left the keys (a cache it wrote is still a hit)."""
    return work_key(*parts, models.result_key, study.data_location(study.cfg.tasks)), work_key(*parts, models.key)


def analyses_unit(study: Study, models: ModelCache) -> dict[str, Any]:
    """Nearest tokens (+ projections), geometry (stochasticity) and transfer over every prompt run, each
    cached by the prompts' digests; and the cache's setup facts (the model is loaded here anyway)."""
    runs = [load_run(d) for _, _, d in study.prompt_runs()]
    digests = [file_digest(r.path / PROMPT_FILE) for r in runs]
    safe_point("analysis")  # between two analyses, a stop signal stops here (each one is cached once done)
    analyses = {"neighbors": _neighbors(study, runs, digests, models)}
    safe_point("analysis")
    analyses["geometry"] = _geometry(study, runs, digests)
    if study.cfg.analysis.importance:
        safe_point("analysis")
        analyses["importance"] = _importance(study, runs, digests, models)
    if study.cfg.analysis.describe:
        safe_point("analysis")
        analyses["describe"] = _describe(study, runs, digests, models)
    if study.cfg.analysis.transfer:
        safe_point("analysis")
        analyses["transfer"] = _transfer(study, runs, digests, models)
    if study.cfg.transfer.init:
        safe_point("analysis")
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
    hit = cache_hit(adir / "transfer_init.cache.json", key)
    if hit is None:
        hit = store(
            adir / "transfer_init.cache.json",
            key,
            transfer_init_report(pairs, own_init, adir / "transfer_init", zero_shot=zero_shot),
        )
    return hit


def _neighbors(study: Study, runs, digests: list[str], models: ModelCache) -> dict[str, Any]:
    from softprompt.analysis.neighbors import neighbors_report

    cfg, a, adir = study.cfg, study.cfg.analysis, analysis_dir(study.out)
    key = analysis_keys(study, models, "neighbors", digests, a.k, a.metric, a.project, cfg.max_eval)
    inputs = study.task_inputs(cfg.tasks)
    hit = cache_hit(adir / "neighbors.cache.json", key, inputs)
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
        store(adir / "neighbors.cache.json", key, hit, inputs)
    return hit


def _importance(study: Study, runs, digests: list[str], models: ModelCache) -> dict[str, Any]:
    """Which positions matter: each put back to its init vector (and/or the mean embedding) on the validation subsample."""
    from softprompt.analysis.importance import importance_report

    cfg, adir = study.cfg, analysis_dir(study.out)
    key = analysis_keys(study, models, "importance", digests, cfg.max_eval)
    inputs = study.task_inputs(cfg.tasks)
    hit = cache_hit(adir / "importance.cache.json", key, inputs)
    if hit is None:
        replacements = tuple(cfg.analysis.importance_replacements)
        hit = importance_report(models.evaluator, runs, adir / "importance", limit=cfg.max_eval, replacements=replacements)
        store(adir / "importance.cache.json", key, hit, inputs)
    return hit


def _describe(study: Study, runs, digests: list[str], models: ModelCache) -> dict[str, Any]:
    """What the model says each prompt (and its init) asks for: depends on the prompts and the model only."""
    from softprompt.analysis.describe import describe_report

    a, adir = study.cfg.analysis, analysis_dir(study.out)
    key = analysis_keys(study, models, "describe", digests, a.describe_samples)
    hit = cache_hit(adir / "describe.cache.json", key)
    if hit is None:
        hit = describe_report(models.backbone, runs, adir / "describe", samples=a.describe_samples)
        store(adir / "describe.cache.json", key, hit)
    return hit


def _geometry(study: Study, runs, digests: list[str]) -> dict[str, Any]:
    from softprompt.analysis.geometry import geometry_report

    a, adir = study.cfg.analysis, analysis_dir(study.out)
    key = work_key("geometry", digests, a.tsne_perplexity)
    inputs = study.task_inputs(study.cfg.tasks)  # drift vs difficulty reads the runs' no-prompt accuracy
    hit = cache_hit(adir / "geometry.cache.json", key, inputs)
    if hit is None:
        kwargs = {"perplexity": a.tsne_perplexity} if a.tsne_perplexity else {}
        hit = geometry_report(runs, adir / "geometry", **kwargs)
        store(adir / "geometry.cache.json", key, hit, inputs)
    return hit


def _transfer(study: Study, runs, digests: list[str], models: ModelCache) -> dict[str, Any]:
    from softprompt.analysis.transfer import transfer_report

    cfg, adir = study.cfg, analysis_dir(study.out)
    key = analysis_keys(study, models, "transfer", digests, cfg.tasks, cfg.max_eval)
    inputs = study.task_inputs(cfg.tasks)
    hit = cache_hit(adir / "transfer.cache.json", key, inputs)
    if hit is None:
        hit = transfer_report(models.evaluator, runs, cfg.tasks, adir / "transfer", limit=cfg.max_eval)
        store(adir / "transfer.cache.json", key, hit, inputs)
    return hit
