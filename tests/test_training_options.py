"""Training options of issue #14: chat prompt format, dev split + selection, eval_every, reparameterisation,
the scale-aware default learning rate, gradient clipping (tiny models)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import softprompt.training.selection as selection_mod
import softprompt.training.step as step_mod
from softprompt.config import PROMPT_LR_PER_STD, TrainConfig
from softprompt.data.batching import collate, encode_examples
from softprompt.data.chat import resolve_prompt_format
from softprompt.distributed import setup_data_parallel
from softprompt.errors import SoftPromptError
from softprompt.model.prompt import SoftPrompt, embedding_scale
from softprompt.runs.directory import load_run
from softprompt.scoring import batch_choice_scores
from softprompt.tasks import get_task
from softprompt.tasks.base import Example
from softprompt.training import build_trainables, prepare_data, train

CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"
)


def _cfg(data, **kw):
    base = dict(task="rte", model="tiny", tokens=4, epochs=2, batch_size=4, lr=0.1, data_dir=str(data), compute_dtype="float32")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def chat_tokenizer(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = CHAT_TEMPLATE
    return tok


# ----------------------------------------------------------------------------- prompt format


def test_chat_format_lays_out_user_turn_and_answer(chat_tokenizer):
    ex = Example("The cat sat.\nQuestion: True or False?\nAnswer:", (" True", " False"), 0)
    (enc,) = encode_examples([ex], chat_tokenizer, prompt_format="chat")
    head = "<|user|>The cat sat.\nQuestion: True or False?<|end|><|bot|>"
    for k, answer in enumerate(("True", "False")):  # answers start the assistant's turn, no leading space
        row = next(r for r in enc.rows if any(t[2] == k for t in r.targets))
        targets = [t for t in row.targets if t[2] == k]
        first = targets[0][0]
        assert chat_tokenizer.decode(row.ids[: first + 1]) == head
        assert chat_tokenizer.decode(row.ids[: first + 1] + [t[1] for t in targets]) == head + answer
    (plain,) = encode_examples([ex], chat_tokenizer, prompt_format="plain")
    assert chat_tokenizer.decode(plain.rows[0].ids) == ex.context


def test_chat_format_truncates_the_context_not_the_template(chat_tokenizer):
    ex = Example("word " * 200 + "\nAnswer:", (" yes", " no"), 1)
    (enc,) = encode_examples([ex], chat_tokenizer, prompt_format="chat", max_length=60, n_prompt=4)
    text = chat_tokenizer.decode(enc.rows[0].ids)
    assert text.startswith("<|user|>") and text.endswith("<|end|><|bot|>")
    assert enc.truncated > 0 and all(len(r.ids) + 4 <= 60 for r in enc.rows)


def test_prompt_format_resolution(tiny_tokenizer, chat_tokenizer):
    assert resolve_prompt_format("auto", chat_tokenizer) == "chat"
    assert resolve_prompt_format("auto", tiny_tokenizer) == "plain"
    with pytest.raises(SoftPromptError, match="chat template"):
        resolve_prompt_format("chat", tiny_tokenizer)
    with pytest.raises(SoftPromptError, match="prompt_format"):
        TrainConfig(prompt_format="xml")


def test_run_records_and_reuses_its_prompt_format(tiny_llama, chat_tokenizer, toy_data, tmp_path):
    backbone = copy.copy(tiny_llama)
    backbone.tokenizer = chat_tokenizer
    res = train(_cfg(toy_data, epochs=1), tmp_path / "r", backbone=backbone, progress=False)
    run = load_run(tmp_path / "r")
    assert run.record.resolved.prompt_format == "chat" and run.prompt_format == "chat"
    from softprompt.evaluate import Evaluator

    again = Evaluator(backbone, data_dir=str(toy_data), prompt_format=run.prompt_format).evaluate(
        "rte", run.prompt().weight, seed=0, calibrate=True
    )
    assert again.metrics() == res.final.metrics()  # the run's final is calibrated too
    plain = Evaluator(backbone, data_dir=str(toy_data), prompt_format="plain")
    examples = plain.examples(get_task("rte"), "validation", None, 0)
    chat = Evaluator(backbone, data_dir=str(toy_data), prompt_format="chat")
    key = ("rte", 0)
    assert (
        chat.encoded(get_task("rte"), examples, 4, None, key)[0].rows[0].ids
        != plain.encoded(get_task("rte"), examples, 4, None, key)[0].rows[0].ids
    )


def test_one_factory_builds_the_evaluator_of_a_config_and_of_a_run(tiny_llama, chat_tokenizer, toy_data, tmp_path):
    from softprompt.evaluate import Evaluator, evaluator_for, evaluator_for_run

    backbone = copy.copy(tiny_llama)
    backbone.tokenizer = chat_tokenizer
    cfg = _cfg(toy_data, epochs=1, max_length=200, scoring_strategy="plain")
    res = train(cfg, tmp_path / "r", backbone=backbone, progress=False)
    run = load_run(tmp_path / "r")
    ev = evaluator_for_run(run, backbone)
    assert (ev.prompt_format, ev.max_length, ev.compute_dtype, ev.data_dir) == ("chat", 200, torch.float32, str(toy_data))
    assert ev.scoring.strategy == "plain"
    assert ev.evaluate("rte", run.prompt().weight, seed=0, calibrate=True).metrics() == res.final.metrics()
    assert Evaluator(backbone).prompt_format == "chat"  # `auto` by default, as TrainConfig's
    assert evaluator_for(cfg, backbone, prompt_format="plain").prompt_format == "plain"


def test_runs_from_before_the_format_option_count_as_plain(toy_data):
    saved = _cfg(toy_data, prompt_format="plain").to_dict()
    del saved["prompt_format"]
    assert _cfg(toy_data, prompt_format="plain").differences(saved) == []
    assert _cfg(toy_data, prompt_format="auto").differences(saved) == ["prompt_format"]


# ----------------------------------------------------------------------------- dev split, selection, curves


def test_dev_split_is_held_out_and_shared_by_seeds(toy_data):
    task = get_task("rte")
    train0, dev0 = task.load_train(str(toy_data), limit=5, seed=0, dev_size=4)
    train1, dev1 = task.load_train(str(toy_data), limit=5, seed=1, dev_size=4)
    assert dev0 == dev1 and len(dev0) == 4 and len(train0) == len(train1) == 5
    assert not {e.idx for e in dev0} & {e.idx for e in train0 + train1}
    assert train0 != train1
    with pytest.raises(SoftPromptError, match="dev_size 12 leaves no training examples"):
        task.load_train(str(toy_data), limit=None, seed=0, dev_size=12)


def test_best_prompt_is_chosen_on_dev_and_curves_every_n_steps(tiny_llama, toy_data, tmp_path, monkeypatch):
    # 12 training rows - 4 dev = 8, batch 4: 2 steps per epoch, 3 epochs; eval_every 1 adds the mid-epoch points
    monkeypatch.setattr(selection_mod, "MIN_SELECTION_DEV", 4)  # the toy data's dev split is below the real minimum
    cfg = _cfg(toy_data, epochs=3, dev_size=4, eval_every=1, selection="dev_accuracy")  # (dev_loss: test_selection.py)
    res = train(cfg, tmp_path / "r", backbone=tiny_llama, progress=False)
    steps = [h["step"] for h in res.history]
    assert steps == [0, 1, 2, 3, 4, 5, 6]  # step 0: the initial prompt
    assert [h["epoch"] for h in res.history] == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    assert res.history[0]["train_loss"] is None
    assert all(h["dev"]["n"] == 4 for h in res.history)
    dev_acc = [h["dev"]["accuracy"] for h in res.history]
    first_best = res.history[dev_acc.index(max(dev_acc))]
    assert res.best["split"] == "dev" and res.best["step"] == first_best["step"]
    assert res.best["value"] == max(dev_acc) and res.best["validation"] == first_best["accuracy"]
    assert load_run(tmp_path / "r").record.dev_examples == 4


def test_without_dev_split_the_last_prompt_is_the_result(tiny_llama, toy_data, tmp_path):
    res = train(_cfg(toy_data, epochs=3), tmp_path / "r", backbone=tiny_llama, progress=False)
    assert res.best["split"] is None and res.best["epoch"] == 3
    best = load_file(str(tmp_path / "r" / "best.safetensors"))["prompt"]
    assert torch.equal(best, load_file(str(tmp_path / "r" / "prompt.safetensors"))["prompt"])


def test_train_loss_is_the_mean_since_the_previous_evaluation(tiny_llama, toy_data, tmp_path, monkeypatch):
    seen: list[float] = []
    real = step_mod.LOSSES["choices"]

    def recording(scores, labels, weights=None):
        loss = real(scores, labels, weights)
        seen.append(float(loss))
        return loss

    monkeypatch.setitem(step_mod.LOSSES, "choices", recording)
    res = train(_cfg(toy_data, epochs=1, batch_size=3, eval_every=2), tmp_path / "r", backbone=tiny_llama, progress=False)
    assert [h["step"] for h in res.history] == [0, 2, 4]
    assert res.history[1]["train_loss"] == pytest.approx(sum(seen[:2]) / 2)
    assert res.history[2]["train_loss"] == pytest.approx(sum(seen[2:4]) / 2)


@pytest.mark.parametrize("stop_at", [3, 6])
def test_resume_with_dev_curves_and_reparam_is_bit_identical(tiny_llama, toy_data, tmp_path, interrupt_at, stop_at):
    cfg = _cfg(toy_data, epochs=3, batch_size=2, dev_size=4, eval_every=3, reparam="residual", reparam_hidden=8)
    train(cfg, tmp_path / "ref", backbone=tiny_llama, progress=False)
    interrupt_at(stop_at)
    with pytest.raises(KeyboardInterrupt):
        train(cfg.__class__(**{**cfg.to_dict(), "checkpoint_every": 1}), tmp_path / "cut", backbone=tiny_llama, progress=False)
    interrupt_at(None)
    cut_cfg = cfg.__class__(**{**cfg.to_dict(), "checkpoint_every": 1})
    train(cut_cfg, tmp_path / "cut", backbone=tiny_llama, progress=False, resume=True)
    for name in ("prompt.safetensors", "best.safetensors"):
        assert torch.equal(load_file(str(tmp_path / "ref" / name))["prompt"], load_file(str(tmp_path / "cut" / name))["prompt"])

    def metrics(d):
        return [
            {k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in (d / "metrics.jsonl").read_text().splitlines()
        ]

    assert metrics(tmp_path / "ref") == metrics(tmp_path / "cut")


# ----------------------------------------------------------------------------- reparameterisation


def test_residual_reparam_starts_at_the_init_and_trains_the_mlp(tiny_llama, toy_data, tmp_path):
    cfg = _cfg(toy_data, epochs=2, reparam="residual", reparam_hidden=8)
    data = prepare_data(cfg, tiny_llama, setup_data_parallel("cpu"))
    trainables = build_trainables(cfg, data, setup_data_parallel("cpu"))
    assert torch.equal(trainables.scoring_prompt(), trainables.prompt.initial)  # exactly the init at step 0
    assert {n for n in trainables.params if n.startswith("reparam.")} == {
        "reparam.0.weight",
        "reparam.0.bias",
        "reparam.2.weight",
        "reparam.2.bias",
    }
    train(cfg, tmp_path / "r", backbone=tiny_llama, progress=False)
    saved = SoftPrompt.load(tmp_path / "r" / "prompt.safetensors")
    assert saved.weight.shape == (4, 32) and not torch.equal(saved.weight, saved.initial)
    assert load_run(tmp_path / "r").record.parameters.trainable == 4 * 32 + (32 * 8 + 8) + (8 * 32 + 32)


def test_mlp_reparam_gets_gradients_everywhere_and_exports_the_matrix(tiny_llama, toy_data, tmp_path):
    cfg = _cfg(toy_data, epochs=1, reparam="mlp", reparam_hidden=8)
    dp = setup_data_parallel("cpu")
    data = prepare_data(cfg, tiny_llama, dp)
    trainables = build_trainables(cfg, data, dp)
    batch = collate(data.encoded[:4], tiny_llama.tokenizer.pad_token_id)
    scores = batch_choice_scores(tiny_llama.model, trainables.scoring_prompt(), batch)
    step_mod.LOSSES["choices"](scores, batch.labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainables.params.values())
    train(cfg, tmp_path / "r", backbone=tiny_llama, progress=False)
    from softprompt.peft_interop import export_peft

    adapter = export_peft(tmp_path / "r", tmp_path / "adapter")
    exported = load_file(str(adapter / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.equal(exported, load_file(str(tmp_path / "r" / "prompt.safetensors"))["prompt"])


def test_reparam_is_for_prompts_only_and_baselines_drop_it(toy_data):
    with pytest.raises(SoftPromptError, match="method 'prompt' only"):
        _cfg(toy_data, method="lora", reparam="mlp")
    from softprompt.runs.baselines import baseline_config

    assert baseline_config(_cfg(toy_data, reparam="mlp"), "lora").reparam == "none"


# ----------------------------------------------------------------------------- learning rate, clipping


def test_default_prompt_lr_follows_the_embedding_scale(tiny_llama, toy_data, tmp_path):
    train(_cfg(toy_data, epochs=1, lr=None), tmp_path / "r", backbone=tiny_llama, progress=False)
    expected = PROMPT_LR_PER_STD * embedding_scale(tiny_llama.model)
    assert load_run(tmp_path / "r").record.resolved.lr == pytest.approx(expected)
    assert TrainConfig(method="lora").lr == 1e-3 and TrainConfig().lr is None


def test_a_changed_default_lr_makes_a_default_lr_run_a_conflict(tiny_llama, toy_data, tmp_path, monkeypatch):
    """Runs at the default lr record the factor they used: after the default changes, a study retrains them and
    --resume refuses them, instead of reusing a prompt trained at another rate. An explicit --lr is unaffected."""
    import softprompt.runs.state as runs_mod
    from softprompt.io import read_json, write_json
    from softprompt.runs.state import COMPLETE, CONFLICT, run_state

    cfg, fixed = _cfg(toy_data, epochs=1, lr=None), _cfg(toy_data, epochs=1, lr=0.05)
    train(cfg, tmp_path / "default", backbone=tiny_llama, progress=False, baselines=False)
    train(fixed, tmp_path / "fixed", backbone=tiny_llama, progress=False, baselines=False)
    assert load_run(tmp_path / "default").record.resolved.lr_per_std == PROMPT_LR_PER_STD
    assert run_state(tmp_path / "default", cfg).kind == COMPLETE
    monkeypatch.setattr(runs_mod, "PROMPT_LR_PER_STD", PROMPT_LR_PER_STD * 2)
    state = run_state(tmp_path / "default", cfg)
    assert state.kind == CONFLICT and state.changed == ("lr (the default learning rate changed since this run)",)
    assert run_state(tmp_path / "fixed", fixed).kind == COMPLETE
    monkeypatch.setattr(runs_mod, "PROMPT_LR_PER_STD", runs_mod.LEGACY_LR_PER_STD)
    record = read_json(tmp_path / "default" / "run.json")
    del record["resolved"]["lr_per_std"]  # a run made before the factor was recorded used the legacy one
    write_json(tmp_path / "default" / "run.json", record)
    assert run_state(tmp_path / "default", cfg).kind == COMPLETE


def test_gradient_clipping_is_applied(tiny_llama, toy_data, tmp_path, monkeypatch):
    norms: list[float] = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        norms.append(max_norm)
        return real(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train(_cfg(toy_data, epochs=1), tmp_path / "a", backbone=tiny_llama, progress=False)
    assert norms == []
    train(_cfg(toy_data, epochs=1, max_grad_norm=0.5), tmp_path / "b", backbone=tiny_llama, progress=False)
    assert norms == [0.5] * 3
    with pytest.raises(SoftPromptError, match="max_grad_norm"):
        _cfg(toy_data, max_grad_norm=-1.0)


def test_adam_is_fused_where_available_and_updates_as_the_unfused_one():
    """Training's Adam(W) is torch's fused kernel on a CPU (one pass over the weights; full fine-tuning's optimiser step
    was ~5x slower without it) and computes the same update as the default implementation, to float rounding."""
    from types import SimpleNamespace

    from softprompt.training.trainables import fused_where_available, optimizer_and_schedule

    assert fused_where_available([torch.zeros(2)]) == {"fused": True}
    assert fused_where_available([torch.zeros(2, device="meta")]) == {}  # a device without the kernel
    assert fused_where_available([torch.zeros(2, dtype=torch.long)]) == {}
    assert fused_where_available([]) == {}
    start = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    updated = {}
    for name, adam in (("library", None), ("default", torch.optim.AdamW)):
        p = torch.nn.Parameter(start.clone())
        trainables = SimpleNamespace(params={"prompt": p}, lr=1e-2)
        if adam is None:
            opt, _ = optimizer_and_schedule(
                TrainConfig(task="rte", weight_decay=0.01, warmup=0.0, schedule="constant"), trainables, total_steps=20
            )
            assert opt.defaults["fused"] is True
        else:
            opt = adam([p], lr=1e-2, weight_decay=0.01)
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        updated[name] = p.detach()
    assert not torch.equal(updated["library"], start)
    torch.testing.assert_close(updated["library"], updated["default"], rtol=1e-5, atol=1e-6)
