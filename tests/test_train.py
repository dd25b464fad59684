"""The training loop on a tiny model: learning, determinism, resume after Ctrl-C, artifacts, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import softprompt.training.step as step_mod
from softprompt.config import TrainConfig
from softprompt.errors import SoftPromptError
from softprompt.model.prompt import SoftPrompt, init_prompt
from softprompt.runs.directory import load_run
from softprompt.training import train


def _cfg(data, **kw):
    base = dict(
        task="rte",
        model="tiny",
        tokens=4,
        init="text",
        epochs=3,
        batch_size=4,
        lr=0.1,
        seed=0,
        data_dir=str(data),
        compute_dtype="float32",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls_and_artifacts_written(tiny_llama, toy_data, tmp_path):
    res = train(_cfg(toy_data, epochs=6), tmp_path / "run", backbone=tiny_llama, progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0]
    run = load_run(tmp_path / "run")
    assert run.complete and run.record.prompt.n_tokens == 4
    tensors = load_file(str(tmp_path / "run" / "prompt.safetensors"))
    assert set(tensors) == {"prompt", "initial_prompt"}
    assert not torch.equal(tensors["prompt"], tensors["initial_prompt"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert run.record.parameters.trainable == 4 * 32
    assert set(res.baselines) == {"no_prompt", "english_prompt"}


def test_frozen_model_gets_no_gradients(tiny_llama, toy_data, tmp_path):
    before = {n: p.clone() for n, p in tiny_llama.model.named_parameters()}
    train(_cfg(toy_data, epochs=1), tmp_path / "run", backbone=tiny_llama, progress=False)
    for n, p in tiny_llama.model.named_parameters():
        assert p.grad is None and torch.equal(p, before[n]), n


def test_same_seed_same_result(tiny_backbone, toy_data, tmp_path):
    a = train(_cfg(toy_data), tmp_path / "a", backbone=tiny_backbone, progress=False)
    b = train(_cfg(toy_data), tmp_path / "b", backbone=tiny_backbone, progress=False)
    assert a.history == [dict(h, elapsed_s=h["elapsed_s"]) for h in a.history]
    pa = SoftPrompt.load(tmp_path / "a" / "prompt.safetensors").weight
    pb = SoftPrompt.load(tmp_path / "b" / "prompt.safetensors").weight
    assert torch.equal(pa, pb)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


@pytest.mark.parametrize("where", ["scheduler", "best_prompt"])
def test_interrupt_inside_a_step_or_epoch_bookkeeping_resumes_identically(tiny_llama, toy_data, tmp_path, monkeypatch, where):
    """Ctrl-C after the optimiser moved the parameters but before the step was recorded (or while the
    best prompt is written at an epoch's end) must not checkpoint that half-done instant."""
    cfg = _cfg(toy_data, batch_size=2, checkpoint_every=1)
    train(cfg, tmp_path / "ref", backbone=tiny_llama, progress=False)
    calls = {"n": 0}
    if where == "scheduler":  # the 4th step: parameters moved, step not yet recorded
        target, name, stop_at = torch.optim.lr_scheduler.LambdaLR, "step", 4
    else:  # the 1st epoch's best prompt (the 1st save is the initial prompt)
        target, name, stop_at = SoftPrompt, "save", 2
    real = getattr(target, name)

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(target, name, interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False)
    monkeypatch.setattr(target, name, real)
    train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False, resume=True)
    ref = load_file(str(tmp_path / "ref" / "prompt.safetensors"))["prompt"]
    assert torch.equal(ref, load_file(str(tmp_path / "cut" / "prompt.safetensors"))["prompt"])
    ref_m = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    got_m = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in ref_m]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in got_m]


