"""run.json (`RunRecord`): what a run is, how far it got, and its numbers (metrics.jsonl: `records.history`).

`RunRecord` holds run.json's objects as typed records (`record.final.accuracy`, `record.model.hidden_size`, ...);
`from_json` builds and checks every one of them when the file is read, so a damaged or renamed field is one line
naming it, and `to_json` writes back what was read (keys a record does not declare included). `config` stays the
TrainConfig as saved (readers use `TrainConfig`), `inputs` and `versions` plain tables of digests and versions.
`format` is run.json's schema version (`SCHEMA_VERSION`).
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from softprompt.errors import SoftPromptError
from softprompt.io import read_json, write_json
from softprompt.records.base import Record, from_json_value, optional, renamed, to_json_value, unknown_keys_in
from softprompt.records.metrics import Best, EvalMetrics, Parameters

RUN_FORMAT = 1
RUN_FILE = "run.json"
STATUSES = ("running", "interrupted", "failed", "complete")


@dataclass(frozen=True)
class ModelFacts(Record):
    name: str | None = None
    source: str | None = None
    revision: str | None = None
    class_name: str | None = renamed("class", None)
    hidden_size: int | None = None
    vocab_size: int | None = None


@dataclass(frozen=True)
class TokenizerFacts(Record):
    class_name: str | None = renamed("class", None)
    name_or_path: str | None = None
    vocab_size: int | None = None


@dataclass(frozen=True)
class TaskFacts(Record):
    """The task as the run saw it (a custom task file may change later)."""

    name: str | None = None
    description: str | None = None
    template: str | None = None
    label_words: list[str] | None = None
    metric: str | None = None


@dataclass(frozen=True)
class InitFacts(Record):
    method: str | None = None
    text: str | None = None
    token_ids: list[int] | None = None
    seed: int | None = None


@dataclass(frozen=True)
class SourceFacts(Record):
    """The trained prompt a `run:` init started from, and its file's content hash."""

    run: str | None = None
    file: str | None = None
    sha256: str | None = None
    task: str | None = None
    seed: int | None = None
    model: str | None = None


@dataclass(frozen=True)
class PromptFacts(Record):
    n_tokens: int | None = None
    dim: int | None = None
    init: InitFacts | None = None
    init_tokens: list[str] | None = None
    source: SourceFacts | None = optional()
    # method deep: the model's cache layout the prompt's rows hold, [layers, key/value heads, head dim] (PEFT's export)
    prefix_shape: list[int] | None = optional()


@dataclass(frozen=True)
class Stopped(Record):
    """Why a run ended before its epochs (`--max-steps`, `--max-time`): the reason, the steps it did of those its
    schedule spans, where in its epochs it was, and its wall time then."""

    reason: str | None = None  # "max_steps" | "max_time"
    optimizer_step: int | None = None
    planned_steps: int | None = None
    epoch: float | None = None
    elapsed_s: float | None = None
    max_time_s: float | None = None


@dataclass(frozen=True)
class FileFacts(Record):
    """A file the run wrote, as recorded when it was saved (--resume and prompt loading check it)."""

    sha256: str | None = None
    shape: list[int] | None = optional()
    previous_sha256: str | None = optional()  # while the checkpoint is being replaced: a kill then leaves either


@dataclass(frozen=True)
class Worker(Record):
    host: str | None = None
    pid: int | None = None


@dataclass(frozen=True)
class Execution(Record):
    """One training session: its execution settings, whether it resumed, where and when it started."""

    execution: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    host: str | None = optional()
    started: str | None = optional()


@dataclass(frozen=True)
class Selection(Record):
    """How the best prompt was chosen (selection.settle_selection). The candidate's step and the paired loss
    gain are there only when a dev_loss or dev_accuracy rule compared a candidate (built with `from_dict`, a
    field the choice did not set stays out of the file)."""

    rule: str | None = None
    dev_size: int | None = None
    applied: str | None = None
    candidate_step: int | None = None
    loss_gain: float | None = None  # dev_loss: the mean paired per-example loss gain over the last prompt
    loss_gain_se: float | None = None  # its standard error (null: fewer than 2 dev examples)
    margin_se: float | None = None
    chosen: str | None = None
    step: int | None = None
    why: str | None = None


@dataclass(frozen=True)
class Resolved(Record):
    """Settings resolved at training time."""

    lr: float | None = None
    lr_per_std: float | None = None
    prompt_format: str | None = None
    compute_dtype: str | None = None
    class_weights: list[float] | None = None


@dataclass(frozen=True)
class DiscretePrompt(Record):
    """A hard prompt as a reader sees it (reparam.hard_prompt_facts)."""

    token_ids: list[int]
    tokens: list[str]
    text: str
    retokenizes_to_same_ids: bool


@dataclass(frozen=True, kw_only=True)
class HardPromptFacts(Record):
    """Method hard: the last and best discrete prompts; the last one's text scored as a typed hard prompt
    (hard_prompt.json holds the same object)."""

    projection: str | None = None
    last: DiscretePrompt
    best: DiscretePrompt | None = None
    text_final: EvalMetrics | None = optional()
    text_error: str | None = optional()  # why the text could not be scored (longer than max_length allows)


