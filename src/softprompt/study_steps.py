"""The study's steps after the prompt runs: baselines per task and the analyses, each cached by key."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from softprompt.io import read_json, write_json
from softprompt.prompt import PROMPT_FILE


def _cached(path: Path, key: str) -> Any | None:
    if path.exists():
        saved = read_json(path)
        if isinstance(saved, dict) and saved.get("key") == key and saved.get("status") == "complete":
            return saved["value"]
    return None


def _store(path: Path, key: str, value: Any) -> Any:
    write_json(path, {"key": key, "status": "complete", "value": value})
    return value


def baselines_step(study, task: str, backbone, evaluator) -> dict[str, dict]:
    """Every configured baseline of `task`, one cache entry per method, so a config change redoes only it."""
    from softprompt.baselines import TRAINED, run_baselines
    from softprompt.study import _run_dir_name, work_key

    cfg = study.cfg
    seed = cfg.seeds[0]
    train = cfg.train
    shared = dict(
        model=cfg.model,
        task=task,
        seed=seed,
        max_train=train.get("max_train"),
        epochs=train.get("epochs", 3),
        max_eval=cfg.max_eval,
        max_length=train.get("max_length", 512),
        batch_size=train.get("batch_size", 8),
        data_dir=cfg.data_dir,
    )
    out: dict[str, dict] = {}
    for method in cfg.baselines.methods:
        overrides = dict(getattr(cfg.baselines, method, {}) or {}) if method in TRAINED else {}
        lr = overrides.pop("lr", None)
        key = work_key(
            "baseline", method, shared, lr, overrides, train.get("compute_dtype", "auto"), train.get("dtype", "float32")
        )
        base_dir = study.out / "baselines" / _run_dir_name(task) / method
        cache = base_dir / "result.json"
        hit = _cached(cache, key)
        if hit is not None:
            out[method] = hit
            continue
        previous = base_dir / "key.json"
        if (base_dir / method).exists() and (not previous.exists() or read_json(previous).get("key") != key):
            shutil.rmtree(base_dir / method)  # its config changed: this baseline's run is redone from scratch
        write_json(base_dir / "key.json", {"key": key})
        rows = run_baselines(
            task,
            cfg.model,
            base_dir,
            methods=[method],
            seed=seed,
            max_train=shared["max_train"],
            epochs=shared["epochs"],
            max_eval=cfg.max_eval,
            max_length=shared["max_length"],
            batch_size=shared["batch_size"],
            data_dir=cfg.data_dir,
            backbone=backbone,
            evaluator=evaluator,
            lr={method: lr} if lr is not None else None,
            dtype=train.get("dtype", "float32"),
            compute_dtype=train.get("compute_dtype", "auto"),
            train_options=overrides or None,
            progress=study.progress,
        )
        out[method] = _store(cache, key, rows[0])
    return out


def analyses_step(study, runs, backbone, evaluator) -> dict[str, Any]:
    """Nearest tokens (+ projections), geometry (stochasticity) and transfer, cached by the prompts' digests."""
    from softprompt.analysis.geometry import geometry_report
    from softprompt.analysis.neighbors import neighbors_report
    from softprompt.analysis.transfer import transfer_report
    from softprompt.study import file_digest, work_key

    cfg = study.cfg
    a = cfg.analysis
    digests = [file_digest(r.path / PROMPT_FILE) for r in runs]
    adir = study.out / "analysis"
    results: dict[str, Any] = {}

    key = work_key("neighbors", digests, a.k, a.metric, a.project, cfg.max_eval, cfg.model)
    hit = _cached(adir / "neighbors.cache.json", key)
    if hit is None:
        hit = neighbors_report(
            backbone, runs, a.k, adir / "neighbors", metric=a.metric, project=a.project, evaluator=evaluator, limit=cfg.max_eval
        )
        _store(adir / "neighbors.cache.json", key, hit)
    results["neighbors"] = hit

    key = work_key("geometry", digests, a.tsne_perplexity)
    hit = _cached(adir / "geometry.cache.json", key)
    if hit is None:
        kwargs = {"perplexity": a.tsne_perplexity} if a.tsne_perplexity else {}
        hit = geometry_report(runs, adir / "geometry", **kwargs)
        _store(adir / "geometry.cache.json", key, hit)
    results["geometry"] = hit

    if a.transfer:
        key = work_key("transfer", digests, cfg.tasks, cfg.max_eval, cfg.model)
        hit = _cached(adir / "transfer.cache.json", key)
        if hit is None:
            hit = transfer_report(evaluator, runs, cfg.tasks, adir / "transfer", limit=cfg.max_eval)
            _store(adir / "transfer.cache.json", key, hit)
        results["transfer"] = hit
    return results
