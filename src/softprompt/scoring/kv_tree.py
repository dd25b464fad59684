"""The KV prefix tree: the reference path's numbers from fewer computed tokens.

A batch is computed as a tree of KV-cached forwards instead of one forward over padded rows:
  1. the soft prompt and the tokens every row starts with (a chat template's head, a BOS), batch 1
     (the same for every row), its keys/values expanded (`Prefix`);
  2. each example's shared prefix (for single-token choices, the whole row), rows split into
     length groups so little padding is computed (gradients are unchanged: same rows, same loss);
  3. the continuations of multi-token choices, on top of their example's cached prefix.
Gradients flow through the caches into the prompt. Models whose body takes no external cache, or
whose sliding window would crop it, are left to the plain path (`supported`).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from softprompt.batching import Batch
from softprompt.scoring.lowp import compute_model
from softprompt.scoring.model import autocast_context, autocast_dtype, base_model, prompt_embeds
from softprompt.scoring.options import ScoringOptions, ScoringStats


@functools.cache
def cache_support(body_class: type) -> tuple[str | None, bool]:
    """(name of the cache keyword of the body's forward or None, whether it takes position_ids)."""
    try:
        params = inspect.signature(body_class.forward).parameters
    except (TypeError, ValueError):
        params = {}
    kw = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
    return kw, "position_ids" in params


def mask_positions(model) -> bool:
    """Models whose positions come from the attention mask (ALiBi), not from position_ids."""
    return getattr(model.config, "model_type", "") in ("bloom",)


def new_cache(kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None):
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv or ()):
        cache.update(k, v, i)
    return cache


def _cache_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def body_forward(model, embeds, mask, kv, stats: ScoringStats, *, position_ids=None, keep_cache=False):
    """One forward of the transformer body over `embeds` after the cached keys/values `kv`."""
    body = base_model(model)
    kw, _ = cache_support(type(body))
    args = {"inputs_embeds": embeds, "attention_mask": mask}
    if position_ids is not None:
        args["position_ids"] = position_ids
    cache = None
    if kv is not None or keep_cache:
        cache = new_cache(kv)
        args[kw] = cache
    out = body(**args, use_cache=cache is not None)
    stats["forwards"] += 1
    stats["padded"] += embeds.shape[0] * embeds.shape[1]
    return out.last_hidden_state, (_cache_kv(cache) if keep_cache else None)


def residual_dtype(model, options: ScoringOptions) -> torch.dtype:
    """The dtype the residual stream runs in: the embeddings' (float32 if `options.fp32_residual`)."""
    dtype = model.get_input_embeddings().weight.dtype
    return torch.float32 if options.fp32_residual and dtype in (torch.bfloat16, torch.float16) else dtype


@dataclass
class Prefix:
    """The keys/values (batch 1, per layer) of what every row starts with: the soft prompt (if any), then
    `tokens`, the token ids every row shares (a chat template's head, a BOS). Differentiable wrt the prompt."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    tokens: tuple[int, ...]
    length: int  # prompt rows + len(tokens): the positions the cache covers


def prefix_kv(model, prompt: torch.Tensor | None, tokens: Sequence[int], options: ScoringOptions, stats: ScoringStats) -> Prefix:
    device, dtype = next(model.parameters()).device, residual_dtype(model, options)
    parts = [] if prompt is None else [prompt.to(device=device, dtype=dtype).unsqueeze(0)]
    if tokens:
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
        parts.append(model.get_input_embeddings()(ids).to(dtype))
    emb = torch.cat(parts, dim=1)
    mask = torch.ones((1, emb.shape[1]), dtype=torch.long, device=device)
    _, kv = body_forward(model, emb, mask, None, stats, keep_cache=True)
    stats["real"] += emb.shape[1]
    return Prefix(kv, tuple(tokens), int(emb.shape[1]))


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


def supported(model, batch: Batch, total_len: int) -> bool:
    kw, _ = cache_support(type(base_model(model)))
    if kw is None or batch.row_example is None:
        return False
    window = getattr(model.config, "sliding_window", None)
    # a sliding-window cache would crop what the full forward keeps
    return window is None or total_len < window


def plan_groups(lengths: Sequence[int], overhead: int) -> list[list[int]]:
    """Partition indices into groups of similar length minimising sum(overhead + size * max length).

    Exact dynamic programme over the length-sorted order (contiguous groups are optimal there).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        longest = lengths[order[i - 1]]
        for j in range(i):
            c = best[j] + overhead + (i - j) * longest
            if c < best[i]:
                best[i], cut[i] = c, j
    groups = []
    i = n
    while i > 0:
        groups.append(order[cut[i] : i])
        i = cut[i]
    return groups[::-1]


