"""run.json (`RunRecord`): what a run is, how far it got, and its numbers (metrics.jsonl: `records.history`).

`RunRecord` keeps the JSON objects it holds (model, task, prompt, final, ...) as dicts, because the trainer
builds and updates them in place; each has a typed view (`model_facts()`, `final_metrics()`, ...) that readers
use instead of keys, and `from_json` checks every one of them when the file is read, so a damaged field is one
line naming it. `format` is run.json's schema version (`SCHEMA_VERSION`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from softprompt.errors import SoftPromptError
from softprompt.io import read_json, write_json
from softprompt.records.base import Record, optional, renamed
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
    """How the best prompt was chosen (train.settle_selection)."""

    rule: str | None = None
    dev_size: int | None = None
    applied: str | None = None
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


@dataclass(frozen=True)
class HardPromptFacts(Record):
    """Method hard: the last and best discrete prompts; the last one's text scored as a typed hard prompt
    (hard_prompt.json holds the same object)."""

    last: DiscretePrompt
    projection: str | None = None
    best: DiscretePrompt | None = None
    text_final: EvalMetrics | None = optional()
    text_error: str | None = optional()  # why the text could not be scored (longer than max_length allows)


# run.json's objects and their typed views
_PARTS: dict[str, Any] = {
    "model": ModelFacts,
    "tokenizer": TokenizerFacts,
    "task": TaskFacts,
    "parameters": Parameters,
    "prompt": PromptFacts,
    "worker": Worker,
    "final": EvalMetrics,
    "best": Best,
    "selection": Selection,
    "resolved": Resolved,
    "hard_prompt": HardPromptFacts,
}


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
    model: dict[str, Any] | None = None  # ModelFacts: name, source, revision, class, hidden_size, vocab_size
    tokenizer: dict[str, Any] | None = None  # TokenizerFacts
    task: dict[str, Any] | None = None  # TaskFacts: name, description, template, label_words, metric
    parameters: dict[str, int] | None = None  # Parameters: trainable, total
    versions: dict[str, str] | None = None
    prompt: dict[str, Any] | None = None  # PromptFacts: n_tokens, dim, init, init_tokens; source (a `run:` init's run)
    inputs: dict[str, Any] | None = None  # task: definition digest, data: {split: digest} (softprompt.data.inputs)
    # prompt file name -> sha256, shape (at save time); while running, checkpoint.safetensors -> sha256 (and the
    # previous_sha256 while the file is being replaced: a kill then leaves either) that --resume verifies (FileFacts)
    artifacts: dict[str, dict[str, Any]] | None = None
    processes: int | None = None  # data-parallel processes that trained it
    worker: dict[str, Any] | None = None  # Worker: host and pid, while running
    # each training session's execution settings (`execution_history`, Execution): the first, then every resume;
    # `config` holds the identity and the latest execution settings
    executions: list[dict[str, Any]] | None = None
    error: str | None = None  # why a failed run stopped
    final: dict[str, Any] | None = None  # EvalMetrics of the last epoch
    best: dict[str, Any] | None = None  # Best: epoch, metric, value
    selection: dict[str, Any] | None = None  # Selection: how best was chosen (rule, dev_size, chosen, why)
    baselines: dict[str, dict[str, Any]] | None = None  # no_prompt, english_prompt: EvalMetrics
    # method hard (HardPromptFacts): last and best discrete prompts (token_ids, tokens, text, retokenizes_to_same_ids)
    # and the last one's text scored as a typed hard prompt (text_final; `final` scores its exact token rows)
    hard_prompt: dict[str, Any] | None = None
    resolved: dict[str, Any] | None = None  # Resolved: lr (lr_per_std when by default), prompt_format, compute_dtype
    dev_examples: int | None = None  # size of the development split held out of the training data
    train_examples: int | None = None
    train_label_counts: list[int] | None = None  # training examples per class (the chance loss of learning.py)
    train_truncated: int | None = None
    wall_time_s: float | None = None

    # ----------------------------------------------------------------------------- typed views

    def _part(self, name: str) -> Any:
        value = getattr(self, name)
        return _PARTS[name].from_dict(value, f"{RUN_FILE} {name}") if value else None

    def model_facts(self) -> ModelFacts | None:
        return self._part("model")

    def tokenizer_facts(self) -> TokenizerFacts | None:
        return self._part("tokenizer")

    def task_facts(self) -> TaskFacts | None:
        return self._part("task")

    def parameter_counts(self) -> Parameters | None:
        return self._part("parameters")

    def prompt_facts(self) -> PromptFacts | None:
        return self._part("prompt")

    def worker_facts(self) -> Worker | None:
        return self._part("worker")

    def final_metrics(self) -> EvalMetrics | None:
        return self._part("final")

    def best_choice(self) -> Best | None:
        return self._part("best")

    def selection_facts(self) -> Selection | None:
        return self._part("selection")

    def resolved_settings(self) -> Resolved:
        """The settings resolved at training time (empty for a run from before they were recorded)."""
        return self._part("resolved") or Resolved()

    def hard_prompt_facts(self) -> HardPromptFacts | None:
        return self._part("hard_prompt")

    def baseline_metrics(self) -> dict[str, EvalMetrics]:
        """The run's own reference evaluations (no_prompt, english_prompt) by name."""
        return {k: EvalMetrics.from_dict(v, f"{RUN_FILE} baselines.{k}") for k, v in (self.baselines or {}).items() if v}

    def file_facts(self, name: str) -> FileFacts | None:
        """What run.json recorded of the file `name` when it was saved (None when it recorded nothing)."""
        value = (self.artifacts or {}).get(name)
        return FileFacts.from_dict(value, f"{RUN_FILE} artifacts.{name}") if value else None

    def execution_facts(self) -> list[Execution]:
        return [Execution.from_dict(e, f"{RUN_FILE} executions[{i}]") for i, e in enumerate(self.executions or [])]

    def unknown_keys(self) -> list[str]:
        """The keys of run.json's objects that their typed views do not declare (the top level has none: refused)."""
        parts = [self._part(name) for name in _PARTS]
        parts += [self.file_facts(name) for name in self.artifacts or {}] + self.execution_facts()
        parts += list(self.baseline_metrics().values())
        return [k for p in parts if p is not None for k in p.unknown_keys(RUN_FILE)]

    # ----------------------------------------------------------------------------- files

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

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
        record = cls(**data)
        try:
            record.unknown_keys()  # builds every typed view: a damaged object is one line naming its field
        except SoftPromptError as e:
            raise SoftPromptError(f"{where}: {str(e).removeprefix(RUN_FILE + ' ')}") from None
        return record

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> RunRecord:
        return cls.from_json(data, where or RUN_FILE)

    def write(self, run_dir: str | Path) -> None:
        write_json(Path(run_dir) / RUN_FILE, self.to_json())

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        path = Path(run_dir) / RUN_FILE
        return cls.from_json(read_json(path), str(path))


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
