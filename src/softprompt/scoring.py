"""THE scoring path: [soft prompt; input; choice] -> log-likelihood of each choice.

Training (cross-entropy over the choices), evaluation (argmax), baselines and transfer all call
`choice_scores`. Logits are computed only at the positions that predict answer tokens: the LM head
is applied to those hidden states alone, never to the whole sequence.

Two implementations compute the same numbers:

- the plain path (`hidden_states`): one forward over the right-padded rows [prompt; row];
- the fast path (default; see `FastPathOptions`), a prefix tree of KV-cached forwards:
  1. the soft prompt alone, batch 1 (it is the same for every row), its keys/values expanded;
  2. each example's shared prefix (for single-token choices, the whole row), rows split into
     length groups so little padding is computed (gradients are unchanged: same rows, same loss);
  3. the continuations of multi-token choices, on top of their example's cached prefix.
  Under bf16/fp16 autocast on CPU the frozen weights are used from a cached low-precision copy
  (autocast would otherwise re-cast every frozen weight on every call), and the LM head runs in
  float32 on the few scored positions. Gradients flow through the caches into the prompt.
tests/test_fastpaths.py checks both paths agree (scores, predictions, prompt gradient).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from softprompt.batching import Batch, EncodedExample, collate, length_batches


@dataclass
class FastPathOptions:
    """Switches of the fast path (module-wide; tests and benchmarks flip them)."""

    enabled: bool = True  # False: every call takes the plain path
    share_prompt: bool = True  # compute the soft prompt's keys/values once per batch
    share_prefix: bool = True  # compute a multi-token-choice example's context once
    split_lengths: bool = True  # split a batch into length groups to skip padding
    lowp_weights: bool = True  # CPU autocast: keep a low-precision copy of frozen weights
    fp32_head: bool = True  # LM head in float32 on the scored positions under autocast
    fp32_residual: bool = True  # low-precision copy: residual stream in float32 (as autocast keeps it; same speed here)
    eager_backward: bool = True  # CPU + gradients: eager attention (its backward is ~3x torch's CPU flash kernel's)
    group_overhead_tokens: int = 64  # fixed cost of one more forward (weights streamed again), in tokens


FAST = FastPathOptions()
STATS: Counter = Counter()  # tokens through the body: "padded" (computed) and "real"; "forwards"


def base_model(model):
    """The transformer body (without LM head) of a causal LM: llama `model`, BLOOM `transformer`, ..."""
    return getattr(model, model.base_model_prefix)


def autocast_context(device: torch.device, compute_dtype: torch.dtype | None):
    if compute_dtype is None or compute_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute_dtype)


def prompt_embeds(model, input_ids: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
    """Input embeddings with the soft prompt (if any) placed before every row."""
    embeds = model.get_input_embeddings()(input_ids)
    if prompt is None:
        return embeds
    p = prompt.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
    return torch.cat([p, embeds], dim=1)


def hidden_states(model, prompt: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (normalised) hidden states over [prompt; input] for right-padded rows."""
    embeds = prompt_embeds(model, input_ids, prompt)
    if prompt is not None:
        ones = torch.ones((input_ids.shape[0], prompt.shape[0]), dtype=attention_mask.dtype, device=attention_mask.device)
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


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on `device` right now (None when autocast is off)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


# ----------------------------------------------------------------------------- low-precision weights

_LOWP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compute_model(model, dtype: torch.dtype | None):
    """`model` itself, or a cached copy whose frozen weights are stored in `dtype` (CPU autocast).

    Autocast casts a weight on every use unless it requires grad, so a frozen float32 model under
    bf16 autocast re-reads and re-writes all its weights in every forward: on this 2-core CPU that
    costs more than the matmuls. The copy is made once per model (and again if a weight changes in
    place); it shares no storage with `model`, and is only used when no weight of `model` trains.
    """
    if dtype is None or dtype == torch.float32 or not FAST.lowp_weights:
        return model
    params = list(model.parameters())
    if not params or params[0].device.type != "cpu":
        return model
    if any(p.requires_grad for p in params) or not all(p.dtype == torch.float32 for p in params):
        return model
    key = (dtype, tuple((p.data_ptr(), p._version) for p in params))  # noqa: SLF001
    hit = _LOWP.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    _LOWP.pop(model, None)  # free the stale copy before building a new one
    # matrices in `dtype`; vectors (norm weights, biases) stay float32, as mixed-dtype norms need
    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype if p.dim() >= 2 else p.dtype), requires_grad=False) for p in params}
    low = copy.deepcopy(model, memo)
    low.eval()
    _LOWP[model] = (key, low)
    return low


