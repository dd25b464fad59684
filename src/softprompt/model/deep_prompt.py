"""Deep prompts (method `deep`: prefix tuning, Li & Liang 2021; P-Tuning v2, Liu et al. 2022): trainable keys and
values at every layer instead of vectors before the input embeddings.

A deep prompt is stored as one (n, layers x 2 x kv_heads x head_dim) matrix in PEFT's PREFIX_TUNING layout (row i is
virtual token i; along a row, for each layer its keys then its values, each kv_heads x head_dim), so it is a
`SoftPrompt` for every file, checkpoint, selection and hash the toolkit keeps, and exports to PEFT as it is. What
differs is only how the scorer sees it: `KVPrompt`, the same matrix viewed as each layer's cached keys/values, which
the scorer places before every row (`softprompt.scoring`), as PEFT passes them as `past_key_values`.

Its words-based inits follow Li & Liang: a prefix initialised from the keys/values of real tokens (the task
description, the label words, frequent tokens) at every layer, so training starts from what the model computes for
that text (at step 0 the `text` init scores as the description typed before the input, without its chat framing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.config import INIT_METHODS
from softprompt.errors import SoftPromptError
from softprompt.model.prompt import PromptInit, SoftPrompt, prompt_token_ids


@dataclass(frozen=True)
class PrefixShape:
    """How a model's attention caches keys/values: what one row of a deep prompt holds per layer."""

    layers: int
    kv_heads: int
    head_dim: int

    @property
    def width(self) -> int:
        """The row width of a deep prompt matrix: layers x (keys, values) x kv_heads x head_dim."""
        return self.layers * 2 * self.kv_heads * self.head_dim


def prefix_shape(model) -> PrefixShape:
    """The model's cache layout from its config (grouped-query attention: the key/value heads, not the query heads)."""
    return config_prefix_shape(model.config, type(model).__name__)


def config_prefix_shape(config, name: str = "the model") -> PrefixShape:
    """`prefix_shape` from a model config alone (no weights): what an imported prefix is checked against."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_name = name
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if not layers or not heads:
        raise SoftPromptError(f"{model_name}: its config names no layer or head count: no deep prompt for it")
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if getattr(cfg, "num_kv_shared_layers", 0) or len(set(_layer_cache_shapes(cfg, int(layers)))) > 1:
        raise SoftPromptError(
            f"{model_name}: its layers cache keys/values of different shapes (or share caches): "
            "no deep prompt for it (one prefix row layout must fit every layer)"
        )
    return PrefixShape(int(layers), int(kv_heads), int(head_dim))


def _layer_cache_shapes(cfg, layers: int) -> list[tuple[int, int]]:
    """(key/value heads, head dim) of each layer where the config gives them per layer (transformers' per-layer
    configs of heterogeneous models); [] where it does not."""
    per_layer = getattr(cfg, "per_layer_config", None)
    if per_layer is None or not getattr(cfg, "layer_types", None):
        return []
    try:
        return [(int(per_layer[i].num_key_value_heads), int(per_layer[i].head_dim)) for i in range(layers)]
    except (AttributeError, IndexError, KeyError, TypeError):
        return []


@dataclass
class KVPrompt:
    """A deep prompt as the scorer sees it: `matrix` (n, width) read as each layer's keys and values."""

    matrix: torch.Tensor
    shape: PrefixShape

    def __post_init__(self) -> None:
        if self.matrix.dim() != 2 or self.matrix.shape[1] != self.shape.width:
            raise SoftPromptError(
                f"a deep prompt for this model is an (n, {self.shape.width}) matrix "
                f"({self.shape.layers} layers x 2 x {self.shape.kv_heads} heads x {self.shape.head_dim}), "
                f"got {tuple(self.matrix.shape)}"
            )

    @property
    def length(self) -> int:
        """The positions it occupies before every row."""
        return int(self.matrix.shape[0])

    def detach(self) -> KVPrompt:
        return KVPrompt(self.matrix.detach(), self.shape)

    def layer_kv(self, dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values), each (1, kv_heads, n, head_dim): PEFT's view of its prompt_embeddings."""
        s, n = self.shape, self.length
        x = self.matrix.to(device=device, dtype=dtype).view(n, s.layers * 2, s.kv_heads, s.head_dim)
        x = x.permute(1, 2, 0, 3).unsqueeze(1)  # (layers x 2, 1, kv_heads, n, head_dim)
        return [(x[2 * i], x[2 * i + 1]) for i in range(s.layers)]


def deep_prompt_for(model, matrix: torch.Tensor, recorded: list[int] | None, where: str) -> KVPrompt:
    """A saved deep prompt's matrix as the scorer takes it on `model`, refused (naming `where`) if the cache layout it
    was saved for (run.json's `prompt.prefix_shape`) is not the model's: equal widths can still be other layouts."""
    shape = prefix_shape(model)
    if recorded is not None and list(recorded) != [shape.layers, shape.kv_heads, shape.head_dim]:
        raise SoftPromptError(
            f"{where} holds keys/values for {recorded[0]} layers x {recorded[1]} key/value heads x {recorded[2]}, but "
            f"this model caches {shape.layers} x {shape.kv_heads} x {shape.head_dim}: a deep prompt only fits its own model"
        )
    if matrix.dim() != 2 or matrix.shape[1] != shape.width:
        raise SoftPromptError(
            f"{where} is {tuple(matrix.shape)}, but a deep prompt for this model is (n, {shape.width}): it belongs to "
            "another model"
        )
    return KVPrompt(matrix, shape)


