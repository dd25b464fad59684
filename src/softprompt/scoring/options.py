"""How the scorer computes (options), what it computed (stats): explicit objects, passed by the caller.

The options never change what is computed, only how: every strategy gives the reference path's
log-likelihoods (to float rounding; tests/test_fastpaths.py checks it). Callers that do not care
pass nothing and get `ScoringOptions()`, the fastest choice for the model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

STRATEGIES = ("auto", "plain", "kv_tree")


@dataclass(frozen=True)
class ScoringOptions:
    """Which scoring strategy, and the switches of the accelerated ones.

    - `plain`: the reference path, one forward over the right-padded rows on the model as it is;
    - `kv_tree`: the KV prefix tree (`scoring.kv_tree`), an error where the model cannot take it;
    - `auto` (default): the prefix tree where the model and batch allow it, else one padded forward;
      under CPU autocast both use the low-precision weight copy (`scoring.lowp`) and a float32 head.
    """

    strategy: str = "auto"
    share_prompt: bool = True  # compute the soft prompt's keys/values once per batch
    share_prefix: bool = True  # compute a multi-token-choice example's context once
    split_lengths: bool = True  # split a batch into length groups to skip padding
    lowp_weights: bool = True  # CPU autocast: keep a low-precision copy of frozen weights
    fp32_head: bool = True  # LM head in float32 on the scored positions under autocast
    fp32_residual: bool = True  # low-precision copy: residual stream in float32 (as autocast keeps it)
    eager_backward: bool = True  # CPU + gradients: eager attention (its backward beats torch's CPU flash kernel's)
    group_overhead_tokens: int = 64  # fixed cost of one more forward (weights streamed again), in tokens

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown scoring strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}")

    @property
    def accelerated(self) -> bool:
        """False for the reference path, which uses none of the switches."""
        return self.strategy != "plain"


DEFAULT = ScoringOptions()
PLAIN = ScoringOptions(strategy="plain")


class ScoringStats(Counter):
    """Counts of what the scorer computed, for benchmarks and tests: "forwards" (calls of the transformer
    body), "padded" (token positions computed, padding included), "real" (tokens without padding),
    "head" (positions through the LM head), "fallbacks" (batches an `auto` tree sent down the plain path)."""
