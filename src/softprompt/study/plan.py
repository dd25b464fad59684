"""A study's plan: its units of work, where each writes, and the keys that say whether work is done.

A unit is a prompt run (task, seed, sweep cell; or a transfer-initialised run: its source task) or
one baseline method of one task; the analyses come after all of them. A run whose init is another
task's trained prompt depends on that task's unit (`source_unit`), which comes first in `units`. Every cached result is stored with a key derived from what determines it (the resolved
TrainConfig for runs and baselines, prompt digests and settings for analyses), so a re-run skips
work whose key is unchanged and a config change redoes only what it touches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.config import TASK_INIT, TrainConfig
from softprompt.study.config import StudyConfig, task_dir_name
from softprompt.study.sweep import Cell, cell_label


@dataclass(frozen=True)
class Unit:
    """One piece of a study: a prompt run (`seed` set; in a sweep `cell`; `source`: the task whose trained
    prompt it starts from, for [transfer] init) or a baseline (`method` set)."""

    task: str
    seed: int | None = None
    method: str | None = None
    cell: Cell = ()
    source: str | None = None

    def __str__(self) -> str:  # the name progress bars and errors use, e.g. "run rte-s1", "baseline rte lora"
        if self.method is None:
            where = f" [{cell_label(self.cell)}]" if self.cell else ""
            return f"run {run_name(self.task, self.seed, self.source)}{where}"
        return f"baseline {task_dir_name(self.task)} {self.method}"


def units(cfg: StudyConfig) -> list[Unit]:
    """Every unit, each after the unit it depends on: the prompt runs of every cell (sources first), the
    transfer-initialised runs, then the baselines."""
    runs = [Unit(task, seed=seed, cell=cell) for cell in cfg.cells() for task in cfg.tasks for seed in cfg.seeds]
    runs.sort(key=lambda u: source_unit(cfg, u) is not None)  # stable: the order within each group is kept
    if cfg.transfer.init:
        cell = cfg.analysis_cell()
        pairs = [(a, b) for a in cfg.tasks for b in cfg.tasks if a != b]
        runs += [Unit(b, seed=seed, cell=cell, source=a) for a, b in pairs for seed in cfg.seeds]
    return runs + [Unit(task, method=m) for task in cfg.tasks for m in cfg.baselines.methods]


def source_unit(cfg: StudyConfig, unit: Unit) -> Unit | None:
    """The prompt run whose trained prompt `unit` starts from: its [transfer] source, or the task an init
    `task:NAME` names (NAME's own run, which starts from its text, has none)."""
    if unit.method is not None or unit.seed is None:
        return None
    name = unit.source
    if name is None:
        init = cfg.run_config(unit.task, unit.seed, unit.cell).init
        name = init[len(TASK_INIT) :] if init.startswith(TASK_INIT) else None
    if name is None or name == unit.task:
        return None
    return Unit(name, seed=unit.seed, cell=unit.cell)


# ----------------------------------------------------------------------------- paths


def run_name(task: str, seed: int | None, source: str | None = None) -> str:
    """`rte-s0`; a run started from another task's prompt: `rte-from-sst2-s0`."""
    if source is not None:
        return f"{task_dir_name(task)}-from-{task_dir_name(source)}-s{seed}"
    return f"{task_dir_name(task)}-s{seed}"


def run_dir(out: Path, task: str, seed: int, cell_dir: str = "", source: str | None = None) -> Path:
    """`out/runs/rte-s0` (no sweep) or `out/runs/tokens=20,init=text/rte-s0` (`cell_dir`: `sweep.cell_name`)."""
    base = out / "runs" / cell_dir if cell_dir else out / "runs"
    return base / run_name(task, seed, source)


def baseline_dir(out: Path, task: str, method: str) -> Path:
    """A baseline's cache files; a trained one's run directory is the `method` folder inside."""
    return out / "baselines" / task_dir_name(task) / method


def analysis_dir(out: Path) -> Path:
    return out / "analysis"


SCORES_DIR = "scores"  # the study's shared evaluation results (`score_store`), one JSON file per evaluation


# ----------------------------------------------------------------------------- keys


def work_key(*parts: Any) -> str:
    """A stable digest of what determines a result."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def model_cache_key(train: TrainConfig) -> tuple:
    """What a loaded model and evaluator depend on: a cached one is reused only for an equal key."""
    return (
        train.model,
        train.dtype,
        train.device,
        train.compute_dtype,
        train.max_length,
        train.data_dir,
        train.prompt_format,  # the evaluator's (`evaluate.evaluator_for`)
        train.scoring_strategy,
    )


def model_result_key(train: TrainConfig) -> tuple:
    """What a result computed with the loaded model depends on (part of the analyses' cache keys): the model, its
    precision and row length; not the device or the data folder, how the study is executed (the data's digests
    are compared separately)."""
    return (train.model, train.dtype, train.compute_dtype, train.max_length)
