"""A study config (TOML): [study] what to run, [train] the shared TrainConfig, [sweep], [baselines], [analysis],
[transfer].

[train] is parsed into the one training schema, `TrainConfig`; the fields a study sets itself
(task and seed per run, model and data folder from [study]) are refused there. [sweep] varies [train]
fields (`study.sweep`): a prompt run's config is `run_config(task, seed, cell)`; a trained baseline's is
`baselines.baseline_config` of the first seed's run config at the [train] values with the method's
[baselines] overrides. An init `task:NAME` ([train] or a swept init) starts every other task's run from
NAME's run of the same seed and cell (NAME's own run there starts from its text); `[transfer] init = true`
adds, in the analysis cell, a run of every task B started from every other task A's prompt. Typos are
errors naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from softprompt.analysis.importance import REPLACEMENTS as IMPORTANCE_REPLACEMENTS
from softprompt.analysis.nearest import METRICS as ANALYSIS_METRICS
from softprompt.config import (
    BASELINE_METHODS,
    DEFAULT_BASELINES,
    RUN_INIT,
    TASK_INIT,
    TRAINED_BASELINES,
    TrainConfig,
    check_keys,
    check_types,
)
from softprompt.errors import SoftPromptError
from softprompt.io import resolve_path
from softprompt.runs.baselines import baseline_config
from softprompt.study.sweep import Cell, analysis_cell, cells, parse_sweep
from softprompt.tasks import get_task, task_name

SECTIONS = ("study", "train", "sweep", "baselines", "analysis", "transfer", "execution")
SET_BY_STUDY = ("task", "seed", "model", "method", "data_dir")  # TrainConfig fields [train] may not set
# [train.per_task.NAME] may set a task's training budget and optimisation, nothing the evaluator, the baselines'
# scoring or the analyses share across tasks (the model, precision, prompt length and format, validation subsample)
PER_TASK_FIELDS = (
    "epochs", "max_train", "dev_size", "eval_every", "lr", "optimizer", "schedule", "warmup", "weight_decay",
    "batch_size", "grad_accum", "max_grad_norm", "loss", "init_text", "checkpoint_every",
)  # fmt: skip


@dataclass
class ExecutionConfig:
    """[execution]: how this machine runs the study, never what it computes (no result's identity includes it)."""

    workers: int = 1  # local executor: prompt runs and baselines in this many worker processes at once (1: in-process)
    threads_per_worker: int | None = None  # torch threads of each worker (None: the usable cores / workers, >= 1)


def check_execution(e: ExecutionConfig, where: str) -> None:
    """Worker and thread counts of at least 1, from the config or the command line (`where` says which)."""
    if e.workers < 1 or (e.threads_per_worker is not None and e.threads_per_worker < 1):
        raise SoftPromptError(
            f"{where}: workers and threads_per_worker must be at least 1, got {e.workers} and {e.threads_per_worker}"
        )


@dataclass
class AnalysisConfig:
    k: int = 3
    metric: str = "cosine"
    project: bool = True
    transfer: bool = True
    importance: bool = True  # each position ablated (analysis.importance): n_tokens x replacements evaluations per run
    importance_replacements: list[str] = field(default_factory=lambda: ["init"])  # "init" and/or "mean" (the CLI does both)
    describe: bool = True  # the model's own descriptions of each prompt and its init (analysis.describe)
    describe_samples: int = 2  # sampled descriptions per prompt, besides the greedy ones
    # the seeds whose runs the readouts that score or generate per run (importance, describe) read; None: every seed.
    # Each costs ~(2 x tokens + 1) evaluations (importance) or a few generations (describe) per run it reads
    readout_seeds: list[int] | None = None
    tsne_perplexity: float | None = None
    cell: dict[str, Any] | None = None  # the sweep cell the interpretation sections read (study.sweep)


@dataclass
class TransferConfig:
    init: bool = False  # train every task's prompt from every other task's (SPoT) and report the gain


@dataclass
class BaselineConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))  # "hard" runs only when listed
    finetune: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides, e.g. lr
    lora: dict[str, Any] = field(default_factory=dict)
    hard: dict[str, Any] = field(default_factory=dict)  # the hard (PEZ) prompt's overrides
    deep: dict[str, Any] = field(default_factory=dict)  # the deep prompt's overrides (e.g. lr, tokens)

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
    sweep: dict[str, list[Any]] = field(default_factory=dict)  # axis (a TrainConfig field) -> values
    transfer: TransferConfig = field(default_factory=TransferConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)  # how, not what: left out of to_json
    # [train.per_task.NAME]: a task's own budget (NAME: the task as listed in [study] tasks, or its declared name)
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)

    def task_overrides(self, task: str) -> dict[str, Any]:
        """[train.per_task] values for `task` (listed by its path or by its name), else none."""
        return self.per_task.get(task) or self.per_task.get(task_name(task)) or {}

    def run_config(self, task: str, seed: int, cell: Cell = ()) -> TrainConfig:
        """The config of the prompt run (task, seed) in `cell`: [train], the task's [train.per_task] values, the
        cell's values and the fields [study] sets (an init `task:NAME` is left for the study to resolve into its run)."""
        fixed = {"task": task, "seed": seed, "model": self.model, "method": "prompt", "data_dir": self.data_dir}
        return replace(self.train, **self.task_overrides(task), **dict(cell), **fixed)

    def cells(self) -> list[Cell]:
        return cells(self.sweep)

    def analysis_cell(self) -> Cell:
        return analysis_cell(self.sweep, self.train, self.analysis.cell, "[analysis]")

    def baseline_base(self, task: str) -> TrainConfig:
        """The shared settings of `task`'s baselines (trained ones add their method and overrides): the first seed."""
        return self.run_config(task, self.seeds[0])

    def to_json(self) -> dict[str, Any]:
        """study_config.json and results.json's "study": [train] in full, without the per-run task and seed."""
        d = asdict(self)
        del d["execution"]  # how this machine ran it: not part of what the study is
        d["train"] = {k: v for k, v in d["train"].items() if k not in ("task", "seed")}
        if self.sweep:
            d["analysis"]["cell"] = dict(self.analysis_cell())
        return d