def prompt_length(prompt: torch.Tensor | KVPrompt | None) -> int:
    """The positions a prompt (input-level matrix, deep prompt, or none) occupies before every row."""
    if prompt is None:
        return 0
    return prompt.length if isinstance(prompt, KVPrompt) else int(prompt.shape[-2])  # a matrix or a stack (K, n, d)


def detached(prompt: torch.Tensor | KVPrompt | None) -> torch.Tensor | KVPrompt | None:
    return None if prompt is None else prompt.detach()


@torch.no_grad()
def token_prefix(model, ids: list[int]) -> torch.Tensor:
    """The keys/values the model caches for the token ids `ids` at positions 0..len-1, as a deep prompt matrix
    (len, width), float32: what a deep prompt initialised from these tokens starts as."""
    shape = prefix_shape(model)
    device = model.get_input_embeddings().weight.device
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
    layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    if len(layers) != shape.layers:
        raise SoftPromptError(f"{type(model).__name__} cached {len(layers)} layers, its config says {shape.layers}")
    parts = [t[0].permute(1, 0, 2).reshape(len(ids), -1) for kv in layers for t in kv]  # per layer: keys, values
    return torch.cat(parts, dim=1).float().cpu()


def init_deep_prompt(
    model,
    tokenizer,
    n_tokens: int,
    method: str = "text",
    *,
    text: str | None = None,
    label_words: list[str] | None = None,
    seed: int = 0,
) -> SoftPrompt:
    """A deep prompt of `n_tokens` virtual tokens: the model's own keys/values for the tokens the input-level init
    would use (text, labels, vocab: `prompt_token_ids`), or random values matched per layer to the scale of the
    vocab init's (random)."""
    if method not in INIT_METHODS:
        raise SoftPromptError(f"unknown init {method!r}: expected one of {', '.join(INIT_METHODS)}")
    init_method = "vocab" if method == "random" else method
    ids, init_text = prompt_token_ids(model, tokenizer, n_tokens, init_method, text=text, label_words=label_words, seed=seed)
    matrix = token_prefix(model, ids)
    if method != "random":
        return SoftPrompt(matrix, PromptInit(method, init_text, ids, seed))
    shape, gen = prefix_shape(model), torch.Generator().manual_seed(seed)
    blocks = matrix.view(n_tokens, shape.layers * 2, -1)
    scale = blocks.std(dim=(0, 2), keepdim=True)  # per layer, keys and values apart: their scales differ
    return SoftPrompt((torch.randn(blocks.shape, generator=gen) * scale).view(n_tokens, -1), PromptInit("random", None, [], seed))


class DeepPromptEncoder(torch.nn.Module):
    """The trained deep prompt as the scorer takes it (a `KVPrompt` for this model's cache layout), trained in units of
    each layer's scale: the parameter is the prefix divided by the std of its initial keys (or values) in that layer,
    so one learning rate moves every block by the same share of its own scale. (A layer's values can be 40x smaller
    than its keys: SmolLM2's first layer, 0.04 vs 1.2; one rate in absolute units would wreck one or freeze the other.)
    Only the materialised prefix leaves the run (`matrix`): prompt files, exports, analyses."""

    kind = "deep"

    def __init__(self, prompt: SoftPrompt, shape: PrefixShape):
        super().__init__()
        if prompt.dim != shape.width:
            raise SoftPromptError(
                f"the deep prompt has width {prompt.dim} but this model's cache needs {shape.width} "
                f"({shape.layers} layers x 2 x {shape.kv_heads} heads x {shape.head_dim}): a deep prompt only fits a "
                "model with the same layers and key/value heads"
            )
        self.prompt, self.shape = prompt, shape
        n = prompt.n_tokens
        blocks = prompt.initial.detach().view(n, shape.layers * 2, -1)
        self.register_buffer("scale", blocks.std(dim=(0, 2), keepdim=True).clamp_min(1e-6))  # (1, blocks, 1)
        self.scaled = torch.nn.Parameter((prompt.weight.detach().view(n, shape.layers * 2, -1) / self.scale).reshape(n, -1))

    def matrix(self) -> torch.Tensor:
        """The prefix in PEFT's layout (n, width): the parameter times each block's scale (differentiable)."""
        n = self.scaled.shape[0]
        return (self.scaled.view(n, self.shape.layers * 2, -1) * self.scale).reshape(n, -1)

    def forward(self) -> KVPrompt:
        return KVPrompt(self.matrix(), self.shape)

    def named_trainables(self) -> dict[str, torch.nn.Parameter]:
        """The checkpoint's tensor: `deep_prompt_scaled` (the prefix over its per-block scales)."""
        return {"deep_prompt_scaled": self.scaled}
