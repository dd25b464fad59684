"""BLOOM's slowest kernels, replaced for the scorer's forwards on the devices the options list (CUDA by default).

Why: BLOOM has no SDPA implementation in transformers, and on a GPU its step is bound by memory traffic,
not matmuls (measured on an H100: 5-8% of the bf16 peak, bench/README.md "GPU results"):
- its eager attention writes every layer's (batch, heads, query, key) scores, adds the mask, takes a
  float32 softmax, and the backward reads them all again: `_alibi_sdpa_forward` runs the same attention
  through SDPA (the memory-efficient kernel) with ALiBi plus the causal/padding mask as its additive mask,
  built once per forward and shared by all layers;
- its GELU (`BloomGelu`, a custom autograd function) is ~9 elementwise kernels forward and ~15 backward over
  the (tokens, 4 x hidden) activations, in the activation dtype: `F.gelu(approximate="tanh")` is the same
  function (the same tanh formula and constants) in one kernel each way, computed in float32 inside.

The modules get the replacement as an instance attribute for the duration of one scoring forward and lose it
after (the model is unchanged outside, as `scoring.attention` does with the attention implementation), so
evaluation, training and transfer all take the same path. tests/test_gpu_path.py checks the scores and the
prompt's gradients against the model's own kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from softprompt.scoring.options import ScoringOptions

BIAS_ALIGNMENT = 16  # SDPA's memory-efficient kernel copies a mask whose rows are not aligned to this, every call


def bloom_modules(model, kind: str) -> list[torch.nn.Module]:
    """A BLOOM model's "attention" (BloomAttention) or "gelu" (BloomGelu) modules; none for other models."""
    if getattr(getattr(model, "config", None), "model_type", None) != "bloom":
        return []  # every scoring forward on CUDA asks: other models are not scanned module by module
    from transformers.models.bloom import modeling_bloom

    cls = {"attention": modeling_bloom.BloomAttention, "gelu": modeling_bloom.BloomGelu}[kind]
    return [m for m in model.modules() if type(m) is cls]


@contextlib.contextmanager
def bloom_kernels(model, device: torch.device, options: ScoringOptions) -> Iterator[None]:
    """Within: BLOOM's attention runs through SDPA on the device types in `options.alibi_sdpa_devices`, its
    GELU as one kernel on those in `options.fused_gelu_devices`."""
    attention = bloom_modules(model, "attention") if device.type in options.alibi_sdpa_devices else []
    gelu = bloom_modules(model, "gelu") if device.type in options.fused_gelu_devices else []
    bias_cache: dict[str, tuple] = {}  # one (alibi, mask) -> bias per forward: every layer gets the same tensors
    for m in attention:
        m.forward = _alibi_sdpa_forward.__get__(m)
        m._alibi_bias_cache = bias_cache  # noqa: SLF001
    for m in gelu:
        m.forward = _tanh_gelu
    try:
        yield
    finally:
        for m in attention:
            del m.forward, m._alibi_bias_cache  # noqa: SLF001
        for m in gelu:
            del m.forward


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """`BloomGelu`: x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), one fused kernel (and one backward)."""
    return F.gelu(x, approximate="tanh")


def _alibi_bias(cache: dict, alibi: torch.Tensor, mask: torch.Tensor | None, heads: int, dtype) -> torch.Tensor:
    """ALiBi (batch x heads, 1, keys) plus the additive mask (batch, 1, queries, keys): SDPA's float mask, in
    rows allocated `BIAS_ALIGNMENT`-aligned (a view of the first `keys` columns) so no layer copies it again."""
    hit = cache.get("last")
    if hit is not None and hit[0] is alibi and hit[1] is mask and hit[2] == dtype:
        return hit[3]
    keys = alibi.shape[-1]
    slopes = alibi.reshape(-1, heads, 1, keys)
    shape = (slopes.shape[0], heads, 1 if mask is None else mask.shape[-2], keys)
    aligned = -(-keys // BIAS_ALIGNMENT) * BIAS_ALIGNMENT
    bias = torch.empty((*shape[:-1], aligned), dtype=dtype, device=alibi.device)[..., :keys]
    if mask is None:
        bias.copy_(slopes)
    else:
        torch.add(slopes, mask, out=bias)
    cache["last"] = (alibi, mask, dtype, bias)
    return bias


def _alibi_sdpa_forward(
    self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False, output_attentions=False, **kwargs
):
    """`BloomAttention.forward` with SDPA: the same scores (q.k / sqrt(d) + ALiBi + mask), softmax and values.

    Falls back to the model's own forward for what it does not cover: a KV cache, returned attention
    weights, tensor-parallel slices, attention dropout while training."""
    from transformers.models.bloom.modeling_bloom import dropout_add

    dropout = self.attention_dropout.p if self.training else 0.0
    if layer_past is not None or output_attentions or (self.pretraining_tp > 1 and self.slow_but_exact) or dropout:
        return type(self).forward(
            self,
            hidden_states,
            residual,
            alibi,
            attention_mask,
            layer_past=layer_past,
            use_cache=use_cache,
            output_attentions=output_attentions,
            **kwargs,
        )
    batch, length, _ = hidden_states.shape
    query, key, value = self._reshape(self.query_key_value(hidden_states))  # (batch, heads, length, head_dim) each
    bias = _alibi_bias(self._alibi_bias_cache, alibi, attention_mask, self.num_heads, query.dtype)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=self.inv_norm_factor)
    context = context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
    output = dropout_add(self.dense(context), residual, self.hidden_dropout, self.training)
    return output, None
