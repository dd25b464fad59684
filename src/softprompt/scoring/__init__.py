"""Scoring: the log-likelihood of each choice after [soft prompt; input], the one path everything uses.

- `scorer`: the contract (`batch_choice_scores`, `choice_scores`, `Scores`, `LOSSES`,
  `summed_choice_scores`) and the reference path;
- `options`: `ScoringOptions` (which strategy, its switches) and `ScoringStats` (what was computed);
- `model`: the model as the scorer sees it (body, head, prompt embeddings, autocast);
- `kv_tree`: the KV-prefix-tree strategy, with `kv_cache` (the cached body forward), `kv_prefix` (the shared
  prefix) and `kv_plan` (the batch's tree); `lowp`: the low-precision weight copy; `attention`:
  the attention kernels per device (eager for CPU backward passes); `bloom`: BLOOM's attention and GELU
  replaced by fused kernels on CUDA.
"""

from softprompt.scoring.kv_plan import plan_groups
from softprompt.scoring.kv_prefix import prompt_kv
from softprompt.scoring.lowp import compute_model
from softprompt.scoring.model import autocast_context, autocast_dtype, base_model, full_logits, prompt_embeds
from softprompt.scoring.options import DEFAULT, PLAIN, STRATEGIES, ScoringOptions, ScoringStats
from softprompt.scoring.scorer import (
    LOSSES,
    Scores,
    answer_nll,
    batch_choice_scores,
    choice_loss,
    choice_scores,
    class_weights,
    head_logprobs,
    padded_counts,
    stacked_choice_scores,
    summed_choice_scores,
)

__all__ = [
    "DEFAULT",
    "LOSSES",
    "PLAIN",
    "STRATEGIES",
    "Scores",
    "ScoringOptions",
    "ScoringStats",
    "answer_nll",
    "autocast_context",
    "autocast_dtype",
    "base_model",
    "batch_choice_scores",
    "choice_loss",
    "choice_scores",
    "class_weights",
    "compute_model",
    "full_logits",
    "head_logprobs",
    "padded_counts",
    "plan_groups",
    "prompt_embeds",
    "prompt_kv",
    "stacked_choice_scores",
    "summed_choice_scores",
]
