"""A run directory: run.json (config, model, prompt facts, metrics, versions), prompt files, checkpoint.

A run is `complete` only after its final artifacts are written; anything else is `running` or
`interrupted` and can be continued with --resume.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.io import read_json
from softprompt.prompt import PROMPT_FILE, SoftPrompt

RUN_FORMAT = 1
RUN_FILE = "run.json"
BEST_PROMPT_FILE = "best.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("softprompt", "torch", "transformers", "peft", "safetensors", "datasets", "scikit-learn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class Run:
    path: Path
    info: dict[str, Any]

    @property
    def complete(self) -> bool:
        return self.info.get("status") == "complete"

    @property
    def config(self) -> dict[str, Any]:
        return self.info["config"]

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def method(self) -> str:
        return self.config.get("method", "prompt")

    def prompt(self, which: str = "last") -> SoftPrompt:
        if self.method != "prompt":
            raise SoftPromptError(f"run {self.path} trained method {self.method!r}: it has no soft prompt")
        name = PROMPT_FILE if which == "last" else BEST_PROMPT_FILE
        return SoftPrompt.load(self.path / name)


def load_run(path: str | Path, require_complete: bool = True) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise SoftPromptError(f"run directory {path} does not exist")
    info = read_json(path / RUN_FILE)
    if not isinstance(info, dict) or "config" not in info:
        raise SoftPromptError(f"{path / RUN_FILE}: not a softprompt run file (no 'config')")
    fmt = info.get("format")
    if fmt != RUN_FORMAT:
        raise SoftPromptError(
            f"{path / RUN_FILE}: run format {fmt!r}, this softprompt reads format {RUN_FORMAT}: "
            "re-create the run with this version or use a matching softprompt"
        )
    run = Run(path, info)
    if require_complete and not run.complete:
        raise SoftPromptError(
            f"run {path} is {info.get('status', 'incomplete')}: finish it with `softprompt train --resume --out {path}`"
        )
    return run