@pytest.mark.parametrize("stop_at", [2, 5, 7])
def test_resume_after_interrupt_is_bit_identical(tiny_llama, toy_data, tmp_path, interrupt_at, stop_at):
    cfg = _cfg(toy_data, batch_size=2, grad_accum=2)
    train(cfg, tmp_path / "ref", backbone=tiny_llama, progress=False)
    interrupt_at(stop_at)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"
    with pytest.raises(SoftPromptError, match="interrupted"):
        load_run(tmp_path / "cut")
    interrupt_at(None)
    with pytest.raises(SoftPromptError, match="--resume"):
        train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False)
    train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False, resume=True)
    ref = load_file(str(tmp_path / "ref" / "prompt.safetensors"))["prompt"]
    got = load_file(str(tmp_path / "cut" / "prompt.safetensors"))["prompt"]
    assert torch.equal(ref, got)
    ref_m = [json.loads(x)["train_loss"] for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    got_m = [json.loads(x)["train_loss"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert ref_m == got_m


def test_resume_with_changed_config_refused(tiny_llama, toy_data, tmp_path):
    train(_cfg(toy_data, epochs=1), tmp_path / "r", backbone=tiny_llama, progress=False)
    with pytest.raises(SoftPromptError, match="different config"):
        train(_cfg(toy_data, epochs=1, lr=0.5), tmp_path / "r", backbone=tiny_llama, progress=False, resume=True)


def test_exploding_lr_stops_with_clear_error(tiny_llama, toy_data, tmp_path):
    with pytest.raises(SoftPromptError, match="diverged"):
        train(
            _cfg(toy_data, lr=1e30, optimizer="adam", warmup=0.0, schedule="constant", epochs=3),
            tmp_path / "r",
            backbone=tiny_llama,
            progress=False,
        )


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_llama, toy_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = step_mod.LOSSES["choices"]

    def poisoned(scores, labels, weights=None):
        calls["n"] += 1
        loss = real(scores, labels, weights)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setitem(step_mod.LOSSES, "choices", poisoned)
    with pytest.raises(SoftPromptError, match="loss became nan"):
        train(_cfg(toy_data), tmp_path / "r", backbone=tiny_llama, progress=False)
    ckpt = load_file(str(tmp_path / "r" / "checkpoint.safetensors"))
    assert torch.isfinite(ckpt["param/prompt"]).all()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "r" / "checkpoint.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["epoch"] == 1
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("bad", [dict(method="x"), dict(init="nope"), dict(tokens=0), dict(lr=-1.0), dict(warmup=2.0)])
def test_bad_config_values(bad, toy_data):
    with pytest.raises(SoftPromptError):
        _cfg(toy_data, **bad)


def test_unknown_config_key_is_an_error():
    with pytest.raises(SoftPromptError, match="lrr"):
        TrainConfig.from_dict({"task": "rte", "lrr": 0.1})


@pytest.mark.parametrize("method", ["text", "random", "vocab", "labels", "text+labels"])
def test_init_methods(tiny_llama, method):
    p = init_prompt(
        tiny_llama.model,
        tiny_llama.tokenizer,
        6,
        method,
        text="Does the hypothesis entail",
        label_words=["True", "False"],
        seed=1,
    )
    assert p.weight.shape == (6, 32) and torch.isfinite(p.weight).all()
    assert torch.equal(p.weight, p.initial)
    if method != "random":  # every other init is the embeddings of the tokens it records
        emb = tiny_llama.model.get_input_embeddings()
        torch.testing.assert_close(p.weight, emb(torch.tensor(p.init.token_ids)).float())


def test_text_and_labels_init_puts_the_label_words_last(tiny_llama):
    """text+labels: the description's tokens (repeated to fit), then every label word's tokens, next to the input."""
    tok = tiny_llama.tokenizer
    label_ids = [i for w in ("True", "False") for i in tok(" " + w, add_special_tokens=False)["input_ids"]]
    text_ids = tok("Does the hypothesis entail", add_special_tokens=False)["input_ids"]
    n = len(label_ids) + len(text_ids) + 2
    p = init_prompt(tiny_llama.model, tok, n, "text+labels", text="Does the hypothesis entail", label_words=["True", "False"])
    assert p.init.token_ids[-len(label_ids) :] == label_ids
    assert p.init.token_ids[: len(text_ids)] == text_ids and p.init.token_ids[len(text_ids) : -len(label_ids)] == text_ids[:2]
    assert p.init.text == "Does the hypothesis entail True False"
    with pytest.raises(SoftPromptError, match="label words take .* leaving none"):
        init_prompt(tiny_llama.model, tok, len(label_ids), "text+labels", text="x", label_words=["True", "False"])


def test_text_init_goes_through_embedding_module(tiny_llama):
    """Models that scale embeddings (Gemma) must get the module's output, not raw rows."""
    emb = tiny_llama.model.get_input_embeddings()
    orig = emb.forward
    emb.forward = lambda ids: orig(ids) * 3.0
    try:
        p = init_prompt(tiny_llama.model, tiny_llama.tokenizer, 3, "text", text="the cat")
        torch.testing.assert_close(p.weight, emb.weight[torch.tensor(p.init.token_ids)] * 3.0)
    finally:
        emb.forward = orig


def test_prompt_save_load_and_dim_mismatch(tiny_llama, tmp_path):
    p = init_prompt(tiny_llama.model, tiny_llama.tokenizer, 3, "vocab", seed=2)
    p.save(tmp_path / "p.safetensors")
    q = SoftPrompt.load(tmp_path / "p.safetensors")
    assert torch.equal(p.weight, q.weight) and q.init.method == "vocab" and q.init.token_ids == p.init.token_ids
    with pytest.raises(SoftPromptError, match="hidden size 32 but the model's hidden size is 64"):
        q.check_model(64)
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "p.safetensors").read_bytes()[:50])
    with pytest.raises(SoftPromptError, match="not a readable safetensors"):
        SoftPrompt.load(tmp_path / "bad.safetensors")


def test_lm_loss_is_the_answer_nll_and_trains(tiny_llama, toy_data, tmp_path):
    from softprompt.scoring import answer_nll, choice_loss

    scores = torch.log(torch.tensor([[0.5, 0.25], [0.1, 0.6]]))
    labels = torch.tensor([1, 0])
    assert answer_nll(scores, labels).item() == pytest.approx(
        -(torch.log(torch.tensor(0.25)) + torch.log(torch.tensor(0.1))).item() / 2
    )
    assert choice_loss(scores, labels).item() != pytest.approx(answer_nll(scores, labels).item())
    res = train(_cfg(toy_data, epochs=6, loss="lm"), tmp_path / "run", backbone=tiny_llama, progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0]
    assert load_run(tmp_path / "run").config["loss"] == "lm"
    with pytest.raises(SoftPromptError, match="unknown loss 'mse'"):
        _cfg(toy_data, loss="mse")


def test_group_by_length_batches_similar_lengths_deterministically(tiny_llama, toy_data, tmp_path, monkeypatch):
    """--group-by-length: every example once per epoch, less padding than random batches, same result twice."""
    seen: list[list[int]] = []
    real_collate = step_mod.collate

    def recording(encoded, pad_id, **kw):
        seen.append([e.num_tokens for e in encoded])
        return real_collate(encoded, pad_id, **kw)

    monkeypatch.setattr(step_mod, "collate", recording)

    def run(name, **kw):
        seen.clear()
        res = train(_cfg(toy_data, epochs=2, **kw), tmp_path / name, backbone=tiny_llama, progress=False)
        padded = sum(max(b) * len(b) for b in seen)
        return res, padded, [sorted(x for b in seen[:3] for x in b), sorted(x for b in seen[3:] for x in b)]

    default, pad_default, lengths_default = run("default")
    grouped, pad_grouped, lengths_grouped = run("grouped", group_by_length=True)
    again, _, _ = run("again", group_by_length=True)
    assert lengths_grouped == lengths_default  # 12 examples, each once per epoch, in batches of 4
    assert pad_grouped < pad_default
    assert torch.equal(
        load_file(str(grouped.out / "prompt.safetensors"))["prompt"], load_file(str(again.out / "prompt.safetensors"))["prompt"]
    )
    assert load_run(grouped.out).config["group_by_length"] is True
    with pytest.raises(SoftPromptError, match="group_by_length must be true or false, got 'yes'"):
        _cfg(toy_data, group_by_length="yes")


def test_runs_saved_before_an_option_existed_still_match(toy_data):
    """A config saved without a newer field equals one holding that field's default (no retraining)."""
    from dataclasses import asdict

    cfg = _cfg(toy_data)
    old = {k: v for k, v in asdict(cfg).items() if k != "loss"}
    assert cfg.differences(old) == []
    assert _cfg(toy_data, loss="lm").differences(old) == ["loss"]
    assert cfg.differences(dict(old, lr=0.5)) == ["lr"]


def _train_argv(model_dir, data, out) -> list[str]:
    return ["train", "--task", "rte", "--model", str(model_dir), "--data-dir", str(data), "--tokens", "3", "--epochs", "1",
            "--batch-size", "4", "--lr", "0.1", "--compute-dtype", "float32", "--max-length", "128", "--quiet",
            "--out", str(out)]  # fmt: skip


def test_resume_of_a_complete_run_says_so_and_changes_nothing(tmp_path, tiny_model_dir, toy_data, capsys):
    """It used to retrain the run from scratch and rewrite its files."""
    from softprompt.cli import main
    from softprompt.locks import LOCK_FILE

    out = tmp_path / "run"
    assert main(_train_argv(tiny_model_dir, toy_data, out)) == 0

    def files() -> dict:
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}

    before = files()
    capsys.readouterr()
    assert main([*_train_argv(tiny_model_dir, toy_data, out), "--resume"]) == 0
    assert files() == before  # byte-identical, not even rewritten
    assert capsys.readouterr().out.strip() == (
        f"{out}: the run is already complete, so there is nothing to resume; nothing was changed (its results are in "
        f"{out / 'run.json'}; --overwrite without --resume trains it again)"
    )


