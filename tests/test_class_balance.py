"""Class-balanced training loss (`class_balance`): the weights, the weighted losses, and the option's rules."""

from __future__ import annotations

import math

import pytest
import torch

from softprompt.config import TrainConfig
from softprompt.errors import SoftPromptError
from softprompt.scoring import answer_nll, choice_loss, class_weights


def test_weights_make_every_class_count_equally():
    w = class_weights([30, 10], "f1_macro", "auto")  # auto: on for a two-class macro-F1 task
    assert w.tolist() == pytest.approx([40 / 60, 40 / 20])
    assert (w * torch.tensor([30.0, 10.0])).tolist() == pytest.approx([20.0, 20.0])  # equal total weight per class
    assert class_weights([30, 10], "accuracy", "auto") is None  # auto: macro-F1 tasks only
    assert class_weights([30, 10, 5], "f1_macro", "auto") is None  # and two classes only (CB: it cost accuracy)
    assert class_weights([30, 10], "accuracy", "on") is not None
    assert class_weights([30, 10], "f1_macro", "off") is None
    assert class_weights([5, 0, 5], "f1_macro", "on").tolist() == pytest.approx([1.0, 1.0, 1.0])  # absent class: 1


def test_weighted_losses_equal_a_hand_computation():
    scores = torch.tensor([[-0.1, -2.0], [-1.5, -0.3], [-0.7, -0.9]])
    labels = torch.tensor([0, 1, 1])
    w = torch.tensor([0.5, 2.0])
    ce = [-math.log(math.exp(r[y]) / sum(math.exp(v) for v in r)) for r, y in zip(scores.tolist(), labels.tolist())]
    expect = (0.5 * ce[0] + 2.0 * ce[1] + 2.0 * ce[2]) / 3
    assert choice_loss(scores, labels, w).item() == pytest.approx(expect, rel=1e-6)
    assert choice_loss(scores, labels).item() == pytest.approx(sum(ce) / 3, rel=1e-6)
    nll = (0.5 * 0.1 + 2.0 * 0.3 + 2.0 * 0.9) / 3
    assert answer_nll(scores, labels, w).item() == pytest.approx(nll, rel=1e-6)


def test_unknown_mode_is_refused():
    with pytest.raises(SoftPromptError, match="class_balance"):
        TrainConfig(task="sst2", class_balance="yes")


def _record(config: dict, metric: str | None, classes: int = 2):
    from softprompt.records.run import RunRecord, TaskFacts

    words = [f"w{k}" for k in range(classes)]
    return RunRecord(config=config, task=TaskFacts(name="t", metric=metric, label_words=words) if metric else None)


def test_the_default_is_auto_and_runs_compare_by_what_the_loss_did():
    """auto weights two-class macro-F1 tasks only, so an old run (before the option: off) is the same run on an accuracy task
    and another run on a macro-F1 task; explicit on/off compare by effect too."""
    from softprompt.runs.state import identity_changes

    cfg = TrainConfig(task="sst2")
    assert cfg.class_balance == "auto"
    old = {k: v for k, v in cfg.identity_dict().items() if k != "class_balance"}  # saved before the option existed
    assert "class_balance" not in identity_changes(cfg, _record(old, "accuracy"))
    assert "class_balance" in identity_changes(cfg, _record(old, "f1_macro"))
    assert "class_balance" not in identity_changes(cfg, _record(old, "f1_macro", classes=3))  # auto is off there
    assert "class_balance" in identity_changes(TrainConfig(task="sst2", class_balance="on"), _record(old, "accuracy"))
    on = dict(old, class_balance="on")
    assert "class_balance" not in identity_changes(cfg, _record(on, "f1_macro"))
    assert "class_balance" in identity_changes(cfg, _record(old, None))  # the metric unknown: the values decide


def _imbalanced(tmp_path):
    """A tiny RTE-shaped folder with 3 entailment examples for every not_entailment one."""
    import json

    pos = {"premise": "The cat sat on the mat.", "hypothesis": "The cat sat.", "label": "entailment"}
    neg = {"premise": "The dog ran away quickly.", "hypothesis": "The dog sat.", "label": "not_entailment"}
    d = tmp_path / "data" / "rte"
    d.mkdir(parents=True)
    for name, recs in (("train.jsonl", [pos, pos, pos, neg] * 3), ("val.jsonl", [pos, neg])):
        (d / name).write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(recs)))
    return tmp_path / "data"


def test_training_with_class_balance_weights_the_minority_class(tiny_llama, tmp_path):
    """The run records the weights it trained with, and they change what is learned (same seed, same data)."""
    from softprompt.runs.directory import load_run
    from softprompt.training import train

    data = _imbalanced(tmp_path)
    base = dict(task="rte", model="tiny", tokens=4, epochs=1, batch_size=4, lr=0.1, data_dir=str(data))
    prompts = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        train(TrainConfig(**base, class_balance=mode, compute_dtype="float32"), out, backbone=tiny_llama, progress=False)
        run = load_run(out)
        prompts[mode] = run.prompt().weight.detach()
        weights = run.record.resolved.class_weights
        assert weights == (None if mode == "off" else pytest.approx([12 / 18, 12 / 6]))
    assert not torch.allclose(prompts["off"], prompts["on"])


def test_one_class_present_is_said_and_trains_on_the_plain_mean(tiny_llama, tmp_path, capsys):
    """--class-balance on with one class alone in the training examples used weights [1, 1] without a word: now a
    warning naming the class, the plain mean (no weights recorded), and the same prompt as class_balance off."""
    import json

    from softprompt.runs.directory import load_run
    from softprompt.training import train

    assert class_weights([12, 0], "accuracy", "on") is None and class_weights([12, 0, 0], "f1_macro", "on") is None
    pos = {"premise": "The cat sat on the mat.", "hypothesis": "The cat sat.", "label": "entailment"}
    neg = {"premise": "The dog ran away quickly.", "hypothesis": "The dog sat.", "label": "not_entailment"}
    d = tmp_path / "data" / "rte"
    d.mkdir(parents=True)
    for name, recs in (("train.jsonl", [pos] * 8), ("val.jsonl", [pos, neg])):
        (d / name).write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(recs)))
    base = dict(task="rte", model="tiny", tokens=4, epochs=1, batch_size=4, lr=0.1, data_dir=str(tmp_path / "data"))
    prompts = {}
    for mode in ("on", "off"):
        capsys.readouterr()
        cfg = TrainConfig(**base, class_balance=mode, compute_dtype="float32")
        train(cfg, tmp_path / mode, backbone=tiny_llama, progress=False)
        err = capsys.readouterr().err
        said = "softprompt: warning: class_balance on: the training examples hold one class only ('True': 8 examples)"
        assert (said in err) == (mode == "on"), err
        run = load_run(tmp_path / mode)
        assert run.record.resolved.class_weights is None
        prompts[mode] = run.prompt().weight.detach()
    assert torch.equal(prompts["on"], prompts["off"])
