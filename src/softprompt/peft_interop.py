"""Export a run as a PEFT prompt-tuning adapter, and import a PEFT adapter as a run.

PEFT's format: `adapter_config.json` + `adapter_model.safetensors` holding one tensor,
`prompt_embeddings`, of shape [n, d]. PEFT prepends it to `inputs_embeds` exactly as softprompt
does, so logits agree. Pickled adapters (`adapter_model.bin`) are refused unless explicitly allowed.

An exported adapter names a base model that `AutoPeftModelForCausalLM.from_pretrained(adapter)` can
load: for an offline (GGUF) model that is the dequantized Hugging Face-format folder in the softprompt
cache, the weights the prompt was trained against; the GGUF file and the Hub model it quantizes are
recorded in the adapter's README.md and in the weights file's metadata.

An exported adapter carries, besides the weights, every setting that changes the prompt's scores (the run's model,
prompt format, row length, weight and compute dtypes: `runs.settings`) and its task, in the weights' metadata
(`softprompt_settings`, `softprompt_task`: PEFT ignores metadata) and in its README; `import_peft` takes them back,
so the imported run is scored as the original was. An adapter without them (from elsewhere) is imported with the
settings given, or assumed (`runs.settings.ASSUMED`) with a warning naming each.

Every malformed adapter is refused with one line naming the file and the field, before anything is written;
so is an adapter whose width is not the base model's (its config's hidden size). Export writes only into an empty
(or new) directory or one holding an earlier export (`--overwrite` replaces that), never over files it did not write.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from softprompt.config import INPUT_PROMPT_METHODS
from softprompt.errors import SoftPromptError, warn
from softprompt.io import atomic_path, read_json, write_text
from softprompt.locks import LOCK_FILE
from softprompt.model.deep_prompt import PrefixShape
from softprompt.model.prompt import PROMPT_FILE, PromptInit, SoftPrompt
from softprompt.peft_prefix import PREFIX_TUNING, check_model_shape, prefix_shape_from_config, prefix_tuning_config
from softprompt.records.run import RUN_FILE, ModelFacts
from softprompt.runs.directory import BEST_PROMPT_FILE, Run, load_run
from softprompt.runs.imported import imported_record
from softprompt.runs.settings import (
    SETTINGS_KEY,
    carried_settings,
    merged_settings,
    run_settings,
    say_imported,
    settings_lines,
    settings_metadata,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"
ADAPTER_README = "README.md"
PROMPT_TENSOR = "prompt_embeddings"
EXPORT_MARK = "softprompt_base_model"  # in the weights' metadata of every adapter softprompt exported
README_MARK = "exported by softprompt from"  # in its README's title


# ----------------------------------------------------------------------------- export


def _base_model(run: Run) -> tuple[str, str | None, dict[str, str], list[str]]:
    """(base_model_name_or_path, its Hub revision or None, metadata, notes) for a run's model."""
    from softprompt.model.backbones import OFFLINE_MODELS, dequantized_dir

    model = run.record.model or ModelFacts()
    name = str(model.name or run.config.get("model"))
    source = str(model.source or name)
    revision = str(model.revision or "")
    entry = OFFLINE_MODELS.get(name)
    if entry is None:  # a Hub id (revision: the Hub commit it was loaded at) or a local folder
        if not re.fullmatch(r"[0-9a-f]{40}", revision):
            return source, None, {"softprompt_base_model": source}, []
        return source, revision, {"softprompt_base_model": source, "softprompt_hub_id": source}, []
    folder = dequantized_dir(entry.alias, revision)
    meta = {"softprompt_offline_model": name, "softprompt_gguf_file": source, "softprompt_gguf_sha256_prefix": revision}
    notes = [
        f"The prompt was trained on the offline model `{name}`: the GGUF file `{source}` "
        f"(sha256 prefix `{revision}`), dequantized to float32."
    ]
    if entry.hub_id:
        meta["softprompt_hub_id"] = entry.hub_id
        notes.append(
            f"That GGUF file is a quantized copy of the Hub model `{entry.hub_id}`; loading that model instead "
            "gives slightly different logits (its weights are not quantized)."
        )
    if (folder / "config.json").is_file():
        meta["softprompt_base_model"] = str(folder)
        notes.append(f"`base_model_name_or_path` is the dequantized Hugging Face-format copy `{folder}` (softprompt's cache).")
        return str(folder), None, meta, notes
    if entry.hub_id:
        meta["softprompt_base_model"] = entry.hub_id
        notes.append(
            f"The dequantized copy `{folder}` is absent on this machine, so `base_model_name_or_path` names the Hub "
            f"model; load `{name}` once with softprompt (any command) and export again to name the exact weights."
        )
        return entry.hub_id, None, meta, notes
    raise SoftPromptError(
        f"cannot name a loadable base model for run {run.path}: the dequantized copy {folder} of the offline model "
        f"{name!r} does not exist; load the model once with softprompt (e.g. `softprompt eval --run {run.path}`) to create it"
    )


