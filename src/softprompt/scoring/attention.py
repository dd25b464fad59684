"""The attention kernels a scoring forward runs with: eager while a CPU forward records gradients, and on
CUDA the SDPA backends without cuDNN's; the model's own attention otherwise.

CPU: torch's flash-attention backward is several times slower than the backward of eager attention
at these sizes (a few hundred tokens), while its forward is faster: evaluation keeps sdpa.
transformers (5.x) reads the attention implementation from `model.config._attn_implementation` on
every forward and offers no per-call switch; `set_attn_implementation` would change it for every
later forward, and an attention function registered to dispatch on grad mode would change the
attention masks (and so the numbers) of evaluation too. So the config attribute is swapped for the
duration of one forward and restored, here only.

CUDA: on an H100 torch (2.11) picks cuDNN's fused attention first for a causal bf16 SDPA call, and
cuDNN builds an execution plan for every new sequence length; the scorer's batches are padded to their
own longest row, so almost every step has a new length. Measured (bench/README.md, "GPU results"): the
llama shape paid ~100 ms of host time per training step and bf16 evaluation ran slower than float32,
while BLOOM (no SDPA) did not. Flash and memory-efficient attention take any length without planning.

BLOOM's attention (ALiBi, no SDPA in transformers) is replaced on CUDA by `softprompt.scoring.bloom`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from softprompt.scoring.bloom import bloom_kernels
from softprompt.scoring.options import ScoringOptions

# SDPA backends a CUDA forward may use, in torch's order of preference, cuDNN's left out
CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_backends(device: torch.device, options: ScoringOptions) -> list | None:
    """The SDPA backends to allow on `device` (None: torch's own choice)."""
    if device.type == "cuda" and not options.cudnn_attention:
        return CUDA_SDPA_BACKENDS
    return None


@contextlib.contextmanager
def scoring_attention(model, options: ScoringOptions) -> Iterator[None]:
    """The attention of one scoring forward of `model`: see the module docstring."""
    device = next(model.parameters()).device
    backends = sdpa_backends(device, options)
    with (
        sdpa_kernel(backends) if backends else contextlib.nullcontext(),
        eager_attention_for_backward(model, device, options),
        bloom_kernels(model, device, options),
    ):
        yield


@contextlib.contextmanager
def eager_attention_for_backward(model, device: torch.device, options: ScoringOptions) -> Iterator[None]:
    """While the forward inside records gradients on CPU (`device`: the model's), run an sdpa model's attention as
    plain matmuls."""
    cfg = model.config
    current = getattr(cfg, "_attn_implementation", None)
    if not (options.eager_backward and torch.is_grad_enabled() and device.type == "cpu" and current == "sdpa"):
        yield
        return
    cfg._attn_implementation = "eager"  # noqa: SLF001
    try:
        yield
    finally:
        cfg._attn_implementation = current  # noqa: SLF001
