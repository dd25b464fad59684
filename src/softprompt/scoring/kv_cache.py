"""The KV-cached forward the prefix tree is built from: the model body run after given keys/values.

What differs between model families lives here: which keyword the body takes a cache by, whether it takes
position_ids or reads positions from the mask (ALiBi), and whether a sliding window would crop the cache
(`supported`: if not, the batch goes down the plain path).
"""

from __future__ import annotations

import torch

from softprompt.data.batching import Batch
from softprompt.scoring.model import autocast_dtype, base_model, cache_support, new_cache
from softprompt.scoring.options import ScoringOptions, ScoringStats


def mask_positions(model) -> bool:
    """Models whose positions come from the attention mask (ALiBi), not from position_ids."""
    return getattr(model.config, "model_type", "") in ("bloom",)


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
    """The dtype the residual stream runs in: the embeddings', or float32 for low-precision weights under autocast
    with `options.fp32_residual` (autocast casts each matmul's input; without autocast the weights' dtype must be the
    input's, as with `--dtype bfloat16 --compute-dtype float32`)."""
    weight = model.get_input_embeddings().weight
    low = weight.dtype in (torch.bfloat16, torch.float16)
    if options.fp32_residual and low and autocast_dtype(weight.device) is not None:
        return torch.float32
    return weight.dtype


def supported(model, batch: Batch, total_len: int) -> bool:
    kw, _ = cache_support(type(base_model(model)))
    if kw is None or batch.row_example is None:
        return False
    window = getattr(model.config, "sliding_window", None)
    # a sliding-window cache would crop what the full forward keeps
    return window is None or total_len < window
