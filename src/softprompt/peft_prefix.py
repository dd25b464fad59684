"""A deep prompt's PEFT mapping: PREFIX_TUNING's adapter config for a deep run, and an adapter's config read back.

A deep prompt's matrix is PEFT's `prompt_embeddings` as it is (`model.deep_prompt`: row i is virtual token i; along a
row, for each layer its keys then its values, kv_heads x head_dim each), so export and import copy the tensor and
only the config needs mapping. PEFT sizes a prefix for grouped-query attention by rewriting `token_dim` to
kv_heads x head_dim and `num_attention_heads` to kv_heads; the config written here is already in that form, and PEFT
leaves it so when it loads it (PEFT's own `_prepare_prompt_learning_config` maps those values to themselves).
`prefix_projection` (Li & Liang's MLP) is written off: the exported prefix is the materialised one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.model.deep_prompt import PrefixShape

PREFIX_TUNING = "PREFIX_TUNING"


def prefix_tuning_config(shape: PrefixShape, n_tokens: int, base: str, revision: str | None) -> dict[str, Any]:
    """PEFT's PrefixTuningConfig for a deep prompt of `n_tokens` virtual tokens on a model of cache layout `shape`."""
    from peft import PrefixTuningConfig

    cfg = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=n_tokens,
        token_dim=shape.kv_heads * shape.head_dim,
        num_attention_heads=shape.kv_heads,
        num_layers=shape.layers,
        num_transformer_submodules=1,
        prefix_projection=False,
        base_model_name_or_path=base,
        revision=revision,
    )
    return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.to_dict().items()}


def prefix_shape_from_config(cfg: dict[str, Any], path: Path) -> PrefixShape:
    """The cache layout a PREFIX_TUNING adapter config describes, every field checked (one line naming it)."""
    for name in ("num_virtual_tokens", "token_dim", "num_attention_heads", "num_layers"):
        value = cfg.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            shown = "missing" if value is None else repr(value)
            raise SoftPromptError(f"{path}: field {name!r} is {shown}, expected a positive integer")
    if cfg["token_dim"] % cfg["num_attention_heads"]:
        raise SoftPromptError(
            f"{path}: field 'token_dim' ({cfg['token_dim']}) is not a multiple of 'num_attention_heads' "
            f"({cfg['num_attention_heads']}): no head size fits it"
        )
    if cfg.get("prefix_projection"):
        raise SoftPromptError(
            f"{path}: field 'prefix_projection' is true: the adapter holds an MLP, not the prefix; load it in PEFT and "
            "save the materialised prefix (prefix_projection false) to import it"
        )
    submodules = cfg.get("num_transformer_submodules")
    if submodules is not None and (isinstance(submodules, bool) or submodules != 1):
        raise SoftPromptError(
            f"{path}: field 'num_transformer_submodules' is {submodules!r}; only decoder-only prefixes (1) are supported"
        )
    heads = cfg["num_attention_heads"]
    return PrefixShape(cfg["num_layers"], heads, cfg["token_dim"] // heads)


def check_model_shape(shape: PrefixShape, model_shape: PrefixShape, file: Path, base: str) -> None:
    """An imported prefix must fit the base model's cache layout."""
    if shape != model_shape:
        raise SoftPromptError(
            f"{file}: the prefix is laid out for {shape.layers} layers x {shape.kv_heads} key/value heads x "
            f"{shape.head_dim}, but model {base!r} caches {model_shape.layers} x {model_shape.kv_heads} x "
            f"{model_shape.head_dim}: the adapter belongs to another model; pass its own base model with --model"
        )
