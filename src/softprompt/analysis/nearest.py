"""Nearest vocabulary tokens: the batched search of prompt rows against the input-embedding matrix.

The search every readout builds on (neighbours, drift, projection, importance): one matmul per
vocabulary chunk, so a 250k vocabulary takes well under a second and the matrix is never copied whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from softprompt.errors import SoftPromptError

METRICS = ("cosine", "dot")
_EPS = 1e-12


def _check(prompt: torch.Tensor, embeddings: torch.Tensor, metric: str) -> None:
    if metric not in METRICS:
        raise SoftPromptError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    if prompt.dim() != 2 or embeddings.dim() != 2:
        raise SoftPromptError(
            f"expected (n, d) prompt and (V, d) embeddings, got {tuple(prompt.shape)} and {tuple(embeddings.shape)}"
        )
    if prompt.shape[1] != embeddings.shape[1]:
        raise SoftPromptError(
            f"prompt width {prompt.shape[1]} != embedding width {embeddings.shape[1]}: the prompt belongs to another model"
        )


def _score_chunks(prompt: torch.Tensor, embeddings: torch.Tensor, metric: str, chunk_size: int | None):
    """Yield (start, scores[n, chunk]) over the vocabulary: one matmul per chunk, E is never copied whole."""
    p = prompt.detach().to(device=embeddings.device, dtype=torch.float32)
    if metric == "cosine":
        p = p / p.norm(dim=1, keepdim=True).clamp_min(_EPS)
    vocab = embeddings.shape[0]
    if chunk_size is None:
        chunk_size = max(4096, (1 << 26) // max(p.shape[0], 1))  # n x chunk scores stay <= 256 MiB
    for start in range(0, vocab, chunk_size):
        block = embeddings[start : start + chunk_size]
        if block.dtype != torch.float32:
            block = block.float()
        scores = p @ block.T
        if metric == "cosine":
            scores /= torch.linalg.vector_norm(block, dim=1).clamp_min(_EPS)
        yield start, scores


@torch.no_grad()
def nearest_tokens(
    prompt: torch.Tensor,
    embeddings: torch.Tensor,
    k: int = 3,
    metric: str = "cosine",
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k vocabulary tokens nearest each prompt row: (ids (n, k) long, similarities (n, k) float32).

    One batched matmul of the (n, d) prompt against the (V, d) matrix (in vocabulary chunks only when
    n x V would be large), so a 250k vocabulary takes well under a second. `metric` is `cosine` (the
    study's choice, scale-free) or `dot` (what the first attention layer roughly sees).
    """
    _check(prompt, embeddings, metric)
    k = min(int(k), embeddings.shape[0])
    if k < 1:
        raise SoftPromptError("k must be at least 1")
    best_s: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start, scores in _score_chunks(prompt, embeddings, metric, chunk_size):
        s, i = scores.topk(min(k, scores.shape[1]), dim=1)
        i = i + start
        if best_s is None:
            best_s, best_i = s, i
        else:
            s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
            best_s, pick = s.topk(k, dim=1)
            best_i = i.gather(1, pick)
    assert best_s is not None and best_i is not None
    return best_i.cpu(), best_s.cpu()


@torch.no_grad()
def token_ranks(
    prompt: torch.Tensor,
    embeddings: torch.Tensor,
    token_ids: Sequence[int],
    metric: str = "cosine",
    *,
    chunk_size: int | None = None,
) -> list[int]:
    """Rank (1 = nearest) of token_ids[i] among all vocabulary tokens for prompt row i.

    Tells how far an initial word fell: rank 1 means it is still the nearest token, rank 4 means it
    just dropped out of the top 3. Ties within 1e-6 count in the token's favour.
    """
    _check(prompt, embeddings, metric)
    if len(token_ids) != prompt.shape[0]:
        raise SoftPromptError(f"{len(token_ids)} token ids for {prompt.shape[0]} prompt rows")
    ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=embeddings.device)
    p = prompt.detach().to(device=embeddings.device, dtype=torch.float32)
    rows = embeddings[ids].float()
    target = (p * rows).sum(1)
    if metric == "cosine":
        target = target / (p.norm(dim=1) * rows.norm(dim=1)).clamp_min(_EPS)
    tol = 1e-6 * target.abs().clamp_min(1.0)
    above = torch.zeros(prompt.shape[0], dtype=torch.long, device=embeddings.device)
    for _, scores in _score_chunks(prompt, embeddings, metric, chunk_size):
        above += (scores > (target + tol)[:, None]).sum(1)
    return (above + 1).cpu().tolist()


@torch.no_grad()
def nearest_other_distance(
    rows: torch.Tensor,
    embeddings: torch.Tensor,
    exclude_ids: Sequence[int | None] | None = None,
    *,
    candidates: int = 16,
    chunk_size: int | None = None,
) -> list[float | None]:
    """L2 distance from each row to its nearest vocabulary row other than itself: the "gap" around a token.

    Rows of the vocabulary equal to the row (its own embedding, duplicates of it) and `exclude_ids[i]` (the
    token the row was initialised from) do not count. Candidates are found with one matmul per chunk
    (|p|^2 + |e|^2 - 2 p.e) and their distances recomputed exactly, so near rows do not lose precision.
    None where every candidate was excluded.
    """
    _check(rows, embeddings, "dot")
    p = rows.detach().to(device=embeddings.device, dtype=torch.float32)
    vocab = embeddings.shape[0]
    m = min(candidates, vocab)
    chunk_size = chunk_size or max(4096, (1 << 26) // max(p.shape[0], 1))
    best_d = best_i = None
    for start in range(0, vocab, chunk_size):
        block = embeddings[start : start + chunk_size].float()
        d2 = (p * p).sum(1, keepdim=True) + (block * block).sum(1)[None, :] - 2 * p @ block.T
        d, i = d2.topk(min(m, block.shape[0]), dim=1, largest=False)
        i = i + start
        if best_d is not None:
            d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
            d, pick = d.topk(m, dim=1, largest=False)
            i = i.gather(1, pick)
        best_d, best_i = d, i
    assert best_i is not None
    exact = (embeddings[best_i].float() - p[:, None, :]).norm(dim=2)  # (n, m)
    tol = 1e-6 * p.norm(dim=1).clamp_min(1.0)
    keep = exact > tol[:, None]
    excl = list(exclude_ids or [])
    for r, token in enumerate(excl):
        if token is not None:
            keep[r] &= best_i[r] != int(token)
    exact = torch.where(keep, exact, torch.full_like(exact, float("inf")))
    gap = exact.min(dim=1).values.cpu().tolist()
    return [g if g != float("inf") else None for g in gap]
