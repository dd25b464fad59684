"""`--data-dir hub`: every built-in task asks `datasets.load_dataset` for a Hub repository that serves
plain parquet files (what `datasets` >= 4 still loads), at a pinned commit, and turns rows shaped like
those parquet rows (ClassLabel ints, WSC's flat spans) into the right Examples. The Hub itself is not
reachable here: `load_dataset` is replaced by a fake that checks the request (see docs/reliability.md,
"Hub sources", for what was verified about the repositories and where)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from softprompt.errors import SoftPromptError
from softprompt.tasks import get_task

datasets = pytest.importorskip("datasets")

SUPER_GLUE = ("aps/super_glue", "3de24cf8022e94f4ee4b9d55a6f539891524d646")
GLUE = ("nyu-mll/glue", "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c")
# task -> repository, revision, config, the ClassLabel names of `label` as the Hub declares them, rows typed
# like the parquet files, and the Examples expected from them (context, choices, label), written out by hand.
CASES = json.loads((Path(__file__).parent / "fixtures" / "hub_parquet_rows.json").read_text(encoding="utf-8"))


def _parquet_like(rows: list[dict], label_names: list[str]):
    """A `datasets.Dataset` typed like the Hub's parquet files: strings, int32 fields, a ClassLabel label."""
    feats = {k: datasets.Value("string" if isinstance(v, str) else "int32") for k, v in rows[0].items() if k != "label"}
    feats["label"] = datasets.ClassLabel(names=label_names)
    return datasets.Dataset.from_list(rows, features=datasets.Features(feats))


def _fake_hub(monkeypatch, served: dict[tuple[str, str, str], object]) -> list[tuple]:
    calls: list[tuple] = []

    def load_dataset(path, name=None, *, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        assert not kwargs, f"unexpected load_dataset arguments {kwargs} (trust_remote_code is gone in datasets >= 4)"
        if (path, name, revision) not in served:
            raise FileNotFoundError(f"Couldn't find '{path}' config {name!r} at revision {revision}")
        return served[(path, name, revision)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_every_builtin_task_declares_its_parquet_source():
    from softprompt.tasks.builtin import BUILTIN_TASKS

    assert sorted(CASES) == sorted(BUILTIN_TASKS)
    for name, case in CASES.items():
        repo, revision = GLUE if name == "sst2" else SUPER_GLUE
        assert (case["repository"], case["revision"]) == (repo, revision)
        source = get_task(name).source
        assert (source.hub, source.hub_revision) == ((repo, case["config"]), revision), name
    assert CASES["wsc"]["config"] == "wsc.fixed"


@pytest.mark.parametrize("name", sorted(CASES))
def test_hub_source_of_every_builtin_task(monkeypatch, name):
    case = CASES[name]
    repo, revision, config, rows = case["repository"], case["revision"], case["config"], case["rows"]
    calls = _fake_hub(monkeypatch, {(repo, config, revision): _parquet_like(rows, case["label_names"])})
    task = get_task(name)
    expected = [(e["context"], tuple(e["choices"]), e["label"]) for e in case["expected"]]
    for split in ["train", "validation"]:  # BoolQ's train split too: only the local copy lacks it
        examples = task.load(split, "hub")
        assert [(e.context, e.choices, e.label) for e in examples] == expected
        assert [e.idx for e in examples] == [r["idx"] for r in rows]
    assert calls == [(repo, config, "train", revision), (repo, config, "validation", revision)]
    values = [str(v) for v in task.label_values]
    if values != ["0", "1"]:  # the Hub's class name of each row is the label value its label word stands for
        assert [case["label_names"][r["label"]] for r in rows] == [values[label] for *_, label in expected]


def test_hub_rows_and_local_files_give_the_same_examples(monkeypatch, data_dir):
    """The official JSONL/TSV files (string/bool labels, WSC spans under `target`) re-encoded the way the
    Hub's parquet files store them give the same Examples: the label encodings line up."""
    from softprompt.tasks.data import load_records

    def hub_row(name: str, rec: dict) -> dict:
        row = dict(rec)
        if name == "wsc":
            row.update(row.pop("target"))
        if name in ("rte", "cb"):
            row["label"] = CASES[name]["label_names"].index(row["label"])
        elif name == "sst2" or isinstance(row["label"], bool):
            row["label"] = int(row["label"])
        return row

    for name in sorted(CASES):
        repo, revision, config, label_names = (CASES[name][k] for k in ("repository", "revision", "config", "label_names"))
        task = get_task(name)
        local = list(itertools.islice(load_records(task, "validation", data_dir), 12))
        rows = [hub_row(name, rec) for rec, _ in local]
        _fake_hub(monkeypatch, {(repo, config, revision): _parquet_like(rows, label_names)})
        mine = [task.to_example(rec, where) for rec, where in local]
        hub = task.load("validation", "hub")
        assert [(e.context, e.choices, e.label) for e in hub] == [(e.context, e.choices, e.label) for e in mine], name


def test_hub_failure_is_one_line_naming_repository_and_revision(monkeypatch):
    _fake_hub(monkeypatch, {})
    with pytest.raises(SoftPromptError) as e:
        get_task("rte").load("validation", "hub")
    msg = str(e.value)
    assert "\n" not in msg
    assert "aps/super_glue/rte@3de24cf8022e" in msg and "FileNotFoundError" in msg and "--data-dir" in msg
