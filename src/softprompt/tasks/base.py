"""The Task type: a template, label words (verbalizer), an English description and a data source.

A task turns raw records into `Example`s: a context string and the choice continuations that the
scorer ranks. Everything downstream (training, evaluation, transfer) only sees Examples.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError

SPLITS = ("train", "validation")
METRICS = ("accuracy", "f1_macro")
# The longest input a template may render, in characters: far beyond any row a model here scores (--max-length is in
# tokens; 512 by default, a few thousand characters), so a longer one is a broken record or template, refused by name
# before it is tokenized, not a text to cut.
MAX_INPUT_CHARS = 100_000
FIELD_RULE = "a template field is a plain name, {field}: no attribute (.x), index ([0]), conversion (!r) or format spec (:>9)"


def template_field_problem(template: str) -> str | None:
    """Why `template` is not a plain template (one sentence naming the field), or None. Its fields must be plain
    names: an attribute or index would read Python objects (`{text.__class__}` renders every input as
    `<class 'str'>`), and a conversion or format spec would let a template pad an input to any size
    (`{text:>99999999}`); a positional field names no data field. Invalid format strings are reported too."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"not a valid format string ({e}); write literal braces as {{{{ and }}}}"
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not name or name.isdigit():
            return f"positional field {shown}: name the data field, e.g. {{sentence}}"
        if not name.isidentifier() or conversion or spec:
            return f"field {shown} is not allowed: {FIELD_RULE}"
    return None


def template_fields(template: str) -> list[str]:
    """The data fields a (checked) template names, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


@dataclass(frozen=True)
class Example:
    """One scored item: rank `choices` (continuations, leading space included) after `context`."""

    context: str
    choices: tuple[str, ...]
    label: int
    idx: int = -1


@dataclass(frozen=True)
class DataSource:
    """Where a task's records live: local files per split, and/or a Hub dataset."""

    files: dict[str, str] = field(default_factory=dict)  # split -> path relative to the data dir (or absolute)
    hub: tuple[str, str | None] | None = None  # (repository, config name) for datasets.load_dataset
    hub_revision: str | None = None  # the Hub commit to read (pinned, so `--data-dir hub` always means the same rows)
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "validation"})
    missing: dict[str, str] = field(default_factory=dict)  # split -> why the local copy lacks it


