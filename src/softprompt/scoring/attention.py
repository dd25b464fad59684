"""Eager attention while a CPU forward records gradients (training), the model's own attention otherwise.

torch's CPU flash-attention backward is several times slower than the backward of eager attention
at these sizes (a few hundred tokens), while its forward is faster: evaluation keeps sdpa.

transformers (5.x) reads the attention implementation from `model.config._attn_implementation` on
every forward and offers no per-call switch; `set_attn_implementation` would change it for every
later forward, and an attention function registered to dispatch on grad mode would change the
attention masks (and so the numbers) of evaluation too. So the config attribute is swapped for the
duration of one forward and restored, here only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from softprompt.scoring.options import ScoringOptions


@contextlib.contextmanager
def eager_attention_for_backward(model, options: ScoringOptions) -> Iterator[None]:
    """While the forward inside records gradients on CPU, run an sdpa model's attention as plain matmuls."""
    cfg = model.config
    current = getattr(cfg, "_attn_implementation", None)
    device = next(model.parameters()).device
    if not (options.eager_backward and torch.is_grad_enabled() and device.type == "cpu" and current == "sdpa"):
        yield
        return
    cfg._attn_implementation = "eager"  # noqa: SLF001
    try:
        yield
    finally:
        cfg._attn_implementation = current  # noqa: SLF001
