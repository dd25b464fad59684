"""The KV prefix tree: the reference path's numbers from fewer computed tokens.

A batch is computed as a tree of KV-cached forwards instead of one forward over padded rows:
  1. the soft prompt and the tokens every row starts with (a chat template's head, a BOS), batch 1
     (the same for every row), its keys/values expanded (`Prefix`);
  2. each example's shared prefix (for single-token choices, the whole row), rows split into
     length groups so little padding is computed (gradients are unchanged: same rows, same loss);
  3. the continuations of multi-token choices, on top of their example's cached prefix.
Gradients flow through the caches into the prompt. Models whose body takes no external cache, or
whose sliding window would crop it, are left to the plain path (`supported`).

This module runs stages 2 and 3 and keeps the `auto` strategy's fallbacks; the parts live next to it:
`kv_cache` (the cached body forward), `kv_prefix` (stage 1), `kv_plan` (the batch's tree and groups).
"""

from __future__ import annotations

import warnings

import torch

from softprompt.data.batching import Batch
from softprompt.model.deep_prompt import KVPrompt
from softprompt.scoring.kv_cache import body_forward, cache_support, mask_positions, residual_dtype, supported
from softprompt.scoring.kv_plan import TreePlan, plan_groups, plan_tree
from softprompt.scoring.kv_prefix import Prefix, prefix_kv, shared_length
from softprompt.scoring.model import base_model, prompt_count, prompt_embeds, prompt_length, stacked_rows
from softprompt.scoring.options import ScoringOptions, ScoringStats


