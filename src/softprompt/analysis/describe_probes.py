"""The describing probes: the model asked, in words, what a matrix of prompt rows asks for.

`embed` puts the rows as input embeddings inside the describing instruction; `patch` puts their hidden
states at a decoder block over placeholders in that instruction (`patching`). Both generate greedily (the
embed probe also with seeded samples). `describe_text` runs them on a plain sentence's embeddings: the
identity probe, which says how far to trust what comes back for a trained prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from softprompt.analysis.patching import patch_layer, resolve_layers, source_states
from softprompt.errors import SoftPromptError
from softprompt.preemption import safe_point

PROBES = ("embed", "patch")
# The describing instruction: the prompt (or n placeholders) goes between the two parts.
INSTRUCTION = ('Here is an instruction: "', '"\nWhat task does this instruction ask for? Answer in one sentence.')
PLAIN_CUE = "\nAnswer:"  # ends the instruction when the tokenizer has no chat template
PLACEHOLDER = " x"  # the target's placeholder token (Patchscopes' identity prompt uses such filler tokens)
TEMPERATURE = 0.7
# Where the patch probe's source forward reads the prompt rows: after the describing input's own prefix (the chat
# head and the instruction's opening, so the same tokens precede them as precede the placeholders), or alone at
# position 0 (InSPEcT's setting: the states a trained prompt has in use). Measured on the identity probe (see
# analysis/describe.py's docstring): from position 0 plain text reads back faithfully only at blocks 0-2, after the prefix up to block 9.
SOURCES = ("context", "front")
DEFAULT_SOURCE = "context"
# The identity probe reads a sentence as long as a soft prompt: a 5,000-word text came back as empty descriptions
# (SmolLM2-135M), without a word about its length; a longer --text is refused naming this limit.
MAX_TEXT_TOKENS = 256


# ----------------------------------------------------------------------------- the describing input


@dataclass(frozen=True)
class DescribeInput:
    """The describing instruction's token ids with n placeholders at `start`, and its format."""

    ids: tuple[int, ...]
    start: int
    n: int
    format: str  # chat | plain

    @property
    def positions(self) -> slice:
        return slice(self.start, self.start + self.n)


