"""Every scoring strategy against the plain one: same log-likelihoods, predictions and prompt gradient.

The plain path is one forward over right-padded [prompt; row] rows with their padding mask (strategy
"plain"). `padded` (the GPU path) is the same forward without the mask and host round trips; the KV
prefix tree (`kv_tree`, the CPU path) shares the prompt's keys/values, computes a multi-token-choice
example's context once and splits a batch into length groups; under CPU autocast both use a
low-precision weight copy and a float32 head. `auto` is one of them per device. Both tiny
architectures matter: llama (RoPE, position ids) and BLOOM (ALiBi from the mask).
"""

from __future__ import annotations

import pytest
import torch

from softprompt import scoring
from softprompt.data.batching import collate, encode_examples
from softprompt.scoring import (
    PLAIN,
    ScoringOptions,
    ScoringStats,
    batch_choice_scores,
    choice_loss,
    choice_scores,
    kv_prefix,
    kv_tree,
    plan_groups,
)
from softprompt.tasks.base import Example

# mixed lengths, 2 and 3 choices, single- and multi-token choices, choices sharing first tokens
EXAMPLES = [
    Example("The cat sat on the mat.\nQuestion: True or False?\nAnswer:", (" True", " False"), 0),
    Example("a boring movie", (" positive", " negative"), 1),
    Example("the dog ran away quickly because", (" the cat sat on the mat", " it was charming"), 0),
    Example("Does the hypothesis entail", (" yes", " no", " Neither"), 2),
    Example("a charming movie therefore", (" the dog ran", " the dog sat on the mat quickly"), 1),
    Example("good", (" the cat", " True", " the movie is boring and affecting"), 2),
    Example(
        "a movie review that is good, bad, charming, boring and affecting; the dog ran away quickly. " * 3,
        (" positive", " negative"),
        0,
    ),
]

VARIANTS = {  # every strategy but the reference, and the prefix tree's switches one at a time
    "all": {},
    "no_prompt_sharing": {"share_prompt": False},
    "no_prefix_sharing": {"share_prefix": False},
    "no_split": {"split_lengths": False},
    "split_every_row": {"group_overhead_tokens": 0},
    "share_prompt_always": {"group_overhead_tokens": 1},
    "padded": {"strategy": "padded"},
    "padded_with_mask": {"strategy": "padded", "padding_mask": True},
    "auto": {"strategy": "auto"},
}


FAST = ScoringOptions(strategy="kv_tree")  # the prefix tree, never a silent retreat to the plain path
PADDED = ScoringOptions(strategy="padded")  # what `auto` runs on a GPU


def _scores_and_grad(model, prompt, batch, options, dtype=None):
    p = prompt.detach().clone().requires_grad_(True)
    ctx = scoring.autocast_context(torch.device("cpu"), dtype)
    with ctx:
        s = batch_choice_scores(model, p, batch, options=options)
    loss = choice_loss(s, batch.labels)
    loss.backward()
    return s.detach(), p.grad.detach()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_equals_plain_fp32(tiny_backbone, variant):
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    options = ScoringOptions(**{"strategy": "kv_tree", **VARIANTS[variant]})
    torch.manual_seed(1)
    prompt = torch.randn(5, model.config.hidden_size) * 0.1
    enc = encode_examples(EXAMPLES, tok, n_prompt=5)
    assert any(len(e.rows) > 1 for e in enc) and len({len(e.rows[0].ids) for e in enc}) > 3
    batch = collate(enc, tok.pad_token_id)
    plain, g_plain = _scores_and_grad(model, prompt, batch, PLAIN)
    fast, g_fast = _scores_and_grad(model, prompt, batch, options)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert fast.argmax(1).tolist() == plain.argmax(1).tolist()
    torch.testing.assert_close(g_fast, g_plain, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("options", [FAST, PADDED], ids=["kv_tree", "padded"])
def test_fast_path_without_prompt(tiny_backbone, options):
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    enc = encode_examples(EXAMPLES, tok)
    batch = collate(enc, tok.pad_token_id)
    with torch.no_grad():
        plain = batch_choice_scores(model, None, batch, options=PLAIN)
        fast = batch_choice_scores(model, None, batch, options=options)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def test_auto_on_cpu_is_the_prefix_tree_bit_for_bit(tiny_backbone):
    """The device table's CPU row: `auto` runs exactly the prefix tree (same scores and gradient, not just close)."""
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    prompt = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(4)) * 0.1
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=5), tok.pad_token_id)
    for dtype in (None, torch.bfloat16):
        auto, g_auto = _scores_and_grad(model, prompt, batch, ScoringOptions(), dtype)
        tree, g_tree = _scores_and_grad(model, prompt, batch, FAST, dtype)
        assert torch.equal(auto, tree) and torch.equal(g_auto, g_tree)


