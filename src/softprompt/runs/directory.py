"""A run directory: run.json (`RunRecord`), prompt files, metrics, checkpoint; loading a run and its prompt.

A run is `complete` only after its final artifacts are written; anything else is `running`,
`interrupted` or `failed` and can be continued with --resume. A run recorded `running` whose
process on this host is gone (SIGKILL, a crash) is `interrupted` (`observed_status`). Loading a run's
prompt checks the file against the shape and SHA-256 recorded in run.json when it was saved.
Whether a directory may be reused for a config is `softprompt.runs.state.run_state`.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from softprompt.config import EXECUTION_FIELDS, INPUT_PROMPT_METHODS, PROMPT_METHODS, TrainConfig
from softprompt.data.inputs import file_sha256
from softprompt.errors import SoftPromptError
from softprompt.model.deep_prompt import KVPrompt, deep_prompt_for
from softprompt.model.prompt import PROMPT_FILE, SoftPrompt, parse_run_init
from softprompt.records.run import RUN_FILE, Execution, FileFacts, RunRecord

if TYPE_CHECKING:
    from softprompt.model.backbones import Backbone

BEST_PROMPT_FILE = "best.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
WEIGHTS_FILES = {"lora": "adapter.safetensors", "finetune": "model.safetensors"}  # the trained weights of other methods
BEST_ADAPTER_FILE = "best_adapter.safetensors"
HARD_PROMPT_FILE = "hard_prompt.json"  # method hard: the discrete prompt (ids, tokens, text), as in run.json's hard_prompt


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
        return (self.record.resolved and self.record.resolved.prompt_format) or self.config.get("prompt_format", "plain")

    def prompt(self, which: str = "last") -> SoftPrompt:
        """The run's last (or best) prompt, checked against run.json: the shape it records, and the
        SHA-256 recorded when the file was saved (another run's prompt copied in is refused)."""
        if self.method not in PROMPT_METHODS:
            raise SoftPromptError(f"run {self.path} trained method {self.method!r}: it has no prompt")
        name = prompt_file_name(which)
        path = self.path / name
        recorded = self.record.file_facts(name)
        if recorded and path.is_file() and file_sha256(path) != recorded.sha256:
            raise SoftPromptError(
                f"{path} does not match {self.path / RUN_FILE}: its SHA-256 differs from the one recorded when the run "
                "saved it (the file was replaced or modified); restore the run's own file or retrain the run"
            )
        prompt = SoftPrompt.load(path)
        facts = self.record.prompt
        expected = (recorded and recorded.shape) or ([facts.n_tokens, facts.dim] if facts else [None, None])
        if None not in expected and [prompt.n_tokens, prompt.dim] != list(expected):
            raise SoftPromptError(
                f"{path} holds a {prompt.n_tokens} x {prompt.dim} prompt, but {self.path / RUN_FILE} records "
                f"{expected[0]} x {expected[1]}: the file belongs to another run; restore the run's own file or retrain the run"
            )
        return prompt


def scoring_prompt(run: Run, prompt: SoftPrompt, backbone: Backbone, where: str) -> torch.Tensor | KVPrompt:
    """A run's saved prompt as the scorer takes it on `backbone`: the matrix before the input (soft, hard), or a deep
    prompt's keys/values at every layer; refused in one line (naming `where`) when it does not fit the model."""
    if run.method == "deep":
        facts = run.record.prompt
        return deep_prompt_for(backbone.model, prompt.weight.detach(), facts.prefix_shape if facts else None, where)
    prompt.check_model(backbone.hidden_size, where=where)
    return prompt.weight.detach()


def input_prompt_run(run: Run, what: str) -> Run:
    """`run`, if its prompt is input embeddings (soft or hard); a deep prompt's keys/values are no token vectors, so
    `what` (a readout of token vectors: nearest tokens, their text, drift, geometry) does not apply: one line says so."""
    if run.method not in INPUT_PROMPT_METHODS:
        raise SoftPromptError(
            f"run {run.path} trained method {run.method!r}: {what} reads a prompt's rows as input embeddings, and "
            f"{'a deep prompt holds keys and values at every layer' if run.method == 'deep' else 'it has no prompt'}: "
            "not applicable (transfer, eval and importance apply)"
        )
    return run


def artifact_facts(path: Path, prompt: SoftPrompt) -> FileFacts:
    """What run.json records of a prompt file just saved: its SHA-256 and shape."""
    return FileFacts(sha256=file_sha256(path), shape=[prompt.n_tokens, prompt.dim])


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
    worker = record.worker
    pid = worker.pid if worker else None
    here = worker is not None and worker.host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid()
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


def execution_history(out: str | Path, cfg: TrainConfig, *, resumed: bool) -> list[Execution]:
    """run.json's `executions`: how each training session of the run was executed, this one last. A resumed
    run keeps its earlier sessions; a run.json from before this record gets its config's execution
    settings as its first session."""
    import datetime

    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    entry = Execution(execution=cfg.execution_dict(), resumed=resumed, host=socket.gethostname(), started=now)
    earlier: list[Execution] = []
    if resumed and (Path(out) / RUN_FILE).exists():
        record = RunRecord.read(out)
        first = Execution(execution={k: v for k, v in record.config.items() if k in EXECUTION_FIELDS}, resumed=False)
        earlier = list(record.executions or [first])
    return [*earlier, entry]
