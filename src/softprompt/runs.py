"""A run directory: run.json (`RunRecord`), prompt files, metrics, checkpoint; and what state it is in.

A run is `complete` only after its final artifacts are written; anything else is `running`,
`interrupted` or `failed` and can be continued with --resume. A run recorded `running` whose
process on this host is gone (SIGKILL, a crash) is `interrupted` (`observed_status`).
`run_state` is the one rule for whether a directory may be reused (train, study and baselines all
ask it): it compares the config and the inputs' digests (`softprompt.inputs`). Loading a run's
prompt checks the file against the shape and SHA-256 recorded in run.json when it was saved.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from softprompt.config import PROMPT_LR_PER_STD, RUN_INIT, TrainConfig
from softprompt.errors import SoftPromptError, warn
from softprompt.inputs import MODEL_REVISION, file_sha256, input_changes
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
    inputs: dict[str, Any] | None = None  # task: definition digest, data: {split: digest} (softprompt.inputs)
    artifacts: dict[str, dict[str, Any]] | None = None  # prompt file name -> sha256, shape (at save time)
    processes: int | None = None  # data-parallel processes that trained it
    worker: dict[str, Any] | None = None  # host and pid, while running
    error: str | None = None  # why a failed run stopped
    final: dict[str, Any] | None = None  # EvalResult.metrics() of the last epoch
    best: dict[str, Any] | None = None  # epoch, metric, value
    baselines: dict[str, dict[str, Any]] | None = None  # no_prompt, english_prompt: EvalResult.metrics()
    resolved: dict[str, Any] | None = None  # settings resolved at training time: lr (lr_per_std when by default), prompt_format
    dev_examples: int | None = None  # size of the development split held out of the training data
    train_examples: int | None = None
    train_label_counts: list[int] | None = None  # training examples per class (the chance loss of learning.py)
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

    @property
    def prompt_format(self) -> str:
        """How the run's examples were laid out (plain or chat); runs from before the option were plain."""
        resolved = self.record.resolved or {}
        return resolved.get("prompt_format") or self.config.get("prompt_format", "plain")

    def prompt(self, which: str = "last") -> SoftPrompt:
        """The run's last (or best) prompt, checked against run.json: the shape it records, and the
        SHA-256 recorded when the file was saved (another run's prompt copied in is refused)."""
        if self.method != "prompt":
            raise SoftPromptError(f"run {self.path} trained method {self.method!r}: it has no soft prompt")
        name = prompt_file_name(which)
        path = self.path / name
        recorded = (self.record.artifacts or {}).get(name)
        if recorded and path.is_file() and file_sha256(path) != recorded.get("sha256"):
            raise SoftPromptError(
                f"{path} does not match {self.path / RUN_FILE}: its SHA-256 differs from the one recorded when the run "
                "saved it (the file was replaced or modified); restore the run's own file or retrain the run"
            )
        prompt = SoftPrompt.load(path)
        facts = self.record.prompt or {}
        expected = (recorded or {}).get("shape") or [facts.get("n_tokens"), facts.get("dim")]
        if None not in expected and [prompt.n_tokens, prompt.dim] != list(expected):
            raise SoftPromptError(
                f"{path} holds a {prompt.n_tokens} x {prompt.dim} prompt, but {self.path / RUN_FILE} records "
                f"{expected[0]} x {expected[1]}: the file belongs to another run; restore the run's own file or retrain the run"
            )
        return prompt


def artifact_facts(path: Path, prompt: SoftPrompt) -> dict[str, Any]:
    """What run.json records of a prompt file just saved: its SHA-256 and shape."""
    return {"sha256": file_sha256(path), "shape": [prompt.n_tokens, prompt.dim]}


def load_run(path: str | Path, require_complete: bool = True) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise SoftPromptError(f"run directory {path} does not exist")
    run = Run(path, RunRecord.read(path))
    if require_complete and not run.complete:
        status = observed_status(run.record)
        raise SoftPromptError(f"run {path} is {status or 'incomplete'}: finish it with `softprompt train --resume --out {path}`")
    return run


