"""Self-description: the model says in words what its soft prompt asks for.

Two probes, both greedy (plus seeded samples for the first):

- `embed`: the prompt's rows are placed as input embeddings inside an instruction that asks what the
  quoted instruction asks for (inside the model's chat template when the tokenizer has one), and the
  model answers. This is the simplest "ask the model" readout; it reads the prompt where the model
  reads words, not where the trained prompt sits (at the very front of a row).
- `patch` (Patchscopes, Ghandeharioun et al. 2024; InSPEcT, Ramati et al. 2024, arXiv 2410.11660): a
  source forward over the prompt rows gives the hidden states of the n prompt positions at layer l (the
  output of decoder block l, HF `hidden_states[l + 1]`); they replace the states of n placeholder tokens in
  the same describing instruction at the same layer, during the prefill forward of generation only (a
  forward hook on block l; the cached decode steps are left alone). The source reads the rows after the
  describing input's own prefix (`context`, the default) or alone from position 0 (`front`, InSPEcT's
  setting: the states a trained prompt has in use; a context after the rows could not change them).

Measured on SmolLM2-135M with the identity probe (4 task-like sentences, greedy): with the `front` source
only blocks 0-2 read back faithfully (mean score 0.48-0.60, <= 0.42 from block 3 on; the first row then
plays the first position's attention-sink role, a likely cause); with `context`, blocks 0-9 do (0.54-0.79),
fading to 0 from block 23. Hence the default source and layers (`DEFAULT_LAYER_FRACTIONS`).

The identity probe (`describe_text`) runs both on the embeddings of a plain sentence: what comes back
for a prompt whose meaning is known says how far to trust what comes back for a trained one.
`description_score` measures how much a description says a task: recall of the task description's
content words and of its label words. Descriptions are readouts, not explanations: a small model may
paraphrase the instruction around the prompt or hallucinate a plausible task.

This module assembles the report; the parts live next to it: `describe_probes` (the describing input,
generation, the probes), `patching` (decoder blocks, source states, the patch hook), `describe_scoring`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from softprompt.analysis.common import as_runs, json_safe, run_labels, run_meta
from softprompt.analysis.describe_probes import (
    DEFAULT_SOURCE,
    INSTRUCTION,
    PLACEHOLDER,
    PLAIN_CUE,
    PROBES,
    TEMPERATURE,
    check_settings,
    describe_input,
    describe_prompt,
    describe_text,
)
from softprompt.analysis.describe_scoring import description_score, text_score
from softprompt.analysis.patching import decoder_layers, resolve_layers
from softprompt.errors import SoftPromptError
from softprompt.records.readouts import DescribeResult
from softprompt.runs.directory import input_prompt_run


def _scored(descriptions: list[dict[str, Any]], score) -> list[dict[str, Any]]:
    return [{**d, "score": score(d["text"])} for d in descriptions]


def _greedy_mean(descriptions: list[dict[str, Any]]) -> float | None:
    scores = [d["score"]["score"] for d in descriptions if d["decoding"] == "greedy"]
    return sum(scores) / len(scores) if scores else None


def _best(descriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(descriptions, key=lambda d: d["score"]["score"], default=None)


def _run_task(run) -> Any:
    """The task a run trained on: its run.json record (what it saw), else the task by name or file."""
    recorded = run.record.task
    if recorded is not None and recorded.description:
        return recorded
    from softprompt.tasks import get_task

    return get_task(run.task)


def _digest(matrix) -> tuple:
    """A matrix's identity by value (shape and a hash of its float32 bytes)."""
    data = matrix.detach().float().cpu().contiguous()
    return tuple(data.shape), hashlib.sha256(data.numpy().tobytes()).hexdigest()


