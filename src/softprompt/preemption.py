"""SIGTERM handled like Ctrl-C: what Slurm, Kubernetes and cloud preemption send before they kill.

Inside `sigterm_as_interrupt()`, SIGTERM raises KeyboardInterrupt in the main thread, exactly where
Python raises it for Ctrl-C, so everything that checkpoints on Ctrl-C (the training loop at its last
consistent instant, a study, the baselines) does the same on preemption; the returned `Signals`
says which signal it was (the CLI exits 143 for SIGTERM, 130 for SIGINT). A repeated SIGTERM while
the first is being handled is ignored, so the checkpoint being written completes; a scheduler's
SIGKILL after its grace period still ends the process, and the previous checkpoint is intact.
Under `accelerate launch` (torchrun) the launcher forwards SIGTERM to every process, and each
handles it the same way.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

EXIT_SIGINT = 130  # 128 + SIGINT: Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM: what schedulers and shells expect of a terminated job


@dataclass
class Signals:
    terminated: bool = False  # a SIGTERM arrived

    @property
    def exit_code(self) -> int:
        return EXIT_SIGTERM if self.terminated else EXIT_SIGINT


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[Signals]:
    """SIGTERM raises KeyboardInterrupt while the block runs (main thread only; elsewhere nothing changes)."""
    seen = Signals()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def on_sigterm(signum, frame) -> None:
        if seen.terminated:
            return  # already stopping: let the checkpoint finish
        seen.terminated = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)