def longest_common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        if any(s[k] != first[k] for s in seqs[1:]):
            return k
    return n


@dataclass
class _Tree:
    """A batch as the tree computes it: stage-2 units (an example's rows sharing a prefix, or one row) and targets."""

    rows: list[list[int]]  # each row's real token ids
    lengths: list[int]
    unit_rows: list[list[int]]  # the rows of each unit
    unit_len: list[int]  # the length of each unit's shared prefix
    row_unit: dict[int, int]
    row_plen: dict[int, int]  # the shared-prefix length of each row's unit
    unit_targets: dict[int, list[int]]  # target indices of each unit
    t_row: list[int]
    t_pos: list[int]

    def after(self, c: int) -> _Tree:
        """The same tree without its first `c` tokens (they are in the cached prefix)."""
        if not c:
            return self
        return _Tree(
            [r[c:] for r in self.rows],
            [n - c for n in self.lengths],
            self.unit_rows,
            [n - c for n in self.unit_len],
            self.row_unit,
            {r: n - c for r, n in self.row_plen.items()},
            self.unit_targets,
            self.t_row,
            [p - c for p in self.t_pos],
        )


def _plan_tree(batch: Batch, lengths: list[int], share_prefix: bool) -> _Tree | None:
    ids_all = batch.input_ids
    rows = [ids_all[r, : lengths[r]].tolist() for r in range(len(lengths))]
    if share_prefix:
        unit_rows: list[list[int]] = [[] for _ in range(batch.num_examples)]
        for r, e in enumerate(batch.row_example.tolist()):
            unit_rows[e].append(r)
        unit_rows = [u for u in unit_rows if u]
    else:
        unit_rows = [[r] for r in range(len(rows))]
    unit_len = [len(rows[u[0]]) if len(u) == 1 else longest_common_prefix([rows[r] for r in u]) for u in unit_rows]
    if min(unit_len) < 1:
        return None
    row_unit, row_plen = {}, {}
    for ui, u in enumerate(unit_rows):
        for r in u:
            row_unit[r], row_plen[r] = ui, unit_len[ui]
    t_row, t_pos = batch.target_row.tolist(), batch.target_pos.tolist()
    unit_targets: dict[int, list[int]] = {}
    for k, r in enumerate(t_row):
        unit_targets.setdefault(row_unit[r], []).append(k)
    return _Tree(rows, lengths, unit_rows, unit_len, row_unit, row_plen, unit_targets, t_row, t_pos)


