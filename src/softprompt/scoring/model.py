"""A causal LM seen by the scorer: its body and head, the soft prompt in front of the embeddings, autocast.

Every strategy builds on these; `hidden_states` over [prompt; input] is also the reference forward.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Sequence

import torch

from softprompt.model.deep_prompt import KVPrompt, prompt_length


def base_model(model):
    """The transformer body (without LM head) of a causal LM: llama `model`, BLOOM `transformer`, ..."""
    return getattr(model, model.base_model_prefix)


def autocast_context(device: torch.device, compute_dtype: torch.dtype | None):
    if compute_dtype is None or compute_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute_dtype)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on `device` right now (None when autocast is off or has no such device)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


@functools.cache
def cache_support(body_class: type) -> tuple[str | None, bool]:
    """(name of the cache keyword of the body's forward or None, whether it takes position_ids)."""
    try:
        params = inspect.signature(body_class.forward).parameters
    except (TypeError, ValueError):
        params = {}
    kw = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
    return kw, "position_ids" in params


def new_cache(kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None):
    """A transformers cache holding the per-layer keys/values `kv` (batch first)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv or ()):
        cache.update(k, v, i)
    return cache


def kv_dtype(model) -> torch.dtype:
    """The dtype `model`'s attention caches keys/values in here: autocast's where it is on, else the weights'."""
    device = next(model.parameters()).device
    return autocast_dtype(device) or model.get_input_embeddings().weight.dtype


def deep_prompt_cache(model, prompt: KVPrompt, rows: int):
    """A deep prompt's keys/values as a cache before `rows` rows (expanded, not copied; differentiable)."""
    kv = prompt.layer_kv(kv_dtype(model), next(model.parameters()).device)
    return new_cache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in kv])


def prompt_count(prompt: torch.Tensor | KVPrompt | None) -> int:
    """How many prompts `prompt` holds: 1 for an (n, d) matrix, a deep prompt (or none), K for a stack (K, n, d)."""
    return prompt.shape[0] if isinstance(prompt, torch.Tensor) and prompt.dim() == 3 else 1


def stacked_rows(x: torch.Tensor, prompt: torch.Tensor | KVPrompt | None) -> torch.Tensor:
    """`x` (rows first) once per prompt of a stack, prompt-major (row k * R + r is row r behind prompt k); as it is
    for a single prompt."""
    if not (isinstance(prompt, torch.Tensor) and prompt.dim() == 3):  # one prompt, a deep prompt or none
        return x
    return x.repeat(prompt.shape[0], *([1] * (x.dim() - 1)))


def prompt_embeds(model, input_ids: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
    """Input embeddings with the soft prompt (if any) placed before every row. A stack of K prompts (K, n, d)
    gives K x rows rows, prompt-major (`stacked_rows`): every row behind every prompt."""
    embeds = model.get_input_embeddings()(input_ids)
    if prompt is None:
        return embeds
    rows = embeds.shape[0]
    if prompt.dim() == 3:
        p = prompt.to(device=embeds.device, dtype=embeds.dtype).repeat_interleave(rows, dim=0)
        embeds = stacked_rows(embeds, prompt)
    else:
        p = prompt.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(0).expand(rows, -1, -1)
    return torch.cat([p, embeds], dim=1)


def hidden_states(
    model, prompt: torch.Tensor | KVPrompt | None, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Final (normalised) hidden states over [prompt; input] for right-padded rows (`attention_mask` None:
    no padding mask, which leaves every real position's state as it is: see `ScoringOptions.padding_mask`);
    a stack of prompts gives every row behind each (`prompt_embeds`). A deep prompt has no positions of its own in
    the output (`prompt_positions`): its keys/values are the cache every row attends to, as PEFT's prefix tuning
    passes them."""
    if isinstance(prompt, KVPrompt):
        if attention_mask is not None:
            ones = torch.ones((input_ids.shape[0], prompt.length), dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        embeds = model.get_input_embeddings()(input_ids)
        cache = deep_prompt_cache(model, prompt, input_ids.shape[0])
        body = base_model(model)
        keyword = cache_support(type(body))[0] or "past_key_values"
        return body(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=True, **{keyword: cache}).last_hidden_state
    embeds = prompt_embeds(model, input_ids, prompt)
    if prompt is not None and attention_mask is not None:
        attention_mask = stacked_rows(attention_mask, prompt)
        ones = torch.ones((embeds.shape[0], prompt_length(prompt)), dtype=attention_mask.dtype, device=attention_mask.device)
        attention_mask = torch.cat([ones, attention_mask], dim=1)
    out = base_model(model)(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def prompt_positions(prompt: torch.Tensor | KVPrompt | None) -> int:
    """The positions of `hidden_states`' output before the input's: an input-level prompt's rows (none for a deep
    prompt, which is a cache, or for no prompt)."""
    return 0 if prompt is None or isinstance(prompt, KVPrompt) else int(prompt.shape[-2])


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def full_logits(
    model, prompt: torch.Tensor | KVPrompt | None, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits at every position of [prompt; input] (for tests, PEFT comparison and generation; a deep prompt's
    cache has no positions: the input's alone)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    return lm_logits(model, hidden_states(model, prompt, input_ids, attention_mask))