def test_auto_strategy_table():
    assert ScoringOptions().resolved(torch.device("cpu")) == "kv_tree"
    for device in ("cuda", "cuda:1", torch.device("cuda", 0), "mps", "xpu"):
        assert ScoringOptions().resolved(device) == "padded", device
    for strategy in ("plain", "padded", "kv_tree"):  # an explicit strategy runs everywhere as asked
        assert ScoringOptions(strategy=strategy).resolved("cuda") == ScoringOptions(strategy=strategy).resolved("cpu") == strategy


def test_fast_path_really_skips_work(tiny_backbone):
    """The tree computes fewer tokens than the padded rows: the prompt once, shared contexts once."""
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    enc = encode_examples(EXAMPLES, tok, n_prompt=6)
    batch = collate(enc, tok.pad_token_id)
    prompt = torch.randn(6, model.config.hidden_size) * 0.1
    plain, fast = ScoringStats(), ScoringStats()
    with torch.no_grad():
        batch_choice_scores(model, prompt, batch, options=PLAIN, stats=plain)
        batch_choice_scores(model, prompt, batch, options=ScoringOptions(group_overhead_tokens=16), stats=fast)
    assert fast["padded"] < plain["padded"] / 2
    assert fast["real"] < plain["real"]
    assert fast["head"] == plain["head"] == len(batch.target_row)
    assert "fallbacks" not in fast and type(model) not in kv_tree.FALLBACKS  # no silent retreat to the plain path


@pytest.mark.parametrize("fast_options", [FAST, PADDED], ids=["kv_tree", "padded"])
def test_bf16_fast_close_to_plain_and_same_predictions(tiny_backbone, fast_options):
    """Under bf16 autocast (low-precision weight copy, float32 head) scores stay within bf16 error."""
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    torch.manual_seed(2)
    prompt = torch.randn(4, model.config.hidden_size) * 0.1
    enc = encode_examples(EXAMPLES, tok, n_prompt=4)
    batch = collate(enc, tok.pad_token_id)
    ref, g_ref = _scores_and_grad(model, prompt, batch, PLAIN)  # float32 reference
    fast, g_fast = _scores_and_grad(model, prompt, batch, fast_options, dtype=torch.bfloat16)
    plain, g_plain = _scores_and_grad(model, prompt, batch, PLAIN, dtype=torch.bfloat16)
    finite = torch.isfinite(ref)
    err_fast = (fast - ref)[finite].abs().max()
    err_plain = (plain - ref)[finite].abs().max()
    assert err_fast < 0.1 * max(1.0, float(ref[finite].abs().max()))
    assert err_fast <= 2 * err_plain + 0.02  # no worse than autocast on the float32 weights
    margin = (ref.topk(2, dim=1).values[:, 0] - ref.topk(2, dim=1).values[:, 1]).abs()
    clear = margin > 4 * err_fast  # predictions must agree wherever the choice is not a near tie
    assert fast.argmax(1)[clear].tolist() == ref.argmax(1)[clear].tolist()
    cos = torch.nn.functional.cosine_similarity(g_fast.flatten(), g_ref.flatten(), dim=0)
    assert cos > 0.98, cos