class _Forwards:
    """The tree's forwards for one batch, collecting the hidden states at the targets.

    A stack of K prompts (K, n, d) runs every forward over K copies of its rows, prompt-major (`stacked_rows`),
    each copy after its own prompt's prefix; the picked states are [K, targets, d] (K = 1 for one prompt)."""

    def __init__(self, model, prompt, tree: TreePlan, kv0: Prefix | None, options: ScoringOptions, stats: ScoringStats):
        self.model, self.prompt, self.tree, self.kv0 = model, prompt, tree, kv0
        self.options, self.stats = options, stats
        self.device = next(model.parameters()).device
        self.k = prompt_count(prompt)
        # positions before the tree's rows: the cached prefix, or the prompt computed inline with each row
        self.n = kv0.length if kv0 is not None else prompt_length(prompt)
        self.takes_positions = cache_support(type(base_model(model)))[1]
        self.picked: list[torch.Tensor] = []
        self.where: list[int] = []  # target index of each picked row

    def embeds(self, ids: torch.Tensor, with_prompt: bool) -> torch.Tensor:
        """The rows' embeddings once per prompt (after it when `with_prompt`)."""
        if with_prompt:
            out = prompt_embeds(self.model, ids, self.prompt)
        else:
            out = stacked_rows(self.model.get_input_embeddings()(ids), self.prompt)
        return out.to(residual_dtype(self.model, self.options))

    def cached(self, kv, rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prefix's keys/values for `rows` rows per prompt: expanded (one prompt) or repeated per prompt (a stack)."""
        if self.k == 1:
            return [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in kv]
        return [(k.repeat_interleave(rows, dim=0), v.repeat_interleave(rows, dim=0)) for k, v in kv]

    def group(self, group: list[int]) -> None:
        """Stage 2 for the units of `group` (one padded forward), then stage 3 for their multi-token choices."""
        t, n, device = self.tree, self.n, self.device
        glen = max(t.unit_len[u] for u in group)
        ids = torch.full((len(group), glen), 0, dtype=torch.long)
        mask = torch.zeros((len(group), glen), dtype=torch.long)
        for i, u in enumerate(group):
            ids[i, : t.unit_len[u]] = torch.tensor(t.rows[t.unit_rows[u][0]][: t.unit_len[u]])
            mask[i, : t.unit_len[u]] = 1
        ids, mask = ids.to(device), stacked_rows(mask.to(device), self.prompt)
        self.stats["real"] += int(mask.sum())
        suffix_rows = [(i, r) for i, u in enumerate(group) for r in t.unit_rows[u] if t.lengths[r] > t.unit_len[u]]
        inline_prompt = self.prompt is not None and self.kv0 is None
        if inline_prompt:
            self.stats["real"] += n * mask.shape[0]
        full_mask = mask
        if n:
            ones = torch.ones((mask.shape[0], n), dtype=mask.dtype, device=device)
            full_mask = torch.cat([ones, mask], dim=1)
        kv = None if self.kv0 is None else self.cached(self.kv0.kv, len(group))
        hidden, kv1 = body_forward(
            self.model, self.embeds(ids, inline_prompt), full_mask, kv, self.stats, keep_cache=bool(suffix_rows)
        )
        if inline_prompt:
            hidden = hidden[:, n:]
        hidden = hidden.unflatten(0, (self.k, len(group)))
        sel_i, sel_t = [], []  # targets inside the shared part
        for i, u in enumerate(group):
            for k in t.unit_targets.get(u, []):
                if t.t_pos[k] < t.unit_len[u]:
                    sel_i.append(i)
                    sel_t.append(t.t_pos[k])
                    self.where.append(k)
        if sel_i:
            self.picked.append(hidden[:, torch.tensor(sel_i, device=device), torch.tensor(sel_t, device=device)])
        if suffix_rows:
            self.suffixes(suffix_rows, full_mask, kv1, len(group))

    def suffixes(self, suffix_rows: list[tuple[int, int]], full_mask: torch.Tensor, kv1, width: int) -> None:
        """Stage 3: the continuations of multi-token choices on top of their example's cached prefix (`kv1`,
        `full_mask`: stage 2's, `width` rows per prompt)."""
        t, device = self.tree, self.device
        slen = max(t.lengths[r] - t.row_plen[r] for _, r in suffix_rows)
        sids = torch.full((len(suffix_rows), slen), 0, dtype=torch.long)
        smask = torch.zeros((len(suffix_rows), slen), dtype=torch.long)
        pos = torch.zeros((len(suffix_rows), slen), dtype=torch.long)
        for j, (_, r) in enumerate(suffix_rows):
            tail = t.rows[r][t.row_plen[r] :]
            sids[j, : len(tail)] = torch.tensor(tail)
            smask[j, : len(tail)] = 1
            pos[j] = self.n + t.row_plen[r] + torch.arange(slen)
        smask, pos = stacked_rows(smask.to(device), self.prompt), stacked_rows(pos.to(device), self.prompt)
        self.stats["real"] += int(smask.sum())
        src = torch.tensor([i for i, _ in suffix_rows], device=device)
        src = (torch.arange(self.k, device=device)[:, None] * width + src).reshape(-1)  # each prompt's copy
        kv2 = [(k.index_select(0, src), v.index_select(0, src)) for k, v in kv1]
        mask2 = torch.cat([full_mask.index_select(0, src), smask], dim=1)
        h2, _ = body_forward(
            self.model,
            self.embeds(sids.to(device), False),
            mask2,
            kv2,
            self.stats,
            position_ids=pos if self.takes_positions else None,
        )
        h2 = h2.unflatten(0, (self.k, len(suffix_rows)))
        sel_j, sel_t = [], []
        for j, (_, r) in enumerate(suffix_rows):
            for k in t.unit_targets.get(t.row_unit[r], []):
                if t.t_row[k] == r and t.t_pos[k] >= t.row_plen[r]:
                    sel_j.append(j)
                    sel_t.append(t.t_pos[k] - t.row_plen[r])
                    self.where.append(k)
        if sel_j:
            self.picked.append(h2[:, torch.tensor(sel_j, device=device), torch.tensor(sel_t, device=device)])

    def gathered(self) -> torch.Tensor:
        """The picked hidden states in target order, [T, d] ([K, T, d] for a stack of prompts)."""
        if sorted(self.where) != list(range(len(self.tree.t_row))):
            raise AssertionError("the prefix tree lost or duplicated a target")
        out = torch.cat(self.picked, dim=1)
        inverse = torch.empty(len(self.where), dtype=torch.long)
        inverse[torch.tensor(self.where)] = torch.arange(len(self.where))
        out = out.index_select(1, inverse.to(self.device))
        return out if self.k > 1 or (isinstance(self.prompt, torch.Tensor) and self.prompt.dim() == 3) else out.squeeze(0)


def target_hidden(
    model, prompt, batch: Batch, kv0: Prefix | None, options: ScoringOptions, stats: ScoringStats
) -> torch.Tensor | None:
    """Final hidden states at the batch's target positions [T, d], via the KV prefix tree.

    Returns None where the model or batch does not fit the tree (the caller goes plain). `kv0` is the
    shared prefix from `shared_prefix` (an evaluation's, computed once); absent, the batch's own is
    computed here when worth it.
    """
    n = prompt_length(prompt)
    lengths = batch.attention_mask.sum(dim=1).tolist()
    if not supported(model, batch, n + max(lengths)):
        return None
    takes_positions = cache_support(type(base_model(model)))[1]
    tree = plan_tree(batch, lengths, options.share_prefix and (takes_positions or mask_positions(model)))
    if tree is None:
        return None
    if kv0 is None and isinstance(prompt, KVPrompt):  # a deep prompt is a cache: always the tree's first stage
        kv0 = prefix_kv(
            model, prompt, tree.rows[0][: shared_length(tree.rows, tree.t_pos)] if options.share_prompt else (), options, stats
        )
    elif kv0 is None and options.share_prompt:
        # the prefix's own forward streams every weight once more: worth it unless it is short and the
        # rows few (evaluation passes kv0, computed once for all its batches)
        c = shared_length(tree.rows, tree.t_pos)
        if (prompt is not None or c) and (len(tree.unit_rows) - 1) * (n + c) >= options.group_overhead_tokens:
            kv0 = prefix_kv(model, prompt, tree.rows[0][:c], options, stats)
    if kv0 is not None:
        c = len(kv0.tokens)
        if any(r[:c] != list(kv0.tokens) for r in tree.rows):
            raise AssertionError("a row does not start with the cached prefix")
        tree = tree.after(c)
    forwards = _Forwards(model, prompt, tree, kv0, options, stats)
    all_units = [list(range(len(tree.unit_rows)))]
    for group in plan_groups(tree.unit_len, options.group_overhead_tokens) if options.split_lengths else all_units:
        forwards.group(group)
    return forwards.gathered()


class Fallbacks:
    """Model classes whose forward rejected the tree once: `auto` scoring sends them down the plain path.

    A model outside the tested families (llama-style, BLOOM) may not accept an external cache the way
    transformers' own models do; it then gets the plain path, with one warning, never a crash. The
    record is per class and per process, since it is a property of the class's code.
    """

    def __init__(self) -> None:
        self._classes: set[type] = set()

    def __contains__(self, model_class: type) -> bool:
        return model_class in self._classes

    def add(self, model_class: type, error: Exception) -> None:
        self._classes.add(model_class)
        warnings.warn(
            f"softprompt: the KV-cached scoring path failed for {model_class.__name__} ({type(error).__name__}: {error}); "
            "using the plain path for this model class",
            RuntimeWarning,
            stacklevel=4,
        )

    def discard(self, model_class: type) -> None:
        self._classes.discard(model_class)


FALLBACKS = Fallbacks()


def target_hidden_or_none(model, prompt, batch: Batch, kv0, options: ScoringOptions, stats: ScoringStats) -> torch.Tensor | None:
    """`target_hidden` for the `auto` strategy: None (plain path) for a model class whose forward rejected it once."""
    if type(model) in FALLBACKS:
        return None
    try:
        return target_hidden(model, prompt, batch, kv0, options, stats)
    except (TypeError, AttributeError, ValueError, KeyError, IndexError, NotImplementedError) as e:
        FALLBACKS.add(type(model), e)
        stats["fallbacks"] += 1
        return None
