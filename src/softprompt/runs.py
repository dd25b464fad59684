"""A run directory: run.json (`RunRecord`), prompt files, metrics, checkpoint; and what state it is in.

A run is `complete` only after its final artifacts are written; anything else is `running`,
`interrupted` or `failed` and can be continued with --resume. A run recorded `running` whose
process on this host is gone (SIGKILL, a crash) is `interrupted` (`observed_status`).
`run_state` is the one rule for whether a directory may be reused (train, study and baselines all
ask it): it compares the config's identity (`TrainConfig.identity_dict`, not how the run is executed:
docs/reliability.md, "Which settings may change on resume") and the inputs' digests (`softprompt.inputs`). Loading a run's
prompt checks the file against the shape and SHA-256 recorded in run.json when it was saved.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.config import (
    EXECUTION_FIELDS,
    HARD_LR_PER_STD,
    PROMPT_LR_PER_STD,
    PROMPT_METHODS,
    RUN_INIT,
    TrainConfig,
    canonical_dtype,
)
from softprompt.errors import SoftPromptError, warn
from softprompt.inputs import MODEL_REVISION, file_sha256, input_changes
from softprompt.prompt import PROMPT_FILE, SoftPrompt, parse_run_init
from softprompt.records.history import METRICS_FILE, read_metrics  # noqa: F401  (records, imported from here too)
from softprompt.records.run import RUN_FILE, RUN_FORMAT, STATUSES, RunRecord  # noqa: F401

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
        return self.record.resolved_settings().prompt_format or self.config.get("prompt_format", "plain")

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
        facts = self.record.prompt_facts()
        expected = (recorded and recorded.shape) or ([facts.n_tokens, facts.dim] if facts else [None, None])
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
    worker = record.worker_facts()
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


def _init_source_changed(cfg: TrainConfig, record: RunRecord) -> bool:
    """A `run:` init whose source prompt file now holds another prompt than the one the run started from."""
    if not cfg.init.startswith(RUN_INIT):
        return False
    facts = record.prompt_facts()
    recorded = facts.source.sha256 if facts and facts.source else None
    path, which = parse_run_init(cfg.init)
    file = path / prompt_file_name(which)
    return recorded is not None and file.exists() and file_sha256(file) != recorded


# The default prompt learning rate, relative to the embedding scale, of runs that did not record it (issue #14's
# first recipe); runs before that stored their learning rate in the config itself.
LEGACY_LR_PER_STD = 0.025


def _default_lr_changed(cfg: TrainConfig, record: RunRecord) -> bool:
    """A prompt (or hard prompt) run trained at the default learning rate (lr left out) is another run once the default
    changes: run.json records the factor it used (`resolved.lr_per_std`), so a study retrains it instead of reusing it."""
    factor = {"prompt": PROMPT_LR_PER_STD, "hard": HARD_LR_PER_STD}.get(cfg.method)  # (read now: tests patch them)
    if factor is None or cfg.lr is not None or record.config.get("lr") is not None or record.resolved is None:
        return False  # (a record with nothing resolved says nothing about its rate)
    resolved = record.resolved_settings()
    return (resolved.lr_per_std if resolved.present("lr_per_std") else LEGACY_LR_PER_STD) != factor


def identity_changes(
    cfg: TrainConfig, record: RunRecord, inputs: dict[str, Any] | None = None, compute_dtype: str | None = None
) -> list[str]:
    """What makes `cfg` another run than `record`'s, in words: its identity fields that differ
    (`TrainConfig.differences`; execution settings never count), except two rules for settings whose
    effect depends on how the run is executed:

    - the compute dtype is compared by what it computed in: `auto` resolves by device (bf16 on a GPU,
      maybe fp32 on a CPU), and run.json records the resolved one (`resolved.compute_dtype`). `auto` vs the
      dtype it resolved to is the same run; `auto` resolving to another dtype here (`compute_dtype`) is
      not: a run is never continued in another precision. Unknown here (no model loaded) is not a change.
    - a changed `data_dir` is the same run only when every data split's digest is known on both sides (the
      digests then prove the data is the same); an unpinned Hub split or a run older than the digests cannot.
    """
    changed = [k for k in cfg.differences(record.config) if k != "compute_dtype"]
    dtype = _compute_dtype_change(cfg, record, compute_dtype)
    if dtype:
        changed.append(dtype)
    if record.config.get("data_dir") != cfg.data_dir and not data_digests_known(record.inputs, inputs):
        changed.append("data_dir (the data's digests cannot show that the new folder holds the same data)")
    return sorted(changed)


def _compute_dtype_change(cfg: TrainConfig, record: RunRecord, here: str | None) -> str | None:
    """`compute_dtype` (how it differs) when `cfg` would compute in another dtype than the run did; None when the same or unknown."""
    saved_cfg = record.config.get("compute_dtype", "auto")
    saved = record.resolved_settings().compute_dtype or (canonical_dtype(saved_cfg) if saved_cfg != "auto" else None)
    if saved is None:  # a run from before run.json recorded the resolved dtype: its config is all there is
        return "compute_dtype" if saved_cfg != cfg.compute_dtype else None
    mine = canonical_dtype(cfg.compute_dtype) if cfg.compute_dtype != "auto" else here
    if mine is None or mine == saved:
        return None
    if cfg.compute_dtype == "auto":
        return f"compute_dtype (auto is {mine} here; the run computed in {saved}: pass --compute-dtype {saved} to continue it)"
    return f"compute_dtype ({mine}; the run computed in {saved})"


def data_digests_known(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """Whether both sides know every data split's digest (so `input_changes` can tell whether the data changed)."""
    old, new = (saved or {}).get("data") or {}, (current or {}).get("data") or {}
    return bool(old) and bool(new) and all(old.get(s) and new.get(s) for s in set(old) | set(new))


def execution_history(out: str | Path, cfg: TrainConfig, *, resumed: bool) -> list[dict[str, Any]]:
    """run.json's `executions`: how each training session of the run was executed, this one last. A resumed
    run keeps its earlier sessions; a run.json from before this record gets its config's execution
    settings as its first session."""
    import datetime

    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    entry = {"execution": cfg.execution_dict(), "resumed": resumed, "host": socket.gethostname(), "started": now}
    earlier: list[dict[str, Any]] = []
    if resumed and (Path(out) / RUN_FILE).exists():
        record = RunRecord.read(out)
        first = {"execution": {k: v for k, v in record.config.items() if k in EXECUTION_FIELDS}, "resumed": False}
        earlier = list(record.executions or [first])
    return [*earlier, entry]


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


def run_state(
    out: str | Path, cfg: TrainConfig, inputs: dict[str, Any] | None = None, *, compute_dtype: str | None = None
) -> RunState:
    """The state of `out` for `cfg`; with `inputs` (`softprompt.inputs.task_inputs`, plus the model
    revision where known) a run computed from other data or another task definition is a conflict.
    Only the config's identity is compared (`identity_changes`); `compute_dtype` is what the config's
    compute dtype resolves to here (known once the model is loaded: `auto` depends on the device)."""
    if not (Path(out) / RUN_FILE).exists():
        return RunState(ABSENT)
    record = RunRecord.read(out)
    status = observed_status(record)
    model = record.model_facts()
    saved = {**(record.inputs or {}), MODEL_REVISION: model.revision if model else None}
    inputs_changed = tuple(input_changes(saved, inputs)) if inputs is not None else ()
    unknown = inputs is not None and record.inputs is None
    changed = tuple(identity_changes(cfg, record, inputs, compute_dtype))
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
