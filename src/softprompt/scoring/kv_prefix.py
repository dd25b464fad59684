"""Stage 1 of the prefix tree: the keys/values of what every row starts with, computed once at batch 1.

The soft prompt and the tokens all rows share (a chat template's head, a BOS): per batch, or once for a
whole evaluation (`shared_prefix`), then expanded over the rows. Differentiable wrt the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from softprompt.model.deep_prompt import KVPrompt
from softprompt.scoring.kv_cache import body_forward, cache_support, residual_dtype
from softprompt.scoring.lowp import compute_model
from softprompt.scoring.model import autocast_context, autocast_dtype, base_model, kv_dtype, prompt_count
from softprompt.scoring.options import ScoringOptions, ScoringStats


@dataclass
class Prefix:
    """The keys/values (batch 1, or one per prompt of a stack; per layer) of what every row starts with: the soft prompt (if any), then
    `tokens`, the token ids every row shares (a chat template's head, a BOS). Differentiable wrt the prompt."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    tokens: tuple[int, ...]
    length: int  # prompt rows + len(tokens): the positions the cache covers


def prefix_kv(
    model, prompt: torch.Tensor | KVPrompt | None, tokens: Sequence[int], options: ScoringOptions, stats: ScoringStats
) -> Prefix:
    """The prefix's keys/values: batch 1 for one prompt (n, d), a deep prompt or none, batch K for a stack of prompts
    (K, n, d)."""
    if isinstance(prompt, KVPrompt):
        return _deep_prefix_kv(model, prompt, tokens, options, stats)
    device, dtype = next(model.parameters()).device, residual_dtype(model, options)
    parts = [] if prompt is None else [prompt.to(device=device, dtype=dtype).reshape(-1, *prompt.shape[-2:])]
    if tokens:
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
        parts.append(model.get_input_embeddings()(ids).to(dtype).expand(prompt_count(prompt), -1, -1))
    emb = torch.cat(parts, dim=1)
    mask = torch.ones(emb.shape[:2], dtype=torch.long, device=device)
    _, kv = body_forward(model, emb, mask, None, stats, keep_cache=True)
    stats["real"] += emb.shape[0] * emb.shape[1]
    return Prefix(kv, tuple(tokens), int(emb.shape[1]))


def _deep_prefix_kv(model, prompt: KVPrompt, tokens: Sequence[int], options: ScoringOptions, stats: ScoringStats) -> Prefix:
    """A deep prompt's keys/values are the cache itself; the shared tokens, if any, are computed after them."""
    device, n = next(model.parameters()).device, prompt.length
    kv = prompt.layer_kv(kv_dtype(model), device)
    if not tokens:
        return Prefix(kv, (), n)
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
    emb = model.get_input_embeddings()(ids).to(residual_dtype(model, options))
    mask = torch.ones((1, n + len(tokens)), dtype=torch.long, device=device)
    _, kv = body_forward(model, emb, mask, kv, stats, keep_cache=True)
    stats["real"] += len(tokens)
    return Prefix(kv, tuple(tokens), n + len(tokens))


def prompt_kv(
    model, prompt: torch.Tensor, options: ScoringOptions, stats: ScoringStats
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys/values of the soft prompt alone (batch 1), per layer; differentiable wrt the prompt."""
    return prefix_kv(model, prompt, (), options, stats).kv


def shared_length(rows: Sequence[Sequence[int]], target_positions: Sequence[int]) -> int:
    """How many leading tokens all `rows` share and the tree may cache: never a target's own position
    (its hidden state must be computed in stage 2 or 3), and at least one token left in every row."""
    if not rows:
        return 0
    limit = min(min(len(r) for r in rows) - 1, min(target_positions, default=0))
    first = rows[0]
    for k in range(max(limit, 0)):
        if any(r[k] != first[k] for r in rows[1:]):
            return k
    return max(limit, 0)


def shared_prefix(model, prompt, encoded, compute_dtype, options: ScoringOptions, stats: ScoringStats) -> Prefix | None:
    """The prefix every row of an evaluation starts with (the prompt and the shared tokens), computed once
    for all its batches; None where the tree does not apply or there is nothing to share."""
    device = next(model.parameters()).device
    if not (options.resolved(device) == "kv_tree" and options.share_prompt and encoded):
        return None
    rows = [r.ids for e in encoded for r in e.rows]
    tokens = rows[0][: shared_length(rows, [t[0] for e in encoded for r in e.rows for t in r.targets])]
    if prompt is None and not tokens:
        return None
    with autocast_context(device, compute_dtype):
        low = compute_model(model, autocast_dtype(device), options)
        if cache_support(type(base_model(low)))[0] is None:
            return None
        return prefix_kv(low, prompt, tokens, options, stats)