@dataclass(frozen=True)
class Task:
    """A classification task scored by ranking label-word (or per-example) continuations."""

    name: str
    description: str
    template: str
    label_words: tuple[str, ...]
    label_values: tuple[Any, ...]
    source: DataSource
    label_field: str = "label"
    metric: str = "accuracy"
    # Per-example formatting for tasks whose context or choices are not a plain template (COPA).
    context_fn: Callable[[dict], str] | None = None
    choices_fn: Callable[[dict], Sequence[str]] | None = None
    answer_prefix: str = " "

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise SoftPromptError(f"task {self.name}: metric {self.metric!r} not in {METRICS}")
        if len(self.label_words) != len(self.label_values):
            raise SoftPromptError(
                f"task {self.name}: {len(self.label_words)} label words but {len(self.label_values)} label values"
            )
        if len(set(self.label_words)) != len(self.label_words):
            raise SoftPromptError(f"task {self.name}: label words must be distinct, got {list(self.label_words)}")
        problem = template_field_problem(self.template)
        if problem:
            raise SoftPromptError(f"task {self.name}: template {self.template!r}: {problem}")

    @property
    def num_classes(self) -> int:
        return len(self.label_words)

    def label_index(self, value: Any, where: str) -> int:
        """Map a raw label to the index of its label word.

        Strings match label values case-insensitively (TSV files give "0"/"1"); booleans match
        booleans; an int matches an int label value, or else is a class index (the Hub's encoding).
        """
        for i, v in enumerate(self.label_values):
            if isinstance(value, bool) or isinstance(v, bool):
                if value is v:
                    return i
            elif isinstance(value, str):
                if str(v).strip().lower() == value.strip().lower():
                    return i
            elif value == v:
                return i
        index_like = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.num_classes
        if index_like and not any(isinstance(v, int) and not isinstance(v, bool) for v in self.label_values):
            return value
        raise SoftPromptError(f"{where}: label {value!r} is not one of the task's labels {list(self.label_values)}")

    def to_example(self, record: dict, where: str) -> Example:
        if self.label_field not in record:
            raise SoftPromptError(f"{where}: missing field {self.label_field!r}")
        label = self.label_index(record[self.label_field], f"{where} field {self.label_field!r}")
        try:
            context = self.context_fn(record) if self.context_fn else self.template.format(**record)
        except KeyError as e:
            raise SoftPromptError(
                f"{where}: missing field {e.args[0]!r} used by the template (the record has {sorted(record)})"
            ) from None
        except (IndexError, TypeError, AttributeError, ValueError) as e:
            what = "the record" if self.context_fn else f"the template {self.template!r}"
            raise SoftPromptError(f"{where}: cannot format {what} ({type(e).__name__}: {e})") from None
        if len(context) > MAX_INPUT_CHARS:
            raise SoftPromptError(
                f"{where}: the input is {len(context):,} characters long once formatted; an input is limited to "
                f"{MAX_INPUT_CHARS:,} characters (rows are cut to --max-length tokens anyway): shorten this record"
            )
        if self.choices_fn is not None:
            try:
                choices = tuple(self.answer_prefix + c for c in self.choices_fn(record))
            except KeyError as e:
                raise SoftPromptError(f"{where}: missing field {e.args[0]!r} used by the choices") from None
        else:
            choices = tuple(self.answer_prefix + w for w in self.label_words)
        idx = record.get("idx", -1)
        return Example(context=context, choices=choices, label=label, idx=int(idx) if isinstance(idx, int) else -1)

    def load(self, split: str, data_dir: str | Path | None = None, limit: int | None = None, seed: int = 0) -> list[Example]:
        """Examples of `split`; with `limit`, a seeded random subsample of that size (few-shot)."""
        from softprompt.tasks.data import load_records

        if split not in SPLITS:
            raise SoftPromptError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        examples = [self.to_example(rec, where) for rec, where in load_records(self, split, data_dir)]
        if not examples:
            src = self.source.files.get(split)
            raise SoftPromptError(f"task {self.name}: the {split} split is empty" + (f" ({src}: no records)" if src else ""))
        return subsample(examples, limit, seed)

    def load_train(
        self, data_dir: str | Path | None, limit: int | None, seed: int, dev_size: int = 0
    ) -> tuple[list[Example], list[Example]]:
        """(training examples, development split): `dev_size` examples held out of the training split for
        model selection (the same for every seed), then the seeded `limit` subsample of the rest."""
        if not dev_size:
            return self.load("train", data_dir, limit=limit, seed=seed), []
        pool, dev = carve_dev(self.load("train", data_dir), dev_size, f"task {self.name}")
        return subsample(pool, limit, seed), dev


def subsample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded random subsample of `limit` examples in their original order (all of them without a limit)."""
    if limit is None or limit >= len(examples):
        return examples
    if limit < 1:
        raise SoftPromptError(f"the example limit must be at least 1, got {limit}")
    rng = random.Random(seed)
    return [examples[i] for i in sorted(rng.sample(range(len(examples)), limit))]


DEV_SEED = 20211  # the development split is the same for every run seed, so seeds compare on it


def carve_dev(examples: list[Example], dev_size: int, where: str) -> tuple[list[Example], list[Example]]:
    """(the rest, a development split of `dev_size` examples) of a training split: the dev examples are
    held out for model selection and never trained on; the same ones for every run seed."""
    if dev_size >= len(examples):
        raise SoftPromptError(
            f"{where}: dev_size {dev_size} leaves no training examples (the training split has {len(examples)})"
        )
    dev_idx = set(random.Random(DEV_SEED).sample(range(len(examples)), dev_size))
    rest = [e for i, e in enumerate(examples) if i not in dev_idx]
    return rest, [e for i, e in enumerate(examples) if i in dev_idx]


def majority_label(examples: Sequence[Example]) -> int:
    counts: dict[int, int] = {}
    for ex in examples:
        counts[ex.label] = counts.get(ex.label, 0) + 1
    return max(sorted(counts), key=lambda k: counts[k])