def _readme(base: str, hub_id: str | None, n_tokens: int, dim: int, run: Run, notes: list[str]) -> str:
    """The adapter's README: what it is, its base model, how to load it, and the settings its scores depend on."""
    front = f"---\nlibrary_name: peft\nbase_model: {hub_id}\n---\n\n" if hub_id else "---\nlibrary_name: peft\n---\n\n"
    kind = "Deep prompt (PEFT prefix tuning)" if run.method == "deep" else "Soft prompt (PEFT prompt tuning)"
    lines = [
        f"# {kind}, exported by softprompt from `{run.path}`",
        "",
        f"- task: `{run.config.get('task', 'unknown')}`; {n_tokens} virtual tokens of width {dim}",
        f"- base model (`base_model_name_or_path`): `{base}`",
        *(f"- {n}" for n in notes),
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "model = AutoPeftModelForCausalLM.from_pretrained(ADAPTER_DIR)",
        "```",
        "",
        "## The settings its scores depend on",
        "",
        "softprompt trained and scored the prompt with these (`softprompt import-peft` restores them from the weights'",
        f"metadata, `{SETTINGS_KEY}`); lay inputs out the same way to reproduce its scores:",
        "",
        *settings_lines(run_settings(run)),
        "",
    ]
    return front + "\n".join(lines)


def _own_export(out: Path) -> bool:
    """Whether `out`'s weights file is one softprompt exported (its metadata carries EXPORT_MARK)."""
    weights = out / ADAPTER_WEIGHTS
    if not weights.is_file():
        return False
    try:
        with safe_open(str(weights), framework="pt") as f:
            return EXPORT_MARK in (f.metadata() or {})
    except Exception:  # unreadable: not ours to overwrite
        return False


def _foreign_files(out: Path) -> list[str]:
    """The entries of `out` an export did not write: everything but its own config, weights and README (and the
    temporaries of an interrupted export), or everything when its weights are not softprompt's."""
    ours = {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    readme = out / ADAPTER_README
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if readme.is_file() and README_MARK in readme.read_text(encoding="utf-8"):
            ours.add(ADAPTER_README)
    own = _own_export(out)
    return sorted(p.name for p in out.iterdir() if not (own and p.name in ours) and not _bookkeeping(p))


def _temporary(path: Path) -> bool:
    """A temporary file an export killed while writing left (`io.atomic_path`'s name for one of its files)."""
    prefixes = tuple(f".{n}." for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_README))
    return path.is_file() and path.name.startswith(prefixes) and path.name.endswith(".tmp")


def _bookkeeping(path: Path) -> bool:
    """An interrupted export's temporary, or the folder's lock (`export` holds it while it writes)."""
    return path.name == LOCK_FILE or _temporary(path)


def check_export_dir(out: Path, *, overwrite: bool) -> None:
    """Export writes only into a new or empty directory, or (with `overwrite`) over an earlier export of softprompt:
    never over a user's files (a README, another adapter's config, an `adapter_model.bin` PEFT would load first)."""
    if out.exists() and not out.is_dir():
        raise SoftPromptError(f"--peft {out} exists and is not a directory")
    if not out.is_dir() or all(_bookkeeping(p) for p in out.iterdir()):
        return
    foreign = _foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise SoftPromptError(
            f"--peft {out} holds files softprompt did not export ({shown}); export never overwrites or deletes "
            "them: choose a new or empty directory (or move those files away)"
        )
    if not overwrite:
        raise SoftPromptError(f"--peft {out} already holds an exported adapter: pass --overwrite to replace it")


def _adapter_config(run: Run, prompt: SoftPrompt, base: str, base_revision: str | None) -> dict[str, Any]:
    """The adapter's config: PROMPT_TUNING for an input-level prompt, PREFIX_TUNING for a deep one (`peft_prefix`)."""
    from peft import PromptTuningConfig

    if run.method == "deep":
        facts = run.record.prompt
        recorded = facts.prefix_shape if facts is not None else None
        if not recorded or len(recorded) != 3:
            raise SoftPromptError(f"{run.path / RUN_FILE}: a deep run must record prompt.prefix_shape: retrain it to export it")
        return prefix_tuning_config(PrefixShape(*recorded), prompt.n_tokens, base, base_revision)
    if run.method not in INPUT_PROMPT_METHODS:
        raise SoftPromptError(f"run {run.path} trained method {run.method!r}: it has no prompt to export")
    cfg = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=prompt.n_tokens,
        token_dim=prompt.dim,
        num_transformer_submodules=1,
        # RANDOM, not TEXT: TEXT would make PEFT fetch a tokenizer when the adapter is loaded trainable.
        prompt_tuning_init="RANDOM",
        base_model_name_or_path=base,
        revision=base_revision,
    )
    return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.to_dict().items()}