STUDY_KEYS = [
    f.name
    for f in fields(StudyConfig)
    if f.name not in ("train", "baselines", "analysis", "sweep", "transfer", "per_task", "execution")
]


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
    _run_paths(table, path)
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
        expected = ", ".join(f"[{x}]" for x in SECTIONS)
        raise SoftPromptError(f"{path}: unknown section(s) {sorted(top)}; expected some of {expected}")
    study = _table(raw, "study", path)
    unknown = sorted(set(study) - set(STUDY_KEYS))
    if unknown:
        raise SoftPromptError(f"{path} [study]: unknown key(s) {unknown}; expected some of {sorted(STUDY_KEYS)}")
    cfg = StudyConfig(**study)
    train = _table(raw, "train", path)
    cfg.per_task = train.pop("per_task", {})
    if not isinstance(cfg.per_task, dict):
        raise SoftPromptError(f"{path} [train] per_task: must be a table of tables, [train.per_task.NAME]")
    if cfg.data_dir and not Path(cfg.data_dir).is_absolute() and cfg.data_dir != "hub":
        cfg.data_dir = str(resolve_path(path.parent / cfg.data_dir))
    cfg.train = _train_config(train, {**study, "model": cfg.model, "data_dir": cfg.data_dir}, path)
    baselines = _table(raw, "baselines", path)
    check_keys(BaselineConfig, baselines, f"{path} [baselines]")
    cfg.baselines = BaselineConfig(**baselines)
    analysis = _table(raw, "analysis", path)
    check_keys(AnalysisConfig, analysis, f"{path} [analysis]")
    cfg.analysis = AnalysisConfig(**analysis)
    cfg.sweep = parse_sweep(_run_paths(_table(raw, "sweep", path), path), cfg.train, f"{path} [sweep]")
    transfer = _table(raw, "transfer", path)
    check_keys(TransferConfig, transfer, f"{path} [transfer]")
    cfg.transfer = TransferConfig(**transfer)
    execution = _table(raw, "execution", path)
    check_keys(ExecutionConfig, execution, f"{path} [execution]")
    cfg.execution = ExecutionConfig(**execution)
    _validate(cfg, path)
    return cfg


