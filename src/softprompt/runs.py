"""A run directory: run.json (`RunRecord`), prompt files, metrics, checkpoint; and what state it is in.

A run is `complete` only after its final artifacts are written; anything else is `running`,
`interrupted` or `failed` and can be continued with --resume. `run_state` is the one rule for
whether a directory may be reused (train, study and baselines all ask it).
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from softprompt.config import RUN_INIT, TrainConfig
from softprompt.errors import SoftPromptError
from softprompt.io import read_json, write_json
from softprompt.prompt import PROMPT_FILE, SoftPrompt, parse_run_init

RUN_FORMAT = 1
RUN_FILE = "run.json"
BEST_PROMPT_FILE = "best.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILES = {"lora": "adapter.safetensors", "finetune": "model.safetensors"}  # the trained weights of other methods
BEST_ADAPTER_FILE = "best_adapter.safetensors"


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
class RunRecord:
    """run.json: what a run is (config, model, task, prompt facts), how far it got, and its numbers.

    Written only by `write` and read only by `read`; fields that do not apply are None and left out
    of the file. `config` is the TrainConfig as saved (a run made before a field existed lacks it).
    """

    format: int = RUN_FORMAT
    status: str = "running"  # running | interrupted | failed | complete
    imported_from: str | None = None  # a PEFT adapter directory (peft_interop.import_peft)
    config: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None  # name, source, revision, class, hidden_size, vocab_size
    tokenizer: dict[str, Any] | None = None
    task: dict[str, Any] | None = None  # name, description, template, label_words, metric
    parameters: dict[str, int] | None = None  # trainable, total
    versions: dict[str, str] | None = None
    prompt: dict[str, Any] | None = None  # n_tokens, dim, init, init_tokens; source (a run: init's run, file, sha256)
    processes: int | None = None  # data-parallel processes that trained it
    worker: dict[str, Any] | None = None  # host and pid, while running
    error: str | None = None  # why a failed run stopped
    final: dict[str, Any] | None = None  # EvalResult.metrics() of the last epoch
    best: dict[str, Any] | None = None  # epoch, metric, value
    baselines: dict[str, dict[str, Any]] | None = None  # no_prompt, english_prompt: EvalResult.metrics()
    train_examples: int | None = None
    train_truncated: int | None = None
    wall_time_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, data: Any, where: str) -> RunRecord:
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise SoftPromptError(f"{where}: not a softprompt run file (no 'config')")
        if data.get("format") != RUN_FORMAT:
            raise SoftPromptError(
                f"{where}: run format {data.get('format')!r}, this softprompt reads format {RUN_FORMAT}: "
                "re-create the run with this version or use a matching softprompt"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SoftPromptError(f"{where}: unknown key(s) {unknown}: written by another softprompt version?")
        return cls(**data)

    def write(self, run_dir: str | Path) -> None:
        write_json(Path(run_dir) / RUN_FILE, self.to_json())

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        path = Path(run_dir) / RUN_FILE
        return cls.from_json(read_json(path), str(path))


@dataclass
class Run:
    path: Path
    record: RunRecord

    @property
    def complete(self) -> bool:
        return self.record.status == "complete"

    @property
    def config(self) -> dict[str, Any]:
        return self.record.config

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
    run = Run(path, RunRecord.read(path))
    if require_complete and not run.complete:
        raise SoftPromptError(
            f"run {path} is {run.record.status or 'incomplete'}: finish it with `softprompt train --resume --out {path}`"
        )
    return run


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class InitSource:
    """The trained prompt a `run:PATH` init starts from, and what run.json records about it (`facts`)."""

    prompt: SoftPrompt
    facts: dict[str, Any]


def init_source(init: str) -> InitSource:
    """Load the prompt `init` (run:PATH[@best|@last]) names from a complete prompt run, with its file's content hash."""
    path, which = parse_run_init(init)
    try:
        run = load_run(path)
        prompt = run.prompt(which)
    except SoftPromptError as e:
        raise SoftPromptError(f"init {init}: {e}") from None
    file = path / (PROMPT_FILE if which == "last" else BEST_PROMPT_FILE)
    facts = {
        "run": str(path.absolute()),
        "file": file.name,
        "sha256": file_sha256(file),
        "task": run.task,
        "seed": run.config.get("seed"),
        "model": run.config.get("model"),
    }
    return InitSource(prompt, facts)


def _init_source_changed(cfg: TrainConfig, record: RunRecord) -> bool:
    """A `run:` init whose source prompt file now holds another prompt than the one the run started from."""
    if not cfg.init.startswith(RUN_INIT):
        return False
    recorded = ((record.prompt or {}).get("source") or {}).get("sha256")
    path, which = parse_run_init(cfg.init)
    file = path / (PROMPT_FILE if which == "last" else BEST_PROMPT_FILE)
    return recorded is not None and file.exists() and file_sha256(file) != recorded


ABSENT, COMPLETE, RESUMABLE, CONFLICT = "absent", "complete", "resumable", "conflict"


@dataclass(frozen=True)
class RunState:
    """What a run directory holds for a config: nothing (absent), its finished run (complete), its unfinished
    run (resumable: running, interrupted or failed), or a run of another config (conflict, `changed` fields)."""

    kind: str
    status: str | None = None
    changed: tuple[str, ...] = ()


def run_state(out: str | Path, cfg: TrainConfig) -> RunState:
    if not (Path(out) / RUN_FILE).exists():
        return RunState(ABSENT)
    record = RunRecord.read(out)
    changed = cfg.differences(record.config)
    if not changed and _init_source_changed(cfg, record):
        changed = ["init source"]
    if changed:
        return RunState(CONFLICT, record.status, tuple(changed))
    return RunState(COMPLETE if record.status == "complete" else RESUMABLE, record.status)
