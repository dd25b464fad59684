"""Dev selection (issue 27): which prompt best.safetensors holds, on constructed histories and in a tiny run."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

import softprompt.training.selection as selection_mod
from softprompt.config import TrainConfig
from softprompt.errors import SoftPromptError
from softprompt.runs.directory import load_run
from softprompt.training import train
from softprompt.training.selection import MIN_SELECTION_DEV, SELECTION_MARGIN_SE, paired_gain, select_prompt, selection_rule
from tests.conftest import tiny_config

N = 40  # a dev split large enough to choose on


def _point(step: int, loss: float, value: float, validation: float = 0.5) -> dict:
    return {"epoch": step / 10, "step": step, "metric": "accuracy", "split": "dev", "value": value, "validation": validation,
            "dev_loss": loss}  # fmt: skip


def _losses(mean: float, spread: float, n: int = N) -> list[float]:
    """Per-example losses with this mean: alternately mean +- spread."""
    return [mean + (spread if i % 2 else -spread) for i in range(n)]


def test_paired_gain_is_the_mean_difference_and_its_standard_error():
    cand, last = [0.1, 0.2, 0.3, 0.4], [0.3, 0.2, 0.6, 0.5]
    d = [0.2, 0.0, 0.3, 0.1]
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3 / 4)
    assert paired_gain(cand, last) == pytest.approx((mean, se))
    assert paired_gain([0.1], [0.3])[1] == math.inf


def test_dev_loss_keeps_a_candidate_that_clearly_beats_the_last_prompt():
    points = [_point(0, 0.70, 0.5), _point(10, 0.40, 0.8, 0.9), _point(20, 0.60, 0.7, 0.6)]
    # step 10 is better on every example by 0.2 (+- small noise): far beyond one standard error
    losses = [_losses(0.70, 0.1), [x - 0.2 + 0.01 * (i % 3) for i, x in enumerate(_losses(0.6, 0.1))], _losses(0.6, 0.1)]
    chosen, facts = select_prompt("dev_loss", points, losses, N)
    assert chosen["step"] == 10 and chosen["validation"] == 0.9
    assert facts["chosen"] == "candidate" and facts["candidate_step"] == 10 and facts["step"] == 10
    assert (
        facts["loss_gain"] == pytest.approx(0.19, abs=0.02) and facts["loss_gain"] > SELECTION_MARGIN_SE * facts["loss_gain_se"]
    )
    assert facts["rule"] == facts["applied"] == "dev_loss" and facts["dev_size"] == N and "kept" in facts["why"]


def test_dev_loss_keeps_the_last_prompt_when_the_gain_is_within_one_standard_error():
    points = [_point(0, 0.70, 0.5), _point(10, 0.59, 0.9, 0.9), _point(20, 0.60, 0.6, 0.6)]
    noisy = [0.6 + (0.5 if i % 2 else -0.5) + (0.02 if i < 20 else -0.04) for i in range(N)]  # lower mean, huge spread
    losses = [_losses(0.7, 0.1), noisy, _losses(0.6, 0.1)]
    chosen, facts = select_prompt("dev_loss", points, losses, N)
    gain, se = paired_gain(noisy, losses[-1])
    assert 0 < gain <= se
    assert chosen is points[-1] and facts["chosen"] == "last" and facts["step"] == 20 and facts["candidate_step"] == 10
    assert "within 1 SE: the last prompt" in facts["why"]


def test_dev_loss_lowest_at_the_end_is_the_last_prompt():
    points = [_point(0, 0.70, 0.5), _point(10, 0.65, 0.9), _point(20, 0.60, 0.6)]
    chosen, facts = select_prompt("dev_loss", points, [_losses(p["dev_loss"], 0.1) for p in points], N)
    assert chosen["step"] == 20 and facts["chosen"] == "last" and "candidate_step" not in facts


def test_dev_accuracy_keeps_the_first_highest_dev_metric_without_a_margin():
    points = [_point(0, 0.70, 0.5), _point(10, 0.65, 0.8, 0.7), _point(20, 0.30, 0.8, 0.9), _point(30, 0.2, 0.6)]
    chosen, facts = select_prompt("dev_accuracy", points, [_losses(p["dev_loss"], 0.1) for p in points], N)
    assert chosen["step"] == 10 and facts["chosen"] == "candidate" and "first of ties" in facts["why"]


def test_a_small_dev_split_and_rule_last_keep_the_last_prompt():
    points = [_point(0, 0.70, 0.5), _point(10, 0.10, 0.99), _point(20, 0.60, 0.6)]
    losses = [_losses(p["dev_loss"], 0.01, MIN_SELECTION_DEV - 1) for p in points]
    for rule in ("dev_loss", "dev_accuracy"):
        chosen, facts = select_prompt(rule, points, losses, MIN_SELECTION_DEV - 1)
        assert chosen["step"] == 20 and facts["applied"] == "last" and facts["rule"] == rule
        assert f"{MIN_SELECTION_DEV - 1} < {MIN_SELECTION_DEV} examples is too small" in facts["why"]
    chosen, facts = select_prompt("last", points, [_losses(p["dev_loss"], 0.01) for p in points], N)
    assert chosen["step"] == 20 and facts["why"] == "selection = last: the last prompt"
    assert selection_rule("dev_loss", 0) == ("last", "no dev split to choose on: the last prompt")


def test_selection_is_part_of_the_run_identity(toy_data):
    saved = tiny_config(toy_data).to_dict()
    assert TrainConfig().selection == "dev_loss"
    assert tiny_config(toy_data, selection="dev_accuracy").differences(saved) == ["selection"]
    del saved["selection"]  # a run saved before the field chose by the dev metric: not today's default
    assert tiny_config(toy_data).differences(saved) == ["selection"]
    assert tiny_config(toy_data, selection="dev_accuracy").differences(saved) == []
    with pytest.raises(SoftPromptError, match="unknown selection 'best'"):
        TrainConfig(task="rte", selection="best")


# ----------------------------------------------------------------------------- in a run


def _prompts(run) -> tuple[torch.Tensor, torch.Tensor]:
    return load_file(str(run / "best.safetensors"))["prompt"], load_file(str(run / "prompt.safetensors"))["prompt"]


def test_a_tiny_run_with_a_small_dev_split_says_it_kept_the_last_prompt(tiny_llama, toy_data, tmp_path):
    res = train(tiny_config(toy_data, epochs=2, dev_size=4, eval_every=1), tmp_path / "r", backbone=tiny_llama, progress=False)
    record = load_run(tmp_path / "r").record
    assert record.selection.rule == "dev_loss" and record.selection.applied == "last"
    assert record.selection.dev_size == 4 and "too small to choose on" in record.selection.why
    assert res.best["split"] is None and res.best["step"] == res.history[-1]["step"]
    best, last = _prompts(tmp_path / "r")
    assert torch.equal(best, last)
    assert all(h["dev"]["loss"] is not None for h in res.history)  # the dev loss is recorded at every point
    # the last prompt and the reference baselines carry their content-free calibrated metrics (run.json, results.json)
    assert set(record.final.calibrated.to_dict()) == {"accuracy", "f1_macro", "prior", "content_free"}
    assert all(record.baselines[m].calibrated.accuracy is not None for m in ("no_prompt", "english_prompt"))


@pytest.mark.parametrize("margin", [0.0, 1e9])
def test_a_tiny_run_records_the_dev_loss_choice(tiny_llama, toy_data, tmp_path, monkeypatch, margin):
    monkeypatch.setattr(selection_mod, "MIN_SELECTION_DEV", 4)  # the toy data's dev split is tiny
    monkeypatch.setattr(selection_mod, "SELECTION_MARGIN_SE", margin)  # 0: any gain keeps the candidate; huge: none does
    cfg = tiny_config(toy_data, epochs=3, dev_size=4, eval_every=1, selection="dev_loss", lr=0.3)
    res = train(cfg, tmp_path / "r", backbone=tiny_llama, progress=False)
    record, history = load_run(tmp_path / "r").record, res.history
    lowest = min(range(len(history)), key=lambda i: (history[i]["dev"]["loss"], i))
    sel = record.selection
    assert sel.rule == "dev_loss" and sel.dev_size == 4 and record.best.to_dict() == res.best
    best, last = _prompts(tmp_path / "r")
    if history[lowest]["step"] == history[-1]["step"]:
        pytest.skip("this tiny run's dev loss was lowest at its end: no candidate to test")
    assert sel.candidate_step == history[lowest]["step"] and sel.loss_gain > 0  # a lower mean loss: a positive gain
    if margin == 0.0:
        assert sel.chosen == "candidate" and res.best["step"] == history[lowest]["step"]
        assert res.best["dev_loss"] == history[lowest]["dev"]["loss"] and not torch.equal(best, last)
    else:
        assert sel.chosen == "last" and res.best["step"] == history[-1]["step"] and torch.equal(best, last)
        assert res.best["dev_loss"] == history[-1]["dev"]["loss"]
