"""User tasks described in one TOML file: a template, label words, a metric and local data files.

    name = "gadget-reviews"
    description = "Is this product review positive or negative?"
    template = "Review: {text}\\nIs this review positive or negative?\\nAnswer:"
    label_words = ["negative", "positive"]
    label_values = ["neg", "pos"]   # optional: the raw labels in the data (default: the label words)
    label_field = "label"           # optional (default "label")
    metric = "accuracy"             # or "f1_macro"

    [data]                          # paths relative to this file; .jsonl, .csv or .tsv
    train = "train.jsonl"
    validation = "validation.csv"

    [fields]                        # optional: template name -> column name in the data
    text = "review_body"

Every problem is reported as `FILE:LINE: KEY: what is wrong`, where FILE is the TOML file (or the data
file, for problems in the data, which are found when a split is loaded).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.io import SYMLINK_LOOP, resolve_path, symlink_loop
from softprompt.tasks.base import METRICS, DataSource, Task, template_field_problem, template_fields

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
TOP_KEYS = ("name", "description", "template", "label_words", "label_values", "label_field", "metric", "data", "fields")
REQUIRED = ("name", "description", "template", "label_words", "data")
DATA_KEYS = ("train", "validation")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_.-]+))\s*=""")
_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")


@dataclass(frozen=True)
class FieldMapper:
    """Formats the template after renaming data columns (`[fields]`: template name -> column)."""

    template: str
    fields: tuple[tuple[str, str], ...]

    def __call__(self, record: dict) -> str:
        values = dict(record)
        for name, column in self.fields:
            values[name] = record[column]  # KeyError(column): reported as a missing field of the record
        return self.template.format(**values)


