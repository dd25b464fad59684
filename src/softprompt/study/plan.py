"""A study's plan: its units of work, where each writes, and the keys that say whether work is done.

A unit is a prompt run (task, seed) or one baseline method of one task; the analyses come after all
of them. Every cached result is stored with a key derived from what determines it (the resolved
TrainConfig for runs and baselines, prompt digests and settings for analyses), so a re-run skips
work whose key is unchanged and a config change redoes only what it touches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.config import TrainConfig
from softprompt.study.config import StudyConfig


@dataclass(frozen=True)
class Unit:
    """One independent piece of a study: a prompt run (`seed` set) or a baseline (`method` set)."""

    task: str
    seed: int | None = None
    method: str | None = None

    def __str__(self) -> str:  # the name progress bars and errors use, e.g. "run rte-s1", "baseline rte lora"
        if self.method is None:
            return f"run {run_name(self.task, self.seed)}"
        return f"baseline {task_dir_name(self.task)} {self.method}"


def units(cfg: StudyConfig) -> list[Unit]:
    """The independent units in the local executor's order: every prompt run, then the baselines."""
    runs = [Unit(task, seed=seed) for task in cfg.tasks for seed in cfg.seeds]
    return runs + [Unit(task, method=m) for task in cfg.tasks for m in cfg.baselines.methods]


# ----------------------------------------------------------------------------- paths


def task_dir_name(task: str) -> str:
    """A directory name for a task that cannot escape the study directory (no separators, no leading dot)."""
    name = Path(task).stem if task.endswith(".toml") else task
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
    return safe or "task"


def run_name(task: str, seed: int | None) -> str:
    return f"{task_dir_name(task)}-s{seed}"


def run_dir(out: Path, task: str, seed: int) -> Path:
    return out / "runs" / run_name(task, seed)


def baseline_dir(out: Path, task: str, method: str) -> Path:
    """A baseline's cache files; a trained one's run directory is the `method` folder inside."""
    return out / "baselines" / task_dir_name(task) / method


def analysis_dir(out: Path) -> Path:
    return out / "analysis"


# ----------------------------------------------------------------------------- keys


def work_key(*parts: Any) -> str:
    """A stable digest of what determines a result."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def model_cache_key(train: TrainConfig) -> tuple:
    """What a loaded model and evaluator depend on: a cached one is reused only for an equal key."""
    return (train.model, train.dtype, train.device, train.compute_dtype, train.max_length, train.data_dir)
