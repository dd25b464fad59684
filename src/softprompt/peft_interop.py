"""Export a run as a PEFT prompt-tuning adapter, and import a PEFT adapter as a run.

PEFT's format: `adapter_config.json` + `adapter_model.safetensors` holding one tensor,
`prompt_embeddings`, of shape [n, d]. PEFT prepends it to `inputs_embeds` exactly as softprompt
does, so logits agree. Pickled adapters (`adapter_model.bin`) are refused unless explicitly allowed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from softprompt.errors import SoftPromptError
from softprompt.io import atomic_path, read_json
from softprompt.prompt import PROMPT_FILE, PromptInit, SoftPrompt
from softprompt.runs import BEST_PROMPT_FILE, RUN_FILE, RunRecord, load_run, package_versions

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"


def export_peft(run_dir: str | Path, out_dir: str | Path, which: str = "last") -> Path:
    """Write the run's prompt as a PEFT PROMPT_TUNING adapter for CAUSAL_LM."""
    from peft import PromptTuningConfig

    run = load_run(run_dir)
    prompt = run.prompt(which)
    model = run.record.model or {}
    cfg = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=prompt.n_tokens,
        token_dim=prompt.dim,
        num_transformer_submodules=1,
        # RANDOM, not TEXT: TEXT would make PEFT fetch a tokenizer when the adapter is loaded trainable.
        prompt_tuning_init="RANDOM",
        base_model_name_or_path=model.get("source") or run.config.get("model"),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(str(out))
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
        save_file({"prompt_embeddings": prompt.weight.detach().cpu().contiguous()}, str(tmp), metadata={"format": "pt"})
    return out


def import_peft(
    adapter_dir: str | Path, out_dir: str | Path, *, task: str | None = None, model: str | None = None, allow_pickle: bool = False
) -> Path:
    """Turn a PEFT prompt-tuning adapter into a softprompt run directory."""
    src = Path(adapter_dir)
    cfg = read_json(src / ADAPTER_CONFIG)
    if cfg.get("peft_type") != "PROMPT_TUNING":
        raise SoftPromptError(f"{src / ADAPTER_CONFIG}: peft_type is {cfg.get('peft_type')!r}, expected 'PROMPT_TUNING'")
    if cfg.get("num_transformer_submodules", 1) not in (1, None):
        raise SoftPromptError(
            f"{src / ADAPTER_CONFIG}: num_transformer_submodules={cfg['num_transformer_submodules']}; "
            "only decoder-only (1) prompts are supported"
        )
    weights = src / ADAPTER_WEIGHTS
    if weights.exists():
        try:
            tensors = load_file(str(weights))
        except Exception as e:
            raise SoftPromptError(f"{weights}: not a readable safetensors file ({e})") from None
    elif (src / PICKLED_WEIGHTS).exists():
        if not allow_pickle:
            raise SoftPromptError(
                f"{src / PICKLED_WEIGHTS} is a pickle file, which can run arbitrary code when loaded; "
                "refusing it (pass --allow-pickle if you trust its source)"
            )
        tensors = torch.load(src / PICKLED_WEIGHTS, map_location="cpu", weights_only=True)
    else:
        raise SoftPromptError(f"{src}: no {ADAPTER_WEIGHTS} found")
    key = "prompt_embeddings" if "prompt_embeddings" in tensors else None
    if key is None:
        raise SoftPromptError(f"{src}: adapter holds {sorted(tensors)}, expected a tensor named 'prompt_embeddings'")
    weight = tensors[key].float()
    n = cfg.get("num_virtual_tokens")
    if weight.dim() != 2 or (n and weight.shape[0] != n):
        raise SoftPromptError(f"{src}: prompt_embeddings has shape {tuple(weight.shape)}, expected ({n}, token_dim)")
    prompt = SoftPrompt(
        weight, PromptInit(method=str(cfg.get("prompt_tuning_init", "unknown")).lower(), text=cfg.get("prompt_tuning_init_text"))
    )
    out = Path(out_dir)
    if (out / RUN_FILE).exists():
        raise SoftPromptError(f"{out} already holds a run; choose another --out")
    prompt.save(out / PROMPT_FILE)
    prompt.save(out / BEST_PROMPT_FILE)
    RunRecord(
        status="complete",
        imported_from=str(src),
        config={
            "task": task or "unknown",
            "model": model or cfg.get("base_model_name_or_path"),
            "method": "prompt",
            "tokens": int(weight.shape[0]),
            "init": prompt.init.method,
        },
        model={"name": model or cfg.get("base_model_name_or_path"), "hidden_size": int(weight.shape[1])},
        prompt={"n_tokens": int(weight.shape[0]), "dim": int(weight.shape[1]), "init": {"method": prompt.init.method}},
        versions=package_versions(),
    ).write(out)
    return out