def _run_path(init: Any, path: Path) -> Any:
    """A `run:PATH` init relative to the config file's folder, as data_dir is."""
    if isinstance(init, str) and init.startswith(RUN_INIT) and not Path(init[len(RUN_INIT) :]).is_absolute():
        return RUN_INIT + str(resolve_path(path.parent / init[len(RUN_INIT) :]))
    return init


def _run_paths(table: dict[str, Any], path: Path) -> dict[str, Any]:
    if isinstance(table.get("init"), list):
        table["init"] = [_run_path(v, path) for v in table["init"]]
    elif "init" in table:
        table["init"] = _run_path(table["init"], path)
    return table


def task_dir_name(task: str) -> str:
    """A directory name for a task that cannot escape the study directory (no separators, no leading dot)."""
    name = Path(task).stem if task.endswith(".toml") else task
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
    return safe or "task"


def _validate(cfg: StudyConfig, path: Path) -> None:
    """Every task, run config and baseline config now, before hours of compute."""
    bad = sorted(set(cfg.baselines.methods) - set(BASELINE_METHODS))
    if bad:
        raise SoftPromptError(f"{path} [baselines] methods: unknown {bad}; expected some of {list(BASELINE_METHODS)}")
    if not cfg.tasks or not cfg.seeds:
        raise SoftPromptError(f"{path} [study]: tasks and seeds must be non-empty lists")
    _validate_values(cfg, path)
    _validate_per_task(cfg, path)
    folders: dict[str, str] = {}
    for task in cfg.tasks:
        get_task(task)
        other = folders.setdefault(task_dir_name(task), task)
        if other != task:  # e.g. a/task.toml and b/task.toml: their runs would overwrite each other's
            raise SoftPromptError(
                f"{path} [study] tasks: {other!r} and {task!r} would share the run folders "
                f"{task_dir_name(task)!r}-s*: rename one of the task files"
            )
    _validate_names(cfg, path)
    overrides = cfg.baselines.overrides()
    for method in TRAINED_BASELINES:
        baseline_config(cfg.baseline_base(cfg.tasks[0]), method, overrides[method])
    analysis_cell(cfg.sweep, cfg.train, cfg.analysis.cell, f"{path} [analysis]")
    _validate_inits(cfg, path)


def _validate_names(cfg: StudyConfig, path: Path) -> None:
    """A task's name identifies it in every table, finding and [train.per_task] section of the study, so two tasks
    that declare one name (a task file declaring a built-in's name, two task files, a task listed twice) are refused."""
    seen: dict[str, str] = {}
    for task in cfg.tasks:
        name = task_name(task)
        other = seen.setdefault(name.casefold(), task)
        if other == task and cfg.tasks.count(task) == 1:
            continue
        where = f"{path} [study] tasks"
        if other == task:
            raise SoftPromptError(f"{where}: {task!r} is listed twice; list each task once")
        files = [t for t in (other, task) if t.endswith(".toml")]
        if len(files) == 2:
            clash = f"{other!r} and {task!r} both declare the name {name!r}"
        elif files:
            builtin = other if files[0] == task else task
            clash = f"{files[0]!r} declares the name {name!r} of the built-in task {builtin!r}"
        else:
            clash = f"{other!r} and {task!r} are the same built-in task"
        raise SoftPromptError(
            f"{where}: {clash}: their runs, tables and [train.per_task] settings would merge; "
            "rename the task (the `name` in its task file)"
        )


