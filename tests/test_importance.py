"""Position importance with a known answer: a prompt whose only trained row is position 2 ranks position 2 first."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.analysis.importance import importance_report, neutral_vector, position_importance
from softprompt.data.batching import collate
from softprompt.errors import SoftPromptError
from softprompt.evaluate import Evaluator
from softprompt.model.prompt import input_embedding_matrix
from softprompt.scoring import LOSSES, batch_choice_scores, choice_scores
from softprompt.tasks import get_task
from tests.conftest import tiny_config

INIT_IDS = [10, 20, 30, 40]
MOVED = 2


def _fit_one_position(backbone, evaluator, task, steps: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4-token prompt trained on the toy training set with every row but MOVED frozen (its gradient masked)."""
    emb = input_embedding_matrix(backbone.model, n_tokens=len(backbone.tokenizer))
    initial = emb[INIT_IDS].clone()
    prompt = torch.nn.Parameter(initial.clone())
    mask = torch.zeros_like(initial)
    mask[MOVED] = 1.0
    batch = collate(evaluator.prepare(task, len(INIT_IDS), split="train"), backbone.tokenizer.pad_token_id)
    opt = torch.optim.Adam([prompt], lr=1.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = LOSSES["choices"](batch_choice_scores(backbone.model, prompt, batch), batch.labels)
        loss.backward()
        prompt.grad *= mask
        opt.step()
    return prompt.detach().clone(), initial


@pytest.fixture
def sharp_llama(tiny_tokenizer):
    """The tiny llama with weights of std 0.5: at conftest's std 0.02 the output hardly depends on the prompt
    (the choices' loss stays at log 2 within 1e-4 whatever one row becomes), so no position could matter."""
    from softprompt.model.backbones import Backbone
    from tests.conftest import _tiny_model

    model = _tiny_model("llama", len(tiny_tokenizer), initializer_range=0.5)
    return Backbone(model=model, tokenizer=tiny_tokenizer, name="sharp-llama", source="test", revision="test")


@pytest.fixture
def fitted(sharp_llama, toy_data):
    evaluator = Evaluator(sharp_llama, data_dir=toy_data)
    task = get_task("rte")
    prompt, initial = _fit_one_position(sharp_llama, evaluator, task)
    return evaluator, task, prompt, initial


def test_eval_result_loss_is_the_choices_cross_entropy(fitted):
    evaluator, task, prompt, _ = fitted
    res = evaluator.evaluate(task, prompt)
    enc = evaluator.prepare(task, prompt.shape[0])
    s = choice_scores(evaluator.backbone.model, enc, prompt, pad_id=evaluator.backbone.tokenizer.pad_token_id)
    by_hand = torch.nn.functional.cross_entropy(torch.tensor(s.logprobs), torch.tensor(s.labels))
    assert res.loss == pytest.approx(float(by_hand), rel=1e-5)


def test_the_only_trained_position_ranks_first(fitted):
    evaluator, task, prompt, initial = fitted
    assert torch.equal(prompt[[0, 1, 3]], initial[[0, 1, 3]]) and not torch.equal(prompt[MOVED], initial[MOVED])
    untrained = evaluator.evaluate(task, initial)
    trained = evaluator.evaluate(task, prompt)
    # it fitted (the toy validation rows are the training rows)
    assert trained.accuracy == 1.0 and untrained.accuracy == 0.5 and trained.loss < untrained.loss / 4

    res = position_importance(evaluator, task, prompt, initial)
    assert res["ranking"][0] == MOVED and res["n"] == 4 and res["metric"] == "accuracy"
    pos = res["positions"]
    assert [p["index"] for p in pos] == [0, 1, 2, 3]
    # undoing the trained row gives back the untrained prompt's scores exactly
    assert pos[MOVED]["loss_increase"] == pytest.approx(untrained.loss - trained.loss, abs=1e-9)
    assert pos[MOVED]["accuracy_drop"] == pytest.approx(trained.accuracy - untrained.accuracy)
    assert pos[MOVED]["loss_increase"] > 0
    for i in (0, 1, 3):
        init = pos[i]["by_replacement"]["init"]
        assert init["unchanged"] and pos[i]["loss_increase"] == 0.0 and pos[i]["accuracy_drop"] == 0.0
        # the neutral replacement is scored for every position, and changes the loss
        assert not pos[i]["by_replacement"]["mean"]["unchanged"]
        assert pos[i]["by_replacement"]["mean"]["loss_increase"] != 0.0
    assert res["evaluations"] == 1 + 1 + 4  # base, position 2's init, every position's mean
    assert res["base"]["loss"] == pytest.approx(trained.loss)


def test_replacements_and_arguments_are_checked(fitted):
    evaluator, task, prompt, initial = fitted
    only_mean = position_importance(evaluator, task, prompt, None, replacements=("mean",))
    assert only_mean["primary"] == "mean" and set(only_mean["positions"][0]["by_replacement"]) == {"mean"}
    mean = neutral_vector(evaluator.backbone.model, evaluator.backbone.tokenizer)
    again = position_importance(evaluator, task, prompt, None, replacements=("mean",), mean_vector=mean)
    assert [p["loss_increase"] for p in again["positions"]] == [p["loss_increase"] for p in only_mean["positions"]]
    with pytest.raises(SoftPromptError, match="needs the prompt's initial matrix"):
        position_importance(evaluator, task, prompt, None)
    with pytest.raises(SoftPromptError, match="unknown replacement 'zero'"):
        position_importance(evaluator, task, prompt, initial, replacements=("zero",))
    with pytest.raises(SoftPromptError, match="differ in shape"):
        position_importance(evaluator, task, prompt, initial[:2])
    with pytest.raises(SoftPromptError, match="mean vector of shape"):
        position_importance(evaluator, task, prompt, initial, mean_vector=torch.zeros(5))


def test_importance_report_and_cli_on_a_trained_run(tiny_llama, tiny_model_dir, toy_data, tmp_path, capsys):
    from softprompt.cli import main
    from softprompt.training import train

    run = tmp_path / "run"
    train(tiny_config(toy_data, model=str(tiny_model_dir), init="text"), run, backbone=tiny_llama, progress=False)
    out = tmp_path / "imp"
    common = ["--data-dir", str(toy_data), "--compute-dtype", "float32", "--max-length", "128", "--quiet"]
    assert main(["importance", str(run), "--out", str(out), "--max-eval", "3", "--seed", "1", *common]) == 0
    rep = json.loads((out / "importance.json").read_text())
    assert rep["model"] == str(tiny_model_dir)
    assert rep["settings"]["limit"] == 3 and rep["settings"]["seed"] == 1
    (r,) = rep["runs"]
    assert r["run"] == "rte-s0" and r["task"] == "rte" and r["path"] == str(run) and r["n"] == 3 and r["seed"] == 0
    assert set(r["base"]) == {"accuracy", "loss", "metric"} and r["base"]["loss"] > 0
    assert len(r["positions"]) == 3 and sorted(r["ranking"]) == [0, 1, 2] and r["wall_time_s"] > 0
    for p in r["positions"]:
        assert set(p["by_replacement"]) == {"init", "mean"} and isinstance(p["initial_token"], str)
        assert p["loss_increase"] == p["by_replacement"]["init"]["loss_increase"]
    losses = [r["positions"][i]["loss_increase"] for i in r["ranking"]]
    assert losses == sorted(losses, reverse=True)
    printed = capsys.readouterr().out
    assert "loss increase" in printed and "most important first" in printed and "n 3" in printed
    # the same numbers through the function, with an evaluator built by hand
    ev = Evaluator(tiny_llama, data_dir=toy_data, max_length=128)
    again = importance_report(ev, [run], limit=3, seed=1)
    assert again["runs"][0]["ranking"] == r["ranking"]
    assert [p["loss_increase"] for p in again["runs"][0]["positions"]] == pytest.approx(
        [p["loss_increase"] for p in r["positions"]]
    )
    assert main(["importance", str(run), "--out", str(tmp_path / "x"), "--max-eval", "0", *common]) == 2
    assert main(["importance", str(run), "--out", str(tmp_path / "x"), "--replacements", "init,zero", *common]) == 2
    assert "'zero' is not one of init, mean" in capsys.readouterr().err
    assert main(["importance", str(run), "--out", str(tmp_path / "y"), "--replacements", "init", "--max-eval", "2", *common]) == 0
    only = json.loads((tmp_path / "y" / "importance.json").read_text())
    assert only["settings"]["replacements"] == ["init"] and set(only["runs"][0]["positions"][0]["by_replacement"]) == {"init"}
