"""The score store: evaluation results shared on disk by a study's processes, keyed by what determines them."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import softprompt.evaluate as evaluate_module
from softprompt.evaluate import Evaluator
from softprompt.score_store import ScoreStore
from softprompt.training import train
from tests.conftest import tiny_config


@pytest.fixture
def counted(monkeypatch):
    """The scorer's calls, counted (one per evaluation's scores, content-free calibration included)."""
    calls: list[int] = []
    real = evaluate_module.choice_scores
    monkeypatch.setattr(evaluate_module, "choice_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _same(a, b) -> None:
    assert (a.accuracy, a.f1_macro, a.acc_norm, a.n, a.loss, a.predictions) == (
        b.accuracy,
        b.f1_macro,
        b.acc_norm,
        b.n,
        b.loss,
        b.predictions,
    )
    assert a.scores.logprobs == b.scores.logprobs and a.scores.labels == b.scores.labels


def test_another_evaluator_reads_a_stored_result_instead_of_scoring(tiny_llama, toy_data, tmp_path, counted):
    """A second evaluator (another process's) on the same store gets the first one's result, scores and calibrated
    metrics included, without scoring; without `calibrate` it returns none, as a fresh evaluation would."""
    store = ScoreStore(tmp_path / "scores", namespace="m")
    prompt = torch.randn(3, 32)
    first = Evaluator(tiny_llama, data_dir=toy_data, store=store).evaluate("rte", prompt, calibrate=True)
    n = len(counted)
    assert n == 2  # the examples and the content-free inputs
    other = Evaluator(tiny_llama, data_dir=toy_data, store=ScoreStore(tmp_path / "scores", namespace="m"))
    again = other.evaluate("rte", prompt.clone(), calibrate=True)
    assert len(counted) == n and other.store.hits == 1
    _same(again, first)
    assert again.calibrated == first.calibrated and again.calibrated is not None
    plain = other.evaluate("rte", prompt, calibrate=False)
    assert len(counted) == n and plain.calibrated is None
    fresh = Evaluator(tiny_llama, data_dir=toy_data).evaluate("rte", prompt)  # no store: what it would have computed
    _same(plain, fresh)


def test_a_result_stored_without_calibration_is_scored_again_for_it(tiny_llama, toy_data, tmp_path, counted):
    store = ScoreStore(tmp_path / "scores")
    Evaluator(tiny_llama, data_dir=toy_data, store=store).evaluate("rte", None)
    n = len(counted)
    res = Evaluator(tiny_llama, data_dir=toy_data, store=store).evaluate("rte", None, calibrate=True)
    assert len(counted) == n + 2 and res.calibrated is not None  # scored again, calibrated, and stored so
    Evaluator(tiny_llama, data_dir=toy_data, store=store).evaluate("rte", None, calibrate=True)
    assert len(counted) == n + 2


def test_anything_that_changes_the_numbers_misses(tiny_llama, toy_data, tmp_path, counted):
    """Other prompt values, a hard prompt, another subsample, a row length that truncates, another compute dtype, another
    namespace (model): each is scored, not read."""
    root = tmp_path / "scores"
    prompt = torch.randn(3, 32)
    Evaluator(tiny_llama, data_dir=toy_data, store=ScoreStore(root, "m")).evaluate("rte", prompt)
    changed = prompt.clone()
    changed[0, 0] += 1.0
    cases = [
        ({}, ("rte", changed), {}),
        ({}, ("rte", prompt), {"hard_prompt": "Yes?"}),
        ({}, ("rte", prompt), {"limit": 2}),
        ({"max_length": 24}, ("rte", prompt), {}),  # truncates the inputs
        ({"compute_dtype": torch.bfloat16}, ("rte", prompt), {}),
    ]
    for settings, args, kwargs in cases:
        n = len(counted)
        Evaluator(tiny_llama, data_dir=toy_data, store=ScoreStore(root, "m"), **settings).evaluate(*args, **kwargs)
        assert len(counted) == n + 1, (settings, kwargs)
    n = len(counted)
    Evaluator(tiny_llama, data_dir=toy_data, store=ScoreStore(root, "another model")).evaluate("rte", prompt)
    assert len(counted) == n + 1
    n = len(counted)
    Evaluator(tiny_llama, data_dir=toy_data, store=ScoreStore(root, "m")).evaluate("rte", prompt)
    assert len(counted) == n  # and the first one still hits


def test_an_unreadable_entry_is_scored_again_and_rewritten(tiny_llama, toy_data, tmp_path, counted):
    store = ScoreStore(tmp_path / "scores")
    first = Evaluator(tiny_llama, data_dir=toy_data, store=store).evaluate("rte", None)
    [entry] = list((tmp_path / "scores").rglob("*.score.json"))
    entry.write_text('{"format": 1, "key": "')  # a torn file
    n = len(counted)
    again = Evaluator(tiny_llama, data_dir=toy_data, store=store).evaluate("rte", None)
    assert len(counted) == n + 1
    _same(again, first)
    assert json.loads(entry.read_text())["result"]["metrics"]["accuracy"] == first.accuracy  # whole again


def test_prompt_runs_share_their_step0_and_reference_scores_and_lora_never_uses_the_store(tiny_llama, toy_data, tmp_path):
    """Two seeds of a text-initialised prompt start from the same prompt: the second reads the first's step-0
    evaluation and its no-prompt/English references from the store, and its numbers are the ones it computes
    without a store. A LoRA run (its backbone trains) neither reads nor writes the store."""
    store = ScoreStore(tmp_path / "scores")
    cfg = tiny_config(toy_data, init="text", eval_every=3)
    first = train(cfg, tmp_path / "s0", backbone=tiny_llama, progress=False, scores=store)
    hits = store.hits
    second = train(dataclasses.replace(cfg, seed=1), tmp_path / "s1", backbone=tiny_llama, progress=False, scores=store)
    assert store.hits >= hits + 3  # step 0, no prompt, English prompt
    alone = train(dataclasses.replace(cfg, seed=1), tmp_path / "alone", backbone=tiny_llama, progress=False)
    assert [h["accuracy"] for h in second.history] == [h["accuracy"] for h in alone.history]
    assert second.history[0]["accuracy"] == first.history[0]["accuracy"]
    assert {k: v.accuracy for k, v in second.baselines.items()} == {k: v.accuracy for k, v in alone.baselines.items()}
    files = sorted((tmp_path / "scores").rglob("*.score.json"))
    lora_store = ScoreStore(tmp_path / "scores")
    train(
        tiny_config(toy_data, method="lora", eval_every=3),
        tmp_path / "lora",
        backbone=tiny_llama,
        progress=False,
        scores=lora_store,
    )
    assert sorted((tmp_path / "scores").rglob("*.score.json")) == files
    assert lora_store.hits == lora_store.misses == 0
