"""Which record reads which JSON file softprompt writes, by file name; `load_record(path)` reads one through it.

Every JSON file that softprompt writes has a record here (the test suite loads every one its runs and
studies write, and fails on a file name this registry does not know). Files that other libraries write
into softprompt's folders (a model or tokenizer saved by transformers, a PEFT adapter's config) are
`EXTERNAL`: their format is not softprompt's to define.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.io import read_json
from softprompt.records.files import (
    BaselinesFile,
    CacheEntry,
    CacheKey,
    StudyConfigFile,
    StudyInputs,
    TrackerIds,
)
from softprompt.records.geometry import GeometryResult
from softprompt.records.metrics import BaselineRow
from softprompt.records.neighbors import NeighborsResult
from softprompt.records.readouts import DescribeResult, ImportanceResult
from softprompt.records.results import StudyResults
from softprompt.records.run import RUN_FILE, HardPromptFacts, RunRecord
from softprompt.records.scores import SCORE_SUFFIX, ScoreEntry
from softprompt.records.transfer import TransferInitResult, TransferResult

ANALYSES: dict[str, Any] = {
    "neighbors": NeighborsResult,
    "geometry": GeometryResult,
    "transfer": TransferResult,
    "transfer_init": TransferInitResult,
    "importance": ImportanceResult,
    "describe": DescribeResult,
}

SCHEMAS: dict[str, Any] = {
    RUN_FILE: RunRecord,
    "results.json": StudyResults,
    **{f"{name}.json": cls for name, cls in ANALYSES.items()},
    "hard_prompt.json": HardPromptFacts,
    "baselines.json": BaselinesFile,
    "key.json": CacheKey,
    "inputs.json": StudyInputs,
    "study_config.json": StudyConfigFile,
    "trackers.json": TrackerIds,
}

# cached results: the entry, and the record its value is read through
CACHES: dict[str, Any] = {**{f"{name}.cache.json": cls for name, cls in ANALYSES.items()}, "result.json": BaselineRow}

EXTERNAL = frozenset(
    {
        "adapter_config.json",  # PEFT's adapter format (peft_interop writes it for PEFT to read)
        "config.json",  # a transformers model folder
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "added_tokens.json",
        "chat_template.json",
    }
)


def known(name: str) -> bool:
    return name in SCHEMAS or name in CACHES or name in EXTERNAL or name.endswith(SCORE_SUFFIX)


def load_record(path: str | Path) -> Any:
    """The record in the JSON file `path`, read through its schema (None for an `EXTERNAL` file); a file name the
    registry does not know is an error."""
    path = Path(path)
    if path.name in EXTERNAL:
        return None
    if path.name in CACHES:
        entry = CacheEntry.from_dict(read_json(path), str(path))
        value = CACHES[path.name].from_dict(entry.value, f"{path}.value")
        return dataclasses.replace(entry, value=value)
    if path.name.endswith(SCORE_SUFFIX):  # a study's shared evaluation, named by its key (`score_store`)
        return ScoreEntry.from_dict(read_json(path), str(path))
    if path.name not in SCHEMAS:
        raise SoftPromptError(f"{path}: no record reads a JSON file named {path.name!r} (records.registry)")
    cls = SCHEMAS[path.name]
    if cls is RunRecord:
        return RunRecord.read(path.parent)
    return cls.from_dict(read_json(path), str(path))
