"""A causal LM seen by the scorer: its body and head, the soft prompt in front of the embeddings, autocast.

Every strategy builds on these; `hidden_states` over [prompt; input] is also the reference forward.
"""

from __future__ import annotations

import contextlib

import torch


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


def prompt_count(prompt: torch.Tensor | None) -> int:
    """How many prompts `prompt` holds: 1 for an (n, d) matrix (or none), K for a stack (K, n, d)."""
    return prompt.shape[0] if prompt is not None and prompt.dim() == 3 else 1


def prompt_length(prompt: torch.Tensor | None) -> int:
    """The prompt's number of rows n (0 without a prompt), for a matrix or a stack alike."""
    return 0 if prompt is None else int(prompt.shape[-2])


def stacked_rows(x: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
    """`x` (rows first) once per prompt of a stack, prompt-major (row k * R + r is row r behind prompt k); as it is
    for a single prompt."""
    if prompt is None or prompt.dim() == 2:
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
    model, prompt: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Final (normalised) hidden states over [prompt; input] for right-padded rows (`attention_mask` None:
    no padding mask, which leaves every real position's state as it is: see `ScoringOptions.padding_mask`);
    a stack of prompts gives every row behind each (`prompt_embeds`)."""
    embeds = prompt_embeds(model, input_ids, prompt)
    if prompt is not None and attention_mask is not None:
        attention_mask = stacked_rows(attention_mask, prompt)
        ones = torch.ones((embeds.shape[0], prompt_length(prompt)), dtype=attention_mask.dtype, device=attention_mask.device)
        attention_mask = torch.cat([ones, attention_mask], dim=1)
    out = base_model(model)(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def full_logits(
    model, prompt: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits at every position of [prompt; input] (for tests, PEFT comparison and generation)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    return lm_logits(model, hidden_states(model, prompt, input_ids, attention_mask))