def export_peft(run_dir: str | Path, out_dir: str | Path, which: str = "last", *, overwrite: bool = False) -> Path:
    """Write the run's prompt as a PEFT adapter for CAUSAL_LM (config, weights, README) into a new or empty directory,
    or over an earlier export with `overwrite` (`check_export_dir`): PROMPT_TUNING for a soft (or hard) prompt,
    PREFIX_TUNING for a deep one, whose matrix is PEFT's prompt_embeddings as it is."""
    run = load_run(run_dir)
    prompt = run.prompt(which)
    out = Path(out_dir)
    check_export_dir(out, overwrite=overwrite)
    if out.is_dir():
        for p in out.iterdir():
            if _temporary(p):
                p.unlink(missing_ok=True)
    base, base_revision, meta, notes = _base_model(run)
    config = _adapter_config(run, prompt, base, base_revision)
    write_text(out / ADAPTER_CONFIG, json.dumps(config, indent=2, sort_keys=True, default=str))
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
        weight = prompt.weight.detach().cpu().contiguous()
        save_file({PROMPT_TENSOR: weight}, str(tmp), metadata={"format": "pt", **meta, **settings_metadata(run)})
    write_text(out / ADAPTER_README, _readme(base, meta.get("softprompt_hub_id"), prompt.n_tokens, prompt.dim, run, notes))
    return out


# ----------------------------------------------------------------------------- import


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = "is not a file" if path.exists() else "is missing"
        raise SoftPromptError(f"{path} {what}: a PEFT adapter directory holds {ADAPTER_CONFIG} beside its weights")
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise SoftPromptError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("peft_type") not in ("PROMPT_TUNING", PREFIX_TUNING):
        raise SoftPromptError(
            f"{path}: field 'peft_type' is {cfg.get('peft_type')!r}, expected 'PROMPT_TUNING' or '{PREFIX_TUNING}'"
        )
    for name in ("num_virtual_tokens", "token_dim"):
        value = cfg.get(name)
        if value is None:
            raise SoftPromptError(f"{path}: field {name!r} is missing (expected a positive integer)")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SoftPromptError(f"{path}: field {name!r} is {value!r}, expected a positive integer")
    submodules = cfg.get("num_transformer_submodules")
    if submodules is not None and (isinstance(submodules, bool) or submodules != 1):
        raise SoftPromptError(
            f"{path}: field 'num_transformer_submodules' is {cfg['num_transformer_submodules']!r}; "
            "only decoder-only prompts (1) are supported"
        )
    for name in ("prompt_tuning_init", "prompt_tuning_init_text", "base_model_name_or_path"):
        if cfg.get(name) is not None and not isinstance(cfg[name], str):
            raise SoftPromptError(f"{path}: field {name!r} is {cfg[name]!r}, expected a string")
    return cfg


def _read_weights(src: Path, allow_pickle: bool) -> tuple[dict[str, Any], Path]:
    weights, pickled = src / ADAPTER_WEIGHTS, src / PICKLED_WEIGHTS
    if weights.is_file():
        try:
            return load_file(str(weights)), weights
        except Exception as e:
            raise SoftPromptError(f"{weights}: not a readable safetensors file ({_first_line(e)})") from None
    if pickled.is_file():
        if not allow_pickle:
            raise SoftPromptError(
                f"{pickled} is a pickle file, which can run arbitrary code when loaded; "
                "refusing it (pass --allow-pickle if you trust its source)"
            )
        try:
            tensors = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SoftPromptError(f"{pickled}: cannot be loaded with weights_only=True ({_first_line(e)})") from None
        if not isinstance(tensors, dict):
            raise SoftPromptError(f"{pickled}: holds a {type(tensors).__name__}, expected a dict of tensors")
        return tensors, pickled
    raise SoftPromptError(f"{src}: no {ADAPTER_WEIGHTS} (or {PICKLED_WEIGHTS}) found")


