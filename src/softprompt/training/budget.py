"""A run's training budget besides its epochs: --max-steps (the schedule spans them) and --max-time (the run's wall time,
evaluations included). `stop_facts` says at an optimiser-step boundary whether the run stops there, and why: what
run.json's `stopped` records (`records.run.Stopped`)."""

from __future__ import annotations

from typing import Any

from softprompt.config import TrainConfig
from softprompt.distributed import DataParallel


def stop_facts(
    cfg: TrainConfig, step, dp: DataParallel, done: int, elapsed: float, epoch: int, micro: int
) -> dict[str, Any] | None:
    """At the boundary `micro` micro-batches into `epoch` (`step`: the run's `TrainStep`, `done` optimiser steps,
    `elapsed` seconds): the facts of a stop if --max-steps or --max-time is spent, else None. The planned end of the
    last epoch is no stop. Data-parallel processes agree on the time (their clocks differ): any one over stops all."""
    if micro == step.micro_per_epoch and epoch + 1 == cfg.epochs:
        return None
    by_steps = cfg.max_steps is not None and done >= cfg.max_steps
    over_time = cfg.max_time is not None and elapsed >= cfg.max_time
    if cfg.max_time is not None and dp.active:
        over_time = dp.sum([float(over_time)])[0] > 0
    if not (by_steps or over_time):
        return None
    return {
        "reason": "max_steps" if by_steps else "max_time",
        "optimizer_step": done,
        "planned_steps": step.total_steps,
        "epoch": round(epoch + micro / step.micro_per_epoch, 3),
        "elapsed_s": round(elapsed, 2),
        "max_time_s": cfg.max_time,
    }