def _validate_values(cfg: StudyConfig, path: Path) -> None:
    """Types and ranges that would otherwise fail only when their step runs (the analyses, after every run)."""
    for section, obj in (("study", cfg), ("baselines", cfg.baselines), ("analysis", cfg.analysis), ("execution", cfg.execution)):
        try:
            check_types(obj)
        except SoftPromptError as e:
            raise SoftPromptError(f"{path} [{section}]: {e}") from None
    check_execution(cfg.execution, f"{path} [execution]")
    if not all(isinstance(t, str) for t in cfg.tasks) or not all(type(s) is int for s in cfg.seeds):
        raise SoftPromptError(f"{path} [study]: tasks must be a list of strings and seeds a list of integers")
    a = cfg.analysis
    if a.metric not in ANALYSIS_METRICS:
        raise SoftPromptError(f"{path} [analysis] metric: unknown {a.metric!r}; expected one of {', '.join(ANALYSIS_METRICS)}")
    if a.k < 1 or (cfg.max_eval is not None and cfg.max_eval < 1):
        raise SoftPromptError(f"{path}: [analysis] k and [study] max_eval must be at least 1, got {a.k} and {cfg.max_eval}")
    if a.tsne_perplexity is not None and not a.tsne_perplexity > 0:
        raise SoftPromptError(f"{path} [analysis] tsne_perplexity: must be a positive number, got {a.tsne_perplexity}")
    if not a.importance_replacements or not set(a.importance_replacements) <= set(IMPORTANCE_REPLACEMENTS):
        raise SoftPromptError(
            f"{path} [analysis] importance_replacements: expected some of {list(IMPORTANCE_REPLACEMENTS)}, "
            f"got {a.importance_replacements!r}"
        )
    if a.describe_samples < 0:
        raise SoftPromptError(f"{path} [analysis] describe_samples: must be 0 or more, got {a.describe_samples}")
    if a.readout_seeds is not None and (
        not isinstance(a.readout_seeds, list)
        or not a.readout_seeds
        or not all(type(s) is int for s in a.readout_seeds)
        or not set(a.readout_seeds) <= set(cfg.seeds)
    ):
        raise SoftPromptError(
            f"{path} [analysis] readout_seeds: expected a non-empty list of the study's seeds {cfg.seeds}, "
            f"got {a.readout_seeds!r}"
        )


def _validate_per_task(cfg: StudyConfig, path: Path) -> None:
    """Each [train.per_task.NAME] names one of the study's tasks and sets only PER_TASK_FIELDS, none of them swept."""
    names = {t: t for t in cfg.tasks} | {task_name(t): t for t in cfg.tasks}
    seen: dict[str, str] = {}
    for key, table in cfg.per_task.items():
        where = f"{path} [train.per_task.{key}]"
        if key not in names:
            raise SoftPromptError(f"{where}: {key!r} names no task of this study; [study] tasks are {cfg.tasks}")
        if (other := seen.setdefault(names[key], key)) != key:
            raise SoftPromptError(f"{where}: the same task as [train.per_task.{other}]; give it one table")
        if not isinstance(table, dict):
            raise SoftPromptError(f"{where}: must be a table of [train] fields")
        check_keys(TrainConfig, table, where)
        shared = sorted(set(table) - set(PER_TASK_FIELDS))
        if shared:
            raise SoftPromptError(
                f"{where}: {shared} are shared by every task of a study (set them in [train]); "
                f"per task: {', '.join(PER_TASK_FIELDS)}"
            )
        swept = sorted(set(table) & set(cfg.sweep))
        if swept:
            raise SoftPromptError(f"{where}: {swept} are [sweep] axes; a task cannot fix them")
        try:
            cfg.run_config(names[key], cfg.seeds[0])
        except SoftPromptError as e:
            raise SoftPromptError(f"{where}: {e}") from None


def _validate_inits(cfg: StudyConfig, path: Path) -> None:
    """A `task:NAME` init names one of the study's tasks; [transfer] init compares with each task's own prompt."""
    inits = [cfg.train.init, *cfg.sweep.get("init", [])]
    for init in inits:
        if init.startswith(TASK_INIT) and init[len(TASK_INIT) :] not in cfg.tasks:
            raise SoftPromptError(f"{path}: init {init!r} names no task of this study; [study] tasks are {cfg.tasks}")
    if cfg.transfer.init:
        if len(cfg.tasks) < 2:
            raise SoftPromptError(f"{path} [transfer] init = true needs at least two tasks in [study] tasks")
        own = dict(cfg.analysis_cell()).get("init", cfg.train.init)
        if own.startswith(TASK_INIT):
            raise SoftPromptError(
                f"{path} [transfer] init = true compares each transferred prompt with the task's own prompt, "
                f"so the analysis cell's init must not be {own!r}"
            )
