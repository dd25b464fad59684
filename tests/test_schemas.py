"""Typed records (softprompt.records): every JSON file softprompt writes loads through its record; files from
before schema versions (tests/fixtures/legacy) still load and render; the report reads results through attributes."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from softprompt.errors import SoftPromptError
from softprompt.records.base import SCHEMA_KEY, Artifact, Record, optional
from softprompt.records.geometry import GeometryResult
from softprompt.records.history import read_history
from softprompt.records.metrics import Best, EvalMetrics
from softprompt.records.registry import ANALYSES, CACHES, SCHEMAS, known, load_record
from softprompt.records.results import StudyResults
from softprompt.records.run import RunRecord
from softprompt.runs.directory import load_run

LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "study"
LEGACY_RUN = LEGACY.parent / "run"  # the study's runs/tokens=2/rte-from-toy-s0 (a folder named runs/ is git-ignored)
REPORT = Path(__file__).resolve().parents[1] / "src" / "softprompt" / "report"


# ----------------------------------------------------------------------------- the records themselves


@dataclass(frozen=True)
class _Part(Record):
    name: str
    score: float | None = None


@dataclass(frozen=True)
class _File(Artifact):
    SCHEMA_VERSION = 2

    parts: list[_Part]
    note: str | None = optional()
    tags: dict[str, int] = field(default_factory=dict)


def test_a_record_is_strict_about_what_it_declares_and_keeps_what_it_does_not():
    data = {"parts": [{"name": "a", "score": 1}, {"name": "b", "new": [1, 2]}], "extra": {"x": 1}}
    f = _File.from_dict(data, "f.json")
    assert f.parts[0].score == 1 and f.parts[1].score is None and f.tags == {}
    assert f.unknown_keys() == ["extra", "parts[1].new"]
    # a round trip keeps every key it was read with, leaves out what the file left out, and adds the version
    assert f.to_dict() == {
        SCHEMA_KEY: 2,
        "parts": [{"name": "a", "score": 1}, {"name": "b", "new": [1, 2]}],
        "tags": {},
        "extra": {"x": 1},
    }
    with pytest.raises(SoftPromptError, match=r"f\.json\.parts\[0\]: no field 'name'"):
        _File.from_dict({"parts": [{"nam": "a"}]}, "f.json")
    with pytest.raises(SoftPromptError, match=r"f\.json\.parts\[0\]\.score: expected a number, got 'high'"):
        _File.from_dict({"parts": [{"name": "a", "score": "high"}]}, "f.json")
    with pytest.raises(SoftPromptError, match=r"f\.json\.tags\.a: expected an integer, got True"):
        _File.from_dict({"parts": [], "tags": {"a": True}}, "f.json")
    with pytest.raises(
        SoftPromptError, match=r"f\.json: written by a newer softprompt \(_File schema 3; this one reads up to 2\)"
    ):
        _File.from_dict({SCHEMA_KEY: 3, "parts": []}, "f.json")
    assert _File.from_dict({SCHEMA_KEY: 1, "parts": []}).parts == []  # an older version still loads
    assert _File(parts=[_Part("c")]).to_dict() == {SCHEMA_KEY: 2, "parts": [{"name": "c", "score": None}], "tags": {}}


def test_a_renamed_analysis_field_is_an_error_naming_it():
    geo = json.loads((LEGACY / "analysis" / "geometry" / "geometry.json").read_text())
    geo["summary"]["task_drifts"] = geo["summary"].pop("task_drift")
    with pytest.raises(SoftPromptError, match=r"geometry\.json\.summary: no field 'task_drift'"):
        GeometryResult.from_dict(geo, "geometry.json")


# ----------------------------------------------------------------------------- legacy files


def _legacy_files() -> list[Path]:
    return sorted(p for p in LEGACY.parent.rglob("*.json"))


@pytest.mark.parametrize("path", _legacy_files(), ids=lambda p: str(p.relative_to(LEGACY.parent)))
def test_every_legacy_file_loads_through_its_record(path):
    """A file written before schema versions loads, every key declared, and writes back what it read."""
    record = load_record(path)
    assert record.unknown_keys() == []
    data = json.loads(path.read_text())
    if isinstance(record, RunRecord):
        assert record.to_dict() == data
    elif path.name in CACHES:
        assert record.key == data["key"] and _without_versions(record.value.to_dict()) == data["value"]
    else:
        assert _without_versions(record.to_dict()) == data


def _without_versions(obj):
    if isinstance(obj, dict):
        return {k: _without_versions(v) for k, v in obj.items() if k != SCHEMA_KEY}
    if isinstance(obj, list):
        return [_without_versions(v) for v in obj]
    return obj


def test_a_legacy_run_loads_with_its_typed_parts_and_prompt():
    run_dir = LEGACY_RUN
    run = load_run(run_dir)
    record = run.record
    assert isinstance(record.final, EvalMetrics) and record.final.accuracy == 0.75
    assert record.final.calibrated.content_free[0] == "N/A"
    assert record.prompt.source.task.endswith("toy.toml") and record.model.hidden_size == 32
    assert record.selection.rule and record.resolved.prompt_format == run.prompt_format
    assert isinstance(record.best, Best) and record.best.step == 3 and record.baselines["no_prompt"].accuracy == 0.5
    assert record.file_facts("prompt.safetensors").shape == [2, 32] and record.executions[0].host == "vm"
    assert [h.step for h in read_history(run_dir)] == [3]
    assert run.prompt().n_tokens == 2  # the prompt file matches the SHA-256 and shape run.json recorded
    hard = RunRecord.read(LEGACY / "baselines" / "rte" / "hard" / "hard").hard_prompt
    assert hard.last.text == "Does the" and hard.text_final.accuracy == 0.5


@pytest.mark.parametrize("run_dir", [LEGACY_RUN, LEGACY / "baselines" / "rte" / "hard" / "hard"], ids=["run", "hard"])
def test_a_legacy_run_json_writes_back_byte_for_byte(run_dir, tmp_path):
    """Typed in memory, the same JSON on disk: a legacy run.json read and written again is the same text."""
    text = (run_dir / "run.json").read_text()
    assert json.dumps(RunRecord.read(run_dir).to_json(), separators=(",", ":")) == text.strip()
    RunRecord.read(run_dir).write(tmp_path)
    assert (tmp_path / "run.json").read_text() == json.dumps(json.loads(text), indent=2) + "\n"


def test_a_run_json_without_newer_fields_loads_and_writes_back_key_for_key(tmp_path):
    """Fields a run.json predates (selection, executions, inputs, calibration, a nested default) stay absent when it
    is written again, and read as None; a renamed nested key is an error naming it."""
    data = json.loads((LEGACY_RUN / "run.json").read_text())
    for key in ("selection", "executions", "inputs", "hard_prompt"):
        data.pop(key, None)
    del data["final"]["calibrated"], data["resolved"]["compute_dtype"], data["best"]["split"]
    record = RunRecord.from_json(data, "run.json")
    assert record.selection is None and record.executions is None and record.final.calibrated is None
    assert record.resolved.compute_dtype is None and not record.resolved.present("compute_dtype")
    assert record.to_json() == data and list(record.to_json()["best"]) == list(data["best"])
    data["final"]["acc"] = data["final"].pop("accuracy")
    with pytest.raises(SoftPromptError, match=r"^run\.json: final: no field 'accuracy'"):
        RunRecord.from_json(data, "run.json")


def test_the_report_renders_from_a_legacy_results_json(tmp_path):
    from softprompt.report import write_report

    results = StudyResults.from_dict(json.loads((LEGACY / "results.json").read_text()), "results.json")
    assert results.sweep and results.ablations and results.transfer_init and results.readouts.tasks
    page = write_report(results, tmp_path).read_text()
    for title in ("Findings", "Setup", "Accuracy", "Ablations", "What the prompts say", "Transfer initialisation (SPoT)"):
        assert title in page, title
    assert (tmp_path / "tables" / "accuracy.csv").read_text().startswith("task,method,accuracy")


# ----------------------------------------------------------------------------- every file a study writes


STUDY = """
[study]
name = "schemas"
model = "{model}"
tasks = ["rte", "{toy}"]
seeds = [0, 1]
data_dir = "{data}"

