"""Changed inputs are noticed: a run's identity includes its data files' content, its task's definition and
the model revision; `--resume` refuses a run whose inputs changed, a study redoes what they affect, and a run
recorded before the digests existed is trusted with a warning."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from softprompt.data.inputs import task_inputs
from softprompt.errors import SoftPromptError
from softprompt.runs.directory import load_run
from softprompt.study import run_study
from softprompt.tasks import BUILTIN_TASKS
from softprompt.training import train
from tests.conftest import tiny_config


def _cfg(data, **kw):
    return tiny_config(data, **{"epochs": 2, "max_length": 512, **kw})


def _interrupted_run(cfg, out, backbone, interrupt_at, at: int = 2):
    """A run stopped by Ctrl-C at its `at`-th batch (run.json `interrupted`, a checkpoint of epoch 1 or none)."""
    interrupt_at(at)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, backbone=backbone, progress=False)
    interrupt_at(None)


def _flip_first_label(path):
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["label"] = "not_entailment" if rec["label"] == "entailment" else "entailment"
    path.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")


def test_run_json_records_the_digests_of_data_and_task(tiny_llama, toy_data, tmp_path):
    train(_cfg(toy_data, epochs=1), tmp_path / "r", backbone=tiny_llama, progress=False)
    record = load_run(tmp_path / "r").record
    train_file = (toy_data / "rte" / "train.jsonl").read_bytes()
    assert record.inputs["data"]["train"] == hashlib.sha256(train_file).hexdigest()
    assert record.inputs["data"]["validation"] == hashlib.sha256((toy_data / "rte" / "val.jsonl").read_bytes()).hexdigest()
    assert record.inputs == task_inputs("rte", str(toy_data))
    assert len(record.inputs["task"]) == 64


@pytest.mark.parametrize("change", ["train data", "validation data", "task definition"])
def test_resume_after_inputs_changed_is_refused_with_the_choice(
    tiny_llama, toy_data, tmp_path, monkeypatch, interrupt_at, change
):
    cfg, out = _cfg(toy_data, batch_size=2), tmp_path / "r"
    _interrupted_run(cfg, out, tiny_llama, interrupt_at, at=8)  # in epoch 2: epoch 1 is checkpointed
    if change == "train data":
        _flip_first_label(toy_data / "rte" / "train.jsonl")
    elif change == "validation data":
        _flip_first_label(toy_data / "rte" / "val.jsonl")
    else:
        monkeypatch.setitem(BUILTIN_TASKS, "rte", dataclasses.replace(BUILTIN_TASKS["rte"], template="{premise} {hypothesis}?"))
    with pytest.raises(SoftPromptError, match=rf"the {change} changed since this run started.*--overwrite.*restore") as e:
        train(cfg, out, backbone=tiny_llama, progress=False, resume=True)
    assert "\n" not in str(e.value)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"  # nothing was touched
    res = train(cfg, out, backbone=tiny_llama, progress=False, overwrite=True)  # the choice the message offers
    assert res.final.n == 4 and load_run(out).record.inputs == task_inputs("rte", str(toy_data))


def test_resume_on_another_model_revision_is_refused(tiny_llama, toy_data, tmp_path, interrupt_at):
    cfg, out = _cfg(toy_data, batch_size=2), tmp_path / "r"
    _interrupted_run(cfg, out, tiny_llama, interrupt_at, at=8)
    other = dataclasses.replace(tiny_llama, revision="another-commit")
    with pytest.raises(SoftPromptError, match="model revision changed since this run started"):
        train(cfg, out, backbone=other, progress=False, resume=True)
    train(cfg, out, backbone=tiny_llama, progress=False, resume=True)  # the same weights continue
    assert load_run(out).complete


def test_a_run_older_than_the_digests_is_trusted_with_a_warning(tiny_llama, toy_data, tmp_path, interrupt_at, capsys):
    cfg, out = _cfg(toy_data, batch_size=2), tmp_path / "r"
    _interrupted_run(cfg, out, tiny_llama, interrupt_at, at=8)
    old = json.loads((out / "run.json").read_text())
    old.pop("inputs")  # as written before run.json recorded digests
    (out / "run.json").write_text(json.dumps(old))
    capsys.readouterr()
    train(cfg, out, backbone=tiny_llama, progress=False, resume=True)
    err = capsys.readouterr().err
    assert "softprompt: warning:" in err and "predates input digests" in err and "assumed unchanged" in err
    assert load_run(out).record.inputs == task_inputs("rte", str(toy_data))  # recorded from now on


STUDY = """
[study]
name = "inputs"
model = "{model}"
tasks = ["{task}"]
seeds = [0]
data_dir = "{data}"

[train]
tokens = 3
epochs = 1
batch_size = 4
lr = 0.1
compute_dtype = "float32"
max_length = 128

[baselines]
methods = ["majority", "no_prompt"]