def describe_input(tokenizer, n: int) -> DescribeInput:
    """[chat head] before, n placeholders, after [chat tail or PLAIN_CUE]: pieces tokenized apart, so the
    placeholders sit exactly at `start` whatever the tokenizer merges."""
    from softprompt.data.chat import ChatLayout

    def encode(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []

    if getattr(tokenizer, "chat_template", None):
        layout = ChatLayout.of(tokenizer)
        head, tail, fmt = list(layout.head), list(layout.tail), "chat"
    else:
        head, tail, fmt = [], encode(PLAIN_CUE), "plain"
    before, after = encode(INSTRUCTION[0]), encode(INSTRUCTION[1])
    placeholder = encode(PLACEHOLDER)[-1:] or encode("x")[-1:]
    ids = head + before + placeholder * n + after + tail
    return DescribeInput(tuple(ids), len(head) + len(before), n, fmt)


def _check_rows(backbone, rows: torch.Tensor, what: str) -> torch.Tensor:
    if rows.dim() != 2 or rows.shape[0] < 1:
        raise SoftPromptError(f"{what}: expected an (n, d) matrix with n >= 1, got shape {tuple(rows.shape)}")
    if rows.shape[1] != backbone.hidden_size:
        raise SoftPromptError(
            f"{what} has width {rows.shape[1]} but the model's hidden size is {backbone.hidden_size}: it belongs to another model"
        )
    if not torch.isfinite(rows).all():
        raise SoftPromptError(f"{what} holds NaN or inf values")
    return rows.detach()


def _embeds(backbone, inp: DescribeInput, rows: torch.Tensor | None) -> torch.Tensor:
    """The input embeddings of `inp`, with `rows` in place of the placeholders when given."""
    emb = backbone.model.get_input_embeddings()
    ids = torch.tensor([inp.ids], dtype=torch.long, device=backbone.device)
    embeds = emb(ids)
    if rows is not None:
        embeds = embeds.clone()
        embeds[0, inp.positions] = rows.to(device=embeds.device, dtype=embeds.dtype)
    return embeds


# ----------------------------------------------------------------------------- generation


def _eos_ids(backbone) -> list[int] | None:
    eos = getattr(backbone.model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = backbone.tokenizer.eos_token_id
    if eos is None:
        return None
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


@torch.no_grad()
def _generate(
    backbone, embeds: torch.Tensor, *, max_new_tokens: int, samples: int = 0, temperature: float = 0.0, seed: int = 0
) -> list[str]:
    """Greedy (samples=0: one text) or `samples` seeded temperature samples (no top-k/top-p), new text only.

    The caller's random state is left as it was (the seed is applied inside a forked RNG)."""
    from transformers import GenerationConfig

    safe_point("analysis")  # a stop signal stops a self-description between two generations
    tok = backbone.tokenizer
    eos = _eos_ids(backbone)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    sample = samples > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        num_return_sequences=max(samples, 1),
        eos_token_id=eos,
        pad_token_id=pad,
        **({"temperature": temperature, "top_k": 0, "top_p": 1.0} if sample else {}),
    )
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    cuda = [embeds.device.index or 0] if embeds.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        out = backbone.model.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
    return [tok.decode(row, skip_special_tokens=True).strip() for row in out]


# ----------------------------------------------------------------------------- probes


def _entry(probe: str, layer: int | None, decoding: str, sample: int | None, text: str) -> dict[str, Any]:
    return {"probe": probe, "layer": layer, "decoding": decoding, "sample": sample, "text": text}


def describe_prompt(
    backbone,
    prompt: torch.Tensor,
    *,
    samples: int = 3,
    max_new_tokens: int = 40,
    seed: int = 0,
    layers: Iterable[int] | None = None,
    temperature: float = TEMPERATURE,
    probes: Sequence[str] = PROBES,
    source: str = DEFAULT_SOURCE,
) -> list[dict[str, Any]]:
    """What the model says the (n, d) prompt asks for: the embed probe (greedy, then `samples` seeded samples)
    and the patch probe (greedy, one per layer; `layers` None: `default_layers`; `source`: see `SOURCES`).
    Each description is a dict with probe, layer (patch only), decoding (greedy | sample), sample (its index), text."""
    check_settings(samples, max_new_tokens, temperature, probes, source)
    rows = _check_rows(backbone, prompt, "the prompt")
    inp = describe_input(backbone.tokenizer, rows.shape[0])
    context = backbone.context_length
    if context is not None and len(inp.ids) + max_new_tokens > context:
        raise SoftPromptError(
            f"the describing input ({len(inp.ids)} tokens, the prompt's {rows.shape[0]} rows included) and "
            f"{max_new_tokens} new tokens exceed the model's context of {context} positions: use a smaller --max-new-tokens"
        )
    out: list[dict[str, Any]] = []
    gen = {"max_new_tokens": max_new_tokens}
    if "embed" in probes:
        embeds = _embeds(backbone, inp, rows)
        out.append(_entry("embed", None, "greedy", None, _generate(backbone, embeds, **gen)[0]))
        if samples:
            texts = _generate(backbone, embeds, samples=samples, temperature=temperature, seed=seed, **gen)
            out += [_entry("embed", None, "sample", i, t) for i, t in enumerate(texts)]
    if "patch" in probes:
        chosen = resolve_layers(backbone.model, layers)
        states = source_states(backbone, rows, chosen, inp.ids[: inp.start] if source == "context" else ())
        target = _embeds(backbone, inp, None)
        for layer in chosen:
            with patch_layer(backbone.model, layer, inp.positions, states[layer], len(inp.ids)):
                out.append(_entry("patch", layer, "greedy", None, _generate(backbone, target, **gen)[0]))
    return out


def text_rows(backbone, text: str) -> torch.Tensor:
    """The input embeddings of a plain text's tokens (no special tokens): a "prompt" whose meaning is known."""
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SoftPromptError("--text is empty: give a sentence to describe")
    if len(ids) > MAX_TEXT_TOKENS:
        raise SoftPromptError(text_too_long(f"{len(ids):,} tokens"))
    with torch.no_grad():
        return backbone.model.get_input_embeddings()(torch.tensor(ids, device=backbone.device)).float()


def text_too_long(length: str) -> str:
    """The refusal of a --text longer than the identity probe reads (`length`: how long it is, with its unit)."""
    return (
        f"--text is {length} long; the identity probe describes a sentence as long as a soft prompt, at most "
        f"{MAX_TEXT_TOKENS} tokens (a long text comes back as empty descriptions): give a shorter text"
    )


def describe_text(backbone, text: str, **kwargs) -> list[dict[str, Any]]:
    """The identity probe: `describe_prompt` on the embeddings of `text`'s tokens (same keyword arguments)."""
    return describe_prompt(backbone, text_rows(backbone, text), **kwargs)


def check_settings(samples: int, max_new_tokens: int, temperature: float, probes: Sequence[str], source: str) -> None:
    if samples < 0:
        raise SoftPromptError(f"samples must be 0 or more, got {samples}")
    if max_new_tokens < 1:
        raise SoftPromptError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if samples and not temperature > 0:
        raise SoftPromptError(f"temperature must be above 0 to sample, got {temperature}")
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise SoftPromptError(f"unknown probe(s) {unknown or '(none given)'}: expected some of {', '.join(PROBES)}")
    if source not in SOURCES:
        raise SoftPromptError(f"unknown patch source {source!r}: expected one of {', '.join(SOURCES)}")
