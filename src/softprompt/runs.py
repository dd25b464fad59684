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

import json
import os
import platform
import socket
from dataclasses import dataclass, field, fields
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
from softprompt.io import read_json, write_json
from softprompt.prompt import PROMPT_FILE, SoftPrompt, parse_run_init

RUN_FORMAT = 1
RUN_FILE = "run.json"
BEST_PROMPT_FILE = "best.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
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
    # prompt file name -> sha256, shape (at save time); while running, checkpoint.safetensors -> sha256 (and the
    # previous_sha256 while the file is being replaced: a kill then leaves either) that --resume verifies
    artifacts: dict[str, dict[str, Any]] | None = None
    processes: int | None = None  # data-parallel processes that trained it
    worker: dict[str, Any] | None = None  # host and pid, while running
    # each training session's execution settings (`execution_history`): the first, then every resume; `config`
    # holds the identity and the latest execution settings
    executions: list[dict[str, Any]] | None = None
    error: str | None = None  # why a failed run stopped
    final: dict[str, Any] | None = None  # EvalResult.metrics() of the last epoch
    best: dict[str, Any] | None = None  # epoch, metric, value
    selection: dict[str, Any] | None = None  # how best was chosen: rule, dev_size, chosen, why (train.select_prompt)
    baselines: dict[str, dict[str, Any]] | None = None  # no_prompt, english_prompt: EvalResult.metrics()
    # method hard: last and best discrete prompts (token_ids, tokens, text, retokenizes_to_same_ids) and the
    # last one's text scored as a typed hard prompt (text_final; `final` scores its exact token rows)
    hard_prompt: dict[str, Any] | None = None
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
        _check_record_types(data, where)
        return cls(**data)

    def write(self, run_dir: str | Path) -> None:
        write_json(Path(run_dir) / RUN_FILE, self.to_json())

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        path = Path(run_dir) / RUN_FILE
        return cls.from_json(read_json(path), str(path))


STATUSES = ("running", "interrupted", "failed", "complete")
# JSON type of a RunRecord annotation's base type: (Python types, the name an error uses)
_JSON_TYPES = {
    "dict": (dict, "object"),
    "list": (list, "array"),
    "str": (str, "string"),
    "int": (int, "integer"),
    "float": ((int, float), "number"),
    "bool": (bool, "boolean"),
}


def _check_record_types(data: dict[str, Any], where: str) -> None:
    """Each run.json field of the JSON type its `RunRecord` annotation names (or null where it may be None), the
    status one of STATUSES: a hand-edited or damaged file is one line naming the field, not a traceback later."""
    for f in fields(RunRecord):
        annotation = str(f.type)
        expected = _JSON_TYPES.get(annotation.split("[")[0].split(" ")[0])
        value = data.get(f.name)
        if f.name not in data or expected is None or (value is None and "None" in annotation):
            continue
        kinds, name = expected
        if not isinstance(value, kinds) or (isinstance(value, bool) and name != "boolean"):
            raise SoftPromptError(f"{where}: field {f.name!r} is {value!r:.60}, expected a JSON {name}")
    if data.get("status", "running") not in STATUSES:
        raise SoftPromptError(f"{where}: field 'status' is {data['status']!r}, expected one of {', '.join(STATUSES)}")


# metrics.jsonl: one evaluation a line; the fields the study's summary and the report read, by JSON type
_METRIC_FIELDS = {"epoch": (int, float), "step": int, "accuracy": (int, float)}
_OPTIONAL_METRIC_FIELDS = {"train_loss": (int, float), "f1_macro": (int, float), "acc_norm": (int, float), "dev": dict}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl (empty if absent), every line checked: a JSON object with the fields the study's
    summary, the learning verdict and the report read, of their types. A damaged line is one error, FILE:LINE."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SoftPromptError(f"{path}: cannot read it ({e})") from None
    history = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            history.append(_metrics_line(line, f"{path}:{number}"))
    return history


def _metrics_line(line: str, where: str) -> dict[str, Any]:
    fix = "the run's metrics file is damaged: restore it, or retrain the run (in a study, delete its directory)"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise SoftPromptError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); {fix}") from None
    if not isinstance(record, dict):
        raise SoftPromptError(f"{where}: expected a JSON object, got {type(record).__name__}; {fix}")
    for name, kind in (*_METRIC_FIELDS.items(), *_OPTIONAL_METRIC_FIELDS.items()):
        value = record.get(name)
        if value is None and name in _OPTIONAL_METRIC_FIELDS:
            continue
        if name not in record:
            raise SoftPromptError(f"{where}: missing field {name!r}; {fix}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SoftPromptError(f"{where}: field {name!r} is {value!r:.60}, not {_type_name(kind)}; {fix}")
    return record


def _type_name(kind: Any) -> str:
    return {int: "an integer", dict: "a JSON object"}.get(kind, "a number")


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
        if self.method not in PROMPT_METHODS:
            raise SoftPromptError(f"run {self.path} trained method {self.method!r}: it has no prompt")
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
    """A prompt (or hard prompt) run trained at the default learning rate (lr left out) is another run once the default
    changes: run.json records the factor it used (`resolved.lr_per_std`), so a study retrains it instead of reusing it."""
    factor = {"prompt": PROMPT_LR_PER_STD, "hard": HARD_LR_PER_STD}.get(cfg.method)  # (read now: tests patch them)
    if factor is None or cfg.lr is not None or record.config.get("lr") is not None or record.resolved is None:
        return False  # (a record with nothing resolved says nothing about its rate)
    return record.resolved.get("lr_per_std", LEGACY_LR_PER_STD) != factor


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
    saved = (record.resolved or {}).get("compute_dtype") or (canonical_dtype(saved_cfg) if saved_cfg != "auto" else None)
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
    saved = {**(record.inputs or {}), MODEL_REVISION: (record.model or {}).get("revision")}
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