class _Toml:
    """The TOML file's text, for pointing errors at the line where a key is set."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, key: str, table: str | None = None) -> int | None:
        """Line of `key` (in `[table]`, or `table.key` / an inline table), else of the table itself."""
        want = f"{table}.{key}" if table else key
        current = None
        fallback = None
        for i, line in enumerate(self.lines, start=1):
            m = _TABLE.match(line)
            if m:
                current = m.group(1).strip().strip("\"'")
                if table and current == table and fallback is None:
                    fallback = i
                continue
            m = _KEY.match(line)
            if not m:
                continue
            name = next(g for g in m.groups() if g is not None)
            full = f"{current}.{name}" if current else name
            if full == want:
                return i
            if table and full == table and fallback is None:
                fallback = i
        return fallback

    def error(self, key: str | None, message: str, table: str | None = None) -> SoftPromptError:
        line = self.line_of(key, table) if key else None
        where = f"{self.path}:{line}" if line else str(self.path)
        field = f"{table}.{key}" if table and key else key
        return SoftPromptError(f"{where}: {field}: {message}" if field else f"{where}: {message}")


def _read_toml(path: Path) -> tuple[dict[str, Any], _Toml]:
    if not path.exists():
        raise SoftPromptError(f"task file {path} {SYMLINK_LOOP if symlink_loop(path) else 'not found'}")
    if not path.is_file():
        raise SoftPromptError(f"task file {path} is not a file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 BOM is accepted transparently
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise SoftPromptError(f"{path}:{line}:{col}: not UTF-8 (byte {raw[e.start]:#04x})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        if m:
            raise SoftPromptError(f"{path}:{m.group(1)}:{m.group(2)}: invalid TOML: {msg[: m.start()]}") from None
        raise SoftPromptError(f"{path}: invalid TOML: {msg}") from None
    return data, _Toml(path, text)


def _string(doc: _Toml, value: Any, key: str, table: str | None = None, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise doc.error(key, f"expected a string, got {type(value).__name__} {value!r}", table)
    if not empty_ok and not value.strip():
        raise doc.error(key, "must not be empty", table)
    return value


def _template(doc: _Toml, template: str, label_field: str) -> None:
    problem = template_field_problem(template)
    if problem:
        raise doc.error("template", problem)
    names = template_fields(template)
    if not names:
        raise doc.error("template", "uses no field of the data: write the record's fields as {field}")
    if label_field in names:
        raise doc.error("template", f"uses the label field {{{label_field}}}: the answer would be part of the input")


def _label_words(doc: _Toml, words: Any) -> tuple[str, ...]:
    if not isinstance(words, list) or len(words) < 2:
        raise doc.error("label_words", f"expected a list of at least two strings, got {words!r}")
    for w in words:
        if not isinstance(w, str) or not w.strip():
            raise doc.error("label_words", f"every label word must be a non-empty string, got {w!r}")
        if w != w.strip():
            raise doc.error("label_words", f"{w!r} has surrounding spaces (one space before the answer is added for you)")
    if len(set(words)) != len(words):
        raise doc.error("label_words", f"label words must be distinct, got {words}")
    return tuple(words)


def _label_values(doc: _Toml, values: Any, n_words: int) -> tuple[Any, ...]:
    if not isinstance(values, list):
        raise doc.error("label_values", f"expected a list, got {type(values).__name__} {values!r}")
    if len(values) != n_words:
        raise doc.error("label_values", f"{len(values)} values for {n_words} label words: give one raw label per label word")
    seen: set = set()
    for v in values:
        if not isinstance(v, str | int | bool):
            raise doc.error("label_values", f"every label value must be a string, integer or boolean, got {v!r}")
        key = (type(v).__name__, v.strip().lower()) if isinstance(v, str) else (type(v).__name__, v)
        if key in seen:
            raise doc.error("label_values", f"label values must be distinct (strings compare case-insensitively), got {values}")
        seen.add(key)
    return tuple(values)


def _data_files(doc: _Toml, data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        raise doc.error("data", 'expected a table: [data] with train = "FILE" and validation = "FILE"')
    for key in data:
        if key not in DATA_KEYS:
            raise doc.error(key, f"unknown key in {doc.path}: expected {' and '.join(DATA_KEYS)}", "data")
    files = {}
    for split in DATA_KEYS:
        if split not in data:
            raise doc.error(split, "missing: name the data file of this split (relative to the task file)", "data")
        rel = _string(doc, data[split], split, "data")
        try:
            path = resolve_path(doc.path.parent / Path(rel).expanduser())
        except SoftPromptError as e:
            raise doc.error(split, f"data file {e}", "data") from None
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise doc.error(split, f"{rel!r}: unsupported file type {path.suffix!r}: expected .jsonl, .csv or .tsv", "data")
        if not path.is_file():
            what = SYMLINK_LOOP if symlink_loop(path) else "not found"
            raise doc.error(split, f"data file {path} {what}", "data")
        files[split] = str(path)
    return files


def _fields(doc: _Toml, fields: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(fields, dict):
        raise doc.error("fields", 'expected a table: [fields] with template_name = "column"')
    out = []
    for name, column in fields.items():
        out.append((name, _string(doc, column, name, "fields")))
    return tuple(out)


_CACHE: dict[tuple[str, bytes], Task] = {}


def load_task_file(path: Path) -> Task:
    """Parse and validate a task TOML file; data paths become absolute (relative to the file).

    The same unchanged file gives the same Task object, so caches keyed by task (Evaluator) hit.
    """
    path = Path(path).expanduser()
    try:
        key = (str(resolve_path(path)), path.read_bytes()) if path.is_file() else None
    except (OSError, SoftPromptError):
        key = None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    task = _parse_task_file(path)
    if key is not None:
        _CACHE[key] = task
    return task


def _parse_task_file(path: Path) -> Task:
    data, doc = _read_toml(path)
    for key in data:
        if key not in TOP_KEYS:
            raise doc.error(key, f"unknown key in {path}: expected some of {', '.join(TOP_KEYS)}")
    for key in REQUIRED:
        if key not in data:
            raise SoftPromptError(f"{path}: missing required key {key!r} (required: {', '.join(REQUIRED)})")
    name = _string(doc, data["name"], "name")
    if not _NAME.fullmatch(name):
        raise doc.error("name", f"{name!r}: use letters, digits and - _ . + (no spaces or slashes)")
    description = _string(doc, data["description"], "description")
    label_field = _string(doc, data.get("label_field", "label"), "label_field")
    template = _string(doc, data["template"], "template")
    _template(doc, template, label_field)
    words = _label_words(doc, data["label_words"])
    values = _label_values(doc, data["label_values"], len(words)) if "label_values" in data else words
    metric = _string(doc, data.get("metric", "accuracy"), "metric")
    if metric not in METRICS:
        raise doc.error("metric", f"{metric!r}: expected one of {', '.join(METRICS)}")
    files = _data_files(doc, data["data"])
    fields = _fields(doc, data["fields"]) if "fields" in data else ()
    return Task(
        name=name,
        description=description,
        template=template,
        label_words=words,
        label_values=values,
        source=DataSource(files=files),
        label_field=label_field,
        metric=metric,
        context_fn=FieldMapper(template, fields) if fields else None,
    )