def _process_gone(pid: int) -> bool:
    """True when no process `pid` runs on this host (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def observed_status(record: RunRecord) -> str:
    """The run's status as it is now: `running` only while the process recorded in run.json lives.
    A run on this host whose process is gone (SIGKILL, out of memory, a crash) was interrupted; a run
    recorded by another host is taken at its word."""
    worker = record.worker or {}
    pid = worker.get("pid")
    here = worker.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid()
    if record.status == "running" and here and _process_gone(pid):
        return "interrupted"
    return record.status


def prompt_file_name(which: str) -> str:
    """The file of a run's `last` or `best` prompt."""
    return PROMPT_FILE if which == "last" else BEST_PROMPT_FILE


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
    file = path / prompt_file_name(which)
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
    file = path / prompt_file_name(which)
    return recorded is not None and file.exists() and file_sha256(file) != recorded


# The default prompt learning rate, relative to the embedding scale, of runs that did not record it (issue #14's
# first recipe); runs before that stored their learning rate in the config itself.
LEGACY_LR_PER_STD = 0.025


def _default_lr_changed(cfg: TrainConfig, record: RunRecord) -> bool:
    """A prompt run trained at the default learning rate (lr left out) is another run once the default changes:
    run.json records the factor it used (`resolved.lr_per_std`), so a study retrains it instead of reusing it."""
    if cfg.method != "prompt" or cfg.lr is not None or record.config.get("lr") is not None or record.resolved is None:
        return False  # (a record with nothing resolved says nothing about its rate)
    return record.resolved.get("lr_per_std", LEGACY_LR_PER_STD) != PROMPT_LR_PER_STD


ABSENT, COMPLETE, RESUMABLE, CONFLICT = "absent", "complete", "resumable", "conflict"


@dataclass(frozen=True)
class RunState:
    """What a run directory holds for a config and its inputs: nothing (absent), its finished run
    (complete), its unfinished run (resumable: running, interrupted or failed), or a run of another
    config (conflict, `changed` fields) or of changed inputs (conflict, `inputs_changed`: "train
    data", "task definition", "model revision"). `inputs_unknown`: the run predates input digests."""

    kind: str
    status: str | None = None
    changed: tuple[str, ...] = ()
    inputs_changed: tuple[str, ...] = ()
    inputs_unknown: bool = False

    def conflict(self) -> str:
        """The conflict in words: `a different config (changed: [...])` or `changed inputs (train data)`."""
        if self.changed:
            return f"a different config (changed: {list(self.changed)})"
        return f"changed inputs ({', '.join(self.inputs_changed)} changed since it was trained)"


def run_state(out: str | Path, cfg: TrainConfig, inputs: dict[str, Any] | None = None) -> RunState:
    """The state of `out` for `cfg`; with `inputs` (`softprompt.inputs.task_inputs`, plus the model
    revision where known) a run computed from other data or another task definition is a conflict."""
    if not (Path(out) / RUN_FILE).exists():
        return RunState(ABSENT)
    record = RunRecord.read(out)
    status = observed_status(record)
    saved = {**(record.inputs or {}), MODEL_REVISION: (record.model or {}).get("revision")}
    inputs_changed = tuple(input_changes(saved, inputs)) if inputs is not None else ()
    unknown = inputs is not None and record.inputs is None
    changed = tuple(cfg.differences(record.config))
    if not changed and _init_source_changed(cfg, record):
        changed = ("init source",)
    if not changed and _default_lr_changed(cfg, record):
        changed = ("lr (the default learning rate changed since this run)",)
    if changed or inputs_changed:
        return RunState(CONFLICT, status, changed, inputs_changed, unknown)
    return RunState(COMPLETE if status == "complete" else RESUMABLE, status, inputs_unknown=unknown)


def warn_unknown_inputs(out: str | Path) -> None:
    """A run made before run.json recorded input digests is trusted, with this note."""
    warn(
        f"{Path(out) / RUN_FILE} predates input digests: its data and task definition are assumed unchanged "
        "(retrain it, e.g. with --overwrite, to have them checked)"
    )