class _Forwards:
    """The tree's forwards for one batch, collecting the hidden states at the targets."""

    def __init__(self, model, prompt, tree: _Tree, kv0: Prefix | None, options: ScoringOptions, stats: ScoringStats):
        self.model, self.prompt, self.tree, self.kv0 = model, prompt, tree, kv0
        self.options, self.stats = options, stats
        self.device = next(model.parameters()).device
        # positions before the tree's rows: the cached prefix, or the prompt computed inline with each row
        self.n = kv0.length if kv0 is not None else 0 if prompt is None else int(prompt.shape[0])
        self.takes_positions = cache_support(type(base_model(model)))[1]
        self.picked: list[torch.Tensor] = []
        self.where: list[int] = []  # target index of each picked row

    def embeds(self, ids: torch.Tensor, with_prompt: bool) -> torch.Tensor:
        out = prompt_embeds(self.model, ids, self.prompt) if with_prompt else self.model.get_input_embeddings()(ids)
        return out.to(residual_dtype(self.model, self.options))

    def group(self, group: list[int]) -> None:
        """Stage 2 for the units of `group` (one padded forward), then stage 3 for their multi-token choices."""
        t, n, device = self.tree, self.n, self.device
        glen = max(t.unit_len[u] for u in group)
        ids = torch.full((len(group), glen), 0, dtype=torch.long)
        mask = torch.zeros((len(group), glen), dtype=torch.long)
        for i, u in enumerate(group):
            ids[i, : t.unit_len[u]] = torch.tensor(t.rows[t.unit_rows[u][0]][: t.unit_len[u]])
            mask[i, : t.unit_len[u]] = 1
        ids, mask = ids.to(device), mask.to(device)
        self.stats["real"] += int(mask.sum())
        suffix_rows = [(i, r) for i, u in enumerate(group) for r in t.unit_rows[u] if t.lengths[r] > t.unit_len[u]]
        inline_prompt = self.prompt is not None and self.kv0 is None
        if inline_prompt:
            self.stats["real"] += n * len(group)
        full_mask = mask
        if n:
            ones = torch.ones((len(group), n), dtype=mask.dtype, device=device)
            full_mask = torch.cat([ones, mask], dim=1)
        kv = (
            None
            if self.kv0 is None
            else [(k.expand(len(group), -1, -1, -1), v.expand(len(group), -1, -1, -1)) for k, v in self.kv0.kv]
        )
        hidden, kv1 = body_forward(
            self.model, self.embeds(ids, inline_prompt), full_mask, kv, self.stats, keep_cache=bool(suffix_rows)
        )
        if inline_prompt:
            hidden = hidden[:, n:]
        sel_i, sel_t = [], []  # targets inside the shared part
        for i, u in enumerate(group):
            for k in t.unit_targets.get(u, []):
                if t.t_pos[k] < t.unit_len[u]:
                    sel_i.append(i)
                    sel_t.append(t.t_pos[k])
                    self.where.append(k)
        if sel_i:
            self.picked.append(hidden[torch.tensor(sel_i, device=device), torch.tensor(sel_t, device=device)])
        if suffix_rows:
            self.suffixes(suffix_rows, full_mask, kv1)

    def suffixes(self, suffix_rows: list[tuple[int, int]], full_mask: torch.Tensor, kv1) -> None:
        """Stage 3: the continuations of multi-token choices on top of their example's cached prefix."""
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
        sids, smask, pos = sids.to(device), smask.to(device), pos.to(device)
        self.stats["real"] += int(smask.sum())
        src = torch.tensor([i for i, _ in suffix_rows], device=device)
        kv2 = [(k.index_select(0, src), v.index_select(0, src)) for k, v in kv1]
        mask2 = torch.cat([full_mask.index_select(0, src), smask], dim=1)
        h2, _ = body_forward(
            self.model, self.embeds(sids, False), mask2, kv2, self.stats, position_ids=pos if self.takes_positions else None
        )
        sel_j, sel_t = [], []
        for j, (_, r) in enumerate(suffix_rows):
            for k in t.unit_targets.get(t.row_unit[r], []):
                if t.t_row[k] == r and t.t_pos[k] >= t.row_plen[r]:
                    sel_j.append(j)
                    sel_t.append(t.t_pos[k] - t.row_plen[r])
                    self.where.append(k)
        if sel_j:
            self.picked.append(h2[torch.tensor(sel_j, device=device), torch.tensor(sel_t, device=device)])

    def gathered(self) -> torch.Tensor:
        """The picked hidden states in target order, [T, d]."""
        if sorted(self.where) != list(range(len(self.tree.t_row))):
            raise AssertionError("the prefix tree lost or duplicated a target")
        out = torch.cat(self.picked, dim=0)
        inverse = torch.empty(len(self.where), dtype=torch.long)
        inverse[torch.tensor(self.where)] = torch.arange(len(self.where))
        return out.index_select(0, inverse.to(self.device))


def target_hidden(
    model, prompt, batch: Batch, kv0: Prefix | None, options: ScoringOptions, stats: ScoringStats
) -> torch.Tensor | None:
    """Final hidden states at the batch's target positions [T, d], via the KV prefix tree.

    Returns None where the model or batch does not fit the tree (the caller goes plain). `kv0` is the
    shared prefix from `shared_prefix` (an evaluation's, computed once); absent, the batch's own is
    computed here when worth it.
    """
    n = 0 if prompt is None else int(prompt.shape[0])
    lengths = batch.attention_mask.sum(dim=1).tolist()
    if not supported(model, batch, n + max(lengths)):
        return None
    takes_positions = cache_support(type(base_model(model)))[1]
    tree = _plan_tree(batch, lengths, options.share_prefix and (takes_positions or mask_positions(model)))
    if tree is None:
        return None
    if kv0 is None and options.share_prompt:
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
