"""A whole study from one TOML config: prompt runs (tasks x seeds), baselines, analyses, report.

Every piece of work has a key derived from what determines its result. Re-running skips work whose
key is unchanged and complete, resumes interrupted runs, and redoes only what a config change touches.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.errors import SoftPromptError
from softprompt.io import read_json, remove_stale_temporaries, write_json
from softprompt.runs import RUN_FILE, load_run
from softprompt.study_steps import Unit, Workspace, analyses_unit, run_unit
from softprompt.train import TrainConfig, train

if TYPE_CHECKING:
    from softprompt.study_ray import RayOptions

BASELINE_METHODS = ("majority", "no_prompt", "english_prompt", "finetune", "lora")
EXECUTORS = ("local", "ray")


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

    # ------------------------------------------------------------------ units
    def run_dir(self, task: str, seed: int) -> Path:
        return self.out / "runs" / f"{_run_dir_name(task)}-s{seed}"

    def prompt_runs(self) -> list[tuple[str, int, Path]]:
        return [(t, s, self.run_dir(t, s)) for t in self.cfg.tasks for s in self.cfg.seeds]

    def units(self) -> list[Unit]:
        """The independent units in the local executor's order: every prompt run, then the baselines."""
        runs = [Unit(task, seed=seed) for task, seed, _ in self.prompt_runs()]
        return runs + [Unit(task, method=m) for task in self.cfg.tasks for m in self.cfg.baselines.methods]

    def ensure_run(self, cfg: TrainConfig, out: Path, ws: Workspace) -> str:
        """Train `cfg` into `out` unless an identical complete run is there; returns what was done.

        A run left `running` or `interrupted` (a killed process, a Ray worker that died) resumes
        from its checkpoint."""
        if (out / RUN_FILE).exists():
            info = read_json(out / RUN_FILE)
            same = isinstance(info.get("config"), dict) and not cfg.differences(info["config"])
            if same and info.get("status") == "complete":
                return "skipped"
            if same:
                train(cfg, out, resume=True, backbone=ws.backbone, progress=self.progress)
                return "resumed"
            train(cfg, out, overwrite=True, backbone=ws.backbone, progress=self.progress)
            return "retrained"
        train(cfg, out, backbone=ws.backbone, progress=self.progress)
        return "trained"


class StudyProgress:
    """The study's one progress bar: units done out of all, the current unit, ETA (silent when off)."""

    def __init__(self, total: int, name: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"study {name}", unit="unit", position=0, dynamic_ncols=True)

    def current(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def done(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# What every executor returns: each unit's result, the analyses unit's result, and results.json's "executor".
ExecutorResult = tuple[dict[Unit, dict[str, Any]], dict[str, Any], dict[str, Any]]


def run_locally(study: Study, units: list[Unit], bar: StudyProgress) -> ExecutorResult:
    """The default executor: every unit in order in this process, one model load for all of them."""
    ws = Workspace(study.cfg)
    done: dict[Unit, dict[str, Any]] = {}
    for unit in units:
        bar.current(str(unit))
        done[unit] = run_unit(study, ws, unit)
        bar.done()
    bar.current("analyses")
    final = analyses_unit(study, ws)
    bar.done()
    return done, final, {"name": "local"}


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
    `softprompt.study_ray`; `ray_options` sets the cluster address and per-run resources).
    Both run the same unit functions, so they write the same results.
    """
    from softprompt.report import write_report

    if executor not in EXECUTORS:
        raise SoftPromptError(f"unknown executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if executor == "local" and ray_options is not None:
        raise SoftPromptError("Ray options (address, resources per run, retries) apply to executor 'ray' only")
    out = study_dir(out)
    if executor == "ray":
        from softprompt.study_ray import import_ray

        import_ray()  # fail before any work if Ray is missing
    cfg = load_study_config(config_path)
    out.mkdir(parents=True, exist_ok=True)
    for d in {p.parent for p in out.rglob(".*.tmp")}:  # left by a killed earlier attempt; nothing writes now
        remove_stale_temporaries(d)
    write_json(out / "study_config.json", asdict(cfg))
    started = time.perf_counter()
    study = Study(cfg, out, progress)
    units = study.units()
    bar = StudyProgress(len(units) + 1, cfg.name, progress)
    try:
        if executor == "ray":
            from softprompt.study_ray import run_on_ray

            done, final, executor_info = run_on_ray(study, units, bar, ray_options)
        else:
            done, final, executor_info = run_locally(study, units, bar)
    finally:
        bar.close()
    actions: dict[str, str] = {}
    baselines: dict[str, dict] = {}
    for unit in units:
        if unit.method is None:
            name = study.run_dir(unit.task, unit.seed).name
            actions[name] = done[unit]["action"]
            study.timings[name] = done[unit]["seconds"]
        else:
            baselines.setdefault(_run_dir_name(unit.task), {})[unit.method] = done[unit]["row"]
    run_objs = [load_run(d) for _, _, d in study.prompt_runs()]
    results = {
        "study": asdict(cfg),
        "setup": {
            **final["setup"],
            "executor": executor_info,
            "wall_time_s": round(time.perf_counter() - started, 1),
            "actions": actions,
        },
        "runs": [_run_summary(r) for r in run_objs],
        "baselines": baselines,
        **final["analyses"],
    }
    write_json(out / "results.json", results)
    write_report(results, out)
    return results


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