@dataclass
class RunRecord:
    """run.json: what a run is (config, model, task, prompt facts), how far it got, and its numbers.

    Written only by `write` and read only by `read`; fields that do not apply are None and left out
    of the file. `config` is the TrainConfig as saved (a run made before a field existed lacks it).
    """

    SCHEMA_VERSION: ClassVar[int] = RUN_FORMAT

    format: int = RUN_FORMAT
    status: str = "running"  # running | interrupted | failed | complete
    imported_from: str | None = None  # a PEFT adapter directory (peft_interop.import_peft)
    config: dict[str, Any] = field(default_factory=dict)
    model: ModelFacts | None = None  # name, source, revision, class, hidden_size, vocab_size
    tokenizer: TokenizerFacts | None = None
    task: TaskFacts | None = None  # name, description, template, label_words, metric
    parameters: Parameters | None = None  # trainable, total
    versions: dict[str, str] | None = None
    prompt: PromptFacts | None = None  # n_tokens, dim, init, init_tokens; source (a `run:` init's run)
    inputs: dict[str, Any] | None = None  # task: definition digest, data: {split: digest} (softprompt.data.inputs)
    # prompt file name -> sha256, shape (at save time); while running, checkpoint.safetensors -> sha256 (and the
    # previous_sha256 while the file is being replaced: a kill then leaves either) that --resume verifies (FileFacts)
    artifacts: dict[str, FileFacts] | None = None
    processes: int | None = None  # data-parallel processes that trained it
    worker: Worker | None = None  # host and pid, while running
    # each training session's execution settings (`execution_history`, Execution): the first, then every resume;
    # `config` holds the identity and the latest execution settings
    executions: list[Execution] | None = None
    error: str | None = None  # why a failed run stopped
    final: EvalMetrics | None = None  # the last epoch's evaluation
    best: Best | None = None  # epoch, metric, value
    selection: Selection | None = None  # how best was chosen (rule, dev_size, chosen, why)
    baselines: dict[str, EvalMetrics] | None = None  # by name: no_prompt, english_prompt
    # method hard (HardPromptFacts): last and best discrete prompts (token_ids, tokens, text, retokenizes_to_same_ids)
    # and the last one's text scored as a typed hard prompt (text_final; `final` scores its exact token rows)
    hard_prompt: HardPromptFacts | None = None
    resolved: Resolved | None = None  # lr (lr_per_std when by default), prompt_format, compute_dtype
    dev_examples: int | None = None  # size of the development split held out of the training data
    train_examples: int | None = None
    train_label_counts: list[int] | None = None  # training examples per class (the chance loss of learning.py)
    train_truncated: int | None = None
    wall_time_s: float | None = None
    stopped: Stopped | None = optional()  # ended before its planned steps (--max-time): why, and where

    def file_facts(self, name: str) -> FileFacts | None:
        """What run.json recorded of the file `name` when it was saved (None when it recorded nothing)."""
        return (self.artifacts or {}).get(name)

    def unknown_keys(self) -> list[str]:
        """The keys of run.json's objects that their records do not declare (the top level has none: refused)."""
        return [k for name in _typed_fields() for k in unknown_keys_in(getattr(self, name), f"{RUN_FILE} {name}")]

    # ----------------------------------------------------------------------------- files

    def to_json(self) -> dict[str, Any]:
        return {f.name: to_json_value(v) for f in fields(self) if (v := getattr(self, f.name)) is not None}

    to_dict = to_json

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
        values, hints = dict(data), _field_hints()
        try:  # a damaged object is one line naming its field
            for name in (n for n in _typed_fields() if n in data):
                values[name] = from_json_value(hints[name], data[name], name)
        except SoftPromptError as e:
            raise SoftPromptError(f"{where}: {e}") from None
        return cls(**values)

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> RunRecord:
        return cls.from_json(data, where or RUN_FILE)

    def write(self, run_dir: str | Path) -> None:
        write_json(Path(run_dir) / RUN_FILE, self.to_json())

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        path = Path(run_dir) / RUN_FILE
        return cls.from_json(read_json(path), str(path))


# the JSON type of a RunRecord field's (non-None) type: (Python types, the name an error uses)
_JSON_TYPES: dict[Any, tuple[Any, str]] = {
    dict: (dict, "object"),
    list: (list, "array"),
    str: (str, "string"),
    int: (int, "integer"),
    float: ((int, float), "number"),
    bool: (bool, "boolean"),
}


@functools.cache
def _field_hints() -> dict[str, Any]:
    hints = typing.get_type_hints(RunRecord)
    return {f.name: hints[f.name] for f in fields(RunRecord)}


def _kinds(hint: Any) -> tuple[Any, ...]:
    """The types a field's hint allows, unions flattened (None included)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _holds_records(hint: Any) -> bool:
    if isinstance(hint, type) and issubclass(hint, Record):
        return True
    return any(_holds_records(a) for a in typing.get_args(hint))


@functools.cache
def _typed_fields() -> tuple[str, ...]:
    """The fields whose values are records (or lists and objects of them), in file order."""
    return tuple(name for name, hint in _field_hints().items() if _holds_records(hint))


def _json_type(hint: Any) -> tuple[Any, str] | None:
    base = next((k for k in _kinds(hint) if k is not type(None)), None)
    base = typing.get_origin(base) or base
    if isinstance(base, type) and issubclass(base, Record):
        base = dict
    return _JSON_TYPES.get(base)


def _check_record_types(data: dict[str, Any], where: str) -> None:
    """Each run.json field of the JSON type its `RunRecord` annotation names (or null where it may be None), the
    status one of STATUSES: a hand-edited or damaged file is one line naming the field, not a traceback later."""
    for name, hint in _field_hints().items():
        expected, value = _json_type(hint), data.get(name)
        if name not in data or expected is None or (value is None and type(None) in _kinds(hint)):
            continue
        kinds, kind = expected
        if not isinstance(value, kinds) or (isinstance(value, bool) and kind != "boolean"):
            raise SoftPromptError(f"{where}: field {name!r} is {value!r:.60}, expected a JSON {kind}")
    if data.get("status", "running") not in STATUSES:
        raise SoftPromptError(f"{where}: field 'status' is {data['status']!r}, expected one of {', '.join(STATUSES)}")