def _prompt_tensor(tensors: dict[str, Any], file: Path, config: Path, n: int, d: int, deep: bool = False) -> torch.Tensor:
    weight = tensors.get(PROMPT_TENSOR)
    if weight is None:
        raise SoftPromptError(f"{file}: no tensor named {PROMPT_TENSOR!r} (found {sorted(map(str, tensors))})")
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        kind = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise SoftPromptError(f"{file}: {PROMPT_TENSOR!r} is {kind}, expected a floating-point tensor")
    shape = tuple(weight.shape)
    if weight.dim() != 2:
        raise SoftPromptError(
            f"{file}: {PROMPT_TENSOR!r} has shape {shape}, expected (num_virtual_tokens, token_dim) = ({n}, {d})"
        )
    width = "num_layers x 2 x token_dim" if deep else "token_dim"
    for axis, (field_name, expected) in enumerate((("num_virtual_tokens", n), (width, d))):
        if shape[axis] != expected:
            raise SoftPromptError(
                f"{file}: {PROMPT_TENSOR!r} has shape {shape}, but {config.name} {'gives' if deep else 'field'} "
                f"{field_name!r} {'=' if deep else 'is'} {expected}"
            )
    if not torch.isfinite(weight).all():
        raise SoftPromptError(f"{file}: {PROMPT_TENSOR!r} holds NaN or inf values")
    return weight.float()


def _check_width(file: Path, dim: int, base: str) -> None:
    """An adapter as wide as its base model's embeddings (read from the model's config, no weights loaded); one whose
    model cannot be read here (a Hub id offline, a folder on another machine) is imported with a warning."""
    from softprompt.model.backbones import model_hidden_size

    try:
        width = model_hidden_size(base)
    except SoftPromptError as e:
        warn(f"{file}: its width ({dim}) is not checked against the base model: {e}; eval checks it when the model loads")
        return
    if width != dim:
        raise SoftPromptError(
            f"{file}: the prompt is {dim} wide, but model {base!r} has hidden size {width}: the adapter belongs to "
            "another model; pass its own base model with --model"
        )


def _check_prefix_shape(file: Path, shape: PrefixShape, base: str) -> None:
    """A prefix laid out for its base model's cache (read from the model's config, no weights loaded); one whose model
    cannot be read here is imported with a warning (eval checks it against the run's recorded layout)."""
    from softprompt.model.backbones import model_prefix_shape

    try:
        model_shape = model_prefix_shape(base)
    except SoftPromptError as e:
        warn(f"{file}: its layout is not checked against the base model: {e}; eval checks it when the model loads")
        return
    check_model_shape(shape, model_shape, file, base)


def import_peft(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    task: str | None = None,
    model: str | None = None,
    allow_pickle: bool = False,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Turn a PEFT prompt-tuning adapter (a soft prompt run) or prefix-tuning adapter (a deep prompt run, method
    `deep`) into a softprompt run directory, with the settings that change its scores: `model` and `settings`
    (prompt_format, max_length, dtype, compute_dtype) where given, else those the adapter carries (an export of
    softprompt's), else its base model and `runs.settings.ASSUMED`, with a warning."""
    src = Path(adapter_dir)
    if not src.is_dir():
        raise SoftPromptError(f"PEFT adapter directory {src} {'is not a directory' if src.exists() else 'does not exist'}")
    cfg = _read_config(src / ADAPTER_CONFIG)
    deep = cfg["peft_type"] == PREFIX_TUNING
    shape = prefix_shape_from_config(cfg, src / ADAPTER_CONFIG) if deep else None
    tensors, file = _read_weights(src, allow_pickle)
    width = shape.width if shape is not None else cfg["token_dim"]
    weight = _prompt_tensor(tensors, file, src / ADAPTER_CONFIG, cfg["num_virtual_tokens"], width, deep)
    prompt = SoftPrompt(
        weight,
        PromptInit(method=str(cfg.get("prompt_tuning_init") or "unknown").lower(), text=cfg.get("prompt_tuning_init_text")),
    )
    out = Path(out_dir)
    if (out / RUN_FILE).exists():
        raise SoftPromptError(f"{out} already holds a run; choose another --out")
    if out.exists() and not out.is_dir():
        raise SoftPromptError(f"--out {out} exists and is not a directory")
    carried, carried_task = carried_settings(file)
    given = {k: v for k, v in {**(settings or {}), "model": model}.items() if v is not None}
    base = cfg.get("base_model_name_or_path")
    chosen, assumed, overridden = merged_settings(carried, given, model=base, where=f"import-peft {src}")
    if chosen["model"] and shape is not None:
        _check_prefix_shape(file, shape, chosen["model"])
    elif chosen["model"]:
        _check_width(file, prompt.dim, chosen["model"])
    say_imported(src, chosen, assumed, overridden)
    prompt.save(out / PROMPT_FILE)
    prompt.save(out / BEST_PROMPT_FILE)
    imported_record(src, out, prompt, chosen, task or carried_task or "unknown", shape).write(out)
    return out
