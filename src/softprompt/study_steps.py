"""The study's units of work, shared by every executor (local loop or Ray tasks).

A unit is a prompt run (task, seed) or one baseline method of one task; the analyses come after
all of them. Each unit function takes the `Study` and a `Workspace` (the process's model and
evaluator, loaded on first use) and caches its result by key, so any process can run any unit and
a re-run skips finished work.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.io import read_json, write_json
from softprompt.prompt import PROMPT_FILE

if TYPE_CHECKING:
    import torch

    from softprompt.backbones import Backbone
    from softprompt.evaluate import Evaluator
    from softprompt.study import Study, StudyConfig


@dataclass(frozen=True)
class Unit:
    """One independent piece of a study: a prompt run (`seed` set) or a baseline (`method` set)."""

    task: str
    seed: int | None = None
    method: str | None = None

    def __str__(self) -> str:  # the name progress bars and errors use, e.g. "run rte-s1", "baseline rte lora"
        from softprompt.study import _run_dir_name

        if self.method is None:
            return f"run {_run_dir_name(self.task)}-s{self.seed}"
        return f"baseline {_run_dir_name(self.task)} {self.method}"


class Workspace:
    """The backbone and Evaluator that a process's units share, loaded on first use.

    Lazy, so units that need no model (a skipped run, the majority baseline) never load one.
    """

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.key = workspace_key(cfg)
        self._backbone: Backbone | None = None
        self._evaluator: Evaluator | None = None

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            from softprompt.backbones import load_backbone

            train = self.cfg.train
            self._backbone = load_backbone(
                self.cfg.model, dtype=train.get("dtype", "float32"), device=train.get("device", "auto")
            )
        return self._backbone

    @property
    def compute_dtype(self) -> torch.dtype:
        from softprompt.backbones import resolve_compute_dtype

        return resolve_compute_dtype(self.cfg.train.get("compute_dtype", "auto"), self.backbone.device)

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            from softprompt.evaluate import Evaluator

            self._evaluator = Evaluator(
                self.backbone,
                data_dir=self.cfg.data_dir,
                max_length=self.cfg.train.get("max_length", 512),
                compute_dtype=self.compute_dtype,
            )
        return self._evaluator

    def facts(self) -> dict[str, Any]:
        """What results.json's "setup" says about the model and the machine this workspace runs on."""
        from softprompt.runs import package_versions

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
                "cpus": _cpu_count(),
                "torch_threads": _torch_threads(),
            },
            "versions": package_versions(),
        }


def workspace_key(cfg: StudyConfig) -> tuple:
    """What a loaded workspace depends on: a cached one is reused only for an equal key."""
    t = cfg.train
    return (
        cfg.model,
        t.get("dtype", "float32"),
        t.get("device", "auto"),
        t.get("compute_dtype", "auto"),
        t.get("max_length", 512),
        cfg.data_dir,
    )


_PROCESS_WORKSPACE: Workspace | None = None


def process_workspace(cfg: StudyConfig) -> Workspace:
    """This process's workspace for `cfg`, kept in a module global so a reused Ray worker does not reload
    the model. Only the latest one is kept, so a worker serving another study frees the old model."""
    global _PROCESS_WORKSPACE
    if _PROCESS_WORKSPACE is None or _PROCESS_WORKSPACE.key != workspace_key(cfg):
        _PROCESS_WORKSPACE = None
        _PROCESS_WORKSPACE = Workspace(cfg)
    return _PROCESS_WORKSPACE


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ----------------------------------------------------------------------------- units


def run_unit(study: Study, ws: Workspace, unit: Unit) -> dict[str, Any]:
    """Do one unit: {"action": ...} for a prompt run, {"row": ...} for a baseline; plus its seconds."""
    t0 = time.perf_counter()
    if unit.method is None:
        assert unit.seed is not None
        run_dir = study.run_dir(unit.task, unit.seed)
        out: dict[str, Any] = {"action": study.ensure_run(study.cfg.run_config(unit.task, unit.seed), run_dir, ws)}
    else:
        out = {"row": baseline_step(study, unit.task, unit.method, ws)}
    out["seconds"] = time.perf_counter() - t0
    return out


def analyses_unit(study: Study, ws: Workspace) -> dict[str, Any]:
    """The analyses over every prompt run, and the workspace's setup facts (the model is loaded here anyway)."""
    from softprompt.runs import load_run

    runs = [load_run(d) for _, _, d in study.prompt_runs()]
    analyses = analyses_step(study, runs, ws.backbone, ws.evaluator)
    return {"analyses": analyses, "setup": ws.facts()}


def _cached(path: Path, key: str) -> Any | None:
    if path.exists():
        saved = read_json(path)
        if isinstance(saved, dict) and saved.get("key") == key and saved.get("status") == "complete":
            return saved["value"]
    return None


def _store(path: Path, key: str, value: Any) -> Any:
    write_json(path, {"key": key, "status": "complete", "value": value})
    return value


def baseline_step(study: Study, task: str, method: str, ws: Workspace) -> dict[str, Any]:
    """One baseline of `task`, cached per method, so a config change redoes only the methods it touches."""
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
    overrides = dict(getattr(cfg.baselines, method, {}) or {}) if method in TRAINED else {}
    lr = overrides.pop("lr", None)
    key = work_key("baseline", method, shared, lr, overrides, train.get("compute_dtype", "auto"), train.get("dtype", "float32"))
    base_dir = study.out / "baselines" / _run_dir_name(task) / method
    cache = base_dir / "result.json"
    hit = _cached(cache, key)
    if hit is not None:
        return hit
    previous = base_dir / "key.json"
    if (base_dir / method).exists() and (not previous.exists() or read_json(previous).get("key") != key):
        shutil.rmtree(base_dir / method)  # its config changed: this baseline's run is redone from scratch
    write_json(base_dir / "key.json", {"key": key})
    needs_model = method != "majority"  # the majority class is counted from the data alone
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
        backbone=ws.backbone if needs_model else None,
        evaluator=ws.evaluator if needs_model else None,
        lr={method: lr} if lr is not None else None,
        dtype=train.get("dtype", "float32"),
        compute_dtype=train.get("compute_dtype", "auto"),
        train_options=overrides or None,
        progress=study.progress,
    )
    return _store(cache, key, rows[0])


def analyses_step(study: Study, runs, backbone, evaluator) -> dict[str, Any]:
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
