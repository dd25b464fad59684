"""The one scoring path: batched == unbatched, right padding, only answer positions scored."""

from __future__ import annotations

import torch

from softprompt.data.batching import collate, encode_examples, length_batches
from softprompt.scoring import batch_choice_scores, choice_scores, full_logits
from softprompt.tasks.base import Example

EXAMPLES = [
    Example("The cat sat on the mat.\nQuestion: True or False?\nAnswer:", (" True", " False"), 0),
    Example("a boring movie", (" positive", " negative"), 1),
    Example("the dog ran away quickly because", (" the cat sat on the mat", " it was charming"), 0),
    Example("Does the hypothesis entail", (" yes", " no", " Neither"), 2),
]


def _reference_logprob(model, prompt, context_ids, choice_ids):
    """Independent computation: one full forward over [prompt; context; choice], sum the choice tokens."""
    ids = torch.tensor([context_ids + choice_ids])
    logits = full_logits(model, prompt, ids).log_softmax(-1)[0]
    n = 0 if prompt is None else prompt.shape[0]
    total = 0.0
    for j, tok in enumerate(choice_ids):
        total += float(logits[n + len(context_ids) - 1 + j, tok])
    return total


def test_scores_match_independent_full_forward(tiny_backbone):
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    prompt = torch.randn(5, model.config.hidden_size) * 0.1
    enc = encode_examples(EXAMPLES, tok, n_prompt=5)
    scores = choice_scores(model, enc, prompt, pad_id=tok.pad_token_id)
    for ex, lps in zip(EXAMPLES, scores.logprobs, strict=True):
        ctx = tok(ex.context, add_special_tokens=False)["input_ids"]
        for choice, lp in zip(ex.choices, lps, strict=True):
            ref = _reference_logprob(model, prompt, ctx, tok(choice, add_special_tokens=False)["input_ids"])
            assert abs(ref - lp) < 1e-4, (ex.context, choice, ref, lp)


def test_batched_equals_unbatched(tiny_backbone):
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    prompt = torch.randn(4, model.config.hidden_size) * 0.1
    enc = encode_examples(EXAMPLES, tok, n_prompt=4)
    batched = batch_choice_scores(model, prompt, collate(enc, tok.pad_token_id))
    for i, e in enumerate(enc):
        single = batch_choice_scores(model, prompt, collate([e], tok.pad_token_id))
        torch.testing.assert_close(batched[i, : e.num_choices], single[0, : e.num_choices], atol=1e-5, rtol=1e-5)
    # the absent third choice of 2-choice examples is masked out
    assert torch.isinf(batched[0, 2]) and batched[0, 2] < 0


def test_right_padding_no_pad_between_prompt_and_text(tiny_llama):
    tok = tiny_llama.tokenizer
    enc = encode_examples(EXAMPLES, tok, n_prompt=3)
    batch = collate(enc, tok.pad_token_id)
    for mask in batch.attention_mask:
        ones = mask.nonzero().flatten()
        # real tokens are a prefix of the row: pads only at the right end
        assert ones.tolist() == list(range(len(ones)))


def test_truncation_cuts_input_never_answer(tiny_llama):
    tok = tiny_llama.tokenizer
    long = Example("the cat sat on the mat " * 40 + "Answer:", (" the cat sat on the mat", " no"), 0)
    enc = encode_examples([long], tok, n_prompt=10, hard_prompt="Does the hypothesis entail", max_length=48)[0]
    assert enc.truncated > 0
    assert all(len(r.ids) + 10 <= 48 for r in enc.rows)
    answer = tok(" the cat sat on the mat", add_special_tokens=False)["input_ids"]
    multi = [r for r in enc.rows if len(r.targets) > 1][0]
    assert [t for _, t, _ in multi.targets] == answer
    hard = tok("Does the hypothesis entail\n", add_special_tokens=False)["input_ids"]
    assert multi.ids[: len(hard)] == hard
    ctx_end = tok(long.context, add_special_tokens=False)["input_ids"][-5:]
    prefix_len = multi.targets[0][0] + 1
    assert multi.ids[prefix_len - len(ctx_end) : prefix_len] == ctx_end


def test_length_batches_cover_all_and_respect_budget(tiny_llama):
    enc = encode_examples(EXAMPLES * 5, tiny_llama.tokenizer)
    batches = length_batches(enc, max_tokens=200, max_examples=3)
    assert sorted(i for b in batches for i in b) == list(range(len(enc)))
    assert all(len(b) <= 3 for b in batches)


def test_bf16_autocast_close_to_fp32(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    enc = encode_examples(EXAMPLES, tok)
    fp32 = choice_scores(model, enc, None, pad_id=tok.pad_token_id)
    bf16 = choice_scores(model, enc, None, pad_id=tok.pad_token_id, compute_dtype=torch.bfloat16)
    for a, b in zip(fp32.logprobs, bf16.logprobs, strict=True):
        for x, y in zip(a, b, strict=True):
            assert abs(x - y) < 0.1 * max(1.0, abs(x))