def test_resume_of_a_folder_without_a_run_is_refused_naming_it(tmp_path, tiny_model_dir, toy_data, capsys):
    """A mistyped --out with --resume used to start a fresh run there without a word."""
    from softprompt.cli import main

    for out in (tmp_path / "typo", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        assert main([*_train_argv(tiny_model_dir, toy_data, out), "--resume"]) == 2
        assert capsys.readouterr().err == (
            f"softprompt: error: --resume {out}: there is no run to resume there (no run.json): check the path, or "
            "leave out --resume to start a new run\n"
        )
        assert not (out / "run.json").exists()
    assert not (tmp_path / "typo").exists()  # a folder the refused command created is removed again


def test_the_progress_bar_shows_only_losses_it_read(tiny_llama, toy_data, monkeypatch):
    """The bar's loss is the mean of losses read from the device in this epoch: never one made up from none (an
    epoch's first step before its first read keeps the last loss shown), and every shown value is a read loss."""
    import tqdm.auto

    from softprompt.training.lifecycle import Progress

    shown: list[dict] = []

    class Bar:
        def __init__(self, *a, **k):
            pass

        def set_postfix(self, **values):
            shown.append(values)

        def update(self, n=1):
            pass

        def write(self, text):
            pass

        def close(self):
            pass

    bar = Progress(Bar())
    bar.show_loss([0.5], 0.1)
    bar.show_loss([], 0.05)  # nothing read yet: the bar keeps 0.5000 (this divided by zero before)
    assert shown == [{"loss": "0.5000", "lr": "1.00e-01"}]
    shown.clear()
    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    train(_cfg(toy_data, epochs=3), tmp := toy_data.parent / "bar", backbone=tiny_llama, progress=True)
    losses = [json.loads(line)["train_loss"] for line in (tmp / "metrics.jsonl").read_text().splitlines()]
    assert len(shown) == 9 and all(float(v["loss"]) > 0.1 for v in shown), shown  # 3 epochs of 3 steps, each read
    assert [float(v["loss"]) for v in shown[2::3]] == pytest.approx(losses, abs=1e-4)  # each epoch's last: its mean
