"""How the scorer computes (options), what it computed (stats): explicit objects, passed by the caller.

The options never change what is computed, only how: every strategy gives the reference path's
log-likelihoods (to float rounding; tests/test_fastpaths.py checks it). Callers that do not care
pass nothing and get `ScoringOptions()`, whose `auto` strategy is the fastest one for the device
(`AUTO_STRATEGY`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from softprompt.config import SCORING_STRATEGIES

STRATEGIES = SCORING_STRATEGIES  # ("auto", "plain", "padded", "kv_tree"): TrainConfig.scoring_strategy's choices

# What `auto` runs, by device type (measured: bench/README.md, "Scoring strategies"). On a CPU the
# KV prefix tree computes fewest tokens, and a CPU's cost is its FLOPs; on a GPU every extra forward
# is hundreds of kernel launches and the tree's planning needs host round trips, so one padded forward wins.
# A device type not listed gets `AUTO_DEFAULT`.
AUTO_STRATEGY = {"cpu": "kv_tree", "cuda": "padded", "mps": "padded"}
AUTO_DEFAULT = "padded"


@dataclass(frozen=True)
class ScoringOptions:
    """Which scoring strategy, and the switches of the accelerated ones.

    - `plain`: the reference path, one forward over the right-padded rows (with their padding mask) on
      the model as it is, no switch applies;
    - `padded`: the same single forward, built for accelerators: the batch's index tensors reach the
      device in one copy, nothing is read back to the host, no padding mask is passed (with right
      padding and causal attention it changes nothing at a real position, and without it SDPA can take its
      causal flash kernel), the head in float32 at the answer positions (`fp32_head`); on a CPU also the
      low-precision weight copy and eager attention for the backward;
    - `kv_tree`: the KV prefix tree (`scoring.kv_tree`), an error where the model cannot take it;
    - `auto` (default): by device, `AUTO_STRATEGY`: on a CPU the prefix tree where the model and batch
      allow it, else one padded forward (with its mask, as before this table existed); on a GPU `padded`.
    """

    strategy: str = "auto"
    share_prompt: bool = True  # compute the soft prompt's keys/values once per batch
    share_prefix: bool = True  # compute a multi-token-choice example's context once
    split_lengths: bool = True  # split a batch into length groups to skip padding
    lowp_weights: bool = True  # CPU autocast: keep a low-precision copy of frozen weights
    # device types where that copy is used: on a GPU it would remove autocast's per-forward weight casts (a third
    # of a llama step's launches, bench/README.md "GPU results"), not yet measured there, so CPU only by default
    lowp_devices: tuple[str, ...] = ("cpu",)
    fp32_head: bool = True  # LM head in float32 on the scored positions under autocast
    fp32_residual: bool = True  # low-precision copy: residual stream in float32 (as autocast keeps it)
    eager_backward: bool = True  # CPU + gradients: eager attention (its backward beats torch's CPU flash kernel's)
    group_overhead_tokens: int = 64  # fixed cost of one more forward (weights streamed again), in tokens
    padding_mask: bool = False  # padded: pass the padding mask anyway (for a model whose positions need it)
    cudnn_attention: bool = False  # CUDA: let SDPA pick cuDNN's attention (it plans anew for every length)
    # device types where BLOOM's ALiBi attention runs through SDPA (the bias as its mask) instead of the model's
    # eager matmuls and float32 softmax, and where its GELU runs as one kernel (scoring.bloom); measured on CUDA
    alibi_sdpa_devices: tuple[str, ...] = ("cuda",)
    fused_gelu_devices: tuple[str, ...] = ("cuda",)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown scoring strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}")

    @property
    def accelerated(self) -> bool:
        """False for the reference path, which uses none of the switches."""
        return self.strategy != "plain"

    def resolved(self, device: Any) -> str:
        """The strategy that runs on `device` (a torch.device or its name): `auto` looked up in `AUTO_STRATEGY`."""
        if self.strategy != "auto":
            return self.strategy
        kind = getattr(device, "type", None) or str(device).split(":")[0]
        return AUTO_STRATEGY.get(kind, AUTO_DEFAULT)


DEFAULT = ScoringOptions()
PLAIN = ScoringOptions(strategy="plain")


class ScoringStats(Counter):
    """Counts of what the scorer computed, for benchmarks and tests: "forwards" (calls of the transformer
    body), "padded" (token positions computed, padding included), "real" (tokens without padding),
    "head" (positions through the LM head), "fallbacks" (batches an `auto` tree sent down the plain path)."""