@contextlib.contextmanager
def attention_for_grad(model):
    """While a forward records gradients on CPU, run attention as plain matmuls (eager).

    torch's CPU flash-attention backward is ~3x slower than the backward of eager attention at
    these sizes (a few hundred tokens), while its forward is faster: evaluation keeps sdpa.
    """
    cfg = model.config
    current = getattr(cfg, "_attn_implementation", None)
    device = next(model.parameters()).device
    if not (FAST.eager_backward and torch.is_grad_enabled() and device.type == "cpu" and current == "sdpa"):
        yield
        return
    cfg._attn_implementation = "eager"  # noqa: SLF001
    try:
        yield
    finally:
        cfg._attn_implementation = current  # noqa: SLF001


# ----------------------------------------------------------------------------- fast path (KV prefix tree)

_CACHE_KW: dict[type, tuple[str | None, bool]] = {}


def _cache_support(body) -> tuple[str | None, bool]:
    """(name of the cache keyword of `body.forward` or None, whether it takes position_ids)."""
    cls = type(body)
    if cls not in _CACHE_KW:
        try:
            params = inspect.signature(body.forward).parameters
        except (TypeError, ValueError):
            params = {}
        kw = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
        _CACHE_KW[cls] = (kw, "position_ids" in params)
    return _CACHE_KW[cls]


def _mask_positions(model) -> bool:
    """Models whose positions come from the attention mask (ALiBi), not from position_ids."""
    return getattr(model.config, "model_type", "") in ("bloom",)


def _new_cache(kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None):
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv or ()):
        cache.update(k, v, i)
    return cache


def _cache_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _body(model, embeds, mask, kv, *, position_ids=None, keep_cache=False):
    """One forward of the transformer body over `embeds` after the cached keys/values `kv`."""
    body = base_model(model)
    kw, _ = _cache_support(body)
    args = {"inputs_embeds": embeds, "attention_mask": mask}
    if position_ids is not None:
        args["position_ids"] = position_ids
    cache = None
    if kv is not None or keep_cache:
        cache = _new_cache(kv)
        args[kw] = cache
    out = body(**args, use_cache=cache is not None)
    STATS["forwards"] += 1
    STATS["padded"] += embeds.shape[0] * embeds.shape[1]
    return out.last_hidden_state, (_cache_kv(cache) if keep_cache else None)


def _embed_dtype(model) -> torch.dtype:
    """The dtype the residual stream runs in: the embeddings' (float32 if FAST.fp32_residual)."""
    dtype = model.get_input_embeddings().weight.dtype
    return torch.float32 if FAST.fp32_residual and dtype in (torch.bfloat16, torch.float16) else dtype