@pytest.mark.parametrize("options", [FAST, PADDED], ids=["kv_tree", "padded"])
def test_choice_scores_fast_equals_plain_with_mixed_batches(tiny_backbone, options):
    """The evaluation entry point (the tree: prompt keys/values computed once for all batches)."""
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    prompt = torch.randn(3, model.config.hidden_size) * 0.1
    enc = encode_examples(EXAMPLES * 3, tok, n_prompt=3)
    fast = choice_scores(model, enc, prompt, pad_id=tok.pad_token_id, max_tokens=300, max_examples=5, options=options)
    plain = choice_scores(model, enc, prompt, pad_id=tok.pad_token_id, max_tokens=300, max_examples=5, options=PLAIN)
    for a, b in zip(fast.logprobs, plain.logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert fast.predictions == plain.predictions


def test_low_precision_copy_cached_and_refreshed(tiny_llama):
    model = tiny_llama.model
    low = scoring.compute_model(model, torch.bfloat16)
    assert low is not model and all(p.dtype == (torch.bfloat16 if p.dim() >= 2 else torch.float32) for p in low.parameters())
    assert scoring.compute_model(model, torch.bfloat16) is low
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert scoring.compute_model(model, None) is model and scoring.compute_model(model, torch.float32) is model
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # an in-place change to a weight invalidates the copy
    fresh = scoring.compute_model(model, torch.bfloat16)
    assert fresh is not low
    torch.testing.assert_close(next(fresh.parameters()).float(), next(model.parameters()), atol=0.05, rtol=0.01)
    for p in model.parameters():  # a model whose matrices all train (full fine-tuning) is never copied
        p.requires_grad_(p.dim() >= 2)
    try:
        assert scoring.compute_model(model, torch.bfloat16) is model
    finally:
        for p in model.parameters():
            p.requires_grad_(False)


@pytest.mark.parametrize(
    "lengths",
    [[5], [3, 3, 3], [10, 1, 100, 2, 50, 51, 52], list(range(1, 40)), [7, 7, 200, 7]],
)
@pytest.mark.parametrize("overhead", [0, 8, 48, 10_000])
def test_plan_groups_is_optimal_partition(lengths, overhead):
    groups = plan_groups(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))

    def cost(gs):
        return sum(overhead + len(g) * max(lengths[i] for i in g) for g in gs)

    assert cost(groups) <= cost([list(range(len(lengths)))])
    assert cost(groups) <= sum(overhead + n for n in lengths)
    if overhead >= 10_000:
        assert len(groups) == 1


@pytest.mark.parametrize("n,bs", [(1, 8), (7, 8), (8, 8), (64, 8), (67, 8), (300, 4), (50, 1)])
def test_length_grouped_order_is_a_deterministic_permutation_with_less_padding(n, bs):
    from softprompt.data.batching import length_grouped_order

    g = torch.Generator().manual_seed(n)
    lengths = torch.randint(5, 300, (n,), generator=g).tolist()
    order = torch.randperm(n, generator=g).tolist()
    grouped = length_grouped_order(order, lengths, bs)
    assert sorted(grouped) == list(range(n)) and grouped == length_grouped_order(order, lengths, bs)
    if n % bs:  # the partial batch stays last, so chunking by bs gives full batches first
        assert len(grouped[-(n % bs) :]) == n % bs

    def padded(o):
        return sum(len(o[k : k + bs]) * max(lengths[i] for i in o[k : k + bs]) for k in range(0, n, bs))

    assert padded(grouped) <= padded(order)


def test_model_rejecting_the_cache_falls_back_to_plain(tiny_llama, monkeypatch):
    """A model family whose forward rejects the external cache gets the plain path, with a warning."""
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=3), tok.pad_token_id)
    prompt = torch.randn(3, model.config.hidden_size) * 0.1

    def reject(*args, **kwargs):
        raise TypeError("forward() got an unexpected keyword argument 'cache'")

    monkeypatch.setattr(kv_tree, "target_hidden", reject)
    stats = ScoringStats()
    try:
        with torch.no_grad(), pytest.warns(RuntimeWarning, match="plain path"):
            fast = batch_choice_scores(model, prompt, batch, stats=stats)  # the default strategy, "auto"
        assert type(model) in kv_tree.FALLBACKS and stats["fallbacks"] == 1
        with torch.no_grad():
            plain = batch_choice_scores(model, prompt, batch, options=PLAIN)
        torch.testing.assert_close(fast, plain)
    finally:
        kv_tree.FALLBACKS.discard(type(model))


def test_kv_tree_asked_for_where_it_does_not_fit_is_a_clear_error(tiny_llama, monkeypatch):
    """`--scoring-strategy kv_tree` never retreats silently: where the tree does not fit, one line says what to use."""
    from softprompt.errors import SoftPromptError

    tok = tiny_llama.tokenizer
    batch = collate(encode_examples(EXAMPLES, tok), tok.pad_token_id)
    monkeypatch.setattr(kv_tree, "target_hidden", lambda *a, **k: None)  # as for a model without an external cache
    with torch.no_grad(), pytest.raises(SoftPromptError, match="does not fit LlamaForCausalLM .* auto or padded"):
        batch_choice_scores(tiny_llama.model, None, batch, options=FAST)
    with torch.no_grad():  # `auto` takes the single forward instead
        torch.testing.assert_close(
            batch_choice_scores(tiny_llama.model, None, batch), batch_choice_scores(tiny_llama.model, None, batch, options=PLAIN)
        )


