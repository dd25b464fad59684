"""Deep prompts (method `deep`: keys/values at every layer, `softprompt.model.deep_prompt`): PEFT's PREFIX_TUNING layout
scored exactly as PEFT scores it, every scoring strategy against the plain one (scores and gradient), the words-based
init equal to the words typed before the input, and a deep run trained, resumed, selected and evaluated like a soft one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softprompt.data.batching import collate, encode_examples
from softprompt.errors import SoftPromptError
from softprompt.model.deep_prompt import KVPrompt, init_deep_prompt, prefix_shape
from softprompt.scoring import PLAIN, ScoringOptions, batch_choice_scores, choice_loss, choice_scores
from softprompt.scoring.model import autocast_context, full_logits
from tests.conftest import _tiny_model, tiny_config
from tests.test_fastpaths import EXAMPLES, VARIANTS


def _deep(model, n: int = 4, seed: int = 0) -> torch.Tensor:
    shape = prefix_shape(model)
    return torch.randn(n, shape.width, generator=torch.Generator().manual_seed(seed)) * 0.5


def _scores_and_grad(model, matrix, batch, options, dtype=None):
    m = matrix.detach().clone().requires_grad_(True)
    with autocast_context(torch.device("cpu"), dtype):
        s = batch_choice_scores(model, KVPrompt(m, prefix_shape(model)), batch, options=options)
    choice_loss(s, batch.labels).backward()
    return s.detach(), m.grad.detach()


def test_prefix_shape_counts_key_value_heads(tiny_backbone):
    model = tiny_backbone.model
    shape = prefix_shape(model)
    heads = model.config.num_attention_heads if hasattr(model.config, "num_attention_heads") else model.config.n_head
    kv = getattr(model.config, "num_key_value_heads", None) or heads
    assert shape.kv_heads == kv and shape.layers == 2 and shape.width == 2 * 2 * kv * (32 // heads)
    with pytest.raises(SoftPromptError, match=r"\(n, \d+\) matrix"):
        KVPrompt(torch.zeros(3, shape.width + 1), shape)


def test_scores_equal_peft_prefix_tuning(tiny_backbone):
    """The matrix is PEFT's prompt_embeddings: PEFT's PREFIX_TUNING model gives the same logits."""
    from peft import PrefixTuningConfig, get_peft_model

    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    matrix = _deep(model, 5)
    arch = "llama" if "llama" in tiny_backbone.name else "bloom"
    peft_model = get_peft_model(_tiny_model(arch, len(tok)), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(matrix)
        ids = torch.tensor([tok("the dog ran away quickly because")["input_ids"]])
        theirs = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        ours = full_logits(model, KVPrompt(matrix, prefix_shape(model)), ids)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_text_init_scores_as_the_typed_text(tiny_backbone):
    """Li & Liang's init: the prefix is what the model caches for the init's tokens, so before training it scores
    exactly as those tokens typed before the input (same positions)."""
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    prompt = init_deep_prompt(model, tok, 6, "text", text="The cat sat on the mat.")
    ids = tok("a boring movie")["input_ids"]
    with torch.no_grad():
        typed = full_logits(model, None, torch.tensor([prompt.init.token_ids + ids]))[:, 6:]
        deep = full_logits(model, KVPrompt(prompt.weight, prefix_shape(model)), torch.tensor([ids]))
    torch.testing.assert_close(deep, typed, atol=1e-5, rtol=1e-5)
    assert prompt.weight.shape == (6, prefix_shape(model).width) and torch.equal(prompt.weight, prompt.initial)


def test_random_and_label_inits_are_seeded_and_on_scale(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    a = init_deep_prompt(model, tok, 4, "random", seed=1)
    b = init_deep_prompt(model, tok, 4, "random", seed=1)
    vocab = init_deep_prompt(model, tok, 4, "vocab", seed=1)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, init_deep_prompt(model, tok, 4, "random", seed=2).weight)
    assert 0.5 < float(a.weight.std() / vocab.weight.std()) < 2.0
    labels = init_deep_prompt(model, tok, 4, "labels", label_words=["yes", "no"])
    assert labels.init.text == "yes no" and len(labels.init.token_ids) == 4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_strategy_equals_plain_with_a_deep_prompt(tiny_backbone, variant):
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    options = ScoringOptions(**{"strategy": "kv_tree", **VARIANTS[variant]})
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=4), tok.pad_token_id)
    matrix = _deep(model)
    plain, g_plain = _scores_and_grad(model, matrix, batch, PLAIN)
    fast, g_fast = _scores_and_grad(model, matrix, batch, options)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fast, g_plain, atol=1e-6, rtol=1e-4)
    assert g_plain.abs().sum() > 0  # every layer's keys and values get a gradient
    per_layer = g_plain.view(4, prefix_shape(model).layers * 2, -1).abs().sum(dim=(0, 2))
    assert (per_layer > 0).all()


def test_deep_prompt_under_bf16_autocast_is_close(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=4), tok.pad_token_id)
    matrix = _deep(model)
    ref, _ = _scores_and_grad(model, matrix, batch, PLAIN)
    fast, g_fast = _scores_and_grad(model, matrix, batch, ScoringOptions(strategy="kv_tree"), torch.bfloat16)
    finite = torch.isfinite(ref)
    assert (fast - ref)[finite].abs().max() < 0.1 * max(1.0, float(ref[finite].abs().max()))
    assert torch.isfinite(g_fast).all() and g_fast.abs().sum() > 0


def test_evaluation_entry_point_shares_the_deep_prefix(tiny_backbone):
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    prompt = KVPrompt(_deep(model, 3), prefix_shape(model))
    enc = encode_examples(EXAMPLES * 3, tok, n_prompt=3)
    fast = choice_scores(model, enc, prompt, pad_id=tok.pad_token_id, max_tokens=300, max_examples=5)
    plain = choice_scores(model, enc, prompt, pad_id=tok.pad_token_id, max_tokens=300, max_examples=5, options=PLAIN)
    for a, b in zip(fast.logprobs, plain.logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_a_deep_run_trains_resumes_and_evaluates(tmp_path, toy_data, tiny_llama, interrupt_at):
    """Through the same loop as a soft prompt: the prefix moves, best.safetensors is written, an interrupted run resumes
    to the bit-identical prompt, and its final metrics are what the evaluator gives its saved prompt."""
    from softprompt.evaluate import EVAL_SEED, evaluator_for
    from softprompt.model.prompt import SoftPrompt
    from softprompt.training import train

    cfg = tiny_config(toy_data, method="deep", epochs=2, dev_size=0, lr=None)
    whole = train(cfg, tmp_path / "whole", backbone=tiny_llama, progress=False)
    saved = SoftPrompt.load(tmp_path / "whole" / "prompt.safetensors")
    assert saved.weight.shape == (3, prefix_shape(tiny_llama.model).width)
    assert not torch.equal(saved.weight, saved.initial)  # it trained
    ev = evaluator_for(cfg, tiny_llama)
    deep = KVPrompt(saved.weight, prefix_shape(tiny_llama.model))
    again = ev.evaluate("rte", deep, limit=cfg.max_eval, seed=EVAL_SEED, calibrate=True)
    assert again.accuracy == whole.final.accuracy and again.f1_macro == whole.final.f1_macro
    assert again.calibrated["prior"] == pytest.approx(whole.final.calibrated["prior"], abs=1e-9)
    interrupt_at(4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False)
    interrupt_at(None)
    train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False, resume=True)
    assert torch.equal(SoftPrompt.load(tmp_path / "cut" / "prompt.safetensors").weight, saved.weight)


def test_a_deep_run_round_trips_through_peft_with_equal_scores(tmp_path, toy_data, tiny_model_dir):
    """export --peft writes a PREFIX_TUNING adapter that PEFT loads onto the same base model and scores exactly as
    softprompt scores the run; import-peft takes it back as a deep run that evaluates to the same numbers."""
    import json

    from peft import AutoPeftModelForCausalLM

    from softprompt.evaluate import EVAL_SEED, evaluator_for_run
    from softprompt.model.backbones import load_backbone
    from softprompt.peft_interop import export_peft, import_peft
    from softprompt.runs.directory import load_run, scoring_prompt
    from softprompt.training import train

    cfg = tiny_config(toy_data, method="deep", model=str(tiny_model_dir), epochs=1, dev_size=0, lr=None)
    train(cfg, tmp_path / "run", progress=False, baselines=False)
    adapter = export_peft(tmp_path / "run", tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["num_virtual_tokens"] == 3
    assert config["base_model_name_or_path"] == str(tiny_model_dir) and not config["prefix_projection"]

    run = load_run(tmp_path / "run")
    backbone = load_backbone(str(tiny_model_dir))
    ours = scoring_prompt(run, run.prompt(), backbone, "the run")
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    ids = torch.tensor([backbone.tokenizer("a charming movie therefore the dog ran")["input_ids"]])
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        mine = full_logits(backbone.model, ours, ids)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)

    back = load_run(import_peft(adapter, tmp_path / "back", task="rte"))
    assert back.method == "deep" and torch.equal(back.prompt().weight, run.prompt().weight)
    scores = []
    for r in (run, back):
        ev = evaluator_for_run(run, backbone)  # the original run's layout for both (the importer's job is the prefix)
        scores.append(ev.evaluate("rte", scoring_prompt(r, r.prompt(), backbone, "p"), limit=cfg.max_eval, seed=EVAL_SEED))
    assert scores[0].accuracy == scores[1].accuracy and scores[0].loss == pytest.approx(scores[1].loss, abs=1e-9)


def test_prefix_adapters_of_another_layout_are_refused(tmp_path, tiny_model_dir):
    """An adapter laid out for another model (same width, other layers x heads), or one holding an MLP, is refused in
    one line naming the file; a soft-prompt readout of a deep run says it does not apply."""
    import json

    from safetensors.torch import save_file

    from softprompt.peft_interop import import_peft

    def adapter(name: str, **cfg) -> Path:
        d = tmp_path / name
        d.mkdir()
        base = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 2, "token_dim": 16,
                "num_attention_heads": 2, "num_layers": 2, "prefix_projection": False}  # fmt: skip
        config = {**base, **cfg}
        (d / "adapter_config.json").write_text(json.dumps(config))
        width = config["num_layers"] * 2 * config["token_dim"]
        save_file({"prompt_embeddings": torch.randn(2, width)}, str(d / "adapter_model.safetensors"))
        return d

    ok = import_peft(adapter("ok"), tmp_path / "ok-run", model=str(tiny_model_dir))  # the tiny llama: 2 x 2 x 8
    assert json.loads((ok / "run.json").read_text())["prompt"]["prefix_shape"] == [2, 2, 8]
    with pytest.raises(SoftPromptError, match=r"laid out for 4 layers x 2 key/value heads x 4.*another model"):
        import_peft(adapter("other", num_layers=4, token_dim=8), tmp_path / "x", model=str(tiny_model_dir))
    with pytest.raises(SoftPromptError, match=r"prefix_projection' is true"):
        import_peft(adapter("mlp", prefix_projection=True), tmp_path / "y", model=str(tiny_model_dir))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    from softprompt.analysis.neighbors import neighbors_report
    from softprompt.model.backbones import load_backbone

    with pytest.raises(SoftPromptError, match=r"trained method 'deep': nearest tokens .* not applicable"):
        neighbors_report(load_backbone(str(tiny_model_dir)), [tmp_path / "ok-run"])
