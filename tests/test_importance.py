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
    assert set(r["base"]) == {"accuracy", "loss", "metric", "accuracy_se"} and r["base"]["loss"] > 0
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


@pytest.mark.parametrize("max_tokens", [8192, 48], ids=["one-pass", "chunked"])
def test_stacked_ablations_equal_one_evaluation_each(tiny_backbone, toy_data, max_tokens):
    """Scoring the ablated prompts together (every example behind each, in the same forwards) gives the numbers of
    one `evaluate` per ablation (the implementation before stacking), on both architectures, in fewer forwards;
    48 tokens a forward forces one example a batch and the prompts into chunks."""
    torch.manual_seed(3)
    task = get_task("rte")
    d = tiny_backbone.model.config.hidden_size
    initial = torch.randn(4, d) * 0.5
    prompt = initial + torch.randn(4, d) * 0.5
    prompt[1] = initial[1]  # an unchanged row: skipped by both, exactly 0
    results, stats = {}, {}
    for stacked in (False, True):
        ev = Evaluator(tiny_backbone, data_dir=toy_data, max_tokens=max_tokens)
        results[stacked] = position_importance(ev, task, prompt, initial, stacked=stacked)
        stats[stacked] = ev.stats
    one, many = results[False], results[True]
    assert many["evaluations"] == one["evaluations"] == 1 + 3 + 4 and many["ranking"] == one["ranking"]
    for a, b in zip(one["positions"], many["positions"], strict=True):
        for name in ("init", "mean"):
            ea, eb = a["by_replacement"][name], b["by_replacement"][name]
            assert ea["unchanged"] == eb["unchanged"] and ea["accuracy_drop"] == eb["accuracy_drop"]
            for key in ("loss", "loss_increase", "loss_increase_se", "accuracy_drop_se", "metric_drop"):
                assert eb[key] == pytest.approx(ea[key], abs=1e-6), (name, key)
    assert one["positions"][1]["loss_increase"] == many["positions"][1]["loss_increase"] == 0.0
    assert any(p["loss_increase"] != 0 for p in many["positions"])  # the comparison is not between zeros
    # the same tokens computed, in fewer forwards (one prefix forward for all prompts, batches K times wider); at
    # 48 tokens a forward no two prompts fit one: as many forwards as before, never more
    assert stats[True]["real"] == stats[False]["real"]
    if max_tokens == 48:
        assert stats[True]["forwards"] == stats[False]["forwards"]
    else:
        assert stats[True]["forwards"] <= stats[False]["forwards"] // 3


def test_importance_standard_errors_are_paired_over_the_examples(fitted):
    """A position's loss-increase SE is the SE of the per-example loss differences (by hand from the two scorings)."""
    from softprompt.analysis.importance import paired_se
    from softprompt.evaluate import choice_losses

    evaluator, task, prompt, initial = fitted
    res = position_importance(evaluator, task, prompt, initial, replacements=("init",))
    ablated = prompt.clone()
    ablated[MOVED] = initial[MOVED]
    before = choice_losses(evaluator.evaluate(task, prompt).scores)
    after = choice_losses(evaluator.evaluate(task, ablated).scores)
    diffs = torch.tensor(after, dtype=torch.float64) - torch.tensor(before, dtype=torch.float64)
    expected = float(diffs.std(unbiased=True) / len(diffs) ** 0.5)
    moved = res["positions"][MOVED]
    assert moved["loss_increase_se"] == pytest.approx(expected, rel=1e-5) and expected > 0
    assert paired_se(after, before) == pytest.approx(expected, rel=1e-9)
    assert res["positions"][0]["loss_increase_se"] == 0.0  # unchanged: not scored, no noise
    n, acc = res["n"], res["base"]["accuracy"]
    assert res["base"]["accuracy_se"] == pytest.approx((acc * (1 - acc) / n) ** 0.5)


def _big_toy_data(tmp_path, n_val: int):
    """An RTE-shaped folder whose validation split has `n_val` examples (the CLI's default subsample is 200)."""
    words = ["cat", "dog", "movie", "mat", "review"]
    d = tmp_path / "bigdata" / "rte"
    d.mkdir(parents=True)
    rows = [
        {
            "premise": f"The {words[i % 5]} sat.",
            "hypothesis": f"The {words[(i // 5) % 5]} sat.",
            "label": ["entailment", "not_entailment"][i % 2],
        }
        for i in range(n_val)
    ]
    for name, recs in (("train.jsonl", rows[:8]), ("val.jsonl", rows)):
        (d / name).write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(recs)))
    return d.parent


def test_importance_cli_defaults_to_a_seeded_subsample_and_prints_n_and_se(tiny_llama, tiny_model_dir, tmp_path, capsys):
    from softprompt.cli import main
    from softprompt.cli.importance import DEFAULT_MAX_EVAL
    from softprompt.training import train

    data = _big_toy_data(tmp_path, 230)
    run = tmp_path / "run"
    train(tiny_config(data, model=str(tiny_model_dir), init="text", tokens=2), run, backbone=tiny_llama, progress=False)
    common = ["--data-dir", str(data), "--compute-dtype", "float32", "--max-length", "128", "--quiet", "--replacements", "init"]
    assert main(["importance", str(run), "--out", str(tmp_path / "d"), *common]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((tmp_path / "d" / "importance.json").read_text())
    assert DEFAULT_MAX_EVAL == 200 and rep["settings"]["limit"] == 200 and rep["runs"][0]["n"] == 200
    assert "(n 200)" in printed and f"+- {rep['runs'][0]['base']['accuracy_se']:.4f}" in printed
    assert "a seeded subsample of at most 200 examples" in printed
    se = rep["runs"][0]["positions"][0]["loss_increase_se"]
    assert se is not None and f"+- {se:.4f}" in printed
    # `all` scores the whole split; a different seed draws another subsample of the same size
    assert main(["importance", str(run), "--out", str(tmp_path / "a"), "--max-eval", "all", *common]) == 0
    assert json.loads((tmp_path / "a" / "importance.json").read_text())["runs"][0]["n"] == 230
    assert "(n 230)" in capsys.readouterr().out
    assert main(["importance", str(run), "--out", str(tmp_path / "x"), "--max-eval", "some", *common]) == 2
    assert "--max-eval 'some': expected a number of examples or 'all'" in capsys.readouterr().err
