"""Read task records from local files (JSON Lines, TSV, CSV) or the Hugging Face Hub.

Local data is the default: SOFTPROMPT_DATA, else ../shared/data beside the working directory or
the repository. `--data-dir hub` forces the Hub (`datasets.load_dataset` of the task's repository,
config and pinned revision: plain parquet files, which `datasets` >= 4 still reads).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from softprompt.errors import SoftPromptError, os_error_line
from softprompt.io import SYMLINK_LOOP, symlink_loop

HUB = "hub"


def default_data_dir() -> Path | None:
    env = os.environ.get("SOFTPROMPT_DATA")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[3]
    for cand in (Path.cwd() / ".." / "shared" / "data", repo / ".." / "shared" / "data", Path.cwd() / "shared" / "data"):
        if cand.is_dir():
            return cand.resolve()
    return None


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The local data directory to use, or None for the Hub."""
    if data_dir is None:
        return default_data_dir()
    if str(data_dir) == HUB:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise SoftPromptError(f"--data-dir {path} is not a directory (use 'hub' to load from the Hugging Face Hub)")
    return path


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise SoftPromptError(f"data file {os_error_line(e)}") from None


def _decode_lines(path: Path) -> Iterator[tuple[int, str]]:
    with _open(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SoftPromptError(f"{path}:{lineno}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            yield lineno, text.rstrip("\r\n")


def read_jsonl(path: Path) -> Iterator[tuple[dict, str]]:
    for lineno, line in _decode_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SoftPromptError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise SoftPromptError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        yield rec, f"{path}:{lineno}"


def read_delimited(path: Path, delimiter: str) -> Iterator[tuple[dict, str]]:
    """TSV/CSV with a header row. TSV is read without quoting (GLUE's strings hold bare quotes);
    CSV follows RFC 4180 quoting, so a quoted field may span lines (records are named by their first line)."""
    tab = delimiter == "\t"
    this, other = ("tab", "comma") if tab else ("comma", "tab")
    current = {"line": 0}

    def feed() -> Iterator[str]:
        for lineno, text in _decode_lines(path):
            current["line"] = lineno
            yield text + "\n"

    quoting = csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL
    reader = csv.reader(feed(), delimiter=delimiter, quoting=quoting, strict=not tab)

    def next_row() -> list[str] | None:
        try:
            return next(reader)
        except StopIteration:
            return None
        except csv.Error as e:
            raise SoftPromptError(f"{path}:{current['line']}: malformed {'TSV' if tab else 'CSV'} ({e})") from None

    header_row = next_row()
    if header_row is None:
        raise SoftPromptError(f"{path}: empty file (expected a header row)")
    header = [h.strip() for h in header_row]
    if len(header) < 2:
        line = header_row[0] if header_row else ""
        hint = (
            f"it contains {other}s, so the file looks {other}-separated: give it the .{'csv' if tab else 'tsv'} extension"
            if ("," if tab else "\t") in line
            else f"expected at least two {this}-separated columns (a text column and a label column)"
        )
        raise SoftPromptError(f"{path}:1: the header has one column {line!r}: wrong delimiter? {hint}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes or "" in header:
        what = f"repeated column name(s) {dupes}" if dupes else "an empty column name"
        raise SoftPromptError(f"{path}:1: the header has {what}: {header}")
    end = current["line"]
    while (row := next_row()) is not None:
        start, end = end + 1, current["line"]
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            hint = f" (a stray {this} inside a text field?)" if len(row) > len(header) else ""
            raise SoftPromptError(f"{path}:{start}: {len(row)} columns, the header has {len(header)} {header}{hint}")
        rec = {h: v.strip() for h, v in zip(header, row, strict=True)}
        yield rec, f"{path}:{start}"


def read_file(path: Path) -> Iterator[tuple[dict, str]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if suffix == ".tsv":
        return read_delimited(path, "\t")
    if suffix == ".csv":
        return read_delimited(path, ",")
    raise SoftPromptError(f"{path}: unsupported data file type {suffix!r}: expected .jsonl, .tsv or .csv")


def _hub_records(task, split: str) -> Iterator[tuple[dict, str]]:
    src = task.source
    if src.hub is None:
        raise SoftPromptError(f"task {task.name}: no local data directory and no Hub dataset declared")
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise SoftPromptError("loading from the Hub needs the 'datasets' package") from None
    path, name = src.hub
    hub_split = src.hub_splits.get(split, split)
    where = f"{path}/{name}" + (f"@{src.hub_revision[:12]}" if src.hub_revision else "")
    try:
        ds = datasets.load_dataset(path, name, split=hub_split, revision=src.hub_revision)
    except Exception as e:
        raise SoftPromptError(
            f"task {task.name}: could not load {where} split {hub_split} from the Hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); set --data-dir or SOFTPROMPT_DATA to local files"
        ) from None
    for i, rec in enumerate(ds):
        yield dict(rec), f"hub:{where}:{hub_split}[{i}]"


def split_file(task, split: str, data_dir: str | Path | None) -> Path | None:
    """The local file that holds `split` of `task`, or None when it comes from the Hub; a split that
    cannot be read (no file declared, a missing file, a directory, no data folder) is a one-line error."""
    rel = task.source.files.get(split)
    if rel is not None and Path(rel).is_absolute():  # a user task (TOML) names its own files
        path = Path(rel)
        if not path.is_file():
            what = SYMLINK_LOOP if symlink_loop(path) else "not found"
            raise SoftPromptError(f"task {task.name}: data file {path} for the {split} split {what}")
        return path
    local = resolve_data_dir(data_dir)
    if local is None:
        if task.source.hub is None:
            raise SoftPromptError(f"task {task.name}: no local data directory and no Hub dataset declared")
        return None
    if split in task.source.missing:
        raise SoftPromptError(
            f"task {task.name}: no {split} split in {local}: {task.source.missing[split]} "
            f"(use --data-dir hub to load it from the Hugging Face Hub)"
        )
    if rel is None:
        raise SoftPromptError(f"task {task.name}: no file declared for the {split} split")
    path = local / rel
    if symlink_loop(path):
        raise SoftPromptError(f"task {task.name}: data file {path} {SYMLINK_LOOP}")
    if not path.exists():
        raise SoftPromptError(f"task {task.name}: data file {path} not found (set --data-dir, SOFTPROMPT_DATA, or 'hub')")
    if not path.is_file():
        raise SoftPromptError(f"task {task.name}: data file {path} is not a file")
    return path


def load_records(task, split: str, data_dir: str | Path | None) -> Iterator[tuple[dict, str]]:
    path = split_file(task, split, data_dir)
    if path is None:
        yield from _hub_records(task, split)
        return
    yield from read_file(path)
