"""Shared fixtures: tiny random llama/BLOOM models with a tiny tokenizer (no download), the real
offline model once per session, and a tiny task written to a temp folder."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH = Path(__file__).resolve().parents[1] / "bench"


@contextlib.contextmanager
def bench_importable():
    """bench/ on sys.path for the block (a module fixture's life): its scripts import as modules (they put src/ on the
    path themselves)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield
    finally:
        sys.path.remove(str(BENCH))


CORPUS = [
    "The cat sat on the mat. Question: True or False? Answer: True False yes no positive negative",
    "Does the hypothesis entail, or not entail the premise? Neither because therefore",
    "a movie review that is good, bad, charming, boring and affecting; the dog ran away quickly.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 20, vocab_size=400, min_frequency=1, special_tokens=["<pad>", "<eos>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>")
    return tok


def _tiny_model(arch: str, vocab: int, **overrides):
    """A tiny random model of `arch`; `overrides` replace config fields (e.g. initializer_range)."""
    from transformers import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            pad_token_id=0,
            **overrides,
        )
        model = LlamaForCausalLM(cfg)
    else:
        cfg = BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4, pad_token_id=0, **overrides)
        model = BloomForCausalLM(cfg)
    from softprompt.model.backbones import freeze

    return freeze(model.float())


@pytest.fixture(params=["llama", "bloom"])
def tiny_backbone(request, tiny_tokenizer):
    from softprompt.model.backbones import Backbone

    model = _tiny_model(request.param, len(tiny_tokenizer))
    return Backbone(model=model, tokenizer=tiny_tokenizer, name=f"tiny-{request.param}", source="test", revision="test")


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    from softprompt.model.backbones import Backbone

    return Backbone(
        model=_tiny_model("llama", len(tiny_tokenizer)),
        tokenizer=tiny_tokenizer,
        name="tiny-llama",
        source="test",
        revision="test",
    )


@pytest.fixture(scope="session")
def smollm():
    """The real offline model, loaded once per test session (dequantized copy cached on disk)."""
    from softprompt.model.backbones import load_backbone

    return load_backbone("smollm2-135m")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from softprompt.tasks.data import default_data_dir

    d = default_data_dir()
    if d is None:
        pytest.skip("../shared/data not present")
    return d


@pytest.fixture
def toy_data(tmp_path) -> Path:
    """A tiny RTE-shaped data folder: rte/train.jsonl and rte/val.jsonl."""
    rows = [
        {"premise": "The cat sat on the mat.", "hypothesis": "The cat sat.", "label": "entailment"},
        {"premise": "The dog ran away quickly.", "hypothesis": "The dog sat.", "label": "not_entailment"},
        {"premise": "A charming movie.", "hypothesis": "The movie is good.", "label": "entailment"},
        {"premise": "A boring movie.", "hypothesis": "The movie is charming.", "label": "not_entailment"},
    ]
    d = tmp_path / "data" / "rte"
    d.mkdir(parents=True)
    for name, recs in (("train.jsonl", rows * 3), ("val.jsonl", rows)):
        with open(d / name, "w") as f:
            for i, r in enumerate(recs):
                f.write(json.dumps(dict(r, idx=i)) + "\n")
    return tmp_path / "data"


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_llama) -> Path:
    """The tiny llama saved as a local model folder, for code paths that load a model by name (CLI, studies)."""
    d = tmp_path / "tiny-model"
    tiny_llama.model.save_pretrained(d)
    tiny_llama.tokenizer.save_pretrained(d)
    return d


def tiny_config(data: Path, **overrides):
    """The config of a tiny run (RTE on the toy data, 3 soft tokens, one epoch, 128 tokens a row): `overrides` replace fields."""
    from softprompt.config import TrainConfig

    base = dict(task="rte", model="tiny", tokens=3, epochs=1, batch_size=4, lr=0.1, data_dir=str(data), compute_dtype="float32",
                max_length=128)  # fmt: skip
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def interrupt_at(monkeypatch):
    """`interrupt_at(n)`: Ctrl-C (a KeyboardInterrupt) at the n-th training batch from now on; `interrupt_at(None)` lifts it."""
    import softprompt.training.step as step_mod

    real = step_mod.LOSSES["choices"]

    def arm(n: int | None) -> None:
        calls = {"n": 0}

        def interrupting(scores, labels, weights=None):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(scores, labels, weights)

        monkeypatch.setitem(step_mod.LOSSES, "choices", real if n is None else interrupting)

    return arm
