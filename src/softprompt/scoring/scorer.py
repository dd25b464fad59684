"""THE scoring contract: [soft prompt; input; choice] -> log-likelihood of each choice, and the reference path.

Training (a loss over the choices), evaluation (argmax), baselines and transfer all call
`batch_choice_scores` or `choice_scores`. Logits are computed only at the positions that predict
answer tokens: the LM head is applied to those hidden states alone, never to the whole sequence.

The reference (`plain`) path is one forward over the right-padded rows [prompt; row]. The other
strategies (`ScoringOptions.strategy`; `auto` picks one per device, `options.AUTO_STRATEGY`) compute
the same numbers faster: `padded` (the same single forward without host round trips or padding mask:
the GPU path) and the KV prefix tree (`scoring.kv_tree`: the CPU path), under CPU autocast on a
low-precision weight copy (`scoring.lowp`), all with the LM head in float32 on the few scored
positions. tests/test_fastpaths.py checks they agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from softprompt.config import class_balance_on
from softprompt.data.batching import Batch, EncodedExample, collate, length_batches
from softprompt.errors import SoftPromptError
from softprompt.model.deep_prompt import KVPrompt
from softprompt.preemption import safe_point
from softprompt.scoring import kv_prefix, kv_tree
from softprompt.scoring.attention import scoring_attention
from softprompt.scoring.lowp import compute_model
from softprompt.scoring.model import (
    autocast_context,
    autocast_dtype,
    hidden_states,
    lm_logits,
    prompt_count,
    prompt_positions,
)
from softprompt.scoring.options import DEFAULT, ScoringOptions, ScoringStats


def padded_target_hidden(model, prompt, batch: Batch, stats: ScoringStats, *, padding_mask: bool = True) -> torch.Tensor:
    """One forward over the right-padded rows [prompt; row]: the final hidden states at the targets [T, d].

    The reference path (`plain`, with the padding mask) and the `padded` strategy (without it). `batch`
    is on the model's device (`Batch.to`); nothing here reads a device value back (the counts come from
    the batch's host copy). Without the mask a pad is computed as a token, but it sits to the right of
    every real token of its row, so causal attention never lets a real position see it, and positions
    stay 0..L-1 as with the mask (ALiBi's too); a target is always a real position. A stack of K prompts
    computes every row behind each in the same forward: [K, T, d]. A deep prompt's keys/values are a cache, not
    positions of the forward (`prompt_positions` is 0)."""
    n = prompt_positions(prompt)
    hidden = hidden_states(model, prompt, batch.input_ids, batch.attention_mask if padding_mask else None)
    stats.update(padded_counts(batch.on_host(), n, prompt_count(prompt)))
    if isinstance(prompt, torch.Tensor) and prompt.dim() == 3:
        return hidden.unflatten(0, (prompt.shape[0], -1))[:, batch.target_row, batch.target_pos + n]  # [K, T, d]
    return hidden[batch.target_row, batch.target_pos + n]  # [T, d]


def padded_counts(host: Batch, n_prompt: int, prompts: int = 1) -> ScoringStats:
    """What one padded forward over `host`'s rows behind an `n_prompt`-vector prompt (each row once per prompt of a
    stack of `prompts`) computes (`ScoringStats`'s forwards, padded, real), read from the host copy: also what a
    replayed CUDA graph of it computed."""
    rows, length = host.input_ids.shape
    real = int(host.attention_mask.sum()) + n_prompt * rows
    return ScoringStats(forwards=1, padded=prompts * rows * (length + n_prompt), real=prompts * real)


def head_logprobs(model, low, picked: torch.Tensor, options: ScoringOptions) -> torch.Tensor:
    """Log-softmax over the vocabulary at the picked hidden states (float32); `low` is the model that computed them."""
    device = picked.device
    if options.accelerated and options.fp32_head and autocast_dtype(device) is not None:
        with torch.autocast(device_type=device.type, enabled=False):
            head = model.get_output_embeddings()
            logits = lm_logits(model, picked.to(head.weight.dtype))
        return logits.float().log_softmax(dim=-1)
    return lm_logits(low, picked).float().log_softmax(dim=-1)


def _target_hidden(model, prompt, batch: Batch, kv0, options: ScoringOptions, stats: ScoringStats) -> torch.Tensor:
    """Hidden states at the targets by the strategy that runs on the batch's device (`model` is already the one that computes)."""
    strategy = options.resolved(batch.input_ids.device)
    if strategy != "kv_tree":
        return padded_target_hidden(model, prompt, batch, stats, padding_mask=strategy == "plain" or options.padding_mask)
    if options.strategy == "kv_tree":
        picked = kv_tree.target_hidden(model, prompt, batch.on_host(), kv0, options, stats)
        if picked is None:
            raise SoftPromptError(
                f"the kv_tree scoring strategy does not fit {type(model).__name__} or this batch "
                "(no external KV cache, or a sliding window shorter than the rows): use --scoring-strategy auto or padded"
            )
        return picked
    picked = kv_tree.target_hidden_or_none(model, prompt, batch.on_host(), kv0, options, stats)
    # auto's fallback where the tree does not fit: one forward with the padding mask, as it always was
    return padded_target_hidden(model, prompt, batch, stats) if picked is None else picked


def batch_choice_scores(
    model,
    prompt: torch.Tensor | KVPrompt | None,
    batch: Batch,
    *,
    options: ScoringOptions | None = None,
    stats: ScoringStats | None = None,
    kv0=None,
) -> torch.Tensor:
    """Summed log-likelihood of every choice, shape [examples, max_choices] (-inf where absent); for a stack of K
    prompts (K, n, d), every example behind each, in the same forwards: [K, examples, max_choices].

    `prompt`: an input-level prompt matrix (n, d), a deep prompt (`KVPrompt`: keys/values at every layer) or None.
    `options` picks the strategy (default: `ScoringOptions()`, the fastest for the device); `stats` counts
    what was computed; `kv0` is the cached prefix every row starts with (`kv_prefix.shared_prefix`: the
    prompt and shared tokens; computed here when absent and the tree runs). `batch` may be on the host or already on the model's device (`Batch.to`).
    """
    options = options or DEFAULT
    stats = stats if stats is not None else ScoringStats()
    device = next(model.parameters()).device
    low = compute_model(model, autocast_dtype(device), options) if options.accelerated else model
    batch = batch.to(device)  # one copy (none if the caller moved it already)
    with scoring_attention(low, options) if options.accelerated else contextlib.nullcontext():
        picked = _target_hidden(low, prompt, batch, kv0, options, stats)
    logprobs = head_logprobs(model, low, picked.flatten(0, -2), options).unflatten(0, picked.shape[:-1])
    stats["head"] += picked.shape[:-1].numel()
    return summed_choice_scores(batch, logprobs)


def summed_choice_scores(batch: Batch, logprobs: torch.Tensor) -> torch.Tensor:
    """[examples, max_choices] sums of the targets' log-probs, from log-probs at every target [T, vocab]
    (a bucketed batch's padding targets add into one extra slot, dropped: `batching.collate`); log-probs
    [K, T, vocab] of a stack of prompts give [K, examples, max_choices]."""
    device, lead = logprobs.device, logprobs.shape[:-2]
    tok = batch.target_tok.to(device).expand(*lead, -1)
    tok_lp = logprobs.gather(-1, tok.unsqueeze(-1)).squeeze(-1)  # [..., T]
    slots = batch.num_examples * batch.max_choices
    flat = torch.zeros(*lead, slots + 1, device=device, dtype=tok_lp.dtype)
    flat = flat.index_add(len(lead), batch.target_slot.to(device), tok_lp)
    scores = flat[..., :slots].unflatten(-1, (batch.num_examples, batch.max_choices))
    return scores.masked_fill(~batch.choice_mask.to(device), float("-inf"))


def _weighted_mean(losses: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-example losses, each scaled by its class's weight (an unbiased estimate of the
    class-balanced risk when the weights are 1 / (classes x class share): no per-batch renormalisation)."""
    if class_weights is None:
        return losses.mean()
    return (losses * class_weights.to(losses.device, losses.dtype)[labels]).mean()


def choice_loss(scores: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the choices' log-likelihoods (rank classification as the training objective)."""
    labels = labels.to(scores.device)
    return _weighted_mean(F.cross_entropy(scores, labels, reduction="none"), labels, class_weights)


def answer_nll(scores: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of the correct answer's tokens: the language-modelling loss of PEFT's
    recipe (without its EOS target); unlike `choice_loss` it never pushes the wrong choices down."""
    labels = labels.to(scores.device)
    return _weighted_mean(-scores.gather(1, labels[:, None]).squeeze(1), labels, class_weights)


def class_weights(label_counts: list[int], metric: str, mode: str) -> torch.Tensor | None:
    """Per-class loss weights for `class_balance` `mode` (off / on / auto: on for a macro-F1 metric):
    n / (k x n_c) over the k classes present in training (a class with no example weighs 1), or None: the plain
    mean, also where fewer than two classes are present (nothing to balance; training warns about it)."""
    if not class_balance_on(mode, metric, len(label_counts)):
        return None
    present = [c for c in label_counts if c > 0]
    if len(present) < 2:
        return None
    total, k = sum(present), len(present)
    return torch.tensor([total / (k * c) if c > 0 else 1.0 for c in label_counts], dtype=torch.float32)


LOSSES = {"choices": choice_loss, "lm": answer_nll}  # keys: softprompt.config.LOSSES


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
    prompt: torch.Tensor | KVPrompt | None = None,
    *,
    pad_id: int = 0,
    max_tokens: int = 8192,
    max_examples: int = 64,
    compute_dtype: torch.dtype | None = None,
    progress=None,
    options: ScoringOptions | None = None,
    stats: ScoringStats | None = None,
) -> Scores:
    """Score every example (no gradients), in length-sorted batches; results in input order."""
    options = options or DEFAULT
    stats = stats if stats is not None else ScoringStats()
    (scores,) = _scores(model, encoded, prompt, pad_id, max_tokens, max_examples, compute_dtype, progress, options, stats)
    return scores


@torch.no_grad()
def stacked_choice_scores(
    model,
    encoded: Sequence[EncodedExample],
    prompts: torch.Tensor,
    *,
    pad_id: int = 0,
    max_tokens: int = 8192,
    max_examples: int = 64,
    compute_dtype: torch.dtype | None = None,
    progress=None,
    options: ScoringOptions | None = None,
    stats: ScoringStats | None = None,
) -> list[Scores]:
    """`choice_scores` of each of K prompts of one length (K, n, d), the prompts stacked in the same forwards: each
    batch's rows once behind every prompt (the prompts' prefixes computed once, at batch K). The same numbers as K
    calls of `choice_scores`, to float rounding, from fewer and larger forwards: a forward holds about `max_tokens`
    tokens whatever K (fewer examples per batch), and a K too large for one example's rows is split into chunks."""
    if prompts.dim() != 3 or prompts.shape[0] < 1:
        raise SoftPromptError(f"a stack of prompts is (K, n, d) with K >= 1, got shape {tuple(prompts.shape)}")
    options = options or DEFAULT
    stats = stats if stats is not None else ScoringStats()
    longest = max((len(e.rows) * (prompts.shape[1] + max(len(r.ids) for r in e.rows)) for e in encoded), default=1)
    out: list[Scores] = []
    for chunk in prompts.split(max(1, max_tokens // longest)):
        k = chunk.shape[0]
        per_forward = replace(options, group_overhead_tokens=max(1, options.group_overhead_tokens // k))
        bound = max(1, max_tokens // k)
        out += _scores(model, encoded, chunk, pad_id, bound, max_examples, compute_dtype, progress, per_forward, stats)
    return out


def _scores(model, encoded, prompt, pad_id, max_tokens, max_examples, compute_dtype, progress, options, stats) -> list[Scores]:
    """The examples scored behind `prompt` (a matrix: one Scores; a stack: one per prompt), in input order."""
    device = next(model.parameters()).device
    k = prompt_count(prompt)
    out: list[list[list[float] | None]] = [[None] * len(encoded) for _ in range(k)]
    kv0 = kv_prefix.shared_prefix(model, prompt, encoded, compute_dtype, options, stats)
    batches, scores = length_batches(encoded, max_tokens, max_examples), []
    for idx in batches:
        safe_point("evaluate-batch")  # Ctrl-C / SIGTERM stop a long evaluation within a batch
        batch = collate([encoded[i] for i in idx], pad_id)
        with autocast_context(device, compute_dtype):
            scores.append(batch_choice_scores(model, prompt, batch, kv0=kv0, options=options, stats=stats))
        if progress is not None:
            progress(len(idx) * k)  # examples x prompts; on a GPU: batches queued, not necessarily done
    for idx, s in zip(batches, to_host(scores), strict=True):
        s = s.reshape(k, *s.shape[-2:])
        for j, i in enumerate(idx):
            for p in range(k):
                out[p][i] = s[p, j, : encoded[i].num_choices].tolist()
    return [
        Scores(
            logprobs=logprobs,  # type: ignore[arg-type]
            labels=[e.label for e in encoded],
            choice_chars=[e.choice_chars for e in encoded],
            truncated=sum(1 for e in encoded if e.truncated),
        )
        for logprobs in out
    ]


def to_host(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`tensors` on the CPU in one device-to-host copy (one wait for the device, not one per batch)."""
    if not tensors or all(t.device.type == "cpu" for t in tensors):
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors]).cpu()
    return [part.view(t.shape) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]
