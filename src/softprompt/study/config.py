"""A study config (TOML): [study] what to run, [train] the shared TrainConfig, [baselines], [analysis].

[train] is parsed into the one training schema, `TrainConfig`; the fields a study sets itself
(task and seed per run, model and data folder from [study]) are refused there. A prompt run's config
is `run_config(task, seed)`; a trained baseline's is `baselines.baseline_config` of the first seed's
run config with the method's [baselines] overrides. Typos are errors naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from softprompt.analysis.neighbors import METRICS as ANALYSIS_METRICS
from softprompt.baselines import baseline_config
from softprompt.config import BASELINE_METHODS, TRAINED_BASELINES, TrainConfig, check_keys, check_types
from softprompt.errors import SoftPromptError
from softprompt.tasks import get_task

SECTIONS = ("study", "train", "baselines", "analysis")
SET_BY_STUDY = ("task", "seed", "model", "method", "data_dir")  # TrainConfig fields [train] may not set


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

    def overrides(self) -> dict[str, dict[str, Any]]:
        """TrainConfig overrides per trained method."""
        return {m: dict(getattr(self, m)) for m in TRAINED_BASELINES}


@dataclass
class StudyConfig:
    name: str = "study"
    model: str = "smollm2-135m"
    tasks: list[str] = field(default_factory=lambda: ["rte", "sst2"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    data_dir: str | None = None
    max_eval: int | None = None  # validation subsample used by every evaluation in the study
    train: TrainConfig = field(default_factory=TrainConfig)  # shared by the prompt runs (and the baselines)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def run_config(self, task: str, seed: int) -> TrainConfig:
        """The config of the prompt run (task, seed): [train] with the fields [study] sets."""
        return replace(self.train, task=task, seed=seed, model=self.model, method="prompt", data_dir=self.data_dir)

    def baseline_base(self, task: str) -> TrainConfig:
        """The shared settings of `task`'s baselines (trained ones add their method and overrides): the first seed."""
        return self.run_config(task, self.seeds[0])

    def to_json(self) -> dict[str, Any]:
        """study_config.json and results.json's "study": [train] in full, without the per-run task and seed."""
        d = asdict(self)
        d["train"] = {k: v for k, v in d["train"].items() if k not in ("task", "seed")}
        return d


STUDY_KEYS = [f.name for f in fields(StudyConfig) if f.name not in ("train", "baselines", "analysis")]


def _table(raw: dict, section: str, path: Path) -> dict[str, Any]:
    value = raw.get(section, {})
    if not isinstance(value, dict):
        raise SoftPromptError(f"{path}: [{section}] must be a table")
    return dict(value)


def _train_config(table: dict[str, Any], study: dict[str, Any], path: Path) -> TrainConfig:
    check_keys(TrainConfig, table, f"{path} [train]")
    owned = sorted(set(table) & set(SET_BY_STUDY))
    if owned:
        raise SoftPromptError(f"{path} [train]: {owned} are set by the study ([study] tasks, seeds, model, data_dir)")
    table.setdefault("max_eval", study.get("max_eval"))
    try:
        return TrainConfig.from_dict({**table, "model": study["model"], "data_dir": study["data_dir"]}, where=f"{path} [train]")
    except SoftPromptError as e:  # a bad value: say where it is
        message = str(e)
        raise SoftPromptError(message if message.startswith(str(path)) else f"{path} [train]: {message}") from None


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
    top = set(raw) - set(SECTIONS)
    if top:
        raise SoftPromptError(f"{path}: unknown section(s) {sorted(top)}; expected [study], [train], [baselines], [analysis]")
    study = _table(raw, "study", path)
    unknown = sorted(set(study) - set(STUDY_KEYS))
    if unknown:
        raise SoftPromptError(f"{path} [study]: unknown key(s) {unknown}; expected some of {sorted(STUDY_KEYS)}")
    cfg = StudyConfig(**study)
    if cfg.data_dir and not Path(cfg.data_dir).is_absolute() and cfg.data_dir != "hub":
        cfg.data_dir = str((path.parent / cfg.data_dir).resolve())
    cfg.train = _train_config(_table(raw, "train", path), {**study, "model": cfg.model, "data_dir": cfg.data_dir}, path)
    baselines = _table(raw, "baselines", path)
    check_keys(BaselineConfig, baselines, f"{path} [baselines]")
    cfg.baselines = BaselineConfig(**baselines)
    analysis = _table(raw, "analysis", path)
    check_keys(AnalysisConfig, analysis, f"{path} [analysis]")
    cfg.analysis = AnalysisConfig(**analysis)
    _validate(cfg, path)
    return cfg


def _validate(cfg: StudyConfig, path: Path) -> None:
    """Every task, run config and baseline config now, before hours of compute."""
    bad = sorted(set(cfg.baselines.methods) - set(BASELINE_METHODS))
    if bad:
        raise SoftPromptError(f"{path} [baselines] methods: unknown {bad}; expected some of {list(BASELINE_METHODS)}")
    if not cfg.tasks or not cfg.seeds:
        raise SoftPromptError(f"{path} [study]: tasks and seeds must be non-empty lists")
    _validate_values(cfg, path)
    for task in cfg.tasks:
        get_task(task)
    overrides = cfg.baselines.overrides()
    for method in TRAINED_BASELINES:
        baseline_config(cfg.baseline_base(cfg.tasks[0]), method, overrides[method])


def _validate_values(cfg: StudyConfig, path: Path) -> None:
    """Types and ranges that would otherwise fail only when their step runs (the analyses, after every run)."""
    for section, obj in (("study", cfg), ("baselines", cfg.baselines), ("analysis", cfg.analysis)):
        try:
            check_types(obj)
        except SoftPromptError as e:
            raise SoftPromptError(f"{path} [{section}]: {e}") from None
    if not all(isinstance(t, str) for t in cfg.tasks) or not all(type(s) is int for s in cfg.seeds):
        raise SoftPromptError(f"{path} [study]: tasks must be a list of strings and seeds a list of integers")
    a = cfg.analysis
    if a.metric not in ANALYSIS_METRICS:
        raise SoftPromptError(f"{path} [analysis] metric: unknown {a.metric!r}; expected one of {', '.join(ANALYSIS_METRICS)}")
    if a.k < 1 or (cfg.max_eval is not None and cfg.max_eval < 1):
        raise SoftPromptError(f"{path}: [analysis] k and [study] max_eval must be at least 1, got {a.k} and {cfg.max_eval}")
    if a.tsne_perplexity is not None and not a.tsne_perplexity > 0:
        raise SoftPromptError(f"{path} [analysis] tsne_perplexity: must be a positive number, got {a.tsne_perplexity}")
