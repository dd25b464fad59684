"""The low-precision copy with trainable weights (LoRA): frozen weights stored in bf16, adapters shared."""

from __future__ import annotations

import torch

from softprompt import scoring
from softprompt.scoring.lowp import COPIES


def test_trained_weights_are_shared_and_their_updates_keep_the_copy(tiny_llama):
    model = tiny_llama.model
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(True)  # one trainable matrix, the rest frozen
    try:
        low = scoring.compute_model(model, torch.bfloat16)
        assert low is not model
        assert low.get_input_embeddings().weight is emb  # the same parameter, float32, trainable
        frozen = [p for p in low.parameters() if p is not emb and p.dim() >= 2]
        assert frozen and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in frozen)
        with torch.no_grad():
            emb.add_(0.5)  # an optimiser step on a trained weight: the copy still holds it
        assert scoring.compute_model(model, torch.bfloat16) is low
        frozen_model = next(p for p in model.parameters() if p.dim() >= 2 and not p.requires_grad)
        with torch.no_grad():
            frozen_model.mul_(1.0)  # a frozen weight changed in place: a fresh copy
        assert scoring.compute_model(model, torch.bfloat16) is not low
    finally:
        emb.requires_grad_(False)
        COPIES._copies.pop(model, None)  # noqa: SLF001


def test_lora_training_uses_the_copy_when_asked(tiny_llama, toy_data, tmp_path, monkeypatch):
    """LoRA training scores through the bf16 copy of the frozen weights (the adapters shared) only when asked."""
    from softprompt.config import TrainConfig
    from softprompt.runs.directory import load_run
    from softprompt.training import train

    copied = []
    real_get = COPIES.get

    def counting_get(model, dtype):
        copied.append(any(p.requires_grad for p in model.parameters()))
        return real_get(model, dtype)

    monkeypatch.setattr(COPIES, "get", counting_get)
    for use in (True, False):
        cfg = TrainConfig(
            task="rte",
            model="tiny",
            method="lora",
            epochs=1,
            batch_size=4,
            lr=1e-2,
            data_dir=str(toy_data),
            compute_dtype="bfloat16",
            device="cpu",
        )
        out = tmp_path / f"lowp-{use}"
        train(cfg, out, backbone=tiny_llama, progress=False, scoring=scoring.ScoringOptions(lowp_weights=use))
        assert load_run(out).record.final.accuracy is not None
        assert any(copied) == use  # the copy served the training steps (adapters trainable) only when asked
        copied.clear()


def _lora_grads(model, batch, options):
    with scoring.autocast_context(torch.device("cpu"), torch.bfloat16):
        s = scoring.batch_choice_scores(model, None, batch, options=options)
    loss = scoring.choice_loss(s, batch.labels)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return s.detach().float(), torch.cat([g.flatten() for g in grads]), names


def test_lora_gradients_through_the_copy_equal_casting_on_every_use(tiny_llama):
    """Scores and adapter gradients under bf16 autocast: the copy computes what per-use casts compute."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    from softprompt.data.batching import collate, encode_examples
    from softprompt.tasks.base import Example

    model = copy.deepcopy(tiny_llama.model)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    model = inject_adapter_in_model(cfg, model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    tok = tiny_llama.tokenizer
    examples = [
        Example(f"Review {i}: a {w} film.\nAnswer:", (" good", " bad"), i % 2)
        for i, w in enumerate(["fine", "dull", "great", "poor"])
    ]
    batch = collate(encode_examples(examples, tok), tok.pad_token_id)
    s_copy, g_copy, names = _lora_grads(model, batch, scoring.ScoringOptions(lowp_weights=True))
    assert scoring.compute_model(model, torch.bfloat16) is not model  # the copy was there to use
    s_cast, g_cast, _ = _lora_grads(model, batch, scoring.ScoringOptions(lowp_weights=False))
    torch.testing.assert_close(s_copy, s_cast, atol=2e-2, rtol=2e-2)
    cos = torch.nn.functional.cosine_similarity(g_copy, g_cast, dim=0).item()
    assert cos > 0.999
