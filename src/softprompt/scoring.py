"""THE scoring path: [soft prompt; input; choice] -> log-likelihood of each choice.

Training (cross-entropy over the choices), evaluation (argmax), baselines and transfer all call
`choice_scores`. Logits are computed only at the positions that predict answer tokens: the LM head
is applied to those hidden states alone, never to the whole sequence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from softprompt.batching import Batch, EncodedExample, collate, length_batches


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


def batch_choice_scores(model, prompt: torch.Tensor | None, batch: Batch) -> torch.Tensor:
    """Summed log-likelihood of every choice, shape [examples, max_choices] (-inf where absent)."""
    device = next(model.parameters()).device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    hidden = hidden_states(model, prompt, ids, mask)
    offset = 0 if prompt is None else prompt.shape[0]
    picked = hidden[batch.target_row.to(device), batch.target_pos.to(device) + offset]  # [T, d]
    logprobs = lm_logits(model, picked).float().log_softmax(dim=-1)
    tok_lp = logprobs.gather(1, batch.target_tok.to(device).unsqueeze(1)).squeeze(1)  # [T]
    flat = torch.zeros(batch.num_examples * batch.max_choices, device=device, dtype=tok_lp.dtype)
    flat = flat.index_add(0, batch.target_slot.to(device), tok_lp)
    scores = flat.view(batch.num_examples, batch.max_choices)
    return scores.masked_fill(~batch.choice_mask.to(device), float("-inf"))


def choice_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the choices' log-likelihoods (rank classification as the training objective)."""
    return F.cross_entropy(scores, labels.to(scores.device))


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
    for idx in length_batches(encoded, max_tokens, max_examples):
        batch = collate([encoded[i] for i in idx], pad_id)
        with autocast_context(device, compute_dtype):
            s = batch_choice_scores(model, prompt, batch).cpu()
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