CHAT = "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"


@pytest.mark.parametrize("with_prompt", [True, False])
@pytest.mark.parametrize("variant", ["all", "split_every_row", "share_prompt_always", "no_split"])
def test_shared_chat_head_is_cached_once_with_the_same_numbers(tiny_backbone, with_prompt, variant):
    """In the chat format every row starts with the template's head: the tree caches it with the prompt
    (stage 1), for training batches and once per evaluation, and scores, gradients and predictions stay
    those of the plain path."""
    import copy

    model, tok = tiny_backbone.model, copy.deepcopy(tiny_backbone.tokenizer)
    tok.chat_template = CHAT
    options = ScoringOptions(**{"strategy": "kv_tree", **VARIANTS[variant]})
    enc = encode_examples(EXAMPLES, tok, n_prompt=5 if with_prompt else 0, prompt_format="chat")
    rows = [r.ids for e in enc for r in e.rows]
    c = kv_prefix.shared_length(rows, [t[0] for e in enc for r in e.rows for t in r.targets])
    assert c >= 3 and all(r[:c] == rows[0][:c] for r in rows)  # the head "<|user|>" is shared
    batch = collate(enc, tok.pad_token_id)
    prompt = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 0.1
    if with_prompt:
        plain, g_plain = _scores_and_grad(model, prompt, batch, PLAIN)
        fast, g_fast = _scores_and_grad(model, prompt, batch, options)
        torch.testing.assert_close(g_fast, g_plain, atol=1e-6, rtol=1e-4)
    else:
        with torch.no_grad():
            plain = batch_choice_scores(model, None, batch, options=PLAIN)
            fast = batch_choice_scores(model, None, batch, options=options)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    evaluated = choice_scores(
        model, enc, prompt if with_prompt else None, pad_id=tok.pad_token_id, max_examples=3, options=options
    )
    reference = choice_scores(model, enc, prompt if with_prompt else None, pad_id=tok.pad_token_id, max_examples=3, options=PLAIN)
    for a, b in zip(evaluated.logprobs, reference.logprobs, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=1e-5)


def test_shared_head_saves_tokens_and_never_swallows_a_target():
    assert kv_prefix.shared_length([[1, 2, 3, 4], [1, 2, 5]], [3, 2]) == 2
    assert kv_prefix.shared_length([[1, 2, 3, 4], [1, 2, 3, 9]], [1, 3]) == 1  # a target at position 1: cache only 1 token
    assert kv_prefix.shared_length([[1, 2], [1, 2]], [1, 1]) == 1  # at least one token left in every row
    assert kv_prefix.shared_length([[7, 2], [1, 2]], [1, 1]) == 0


def test_low_precision_copy_only_on_the_listed_device_types(tiny_llama):
    """By default the copy is a CPU measure; a GPU gets it only when asked (`lowp_devices`, the bench's lowp arm)."""
    import copy

    model = copy.deepcopy(tiny_llama.model).to("meta")
    assert scoring.compute_model(model, torch.bfloat16) is model
    low = scoring.compute_model(model, torch.bfloat16, scoring.ScoringOptions(lowp_devices=("cpu", "meta")))
    assert low is not model and low.device.type == "meta"
    assert {p.dtype for p in low.parameters() if p.dim() >= 2} == {torch.bfloat16}


@pytest.mark.parametrize("options", [FAST, PADDED], ids=["kv_tree", "padded"])
def test_bf16_weights_without_autocast_score_like_plain(tiny_backbone, options):
    """`--dtype bfloat16 --compute-dtype float32`: low-precision weights and no autocast. The prefix tree used to run
    its residual stream in float32 there (as it does under autocast) and crashed on the first matmul."""
    import copy

    model = copy.deepcopy(tiny_backbone.model).to(torch.bfloat16)
    tok = tiny_backbone.tokenizer
    torch.manual_seed(1)
    prompt = (torch.randn(5, model.config.hidden_size) * 0.1).to(torch.bfloat16)
    batch = collate(encode_examples(EXAMPLES, tok, n_prompt=5), tok.pad_token_id)
    with torch.no_grad():
        plain = batch_choice_scores(model, prompt, batch, options=PLAIN)
        fast = batch_choice_scores(model, prompt, batch, options=options)
    assert fast.dtype == plain.dtype
    torch.testing.assert_close(fast.float(), plain.float(), atol=0.15, rtol=0.05)
    assert (fast.argmax(1) == plain.argmax(1)).float().mean() >= 0.8