def prompt_kv(model, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys/values of the soft prompt alone (batch 1), per layer; differentiable wrt the prompt."""
    emb = prompt.to(device=next(model.parameters()).device, dtype=_embed_dtype(model)).unsqueeze(0)
    mask = torch.ones((1, prompt.shape[0]), dtype=torch.long, device=emb.device)
    _, kv = _body(model, emb, mask, None, keep_cache=True)
    STATS["real"] += prompt.shape[0]
    return kv


def _fast_supported(model, batch: Batch, total_len: int) -> bool:
    kw, _ = _cache_support(base_model(model))
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


def _lcp(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        if any(s[k] != first[k] for s in seqs[1:]):
            return k
    return n


def _fast_target_hidden(model, prompt, batch: Batch, kv0) -> torch.Tensor | None:
    """Final hidden states at the batch's target positions [T, d], via the KV prefix tree.

    Returns None where the model or batch does not fit the fast path (the caller goes plain).
    """
    device = next(model.parameters()).device
    n = 0 if prompt is None else int(prompt.shape[0])
    ids_all, mask_all = batch.input_ids, batch.attention_mask
    lengths = mask_all.sum(dim=1).tolist()
    if not _fast_supported(model, batch, n + max(lengths)):
        return None
    _, takes_positions = _cache_support(base_model(model))
    share_prefix = FAST.share_prefix and (takes_positions or _mask_positions(model))
    rows = [ids_all[r, : lengths[r]].tolist() for r in range(len(lengths))]
    row_ex = batch.row_example.tolist()

    # units: what stage 2 computes once (an example's shared prefix; or a whole row)
    if share_prefix:
        unit_rows: list[list[int]] = [[] for _ in range(batch.num_examples)]
        for r, e in enumerate(row_ex):
            unit_rows[e].append(r)
        unit_rows = [u for u in unit_rows if u]
    else:
        unit_rows = [[r] for r in range(len(rows))]
    unit_len = [len(rows[u[0]]) if len(u) == 1 else _lcp([rows[r] for r in u]) for u in unit_rows]
    if min(unit_len) < 1:
        return None
    row_unit, row_plen = {}, {}
    for ui, u in enumerate(unit_rows):
        for r in u:
            row_unit[r], row_plen[r] = ui, unit_len[ui]

    # the prompt's own forward streams every weight once more: worth it unless the prompt is short
    # and the rows few (evaluation passes kv0, computed once for all its batches)
    if kv0 is None and prompt is not None and FAST.share_prompt and (len(unit_rows) - 1) * n >= FAST.group_overhead_tokens:
        kv0 = prompt_kv(model, prompt)
    embed = model.get_input_embeddings()

    def embeds_of(ids: torch.Tensor, with_prompt: bool) -> torch.Tensor:
        out = prompt_embeds(model, ids, prompt) if with_prompt else embed(ids)
        return out.to(_embed_dtype(model))

    t_row, t_pos = batch.target_row.tolist(), batch.target_pos.tolist()
    picked: list[torch.Tensor] = []
    where: list[int] = []  # target index of each picked row
    groups = plan_groups(unit_len, FAST.group_overhead_tokens) if FAST.split_lengths else [list(range(len(unit_rows)))]
    unit_targets: dict[int, list[int]] = {}
    for k, r in enumerate(t_row):
        unit_targets.setdefault(row_unit[r], []).append(k)
    for group in groups:
        glen = max(unit_len[u] for u in group)
        ids = torch.full((len(group), glen), 0, dtype=torch.long)
        mask = torch.zeros((len(group), glen), dtype=torch.long)
        for i, u in enumerate(group):
            ids[i, : unit_len[u]] = torch.tensor(rows[unit_rows[u][0]][: unit_len[u]])
            mask[i, : unit_len[u]] = 1
        ids, mask = ids.to(device), mask.to(device)
        STATS["real"] += int(mask.sum())
        suffix_rows = [(i, r) for i, u in enumerate(group) for r in unit_rows[u] if lengths[r] > unit_len[u]]
        inline_prompt = prompt is not None and kv0 is None
        if inline_prompt:
            STATS["real"] += n * len(group)
        full_mask = mask
        if prompt is not None:
            ones = torch.ones((len(group), n), dtype=mask.dtype, device=device)
            full_mask = torch.cat([ones, mask], dim=1)
        kv = None if kv0 is None else [(k.expand(len(group), -1, -1, -1), v.expand(len(group), -1, -1, -1)) for k, v in kv0]
        hidden, kv1 = _body(model, embeds_of(ids, inline_prompt), full_mask, kv, keep_cache=bool(suffix_rows))
        if inline_prompt:
            hidden = hidden[:, n:]
        # targets inside the shared part
        sel_i, sel_t = [], []
        for i, u in enumerate(group):
            for k in unit_targets.get(u, []):
                if t_pos[k] < unit_len[u]:
                    sel_i.append(i)
                    sel_t.append(t_pos[k])
                    where.append(k)
        if sel_i:
            picked.append(hidden[torch.tensor(sel_i, device=device), torch.tensor(sel_t, device=device)])
        if not suffix_rows:
            continue
        # stage 3: continuations of multi-token choices on top of their example's cached prefix
        slen = max(lengths[r] - row_plen[r] for _, r in suffix_rows)
        sids = torch.full((len(suffix_rows), slen), 0, dtype=torch.long)
        smask = torch.zeros((len(suffix_rows), slen), dtype=torch.long)
        pos = torch.zeros((len(suffix_rows), slen), dtype=torch.long)
        for j, (_, r) in enumerate(suffix_rows):
            tail = rows[r][row_plen[r] :]
            sids[j, : len(tail)] = torch.tensor(tail)
            smask[j, : len(tail)] = 1
            pos[j] = n + row_plen[r] + torch.arange(slen)
        sids, smask, pos = sids.to(device), smask.to(device), pos.to(device)
        STATS["real"] += int(smask.sum())
        src = torch.tensor([i for i, _ in suffix_rows], device=device)
        kv2 = [(k.index_select(0, src), v.index_select(0, src)) for k, v in kv1]
        mask2 = torch.cat([full_mask.index_select(0, src), smask], dim=1)
        h2, _ = _body(model, embeds_of(sids, False), mask2, kv2, position_ids=pos if takes_positions else None)
        sel_j, sel_t = [], []
        for j, (_, r) in enumerate(suffix_rows):
            for k in unit_targets.get(row_unit[r], []):
                if t_row[k] == r and t_pos[k] >= row_plen[r]:
                    sel_j.append(j)
                    sel_t.append(t_pos[k] - row_plen[r])
                    where.append(k)
        if sel_j:
            picked.append(h2[torch.tensor(sel_j, device=device), torch.tensor(sel_t, device=device)])
    if sorted(where) != list(range(len(t_row))):
        raise AssertionError("fast path lost or duplicated a target")
    out = torch.cat(picked, dim=0)
    inverse = torch.empty(len(where), dtype=torch.long)
    inverse[torch.tensor(where)] = torch.arange(len(where))
    return out.index_select(0, inverse.to(device))


_FAST_FAILED: set[type] = set()


def _fast_target_hidden_or_none(model, prompt, batch: Batch, kv0) -> torch.Tensor | None:
    """The fast path, or None (plain path) for a model class whose forward rejected it once.

    A model outside the tested families (llama-style, BLOOM) may not accept an external cache the
    way transformers' own models do; it then gets the plain path, with a warning, never a crash.
    """
    if type(model) in _FAST_FAILED:
        return None
    try:
        return _fast_target_hidden(model, prompt, batch, kv0)
    except (TypeError, AttributeError, ValueError, KeyError, IndexError, NotImplementedError) as e:
        _FAST_FAILED.add(type(model))
        STATS["fallbacks"] += 1
        warnings.warn(
            f"softprompt: the KV-cached scoring path failed for {type(model).__name__} ({type(e).__name__}: {e}); "
            "using the plain path for this model class",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _plain_target_hidden(model, prompt, batch: Batch) -> torch.Tensor:
    """Final hidden states at the target positions from one forward over the padded rows."""
    device = next(model.parameters()).device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    hidden = hidden_states(model, prompt, ids, mask)
    n = 0 if prompt is None else prompt.shape[0]
    STATS["forwards"] += 1
    STATS["padded"] += hidden.shape[0] * hidden.shape[1]
    STATS["real"] += int(mask.sum()) + n * ids.shape[0]
    return hidden[batch.target_row.to(device), batch.target_pos.to(device) + n]  # [T, d]


def _head_logprobs(model, low, picked: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary at the picked hidden states (float32)."""
    device = picked.device
    if FAST.enabled and FAST.fp32_head and autocast_dtype(device) is not None:
        with torch.autocast(device_type=device.type, enabled=False):
            head = model.get_output_embeddings()
            logits = lm_logits(model, picked.to(head.weight.dtype))
        return logits.float().log_softmax(dim=-1)
    return lm_logits(low, picked).float().log_softmax(dim=-1)


def batch_choice_scores(model, prompt: torch.Tensor | None, batch: Batch, *, fast: bool | None = None, kv0=None) -> torch.Tensor:
    """Summed log-likelihood of every choice, shape [examples, max_choices] (-inf where absent).

    `fast` (default `FAST.enabled`) picks the KV-prefix-tree path; `kv0` is the prompt's cached
    keys/values from `prompt_kv` (computed here when absent).
    """
    device = next(model.parameters()).device
    fast = FAST.enabled if fast is None else fast
    low = compute_model(model, autocast_dtype(device)) if fast else model
    with attention_for_grad(low) if fast else contextlib.nullcontext():
        picked = _fast_target_hidden_or_none(low, prompt, batch, kv0) if fast else None
        if picked is None:
            picked = _plain_target_hidden(low, prompt, batch)
    if fast:
        logprobs = _head_logprobs(model, low, picked)
    else:
        logprobs = lm_logits(model, picked).float().log_softmax(dim=-1)
    STATS["head"] += picked.shape[0]
    return summed_choice_scores(batch, logprobs)


def summed_choice_scores(batch: Batch, logprobs: torch.Tensor) -> torch.Tensor:
    """[examples, max_choices] sums of the targets' log-probs, from log-probs at every target [T, vocab]."""
    device = logprobs.device
    tok_lp = logprobs.gather(1, batch.target_tok.to(device).unsqueeze(1)).squeeze(1)  # [T]
    flat = torch.zeros(batch.num_examples * batch.max_choices, device=device, dtype=tok_lp.dtype)
    flat = flat.index_add(0, batch.target_slot.to(device), tok_lp)
    scores = flat.view(batch.num_examples, batch.max_choices)
    return scores.masked_fill(~batch.choice_mask.to(device), float("-inf"))


def choice_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the choices' log-likelihoods (rank classification as the training objective)."""
    return F.cross_entropy(scores, labels.to(scores.device))


def answer_nll(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the correct answer's tokens: the language-modelling loss of PEFT's
    recipe (without its EOS target); unlike `choice_loss` it never pushes the wrong choices down."""
    return -scores.gather(1, labels.to(scores.device)[:, None]).mean()


LOSSES = {"choices": choice_loss, "lm": answer_nll}


@dataclass
class Scores:
    """Per-example choice log-likelihoods, in the order of the examples given."""

    logprobs: list[list[float]]
    labels: list[int]
    choice_chars: list[list[int]]
    truncated: int

    @property
    def predictions(self) -> list[int]:
        return [max(range(len(lp)), key=lp.__getitem__) for lp in self.logprobs]

    @property
    def predictions_norm(self) -> list[int]:
        """argmax of log-likelihood per character (lm-evaluation-harness's acc_norm)."""
        return [
            max(range(len(lp)), key=lambda k, lp=lp, ch=ch: lp[k] / max(ch[k], 1))
            for lp, ch in zip(self.logprobs, self.choice_chars, strict=True)
        ]


@torch.no_grad()
def choice_scores(
    model,
    encoded: Sequence[EncodedExample],
    prompt: torch.Tensor | None = None,
    *,
    pad_id: int = 0,
    max_tokens: int = 8192,
    max_examples: int = 64,
    compute_dtype: torch.dtype | None = None,
    progress=None,
) -> Scores:
    """Score every example (no gradients), in length-sorted batches; results in input order."""
    device = next(model.parameters()).device
    out: list[list[float] | None] = [None] * len(encoded)
    kv0 = None
    if FAST.enabled and FAST.share_prompt and prompt is not None and encoded:
        with autocast_context(device, compute_dtype):  # the prompt's keys/values, once for all batches
            low = compute_model(model, autocast_dtype(device))
            if _cache_support(base_model(low))[0] is not None:
                kv0 = prompt_kv(low, prompt)
    for idx in length_batches(encoded, max_tokens, max_examples):
        batch = collate([encoded[i] for i in idx], pad_id)
        with autocast_context(device, compute_dtype):
            s = batch_choice_scores(model, prompt, batch, kv0=kv0).cpu()
        for j, i in enumerate(idx):
            out[i] = s[j, : encoded[i].num_choices].tolist()
        if progress is not None:
            progress(len(idx))
    return Scores(
        logprobs=out,  # type: ignore[arg-type]
        labels=[e.label for e in encoded],
        choice_chars=[e.choice_chars for e in encoded],
        truncated=sum(1 for e in encoded if e.truncated),
    )
