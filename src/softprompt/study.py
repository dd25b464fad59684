"""A whole study from one TOML config: prompt runs (tasks x seeds), baselines, analyses, report.

Every piece of work has a key derived from what determines its result. Re-running skips work whose
key is unchanged and complete, resumes interrupted runs, and redoes only what a config change touches.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.io import read_json, write_json
from softprompt.runs import RUN_FILE, load_run, package_versions
from softprompt.train import TrainConfig, train

BASELINE_METHODS = ("majority", "no_prompt", "english_prompt", "finetune", "lora")


@dataclass
class AnalysisConfig:
    k: int = 3
    metric: str = "cosine"
    project: bool = True
    transfer: bool = True
    tsne_perplexity: float | None = None


@dataclass
class BaselineConfig:
    methods: list[str] = field(default_factory=lambda: list(BASELINE_METHODS))
    finetune: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides, e.g. lr
    lora: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyConfig:
    name: str = "study"
    model: str = "smollm2-135m"
    tasks: list[str] = field(default_factory=lambda: ["rte", "sst2"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    data_dir: str | None = None
    max_eval: int | None = None  # validation subsample used by every evaluation in the study
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by the prompt runs
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def run_config(self, task: str, seed: int, method: str = "prompt", overrides: dict | None = None) -> TrainConfig:
        d = dict(self.train)
        d.update(overrides or {})
        d.update(task=task, seed=seed, model=self.model, method=method, data_dir=self.data_dir)
        d.setdefault("max_eval", self.max_eval)
        return TrainConfig.from_dict(d, where="[train]")


def _strict(cls, data: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SoftPromptError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    return cls(**data)


def load_study_config(path: str | Path) -> StudyConfig:
    """Parse and validate a study TOML; typos are errors naming the key, not silently ignored."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoftPromptError(f"study config {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SoftPromptError(f"{path}: invalid TOML ({e})") from None
    except UnicodeDecodeError:
        raise SoftPromptError(f"{path}: not UTF-8 text") from None
    top = set(raw) - {"study", "train", "baselines", "analysis"}
    if top:
        raise SoftPromptError(f"{path}: unknown section(s) {sorted(top)}; expected [study], [train], [baselines], [analysis]")
    study = dict(raw.get("study", {}))
    cfg = _strict(StudyConfig, study, f"{path} [study]")
    cfg.train = dict(raw.get("train", {}))
    cfg.baselines = _strict(BaselineConfig, dict(raw.get("baselines", {})), f"{path} [baselines]")
    cfg.analysis = _strict(AnalysisConfig, dict(raw.get("analysis", {})), f"{path} [analysis]")
    bad = sorted(set(cfg.baselines.methods) - set(BASELINE_METHODS))
    if bad:
        raise SoftPromptError(f"{path} [baselines] methods: unknown {bad}; expected some of {list(BASELINE_METHODS)}")
    if not cfg.tasks or not cfg.seeds:
        raise SoftPromptError(f"{path} [study]: tasks and seeds must be non-empty lists")
    if cfg.data_dir and not Path(cfg.data_dir).is_absolute() and cfg.data_dir != "hub":
        cfg.data_dir = str((path.parent / cfg.data_dir).resolve())
    # validate every run config now, before hours of compute
    for task in cfg.tasks:
        from softprompt.tasks import get_task

        get_task(task)
        cfg.run_config(task, cfg.seeds[0])
    return cfg


def work_key(*parts: Any) -> str:
    """A stable digest of what determines a result."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _run_dir_name(task: str) -> str:
    """A directory name for a task that cannot escape the study directory (no separators, no leading dot)."""
    name = Path(task).stem if task.endswith(".toml") else task
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
    return safe or "task"


@dataclass
class Study:
    cfg: StudyConfig
    out: Path
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ runs
    def prompt_runs(self) -> list[tuple[str, int, Path]]:
        return [(t, s, self.out / "runs" / f"{_run_dir_name(t)}-s{s}") for t in self.cfg.tasks for s in self.cfg.seeds]

    def ensure_run(self, cfg: TrainConfig, out: Path, backbone) -> str:
        """Train `cfg` into `out` unless an identical complete run is there; returns what was done."""
        if (out / RUN_FILE).exists():
            info = read_json(out / RUN_FILE)
            same = info.get("config") == asdict(cfg)
            if same and info.get("status") == "complete":
                return "skipped"
            if same:
                train(cfg, out, resume=True, backbone=backbone, progress=self.progress)
                return "resumed"
            train(cfg, out, overwrite=True, backbone=backbone, progress=self.progress)
            return "retrained"
        train(cfg, out, backbone=backbone, progress=self.progress)
        return "trained"


def run_study(config_path: str | Path, out: str | Path, *, progress: bool = True) -> dict:
    """Run (or continue) a study and write results.json, CSV tables and report.html into `out`."""
    from softprompt.backbones import load_backbone, resolve_compute_dtype
    from softprompt.evaluate import Evaluator
    from softprompt.report import write_report
    from softprompt.study_steps import analyses_step, baselines_step

    cfg = load_study_config(config_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study_config.json", asdict(cfg))
    started = time.perf_counter()
    study = Study(cfg, out, progress)
    backbone = load_backbone(cfg.model, dtype=cfg.train.get("dtype", "float32"), device=cfg.train.get("device", "auto"))
    compute_dtype = resolve_compute_dtype(cfg.train.get("compute_dtype", "auto"), backbone.device)
    evaluator = Evaluator(
        backbone, data_dir=cfg.data_dir, max_length=cfg.train.get("max_length", 512), compute_dtype=compute_dtype
    )

    runs = study.prompt_runs()
    n_base = len(cfg.tasks) if cfg.baselines.methods else 0
    total = len(runs) + n_base + 1
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"study {cfg.name}", unit="step", position=0, dynamic_ncols=True)
    actions: dict[str, str] = {}
    for task, seed, run_dir in runs:
        if bar is not None:
            bar.set_postfix_str(f"prompt run {task} seed {seed}")
        t0 = time.perf_counter()
        actions[run_dir.name] = study.ensure_run(cfg.run_config(task, seed), run_dir, backbone)
        study.timings[run_dir.name] = time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
    baselines = {}
    for task in cfg.tasks if cfg.baselines.methods else []:
        if bar is not None:
            bar.set_postfix_str(f"baselines {task}")
        baselines[_run_dir_name(task)] = baselines_step(study, task, backbone, evaluator)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.set_postfix_str("analyses")
    run_objs = [load_run(d) for _, _, d in runs]
    analyses = analyses_step(study, run_objs, backbone, evaluator)
    if bar is not None:
        bar.update(1)
        bar.close()
    results = {
        "study": asdict(cfg),
        "setup": {
            "model": {
                "name": backbone.name,
                "source": backbone.source,
                "revision": backbone.revision,
                "hidden_size": backbone.hidden_size,
                "vocab_size": backbone.vocab_size,
                "parameters": sum(p.numel() for p in backbone.model.parameters()),
            },
            "compute_dtype": str(compute_dtype).replace("torch.", ""),
            "device": str(backbone.device),
            "hardware": {
                "machine": platform.machine(),
                "processor": platform.processor() or platform.machine(),
                "cpus": _cpu_count(),
                "torch_threads": _torch_threads(),
            },
            "versions": package_versions(),
            "wall_time_s": round(time.perf_counter() - started, 1),
            "actions": actions,
        },
        "runs": [_run_summary(r) for r in run_objs],
        "baselines": baselines,
        **analyses,
    }
    write_json(out / "results.json", results)
    write_report(results, out)
    return results


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _run_summary(run) -> dict:
    info = run.info
    return {
        "name": run.path.name,
        "path": str(run.path),
        "task": run.task,
        "seed": run.config["seed"],
        "final": info.get("final", {}),
        "best": info.get("best"),
        "baselines": info.get("baselines", {}),
        "parameters": info.get("parameters", {}),
        "wall_time_s": info.get("wall_time_s"),
        "init_text": (info.get("prompt", {}).get("init") or {}).get("text"),
        "history": [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines() if x.strip()]
        if (run.path / "metrics.jsonl").exists()
        else [],
    }
