"""A training checkpoint: one safetensors file with the trained tensors, the optimiser's moments and the loop state.

A single file replaced atomically, so a kill at any instant leaves either the old or the new
checkpoint, never a tensor file and a state file from different steps. Never pickle. run.json records
the file's SHA-256 (`artifacts`), and --resume verifies it (`verify_checkpoint`): a checkpoint altered
or replaced since the run wrote it is refused, not trained on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from softprompt.data.inputs import file_sha256
from softprompt.errors import SoftPromptError, warn
from softprompt.io import atomic_path
from softprompt.records.run import RUN_FILE, RunRecord
from softprompt.runs.directory import CHECKPOINT_FILE


def save_trainables(path: Path, trainable: dict[str, torch.nn.Parameter]) -> None:
    """The trained tensors alone, by name (a LoRA adapter or fine-tuned weights)."""
    with atomic_path(path) as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in trainable.items()}, str(tmp))


def save_checkpoint(
    out: Path,
    trainable: dict[str, torch.nn.Parameter],
    optimizer,
    scheduler,
    state: dict,
    before_replace: Callable[[str], None] | None = None,
) -> str:
    """Trainables + optimiser moments as tensors, the loop state (and the schedule's step) as JSON metadata; returns
    the file's SHA-256. `before_replace` is given it once the new file is complete, before it replaces the old one
    (run.json records it there, so that a kill at any instant leaves a checkpoint run.json accepts)."""
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in trainable.items()}
    names = list(trainable)
    for i, p in enumerate(trainable.values()):
        for k, v in optimizer.state.get(p, {}).items():
            if torch.is_tensor(v):
                tensors[f"opt/{names[i]}/{k}"] = v.detach().cpu().contiguous()
    state = dict(state, scheduler=scheduler.state_dict()["last_epoch"])
    with atomic_path(out / CHECKPOINT_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})
        digest = file_sha256(tmp)
        if before_replace is not None:
            before_replace(digest)
    return digest


def verify_checkpoint(out: Path, *, warn_unverified: bool = True) -> str | None:
    """The SHA-256 of `out`'s checkpoint, checked against the digest(s) run.json recorded when the run wrote it;
    None without a checkpoint. A run from before checkpoint digests resumes unverified, with a warning."""
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    digest = file_sha256(path)
    record = RunRecord.read(out) if (out / RUN_FILE).exists() else None
    recorded = record.file_facts(CHECKPOINT_FILE) if record is not None else None
    accepted = {recorded.sha256, recorded.previous_sha256} - {None} if recorded is not None else set()
    if not accepted:
        if warn_unverified:
            warn(
                f"{path}: {out / RUN_FILE} records no digest of it (a run from before checkpoint digests), "
                "so it cannot be verified; resuming from it as it is"
            )
    elif digest not in accepted:
        raise SoftPromptError(
            f"{path} does not match {out / RUN_FILE}: its SHA-256 differs from the one recorded when the run wrote it "
            "(the file was modified or replaced), so the run cannot continue from it: restore the file, or retrain the "
            "run from scratch (train --overwrite without --resume; in a study, delete the run directory)"
        )
    return digest


STATE_FIELDS = {"epoch": int, "micro_step": int, "optimizer_step": int, "scheduler": int, "history": list}


def _check_state(state: object, path: Path) -> None:
    """The loop state the resumed run reads, of the types it reads them as."""
    if not isinstance(state, dict):
        raise SoftPromptError(
            f"{path}: the loop state is {type(state).__name__}, expected a JSON object; the checkpoint is damaged"
        )
    for name, kind in STATE_FIELDS.items():
        value = state.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SoftPromptError(
                f"{path}: the loop state's {name!r} is {value!r:.60}, expected {kind.__name__}; the checkpoint is damaged"
            )


def load_checkpoint(out: Path, trainable: dict[str, torch.nn.Parameter], optimizer, scheduler) -> dict:
    """Restore the tensors, moments and schedule in place; returns the loop state."""
    try:
        with safe_open(str(out / CHECKPOINT_FILE), framework="pt") as f:
            state = json.loads((f.metadata() or {})["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise SoftPromptError(
            f"{out / CHECKPOINT_FILE}: unreadable checkpoint ({type(e).__name__}: {e}); delete the run directory to restart"
        ) from None
    _check_state(state, out / CHECKPOINT_FILE)
    with torch.no_grad():
        for n, p in trainable.items():
            if f"param/{n}" not in tensors:
                raise SoftPromptError(f"{out / CHECKPOINT_FILE}: no tensor for {n!r}; the checkpoint is from another config")
            if not torch.isfinite(tensors[f"param/{n}"]).all():  # never written so (a checkpoint is of checked parameters)
                raise SoftPromptError(
                    f"{out / CHECKPOINT_FILE}: tensor {n!r} holds NaN/inf, which no checkpoint is written with (the file "
                    "was corrupted): restore it, or retrain the run from scratch (--overwrite without --resume)"
                )
            p.copy_(tensors[f"param/{n}"])
    step = state["optimizer_step"]
    for n, p in trainable.items():
        # moments live with their parameter (a GPU run resumes on the GPU); Adam keeps `step` on the CPU
        moments = {
            k.split("/")[-1]: v if k.endswith("/step") else v.to(p.device)
            for k, v in tensors.items()
            if k.startswith(f"opt/{n}/")
        }
        if moments:
            moments["step"] = moments.get("step", torch.tensor(float(step)))
            optimizer.state[p] = moments
    scheduler.last_epoch = state["scheduler"]
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # noqa: SLF001
    for g, lr0 in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        g["lr"] = lr0 * scheduler.lr_lambdas[0](scheduler.last_epoch)
    return state