def _describe_run(backbone, run, label: str, which: str, options: dict[str, Any], inits: dict) -> dict[str, Any]:
    """One run's trained and initial prompts described and scored against its task.

    The initial prompt gets the greedy probes only (what the report compares: the init's greedy score and texts),
    described once per distinct init matrix (`inits`, by value: the seeds of a task started from the same text share
    it, and greedy decoding gives the same text again)."""
    start = time.perf_counter()
    sp = input_prompt_run(run, "self-description (the prompt's rows patched into a describing sentence)").prompt(which)
    sp.check_model(backbone.hidden_size, where=f"the prompt of {run.path}")
    task = _run_task(run)

    def score(text: str) -> dict[str, Any]:
        return description_score(text, task)

    trained = _scored(describe_prompt(backbone, sp.weight, **options), score)
    key = _digest(sp.initial)
    if key not in inits:
        inits[key] = describe_prompt(backbone, sp.initial, **{**options, "samples": 0})
    init = _scored(inits[key], score)
    entry: dict[str, Any] = {"run": label, **run_meta(run, label)}
    trained_on = (run.record.model and run.record.model.name) or run.config.get("model")
    if trained_on and trained_on != backbone.name:
        entry["warning"] = f"prompt trained on {trained_on!r}, described by {backbone.name!r}: descriptions may be meaningless"
    entry.update(
        descriptions=trained,
        init={"descriptions": init},
        summary={"trained_score": _greedy_mean(trained), "init_score": _greedy_mean(init), "best": _best(trained)},
        wall_time_s=time.perf_counter() - start,
    )
    return entry


def _describe_identity(backbone, text: str, options: dict[str, Any]) -> dict[str, Any]:
    """The identity probe on `text`, each description scored against the text itself (content words only)."""
    start = time.perf_counter()
    descriptions = _scored(describe_text(backbone, text, **options), lambda t: text_score(t, text))
    return {
        "text": text,
        "descriptions": descriptions,
        "summary": {"score": _greedy_mean(descriptions), "best": _best(descriptions)},
        "wall_time_s": time.perf_counter() - start,
    }


def describe_report(
    backbone,
    runs: Iterable,
    out_dir: str | Path | None = None,
    *,
    which: str = "last",
    text: str | None = None,
    samples: int = 3,
    max_new_tokens: int = 40,
    layers: Iterable[int] | None = None,
    seed: int = 0,
    source: str = DEFAULT_SOURCE,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Self-descriptions of every run's trained prompt (greedy and `samples` samples) and initial prompt (greedy, once
    per distinct init), and of `text` (the identity probe), scored against each run's task; written to
    `out_dir/describe.json` when given. `runs` may be empty with `text`. `progress` hears which run is described (its
    label and count)."""
    runs = list(runs)
    if not runs and text is None:
        raise SoftPromptError("nothing to describe: give run directories or a text")
    runs = as_runs(runs) if runs else []
    check_settings(samples, max_new_tokens, TEMPERATURE, PROBES, source)
    chosen = resolve_layers(backbone.model, layers)
    options = {"samples": samples, "max_new_tokens": max_new_tokens, "seed": seed, "layers": chosen, "source": source}
    inp = describe_input(backbone.tokenizer, 1)
    settings = {
        "probes": ["embed", "patch"] if chosen else ["embed"],
        "layers": chosen,
        "source": source,
        "n_layers": len(decoder_layers(backbone.model)),
        "samples": samples,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "temperature": TEMPERATURE,
        "which": which,
        "format": inp.format,
        "instruction": f"{INSTRUCTION[0]}<prompt>{INSTRUCTION[1]}" + (PLAIN_CUE if inp.format == "plain" else ""),
        "placeholder": PLACEHOLDER,
    }
    report: dict[str, Any] = {"model": backbone.name, "settings": settings}
    inits: dict = {}  # the initial prompts' descriptions, by value: described once however many runs share one
    report["runs"] = []
    for i, (run, label) in enumerate(zip(runs, run_labels(runs), strict=True), 1):
        if progress is not None:
            progress(f"{label} ({i}/{len(runs)}), trained and initial prompt")
        report["runs"].append(_describe_run(backbone, run, label, which, options, inits))
    if text is not None:
        report["identity"] = _describe_identity(backbone, text, options)
    report = DescribeResult.from_dict(json_safe(report), "describe report").to_dict()  # checked by its record, versioned
    if out_dir is not None:
        from softprompt.io import write_json

        write_json(Path(out_dir) / "describe.json", report)
    return report
