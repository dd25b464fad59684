"""Self-description (analysis/describe*.py and patching.py, `softprompt describe`): the embed and patch probes on the tiny random
models (llama and BLOOM), the patch hook's reach (placeholder positions, prefill only, removed afterwards), the
description score on hand examples, the report and the command; the identity probe on the real offline model."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.analysis.describe import describe_report
from softprompt.analysis.describe_probes import _embeds, describe_input, describe_prompt, describe_text
from softprompt.analysis.describe_scoring import description_score, stem, text_score
from softprompt.analysis.patching import PatchRecord, decoder_layers, patch_layer, resolve_layers, source_states
from softprompt.errors import SoftPromptError
from tests.conftest import tiny_config


def _prompt(backbone, n: int = 3, seed: int = 0) -> torch.Tensor:
    """Rows on the embedding scale: random vocabulary rows plus noise (a plausible soft prompt)."""
    g = torch.Generator().manual_seed(seed)
    emb = backbone.model.get_input_embeddings().weight.detach()
    ids = torch.randint(0, emb.shape[0], (n,), generator=g)
    return emb[ids].float() + 0.01 * torch.randn(n, emb.shape[1], generator=g)


def _layer_output(model, layer: int, embeds: torch.Tensor) -> torch.Tensor:
    """Decoder block `layer`'s output over `embeds` in one forward (hooks registered before this one apply first)."""
    seen = {}

    def hook(_m, _a, output):
        seen["h"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(inputs_embeds=embeds, use_cache=False)
    finally:
        handle.remove()
    return seen["h"][0]


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- layers and inputs


def test_decoder_layers_are_found_and_checked(tiny_backbone):
    model = tiny_backbone.model
    assert len(decoder_layers(model)) == 2
    assert resolve_layers(model, None) == [0]  # 2 blocks: only block 0 can be patched
    assert resolve_layers(model, [0, 0]) == [0]
    for bad in ([1], [2], [-1]):
        with pytest.raises(SoftPromptError, match=r"out of range: .* has 2 decoder layers, expected 0..0"):
            resolve_layers(model, bad)
    with pytest.raises(SoftPromptError, match="cannot find the decoder layers of Linear"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_the_describing_input_puts_the_rows_at_the_placeholders(tiny_backbone):
    inp = describe_input(tiny_backbone.tokenizer, 4)
    assert inp.format == "plain" and inp.n == 4
    assert len(set(inp.ids[inp.positions])) == 1  # four copies of the placeholder token
    rows = _prompt(tiny_backbone, 4)
    embeds = _embeds(tiny_backbone, inp, rows)[0]
    plain = _embeds(tiny_backbone, inp, None)[0]
    assert torch.equal(embeds[inp.positions], rows)
    keep = torch.ones(len(inp.ids), dtype=torch.bool)
    keep[inp.positions] = False
    assert torch.equal(embeds[keep], plain[keep])


# ----------------------------------------------------------------------------- probes


def test_describe_prompt_shapes_and_seeded_samples(tiny_backbone):
    prompt = _prompt(tiny_backbone)
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = describe_prompt(tiny_backbone, prompt, samples=2, max_new_tokens=4, seed=1)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random state is left alone
    kinds = [(d["probe"], d["layer"], d["decoding"], d["sample"]) for d in first]
    assert kinds == [
        ("embed", None, "greedy", None),
        ("embed", None, "sample", 0),
        ("embed", None, "sample", 1),
        ("patch", 0, "greedy", None),
    ]
    assert all(isinstance(d["text"], str) for d in first)
    assert describe_prompt(tiny_backbone, prompt, samples=2, max_new_tokens=4, seed=1) == first
    other = describe_prompt(tiny_backbone, prompt, samples=2, max_new_tokens=4, seed=2, probes=("embed",))
    assert other[0] == first[0]  # greedy does not depend on the seed
    assert [d["text"] for d in other[1:]] != [d["text"] for d in first[1:3]]  # samples do
    assert describe_prompt(tiny_backbone, prompt, samples=0, max_new_tokens=4, layers=[]) == first[:1]  # no patch layers


def test_describe_prompt_refuses_bad_input(tiny_backbone):
    prompt = _prompt(tiny_backbone)
    cases = [
        (dict(samples=-1), "samples must be 0 or more"),
        (dict(max_new_tokens=0), "max_new_tokens must be at least 1"),
        (dict(probes=("look",)), "unknown probe"),
        (dict(source="middle"), "unknown patch source"),
        (dict(layers=[7]), "out of range"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SoftPromptError, match=message):
            describe_prompt(tiny_backbone, prompt, **kwargs)
    with pytest.raises(SoftPromptError, match="width 8 but the model's hidden size is 32"):
        describe_prompt(tiny_backbone, torch.zeros(2, 8))
    with pytest.raises(SoftPromptError, match="NaN"):
        describe_prompt(tiny_backbone, torch.full((2, 32), float("nan")))


def test_source_states_are_the_rows_hidden_states(tiny_backbone):
    """Front: the rows alone from position 0; context: after the prefix tokens, the prefix's states dropped."""
    rows = _prompt(tiny_backbone, 3)
    emb = tiny_backbone.model.get_input_embeddings()
    prefix = [5, 6, 7, 8]
    front = source_states(tiny_backbone, rows, [0])[0]
    assert torch.allclose(front, _layer_output(tiny_backbone.model, 0, rows[None]), atol=1e-6)
    context = source_states(tiny_backbone, rows, [0], prefix)[0]
    full = torch.cat([emb(torch.tensor(prefix)), rows])[None]
    assert context.shape == (3, 32)
    assert torch.allclose(context, _layer_output(tiny_backbone.model, 0, full)[4:], atol=1e-6)
    assert not torch.allclose(context, front, atol=1e-4)


def test_the_patch_changes_only_the_placeholders_and_only_in_the_prefill(tiny_backbone):
    model = tiny_backbone.model
    inp = describe_input(tiny_backbone.tokenizer, 3)
    target = _embeds(tiny_backbone, inp, None)
    states = torch.randn(3, 32) * 5
    before = _layer_output(model, 0, target)
    hooks = _hook_count(model)
    with patch_layer(model, 0, inp.positions, states, len(inp.ids)) as record:
        patched = _layer_output(model, 0, target)  # the prefill: patched
        again = _layer_output(model, 0, target)  # a later forward: left alone
    assert isinstance(record, PatchRecord) and record.patched == 1 and record.calls == 2
    changed = (patched - before).abs().amax(dim=1) > 0
    expected = torch.zeros(len(inp.ids), dtype=torch.bool)
    expected[inp.positions] = True
    assert torch.equal(changed, expected)
    assert torch.allclose(patched[inp.positions], states)
    assert torch.equal(again, before)
    assert _hook_count(model) == hooks  # removed on exit


def test_the_patch_hook_sees_one_prefill_then_decode_steps(tiny_backbone):
    from softprompt.analysis.describe_probes import _generate

    model = tiny_backbone.model
    inp = describe_input(tiny_backbone.tokenizer, 2)
    target = _embeds(tiny_backbone, inp, None)
    with patch_layer(model, 0, inp.positions, torch.randn(2, 32), len(inp.ids)) as record:
        _generate(tiny_backbone, target, max_new_tokens=5)
    assert record.patched == 1
    assert record.lengths[0] == len(inp.ids) and record.lengths[1:] == [1] * (len(record.lengths) - 1)
    assert len(record.lengths) == 5  # the prefill and four cached decode steps
    wrong = patch_layer(model, 0, inp.positions, torch.randn(2, 32), 99)
    with pytest.raises(SoftPromptError, match="expected a prefill over 99 positions"), wrong:
        _generate(tiny_backbone, target, max_new_tokens=2)


def test_describing_leaves_the_model_as_it_was(tiny_backbone):
    model = tiny_backbone.model
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        before = model(ids).logits
    hooks = _hook_count(model)
    describe_text(tiny_backbone, "The cat sat on the mat.", samples=1, max_new_tokens=3)
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before, after) and _hook_count(model) == hooks


# ----------------------------------------------------------------------------- score


def test_description_score_on_hand_examples():
    good = description_score("Decide whether a movie review is positive or negative.", "sst2")
    # sst2: "Is the sentiment of this movie review positive or negative?" -> sentiment, movie, review, positive, negative
    assert good["content_recall"] == pytest.approx(4 / 5) and good["label_recall"] == 1.0
    assert good["score"] == pytest.approx(0.9) and good["content_missing"] == [stem("sentiment")]
    assert description_score("The cat sat on the mat.", "sst2")["score"] == 0.0
    half = description_score("The reviews are positively glowing.", "sst2")  # plural and adverb stemmed
    assert half["content_found"] == [stem("review"), stem("positive")] and half["labels_found"] == ["positive"]
    rte = description_score("Answer True or False: does the premise entail the hypothesis?", "rte")
    assert rte["label_recall"] == 1.0 and rte["content_missing"] == ["not"]
    recorded = {"description": "Is it about sports or food?", "label_words": ["sports", "food"]}
    assert description_score("A sentence about sport.", recorded)["score"] == pytest.approx(0.5)
    only_text = text_score("translating English into French", "Translate the sentence from English to French.")
    assert only_text["label_recall"] is None and only_text["score"] == 1.0
    assert text_score("anything", "the of and")["score"] == 0.0  # no content words to find


# ----------------------------------------------------------------------------- report and command


@pytest.fixture
def tiny_run(tmp_path, tiny_llama, tiny_model_dir, toy_data):
    from softprompt.training import train

    train(tiny_config(toy_data, model=str(tiny_model_dir)), tmp_path / "run", backbone=tiny_llama, progress=False)
    return tmp_path / "run"


def test_describe_report_shape_and_file(tmp_path, tiny_llama, tiny_run):
    rep = describe_report(tiny_llama, [tiny_run], tmp_path / "out", text="The cat sat.", samples=1, max_new_tokens=3)
    assert json.loads((tmp_path / "out" / "describe.json").read_text()) == rep
    assert rep["model"] == "tiny-llama" and rep["settings"]["layers"] == [0] and rep["settings"]["format"] == "plain"
    (run,) = rep["runs"]
    assert run["task"] == "rte" and run["path"] == str(tiny_run) and run["seed"] == 0
    for descriptions in (run["descriptions"], run["init"]["descriptions"], rep["identity"]["descriptions"]):
        expected = [("embed", "greedy"), ("embed", "sample"), ("patch", "greedy")]
        if descriptions is run["init"]["descriptions"]:  # the init: greedy probes only (what the report compares)
            expected = [("embed", "greedy"), ("patch", "greedy")]
        assert [(d["probe"], d["decoding"]) for d in descriptions] == expected
        assert all(0.0 <= d["score"]["score"] <= 1.0 for d in descriptions)
    greedy = [d["score"]["score"] for d in run["descriptions"] if d["decoding"] == "greedy"]
    assert run["summary"]["trained_score"] == pytest.approx(sum(greedy) / 2)
    assert run["summary"]["best"]["score"]["score"] == max(d["score"]["score"] for d in run["descriptions"])
    assert run["wall_time_s"] > 0 and rep["identity"]["text"] == "The cat sat."
    alone = describe_report(tiny_llama, [], text="The cat sat.", samples=0, max_new_tokens=2, layers=[])
    assert alone["runs"] == [] and [d["probe"] for d in alone["identity"]["descriptions"]] == ["embed"]
    assert alone["settings"]["probes"] == ["embed"] and rep["settings"]["probes"] == ["embed", "patch"]
    with pytest.raises(SoftPromptError, match="nothing to describe"):
        describe_report(tiny_llama, [])


def test_an_init_shared_by_seeds_is_described_once_and_greedily(tmp_path, tiny_llama, toy_data, monkeypatch):
    """Two seeds started from the same text share their init: its greedy probes run once (no samples: the report
    reads the init's greedy texts and score only), the trained prompts get greedy and samples each. Counted in
    generate calls and sequences: 2 runs x (greedy + 2 samples + 1 patch layer) + 1 init x (greedy + 1 patch layer)
    = 8 calls, 10 sequences (before: 2 x 2 prompts x 3 calls = 12 calls, 16 sequences)."""
    import softprompt.analysis.describe_probes as probes
    from softprompt.training import train

    runs = []
    for seed in (0, 1):
        train(tiny_config(toy_data, init="text", seed=seed), tmp_path / f"s{seed}", backbone=tiny_llama, progress=False)
        runs.append(tmp_path / f"s{seed}")
    real, calls = probes._generate, []

    def counting(backbone, embeds, **kw):
        calls.append(max(kw.get("samples", 0), 1))
        return real(backbone, embeds, **kw)

    monkeypatch.setattr(probes, "_generate", counting)
    rep = describe_report(tiny_llama, runs, samples=2, max_new_tokens=2, layers=[0])
    assert len(calls) == 8 and sum(calls) == 10
    a, b = rep["runs"]
    assert a["init"]["descriptions"] == b["init"]["descriptions"] and a["summary"]["init_score"] == b["summary"]["init_score"]
    assert [d["decoding"] for d in a["descriptions"]] == ["greedy", "sample", "sample", "greedy"]
    # the same texts as describing the init by itself
    alone = describe_report(tiny_llama, runs[:1], samples=0, max_new_tokens=2, layers=[0])
    assert [d["text"] for d in alone["runs"][0]["init"]["descriptions"]] == [d["text"] for d in a["init"]["descriptions"]]


def test_the_describe_command(tmp_path, tiny_run, tiny_model_dir, capsys):
    from softprompt.cli import main

    m = ["--model", str(tiny_model_dir), "--quiet", "--max-new-tokens", "3", "--samples", "1"]
    assert main(["describe", str(tiny_run), "--out", str(tmp_path / "d1"), "--text", "The cat sat.", *m]) == 0
    out = capsys.readouterr().out
    assert "embed@" not in out and "patch@0" in out and "trained" in out and "init" in out and "--text" in out
    rep = json.loads((tmp_path / "d1" / "describe.json").read_text())
    assert len(rep["runs"]) == 1 and "identity" in rep
    assert main(["describe", "--text", "The cat sat.", "--out", str(tmp_path / "d2"), "--layers", "none", *m]) == 0
    assert json.loads((tmp_path / "d2" / "describe.json").read_text())["runs"] == []
    for argv, message in (
        (["--samples", "-1"], "--samples must be 0 or more"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--layers", "5"], "patch layer(s) [5] out of range"),
        (["--layers", "a,b"], "--layers 'a,b': expected comma-separated"),
        (["--layers", ""], "--layers '': expected comma-separated layer indices (e.g. 3,9) or none (an empty item"),
        (["--layers", "0,,1"], "--layers '0,,1': expected comma-separated layer indices (e.g. 3,9) or none (an empty"),
        (["--text", "word " * 5000], "--text is 5,000 words long; the identity probe describes a sentence as long as a "),
        (["--text", "Neitherbecausetherefore " * 200], "tokens long; the identity probe describes a sentence as long"),
        (["--max-new-tokens", "400"], "and 400 new tokens exceed the model's context of 256 positions"),
    ):
        rc = main(["describe", str(tiny_run), "--out", str(tmp_path / "d3"), "--model", str(tiny_model_dir), "--quiet", *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and message in err, err
    assert main(["describe", "--out", str(tmp_path / "d4")]) == 2
    assert "nothing to describe" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the real model


def test_identity_probe_on_smollm(smollm):
    """A prompt made of a known question's embeddings is described with that question's words."""
    text = "Is the movie review positive or negative?"
    found = describe_text(smollm, text, samples=0, max_new_tokens=24)
    by = {(d["probe"], d["layer"]): d["text"].lower() for d in found}
    assert set(by) == {("embed", None), ("patch", 6), ("patch", 9)}
    embed = by[("embed", None)]
    assert ("movie" in embed or "review" in embed) and ("positive" in embed or "negative" in embed), embed
    # the patch probe at the default blocks (6 and 9 of 30) reads it back too (measured: "The movie review is positive.")
    assert all(text_score(by[("patch", layer)], text)["score"] >= 0.5 for layer in (6, 9)), by
