"""The note after an interrupted command (Ctrl-C, SIGTERM): what its output folder keeps and how to continue, read
from the folder itself, so it never claims a checkpoint that does not exist."""

from __future__ import annotations

import argparse
from pathlib import Path

from softprompt.cli.baselines import baselines_out
from softprompt.cli.train import run_out


def interrupted_note(a: argparse.Namespace) -> str | None:
    """`progress was checkpointed at step N in DIR: rerun with --resume to continue`, `nothing was written to DIR:
    rerun the same command to start`, ...; None for a command that keeps nothing to continue from."""
    from softprompt.runs.progress import folder_progress, run_progress

    if a.command == "train":
        kept, then = run_progress(run_out(a))
        how = {"start": "rerun the same command to start", "resume": "rerun with --resume to continue"}.get(then)
        return f"{kept}: {how}" if how else kept
    if a.command in ("study", "baselines"):
        folder = Path(a.out) if a.command == "study" else baselines_out(a)
        kept = folder_progress(folder)
        if kept is None:
            return f"no run was started in {folder} yet: rerun the same command to start"
        return f"progress was kept in {folder} ({kept}): rerun the same command to continue"
    return None
