"""run.json of a PEFT adapter imported as a run (`peft_interop.import_peft`): complete, its prompt files recorded, and
the settings its scores depend on (`runs.settings`), so that every command scores it as its exporter did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.model.deep_prompt import PrefixShape
from softprompt.model.prompt import PROMPT_FILE, SoftPrompt
from softprompt.records.run import ModelFacts, PromptFacts, Resolved, RunRecord
from softprompt.runs.directory import BEST_PROMPT_FILE, artifact_facts, package_versions
from softprompt.runs.settings import LAYOUTS


def imported_record(
    src: Path, out: Path, prompt: SoftPrompt, settings: dict[str, Any], task: str, shape: PrefixShape | None
) -> RunRecord:
    """run.json of an imported adapter: complete, its prompt files recorded, and the settings its scores depend on
    (a resolved prompt format and compute dtype also as `resolved`, as a trained run records them)."""
    layout, compute = settings["prompt_format"], settings["compute_dtype"]
    return RunRecord(
        status="complete",
        imported_from=str(src),
        config={"task": task, "method": "deep" if shape else "prompt", "tokens": prompt.n_tokens, "init": prompt.init.method}
        | settings,
        model=ModelFacts.from_dict({"name": settings["model"], **({} if shape else {"hidden_size": prompt.dim})}, "model"),
        prompt=PromptFacts.from_dict(
            {
                "n_tokens": prompt.n_tokens,
                "dim": prompt.dim,
                "init": {"method": prompt.init.method},
                **({"prefix_shape": [shape.layers, shape.kv_heads, shape.head_dim]} if shape is not None else {}),
            },
            "prompt",
        ),
        artifacts={name: artifact_facts(out / name, prompt) for name in (PROMPT_FILE, BEST_PROMPT_FILE)},
        versions=package_versions(),
        resolved=Resolved(
            prompt_format=layout if layout in LAYOUTS else None, compute_dtype=None if compute == "auto" else compute
        ),
    )
