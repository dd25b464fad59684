"""Patchscopes' machinery: a model's decoder blocks, the hidden states read at one, and states patched into another.

The patch probe (`describe_probes`) reads the prompt rows' states at block l in a source forward and writes
them over placeholder tokens at the same block in the describing forward (Ghandeharioun et al. 2024;
InSPEcT, Ramati et al. 2024). Hooks only: the model's code and weights are left alone, and every hook is
removed when its step ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from softprompt.errors import SoftPromptError
from softprompt.scoring.model import base_model

# Default patch layers as fractions of the model's depth: on SmolLM2-135M (30 blocks) blocks 6 and 9. Measured on the
# identity probe (4 task-like sentences, greedy, context source): mean score 0.54-0.79 at blocks 0-9, at most 0.46 at
# 10-21, 0 from block 23 on; 6 is among the best and far enough from the input to differ from the embed probe, 9 is the
# deepest still faithful one.
DEFAULT_LAYER_FRACTIONS = (0.2, 0.3)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM: `model.model.layers` (llama, gemma, mistral, qwen), `transformer.h`
    (BLOOM, GPT-2), `model.decoder.layers` (OPT), `gpt_neox.layers`, `model.language_model.layers` (gemma 3)."""
    body = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    for owner in (body, getattr(body, "decoder", None), getattr(body, "language_model", None), model):
        for name in ("layers", "h", "blocks"):
            layers = getattr(owner, name, None) if owner is not None else None
            if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
                return layers
    raise SoftPromptError(
        f"cannot find the decoder layers of {type(model).__name__}: expected model.model.layers (llama, gemma) "
        "or transformer.h (BLOOM); the patch probe needs them (use only the embed probe for this model)"
    )


def default_layers(n_layers: int) -> list[int]:
    """An early and a lower-middle block (`DEFAULT_LAYER_FRACTIONS` of the depth), distinct and patchable."""
    top = max(n_layers - 2, 0)
    return sorted({min(int(round(f * n_layers)), top) for f in DEFAULT_LAYER_FRACTIONS})


def resolve_layers(model, layers: Iterable[int] | None) -> list[int]:
    """The patch layers, checked against the model's depth (None: the defaults).

    The last block is refused: its output at the placeholders is read by no later block, so patching it
    cannot change the generated text."""
    n = len(decoder_layers(model))
    if layers is None:
        return default_layers(n)
    out = sorted({int(x) for x in layers})
    bad = [x for x in out if not 0 <= x <= n - 2]
    if bad:
        raise SoftPromptError(
            f"patch layer(s) {bad} out of range: {type(model).__name__} has {n} decoder layers, expected 0..{max(n - 2, 0)} "
            "(the last layer's output is read by no later layer)"
        )
    return out


@dataclass
class PatchRecord:
    """What a patch hook did: forward calls seen, their sequence lengths, and how many it patched."""

    calls: int = 0
    patched: int = 0
    lengths: list[int] = field(default_factory=list)


@torch.no_grad()
def source_states(backbone, rows: torch.Tensor, layers: Sequence[int], prefix: Sequence[int] = ()) -> dict[int, torch.Tensor]:
    """The (n, d) hidden states of the rows' positions at the output of each decoder block in `layers`, from one
    forward over [prefix tokens; rows] (no prefix: the rows alone from position 0, where a trained prompt sits)."""
    blocks = decoder_layers(backbone.model)
    states: dict[int, torch.Tensor] = {}
    skip = len(prefix)

    def capture(layer: int):
        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            states[layer] = h[0, skip:].detach().clone()

        return hook

    emb = backbone.model.get_input_embeddings()
    head = emb(torch.tensor(list(prefix), dtype=torch.long, device=backbone.device))
    embeds = torch.cat([head, rows.to(device=head.device, dtype=head.dtype)])[None]
    handles = [blocks[layer].register_forward_hook(capture(layer)) for layer in layers]
    try:
        base_model(backbone.model)(inputs_embeds=embeds, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return states


@contextlib.contextmanager
def patch_layer(model, layer: int, positions: slice, states: torch.Tensor, length: int) -> Iterator[PatchRecord]:
    """Within the block, decoder block `layer`'s output at `positions` is replaced by `states` in the first
    forward (the prefill over the whole `length`-token input) and left alone afterwards (cached decode steps).

    A first forward over another length is an error, not a silent no-op. The hook is removed on exit."""
    record = PatchRecord()

    def hook(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        record.calls += 1
        record.lengths.append(int(h.shape[1]))
        if record.patched:
            return None
        if h.shape[1] != length:
            raise SoftPromptError(f"the patch expected a prefill over {length} positions, the first forward saw {h.shape[1]}")
        h = h.clone()
        h[:, positions] = states.to(device=h.device, dtype=h.dtype)
        record.patched += 1
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()
