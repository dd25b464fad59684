"""The low-precision weight copy: frozen weights stored once in the autocast dtype (CPU).

Autocast casts a weight on every use unless it requires grad, so a frozen float32 model under bf16
autocast re-reads and re-writes all its weights in every forward; on a CPU that can cost more than
the matmuls. The copy is made once per model (and again if a frozen weight changes in place). Weights
that train (LoRA's adapters) are not copied: the copy holds the very same parameters, so their gradients
and optimiser updates are the model's, and only the frozen weights are stored in low precision; under
autocast that computes what casting them on every use computes. A model whose matrices all train (full
fine-tuning) gets no copy.
"""

from __future__ import annotations

import copy
import weakref

import torch

from softprompt.scoring.options import DEFAULT, ScoringOptions


class LowPrecisionCopies:
    """One low-precision copy per model, dropped with its model (weak keys) or when a weight changes."""

    def __init__(self) -> None:
        self._copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model, dtype: torch.dtype):
        params = list(model.parameters())
        frozen = [p for p in params if not p.requires_grad]
        trained = tuple(id(p) for p in params if p.requires_grad)  # shared, not copied: updates need no new copy
        key = (dtype, trained, tuple((p.data_ptr(), p._version) for p in frozen))  # noqa: SLF001
        hit = self._copies.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        self._copies.pop(model, None)  # free the stale copy before building a new one
        # frozen matrices in `dtype`; vectors (norm weights, biases) stay float32, as mixed-dtype norms need
        memo: dict[int, torch.nn.Parameter] = {
            id(p): torch.nn.Parameter(p.detach().to(dtype if p.dim() >= 2 else p.dtype), requires_grad=False) for p in frozen
        }
        memo.update({id(p): p for p in params if p.requires_grad})
        low = copy.deepcopy(model, memo)
        low.eval()
        self._copies[model] = (key, low)
        return low


COPIES = LowPrecisionCopies()


def compute_model(model, dtype: torch.dtype | None, options: ScoringOptions = DEFAULT):
    """`model` itself, or its cached copy whose frozen weights are stored in `dtype` (autocast on a device type
    in `options.lowp_devices`: by default the CPU)."""
    if dtype is None or dtype == torch.float32 or not options.lowp_weights:
        return model
    params = list(model.parameters())
    if not params or params[0].device.type not in options.lowp_devices:
        return model
    if not all(p.dtype == torch.float32 for p in params):
        return model
    if not any(p.dim() >= 2 and not p.requires_grad for p in params):  # every matrix trains: nothing to store
        return model
    return COPIES.get(model, dtype)