[train]
tokens = 2
epochs = 1
batch_size = 4
lr = 0.1
compute_dtype = "float32"
max_length = 128

[baselines]
methods = ["majority", "no_prompt", "hard"]
hard = {{ epochs = 1 }}

[analysis]
k = 2
describe_samples = 0

[sweep]
tokens = [1, 2]

[transfer]
init = true
"""


def test_every_json_a_study_writes_loads_through_its_record(tmp_path, tiny_model_dir, toy_data):
    """A study with every section (sweep, transfer init, the hard baseline, every analysis): each JSON file it
    writes has a record in the registry, loads through it with every key declared, and an artifact carries its
    schema version."""
    from softprompt.study import run_study
    from tests.test_sweeps import TOY_TASK

    toy = toy_data / "toy.toml"
    toy.write_text(TOY_TASK)
    config = tmp_path / "study.toml"
    config.write_text(STUDY.format(model=tiny_model_dir, toy=toy, data=toy_data))
    out = tmp_path / "study"
    results = run_study(config, out, progress=False)
    assert results[SCHEMA_KEY] == StudyResults.SCHEMA_VERSION
    files = sorted(out.rglob("*.json"))
    unknown = [str(p.relative_to(out)) for p in files if not known(p.name)]
    assert unknown == [], f"JSON files no record reads (add them to softprompt.records.registry): {unknown}"
    seen = set()
    for path in files:
        record = load_record(path)
        if record is None:
            continue
        seen.add(path.name)
        assert record.unknown_keys() == [], path
        if isinstance(record, RunRecord):  # typed in memory, written back as the writers wrote it, byte for byte
            assert json.dumps(record.to_json(), indent=2) + "\n" == path.read_text(), path
        if isinstance(record, Artifact):
            assert json.loads(path.read_text())[SCHEMA_KEY] == record.SCHEMA_VERSION, path
    expected = {"results.json", "run.json", "study_config.json", "inputs.json", "baselines.json", "hard_prompt.json", "key.json"}
    assert expected | set(CACHES) | {f"{name}.json" for name in ANALYSES} <= seen


# ----------------------------------------------------------------------------- the report reads attributes


# (file, expression) pairs the check below lets through, each with why: none today
ALLOWED: dict[tuple[str, str], str] = {}


def _string_key_reads(path: Path) -> list[str]:
    """`x["key"]` reads and `x.get("key")` calls in `path` (stores such as `X["k"] = v` are not reads)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        literal_read = (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        )
        literal_get = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        )
        if literal_read or literal_get:
            text = ast.unparse(node)
            if (path.name, text) not in ALLOWED:
                found.append(f"{path.name}:{node.lineno}: {text}")
    return found


