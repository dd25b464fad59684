"""A run's identity (what determines its result) apart from how it is executed (device, strategies, cadences,
data location): only the identity and the inputs' digests decide "same run", on resume and in a study re-run."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softprompt.config import EXECUTION_FIELDS, IDENTITY_FIELDS, TrainConfig
from softprompt.data.inputs import task_inputs
from softprompt.errors import SoftPromptError
from softprompt.records.run import RunRecord
from softprompt.runs.baselines import EVALUATION_FIELDS
from softprompt.runs.state import CONFLICT, RESUMABLE, run_state
from softprompt.training import train
from tests.conftest import tiny_config

# Every TrainConfig field, classified. A new field fails this test until it is added to one of these sets (and marked
# `option(..., execution=True)` when it says how a run is executed rather than what it computes).
IDENTITY = {
    "task", "model", "method", "tokens", "init", "init_text", "prompt_format", "reparam", "reparam_hidden", "lr",
    "optimizer", "loss", "class_balance", "weight_decay", "epochs", "batch_size", "group_by_length", "grad_accum", "schedule", "warmup",
    "seed", "max_train", "max_eval", "dev_size", "selection", "eval_every", "max_grad_norm", "max_length", "dtype",
    "compute_dtype", "lora_r", "lora_alpha", "extra", "max_steps", "max_time",
}  # fmt: skip
EXECUTION = {"data_dir", "device", "checkpoint_every", "scoring_strategy", "cuda_graphs", "log_every", "report_to"}


def test_every_config_field_is_classified():
    names = {f.name for f in fields(TrainConfig)}
    unclassified = names - IDENTITY - EXECUTION
    assert not unclassified, f"classify {sorted(unclassified)}: identity, or option(..., execution=True)"
    assert set(EXECUTION_FIELDS) == EXECUTION & names
    assert set(IDENTITY_FIELDS) == IDENTITY & names
    assert all(isinstance(f.metadata.get("execution"), bool) for f in fields(TrainConfig))
    assert set(EVALUATION_FIELDS) <= IDENTITY  # an untrained baseline's cache key holds no execution setting


def test_identity_and_execution_split_the_config(toy_data):
    cfg = tiny_config(toy_data)
    identity, execution = cfg.identity_dict(), cfg.execution_dict()
    assert set(identity) & set(execution) == set()
    assert {**identity, **execution} == cfg.to_dict()
    moved = replace(
        cfg, device="cpu", checkpoint_every=3, log_every=2, scoring_strategy="plain", cuda_graphs=False, data_dir="/x"
    )
    assert moved.differences(cfg.to_dict()) == []
    assert moved.identity_dict() == identity
    assert replace(moved, lr=0.5, seed=3).differences(cfg.to_dict()) == ["lr", "seed"]


def _cfg(toy_data, model_dir: Path, **kw) -> TrainConfig:
    """Two epochs of 3 batches, the tiny llama loaded from its folder (so `device` reaches the loader)."""
    return tiny_config(toy_data, model=str(model_dir), epochs=2, **kw)


def _interrupted(cfg: TrainConfig, out: Path, interrupt_at, at: int = 5) -> None:
    """A run stopped by Ctrl-C at its `at`-th batch (the second of epoch 2: a checkpoint mid-epoch)."""
    interrupt_at(at)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    interrupt_at(None)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def _prompt(out: Path) -> torch.Tensor:
    return load_file(str(out / "prompt.safetensors"))["prompt"]


def _data_copy(toy_data: Path, tmp_path: Path) -> str:
    copy = tmp_path / "moved-data"
    shutil.copytree(toy_data, copy)
    return str(copy)


@pytest.mark.parametrize(
    "field, value",
    [("checkpoint_every", 1), ("log_every", 2), ("device", "cpu"), ("data_dir", "COPY"), ("scoring_strategy", "plain")],
)
def test_resume_with_a_changed_execution_setting_continues_the_run(
    tmp_path, tiny_model_dir, toy_data, interrupt_at, field, value
):
    cfg = _cfg(toy_data, tiny_model_dir)
    train(cfg, tmp_path / "ref", progress=False)
    _interrupted(cfg, tmp_path / "cut", interrupt_at)
    value = _data_copy(toy_data, tmp_path) if value == "COPY" else value
    changed = replace(cfg, **{field: value})
    assert run_state(tmp_path / "cut", changed, task_inputs("rte", changed.data_dir)).kind == RESUMABLE
    train(changed, tmp_path / "cut", resume=True, progress=False)
    if field == "scoring_strategy":  # the strategies agree up to float rounding (tests/test_fastpaths.py), not bitwise
        torch.testing.assert_close(_prompt(tmp_path / "cut"), _prompt(tmp_path / "ref"), atol=1e-4, rtol=1e-4)
    else:  # the setting cannot change a number: the prompt of the uninterrupted run, bit for bit
        assert torch.equal(_prompt(tmp_path / "cut"), _prompt(tmp_path / "ref"))
    record = RunRecord.read(tmp_path / "cut")
    assert record.status == "complete"
    assert record.config[field] == value  # run.json holds the settings it was last executed with
    first, resumed = record.executions
    assert first.execution[field] == getattr(cfg, field) and not first.resumed
    assert resumed.execution[field] == value and resumed.resumed


def test_an_old_run_json_resumes_with_changed_execution_settings(tmp_path, tiny_model_dir, toy_data, interrupt_at):
    """A run.json saved before execution settings were told apart (no `executions`, no resolved compute dtype)."""
    cfg = _cfg(toy_data, tiny_model_dir)
    out = tmp_path / "old"
    _interrupted(cfg, out, interrupt_at)
    saved = json.loads((out / "run.json").read_text())
    del saved["executions"], saved["resolved"]["compute_dtype"]
    (out / "run.json").write_text(json.dumps(saved))
    changed = replace(cfg, checkpoint_every=2, log_every=1, device="cpu", data_dir=_data_copy(toy_data, tmp_path))
    train(changed, out, resume=True, progress=False)
    train(cfg, tmp_path / "ref", progress=False)
    assert torch.equal(_prompt(out), _prompt(tmp_path / "ref"))
    first, resumed = RunRecord.read(out).executions
    assert first.to_dict() == {"execution": cfg.execution_dict(), "resumed": False}  # taken from the old run.json's config
    assert resumed.execution == changed.execution_dict()


@pytest.mark.parametrize("field, value", [("lr", 0.5), ("seed", 1), ("tokens", 4)])
def test_a_changed_identity_field_still_conflicts_and_is_named(tmp_path, tiny_model_dir, toy_data, interrupt_at, field, value):
    cfg = _cfg(toy_data, tiny_model_dir)
    _interrupted(cfg, tmp_path / "r", interrupt_at)
    other = replace(cfg, checkpoint_every=1, device="cpu", **{field: value})  # an execution change alongside
    state = run_state(tmp_path / "r", other, task_inputs("rte", other.data_dir))
    assert state.kind == CONFLICT and state.changed == (field,)
    with pytest.raises(SoftPromptError, match=rf"different config \(changed: \['{field}'\]\)"):
        train(other, tmp_path / "r", resume=True, progress=False)


def test_a_moved_data_folder_needs_digests_to_vouch_for_it(tmp_path, tiny_model_dir, toy_data, interrupt_at):
    cfg = _cfg(toy_data, tiny_model_dir)
    _interrupted(cfg, tmp_path / "r", interrupt_at)
    moved = replace(cfg, data_dir=_data_copy(toy_data, tmp_path))
    assert run_state(tmp_path / "r", moved, task_inputs("rte", moved.data_dir)).kind == RESUMABLE
    unknown = task_inputs("rte", moved.data_dir)
    unknown["data"]["train"] = None  # what an unpinned Hub split gives: its content is unknown
    state = run_state(tmp_path / "r", moved, unknown)
    assert state.kind == CONFLICT and state.changed[0].startswith("data_dir")
    assert run_state(tmp_path / "r", replace(moved, data_dir=cfg.data_dir), unknown).kind == RESUMABLE
    edited = Path(moved.data_dir) / "rte" / "train.jsonl"
    edited.write_text(edited.read_text().replace("The cat sat.", "The cat stood."))  # the same folder name, other data
    state = run_state(tmp_path / "r", moved, task_inputs("rte", moved.data_dir))
    assert state.kind == CONFLICT and state.inputs_changed == ("train data",)


def test_a_run_is_not_continued_in_another_precision(tmp_path, tiny_model_dir, toy_data, interrupt_at):
    """`auto` resolves by device; a run whose run.json says it computed in another dtype than `auto` gives here is refused
    (naming the dtype to pin), and continues once that dtype is pinned."""
    from softprompt.model.backbones import resolve_compute_dtype

    here = str(resolve_compute_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    other = "float32" if here == "bfloat16" else "bfloat16"
    cfg = _cfg(toy_data, tiny_model_dir, compute_dtype="auto")
    out = tmp_path / "r"
    _interrupted(cfg, out, interrupt_at)
    saved = json.loads((out / "run.json").read_text())
    assert saved["resolved"]["compute_dtype"] == here
    saved["resolved"]["compute_dtype"] = other  # as if it had started on a machine where auto is `other`
    (out / "run.json").write_text(json.dumps(saved))
    inputs = task_inputs("rte", cfg.data_dir)
    assert run_state(out, cfg, inputs).kind == RESUMABLE  # unknown until the model is loaded: not a change yet
    assert run_state(out, cfg, inputs, compute_dtype=here).kind == CONFLICT
    with pytest.raises(
        SoftPromptError, match=rf"compute_dtype \(auto is {here} here; the run computed in {other}: pass --compute-dtype {other}"
    ):
        train(cfg, out, resume=True, progress=False)
    pinned = replace(cfg, compute_dtype=other)
    assert run_state(out, pinned, inputs, compute_dtype=other).kind == RESUMABLE
    train(pinned, out, resume=True, progress=False)
    assert RunRecord.read(out).status == "complete"
    assert run_state(out, replace(cfg, compute_dtype=here), inputs).kind == CONFLICT  # pinned to another dtype


STUDY = """
[study]
name = "moved"
model = "{model}"
tasks = ["rte"]
seeds = [0, 1]
data_dir = "{data}"

