"""What a run keeps on disk while it trains: the loop state a checkpoint saves, the checkpoint itself (written
at each epoch's end, every `checkpoint_every` steps and at an interrupt; restored by --resume), the metrics
history beside it and the best prompt so far. The loop reads the queued losses before calling any of these:
nothing is written from parameters the divergence check has not seen."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from softprompt.errors import SoftPromptError
from softprompt.io import write_text
from softprompt.preemption import hold_point
from softprompt.records.history import METRICS_FILE
from softprompt.runs.checkpoint import load_checkpoint, save_checkpoint, save_trainables, verify_checkpoint
from softprompt.runs.directory import BEST_ADAPTER_FILE, BEST_PROMPT_FILE, CHECKPOINT_FILE, artifact_facts
from softprompt.training.trainables import Trainables


def fresh_state(processes: int) -> dict[str, Any]:
    """The loop state of a run that has not started: what a checkpoint saves (epoch, micro_step, optimizer_step,
    history, best; later the epoch's losses so far, last_eval, the selection's facts, the prompts' artifacts).
    `loss_mark`: where in the epoch's losses the last evaluation was (a record's train_loss is the mean since)."""
    state: dict[str, Any] = {"epoch": 0, "micro_step": 0, "optimizer_step": 0, "history": [], "best": None}
    state["loss_mark"] = 0
    state.update(elapsed=0.0, processes=processes)
    return state


def restore_checkpoint(
    out: Path, trainables: Trainables, optimizer: torch.optim.Optimizer, scheduler: Any, processes: int
) -> tuple[dict[str, Any], str | None] | None:
    """(the loop state, the checkpoint's SHA-256) of the checkpoint in `out`, its tensors loaded into the
    trainables, optimiser and schedule; None without one. Refused if another number of processes wrote it."""
    if not (out / CHECKPOINT_FILE).exists():
        return None
    digest = verify_checkpoint(out, warn_unverified=False)
    state = load_checkpoint(out, trainables.params, optimizer, scheduler)
    if state.get("processes", 1) != processes:
        raise SoftPromptError(
            f"{out}: the checkpoint was written by {state.get('processes', 1)} data-parallel process(es), this is "
            f"{processes}: the global batch would change; resume with the same number of processes"
        )
    return state, digest


def write_checkpoint(
    out: Path,
    trainables: Trainables,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    record_digest: Callable[..., None],
) -> None:
    """The checkpoint (run.json records its digest through `record_digest`: beside the old one while the file
    is replaced, then alone) and metrics.jsonl, the history so far."""
    digest = save_checkpoint(out, trainables.params, optimizer, scheduler, state, before_replace=record_digest)
    hold_point("checkpoint-write")  # (tests: a kill here finds the new file and both digests in run.json)
    record_digest(digest, replaced=True)
    write_text(out / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in state["history"]))


def save_best(out: Path, trainables: Trainables, method: str, state: dict[str, Any]) -> None:
    """The current prompt as best.safetensors (its facts into state["artifacts"], for run.json), or LoRA's adapters."""
    prompt = trainables.prompt_to_save()
    if prompt is not None:
        prompt.save(out / BEST_PROMPT_FILE)
        facts = artifact_facts(out / BEST_PROMPT_FILE, prompt).to_dict()  # for run.json (the state stays plain JSON)
        state["artifacts"] = {**state.get("artifacts", {}), BEST_PROMPT_FILE: facts}
    elif method == "lora":
        save_trainables(out / BEST_ADAPTER_FILE, trainables.params)


def diverged_advice(out: Path) -> str:
    """What a diverged run keeps and what to do: only what is known (a checkpoint is written from parameters the
    check passed, or resumed from one whose digest run.json recorded; --resume would repeat the same steps)."""
    exists = (out / CHECKPOINT_FILE).exists()
    kept = f"{out} keeps its last checkpoint, from before these steps" if exists else "no checkpoint was written"
    return f"{kept}; the learning rate may be too large: retrain with a smaller --lr (--overwrite; a study's [train] lr)"
