"""The settings that change a run's scores besides its weights, as its run.json records them.

A prompt is scored as it was trained only on the same model, with its examples laid out the same way (prompt
format, row length) and in the same precision (weight dtype, compute dtype). `config.SCORE_SETTINGS` names them; every
command that reads a run takes them from `run_settings` (the command line's flags may override some, with a
warning: `softprompt.cli.common`), and an exported adapter carries them (`softprompt.peft_interop`), so that an
imported run is scored as the original was. The data folder and the scoring strategy are not among them: they
say where the data is and how the same numbers are computed (execution settings, docs/reliability.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softprompt.config import DTYPES, SCORE_SETTINGS, TrainConfig, canonical_dtype
from softprompt.errors import SoftPromptError, warn
from softprompt.runs.directory import Run

LAYOUTS = ("plain", "chat")  # a resolved prompt format (`auto` is resolved by the tokenizer when a run trains)
# What an adapter without softprompt's settings (a foreign one) is assumed to have been trained with: PEFT's own
# prompt tuning prepends the prompt to the text as given (plain), TrainConfig's row length, float32 weights, and
# the compute dtype `auto` picks on the device that scores it.
SETTINGS_KEY = "softprompt_settings"  # in an exported adapter's weights' metadata: the settings, as JSON
TASK_KEY = "softprompt_task"  # and the run's task
ASSUMED = {"prompt_format": "plain", "max_length": TrainConfig.max_length, "dtype": "float32", "compute_dtype": "auto"}


def run_settings(run: Run) -> dict[str, Any]:
    """The run's SCORE_SETTINGS: its model (as it was named: alias, folder or Hub id; None for an adapter imported
    without one), its resolved prompt format, row length, weight dtype and the compute dtype it ran in (the
    resolved one where run.json records it; a field run.json predates takes TrainConfig's default)."""
    cfg, resolved, facts = run.config, run.record.resolved, run.record.model
    return {
        "model": cfg.get("model") or (facts.name if facts else None),
        "prompt_format": run.prompt_format,
        "max_length": cfg.get("max_length", TrainConfig.max_length),
        "dtype": canonical_dtype(cfg.get("dtype") or "float32"),
        "compute_dtype": (resolved and resolved.compute_dtype) or cfg.get("compute_dtype") or "auto",
    }


def check_settings(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """`settings` (some of SCORE_SETTINGS) checked field by field: a one-line error naming `where` and the field."""
    unknown = sorted(set(settings) - set(SCORE_SETTINGS))
    if unknown:
        raise SoftPromptError(f"{where}: unknown setting(s) {unknown}; expected some of {', '.join(SCORE_SETTINGS)}")
    checks = {
        "model": (lambda v: isinstance(v, str) and v.strip() != "", "a model name or path"),
        "prompt_format": (lambda v: v in (*LAYOUTS, "auto"), "plain, chat or auto"),
        "max_length": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer"),
        "dtype": (lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
        "compute_dtype": (lambda v: v in ("auto", *DTYPES), f"auto or one of {', '.join(DTYPES)}"),
    }
    for name, value in settings.items():
        ok, expected = checks[name]
        if not ok(value):
            raise SoftPromptError(f"{where}: setting {name!r} is {value!r}, expected {expected}")
    return settings


def settings_json(settings: dict[str, Any]) -> str:
    """The settings as one line of JSON (a safetensors metadata value is a string)."""
    return json.dumps({k: settings[k] for k in SCORE_SETTINGS if settings.get(k) is not None}, sort_keys=True)


def parse_settings(text: str, where: str) -> dict[str, Any]:
    """`settings_json`'s text read back and checked (a one-line error naming `where`)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SoftPromptError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise SoftPromptError(f"{where}: expected a JSON object of settings, got {type(value).__name__}")
    return check_settings(value, where)


def merged_settings(
    carried: dict[str, Any], given: dict[str, Any], *, model: str | None, where: str
) -> tuple[dict[str, Any], list[str], list[str]]:
    """An imported run's settings: each one `given` (the import's flags), else `carried` (what the adapter's
    exporter recorded), else for the model `model` (the adapter's base model) and for the others `ASSUMED`; with the
    names of those assumed, and a note for each flag that overrides what the adapter carries (for the caller to warn
    once nothing else refuses the import)."""
    check_settings(given, where)
    settings: dict[str, Any] = {}
    assumed: list[str] = []
    overridden: list[str] = []
    for name in SCORE_SETTINGS:
        if name in given:
            settings[name] = given[name]
            if name in carried and carried[name] != given[name]:
                overridden.append(
                    f"{where}: {name} {given[name]!r} as asked, although the adapter was trained with {carried[name]!r}"
                )
        elif name in carried:
            settings[name] = carried[name]
        elif name == "model":
            settings[name] = model
        else:
            settings[name] = ASSUMED[name]
            assumed.append(name)
    return settings, assumed, overridden


def settings_lines(settings: dict[str, Any]) -> list[str]:
    """The settings as Markdown list items (an exported adapter's README)."""
    layout = {
        "plain": "plain: the input as text after the prompt",
        "chat": "chat: the input inside the model's chat template's user turn, the answer opening the assistant's turn",
        "auto": "auto: chat where the tokenizer has a chat template",
    }
    return [
        f"- model: `{settings.get('model')}`",
        f"- prompt format: {layout.get(settings.get('prompt_format'), settings.get('prompt_format'))}",
        f"- rows of at most {settings.get('max_length')} tokens, prompt included (longer inputs cut from their start)",
        f"- weights in {settings.get('dtype')}, computed in {settings.get('compute_dtype')}",
    ]


def settings_metadata(run: Run) -> dict[str, str]:
    """The run's settings that change a score, and its task, as safetensors metadata (any adapter type's weights)."""
    return {SETTINGS_KEY: settings_json(run_settings(run)), TASK_KEY: str(run.config.get("task") or "unknown")}


def carried_settings(file: Path) -> tuple[dict[str, Any], str | None]:
    """(the settings, the task) an exported adapter's weights carry in their metadata; ({}, None) for weights
    without them (another exporter's, or a pickle). Damaged settings are a one-line error naming the file."""
    from safetensors import safe_open

    if file.suffix != ".safetensors":
        return {}, None
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    settings = parse_settings(meta[SETTINGS_KEY], f"{file}: metadata {SETTINGS_KEY!r}") if SETTINGS_KEY in meta else {}
    return settings, meta.get(TASK_KEY)


def say_imported(src: Path, settings: dict[str, Any], assumed: list[str], overridden: list[str]) -> None:
    """The warnings of an import (`merged_settings`): each flag that overrode the adapter, and what was assumed."""
    for note in overridden:
        warn(note)
    if assumed:
        warn(
            f"{src} carries no softprompt settings (an adapter from elsewhere): assumed "
            + ", ".join(f"{k} {settings[k]}" for k in assumed)
            + "; pass --prompt-format, --max-length, --dtype or --compute-dtype to import-peft to set them"
        )
