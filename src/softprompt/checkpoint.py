"""A training checkpoint: one safetensors file with the trained tensors, the optimiser's moments and the loop state.

A single file replaced atomically, so a kill at any instant leaves either the old or the new
checkpoint, never a tensor file and a state file from different steps. Never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from softprompt.errors import SoftPromptError
from softprompt.io import atomic_path
from softprompt.runs import CHECKPOINT_FILE


def save_trainables(path: Path, trainable: dict[str, torch.nn.Parameter]) -> None:
    """The trained tensors alone, by name (a LoRA adapter or fine-tuned weights)."""
    with atomic_path(path) as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in trainable.items()}, str(tmp))


def save_checkpoint(out: Path, trainable: dict[str, torch.nn.Parameter], optimizer, scheduler, state: dict) -> None:
    """Trainables + optimiser moments as tensors, the loop state (and the schedule's step) as JSON metadata."""
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in trainable.items()}
    names = list(trainable)
    for i, p in enumerate(trainable.values()):
        for k, v in optimizer.state.get(p, {}).items():
            if torch.is_tensor(v):
                tensors[f"opt/{names[i]}/{k}"] = v.detach().cpu().contiguous()
    state = dict(state, scheduler=scheduler.state_dict()["last_epoch"])
    with atomic_path(out / CHECKPOINT_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})


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
    with torch.no_grad():
        for n, p in trainable.items():
            if f"param/{n}" not in tensors:
                raise SoftPromptError(f"{out / CHECKPOINT_FILE}: no tensor for {n!r}; the checkpoint is from another config")
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