[analysis]
k = 2
"""

TASK = """name = "toy"
description = "Is the review positive or negative?"
template = "Review: {text}\\nAnswer:"
label_words = ["negative", "positive"]
# a comment
[data]
train = "train.jsonl"
validation = "val.jsonl"
"""


def _custom_task(tmp_path):
    d = tmp_path / "task"
    d.mkdir()
    rows = [("a charming movie", "positive"), ("a boring movie", "negative"), ("the cat sat", "positive"), ("bad", "negative")]
    for name, reps in (("train.jsonl", 3), ("val.jsonl", 1)):
        (d / name).write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows * reps))
    (d / "task.toml").write_text(TASK)
    return d


def _cached_inputs(out, name):
    return json.loads((out / name).read_text())["inputs"]


def test_study_redoes_what_changed_inputs_affect_and_says_so(tmp_path, tiny_model_dir, capsys):
    task_dir = _custom_task(tmp_path)
    toml = task_dir / "task.toml"
    cfg = tmp_path / "study.toml"
    cfg.write_text(STUDY.format(model=tiny_model_dir, task=toml, data=tmp_path))
    out = tmp_path / "study"
    run_study(cfg, out, progress=False)
    before = {
        name: _cached_inputs(out, name) for name in ("analysis/neighbors.cache.json", "baselines/task/majority/result.json")
    }

    # unchanged inputs: everything is skipped, nothing is said
    capsys.readouterr()
    res = run_study(cfg, out, progress=False)
    assert res["setup"]["actions"] == {"task-s0": "skipped"} and "changed" not in capsys.readouterr().err

    # the validation data changed: the run, the baselines and the analyses are redone, and the study says so
    rows = (task_dir / "val.jsonl").read_text().splitlines()
    (task_dir / "val.jsonl").write_text("\n".join(rows[1:] + rows[:1]).replace('"positive"', '"negative"', 1) + "\n")
    res = run_study(cfg, out, progress=False)
    err = capsys.readouterr().err
    assert f"task {toml}: validation data changed since this study last ran" in err
    assert res["setup"]["actions"] == {"task-s0": "retrained"}
    now = task_inputs(str(toml), str(tmp_path))
    assert load_run(out / "runs" / "task-s0").record.inputs == now
    for name, old in before.items():
        redone = _cached_inputs(out, name)
        assert redone[str(toml)]["data"] == now["data"] != old[str(toml)]["data"], name
    assert json.loads((out / "results.json").read_text())["setup"]["inputs"][str(toml)]["data"] == now["data"]

    # the task definition changed (its template): redone again; a comment-only edit is not a change
    toml.write_text(TASK.replace("Answer:", "Sentiment:"))
    res = run_study(cfg, out, progress=False)
    assert res["setup"]["actions"] == {"task-s0": "retrained"} and "task definition changed" in capsys.readouterr().err
    toml.write_text(TASK.replace("Answer:", "Sentiment:").replace("# a comment", "# another comment"))
    assert run_study(cfg, out, progress=False)["setup"]["actions"] == {"task-s0": "skipped"}


def test_study_trusts_runs_older_than_the_digests_with_a_warning(tmp_path, tiny_model_dir, toy_data, capsys):
    cfg = tmp_path / "study.toml"
    cfg.write_text(STUDY.format(model=tiny_model_dir, task="rte", data=toy_data))
    out = tmp_path / "study"
    run_study(cfg, out, progress=False)
    run_json = out / "runs" / "rte-s0" / "run.json"
    old = json.loads(run_json.read_text())
    old.pop("inputs")
    run_json.write_text(json.dumps(old))
    capsys.readouterr()
    res = run_study(cfg, out, progress=False)
    assert res["setup"]["actions"] == {"rte-s0": "skipped"}
    assert f"{run_json} predates input digests" in capsys.readouterr().err


def test_study_retrains_an_unfinished_run_whose_model_revision_changed(
    tmp_path, tiny_model_dir, toy_data, monkeypatch, interrupt_at
):
    """A Hub model's commit is known once it loads: a run the study would resume on other weights is retrained."""
    import softprompt.model.backbones as backbones_mod

    cfg = tmp_path / "study.toml"
    cfg.write_text(STUDY.format(model=tiny_model_dir, task="rte", data=toy_data).replace("seeds = [0]", "seeds = [0, 1]"))
    out = tmp_path / "study"
    interrupt_at(4)  # 3 batches per run: the first batch of seed 1
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, out, progress=False)
    interrupt_at(None)
    real_load = backbones_mod.load_backbone
    monkeypatch.setattr(backbones_mod, "load_backbone", lambda *a, **k: dataclasses.replace(real_load(*a, **k), revision="new"))
    res = run_study(cfg, out, progress=False)
    assert res["setup"]["actions"] == {"rte-s0": "skipped", "rte-s1": "retrained"}
    assert load_run(out / "runs" / "rte-s1").record.model.revision == "new"