[train]
tokens = 3
epochs = 2
batch_size = 4
lr = 0.1
compute_dtype = "float32"
max_length = 128
{execution}
[baselines]
methods = ["majority", "no_prompt", "lora"]

[analysis]
k = 3
"""


def test_a_study_rerun_with_other_execution_settings_skips_the_finished_units(tmp_path, tiny_model_dir, toy_data, monkeypatch):
    from softprompt.study import run_study

    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(model=tiny_model_dir, data=toy_data, execution=""))
    out = tmp_path / "study"
    first = run_study(path, out, progress=False)
    assert set(first["setup"]["actions"].values()) == {"trained"}

    def redone(*args, **kwargs):
        raise AssertionError("a finished unit was redone")

    import softprompt.analysis.describe
    import softprompt.analysis.importance
    import softprompt.analysis.neighbors
    import softprompt.analysis.transfer
    import softprompt.study.units as units

    real_run_baselines = units.run_baselines
    monkeypatch.setattr(units, "train", redone)
    monkeypatch.setattr(units, "run_baselines", redone)
    for module, name in [
        (softprompt.analysis.neighbors, "neighbors_report"),
        (softprompt.analysis.transfer, "transfer_report"),
        (softprompt.analysis.importance, "importance_report"),
        (softprompt.analysis.describe, "describe_report"),
    ]:
        monkeypatch.setattr(module, name, redone)
    execution = 'device = "cpu"\ncheckpoint_every = 1\nlog_every = 2\nscoring_strategy = "plain"\ncuda_graphs = false\n'
    path.write_text(STUDY.format(model=tiny_model_dir, data=_data_copy(toy_data, tmp_path), execution=execution))
    again = run_study(path, out, progress=False)
    assert set(again["setup"]["actions"].values()) == {"skipped"}
    assert again["runs"] == first["runs"]
    assert again["baselines"] == first["baselines"]
    for key in ("neighbors", "transfer", "importance", "describe"):
        assert first[key] and again[key] == first[key], key

    # a cache keyed by an older softprompt (another key formula, e.g. before this split): a trained baseline's complete
    # run of the same identity is reused, not deleted and retrained
    monkeypatch.setattr(units, "run_baselines", real_run_baselines)
    monkeypatch.setattr("softprompt.training.baseline_runs.train", redone)
    lora = out / "baselines" / "rte" / "lora"
    for name in ("result.json", "key.json"):
        saved = json.loads((lora / name).read_text())
        (lora / name).write_text(json.dumps({**saved, "key": "an older formula"}))
    third = run_study(path, out, progress=False)
    assert third["baselines"]["rte"]["lora"]["reused"] is True
    assert third["baselines"]["rte"]["lora"]["accuracy"] == first["baselines"]["rte"]["lora"]["accuracy"]


def test_an_analysis_cached_under_the_older_key_is_a_hit_and_upgraded(tmp_path):
    from softprompt.study.result_cache import cache_hit, store

    path = tmp_path / "neighbors.cache.json"
    store(path, "old", {"summary": [1]}, {"rte": {"data": {"train": "a"}}})
    assert cache_hit(path, ("new", "old"), {"rte": {"data": {"train": "a"}}}) == {"summary": [1]}
    assert json.loads(path.read_text())["key"] == "new"  # upgraded: the next run's key is the current one
    assert cache_hit(path, ("new", "other"), {"rte": {"data": {"train": "a"}}}) == {"summary": [1]}
    assert cache_hit(path, ("newer", "other")) is None
    assert cache_hit(path, ("new", "old"), {"rte": {"data": {"train": "b"}}}) is None  # changed data: not a hit