def test_the_report_reads_results_through_attributes_only():
    """results.json reaches the report as `StudyResults`: a field read by key (`x["field"]`, `x.get("field")`)
    would fail silently on a renamed key, which the records exist to prevent."""
    offenders = [hit for path in sorted(REPORT.glob("*.py")) for hit in _string_key_reads(path)]
    assert offenders == [], "string-key reads in src/softprompt/report:\n" + "\n".join(offenders)


def test_the_check_finds_string_key_reads(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('a = r["runs"]\nb = r.get("setup", {})\nc = r[key]\nTABLE["x"] = 1\nd = r.runs\n')
    assert _string_key_reads(sample) == ["sample.py:1: r['runs']", "sample.py:2: r.get('setup', {})"]


def test_every_artifact_record_has_a_schema_version():
    for name in ("results.json", "study_config.json", *(f"{a}.json" for a in ANALYSES)):
        assert issubclass(SCHEMAS[name], Artifact) and SCHEMAS[name].SCHEMA_VERSION >= 1, name
    assert RunRecord.SCHEMA_VERSION == 1  # run.json's `format`


def test_the_records_are_a_foundation():
    """The records import nothing of softprompt but errors and io, so every layer (runs, analysis, study, report,
    CLI) can read its files through them."""
    from tests.test_structure import import_graph

    allowed = {"softprompt.errors", "softprompt.io"}
    offenders = {
        name: sorted(d for d in deps if d not in allowed and not d.startswith("softprompt.records"))
        for name, deps in import_graph().items()
        if name.startswith("softprompt.records")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
