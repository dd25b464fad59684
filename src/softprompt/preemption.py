"""Ctrl-C and SIGTERM (what Slurm, Kubernetes and cloud preemption send before they kill) as a request to stop,
honoured at safe points.

Inside `stop_at_safe_points()` (the CLI runs every command in it), SIGINT and SIGTERM only set a flag; nothing is
raised into whatever Python code happens to run when the signal arrives. Python's own Ctrl-C handling raises
KeyboardInterrupt there, and there it can be lost: raised inside a finaliser (`__del__`, a weakref callback) it
is printed as "Exception ignored in ..." and discarded, and the command runs on to exit 0. Here the flag stays
set, so the request cannot be lost: the code calls `raise_if_stopped()` at safe points (each training
micro-batch, each scoring batch, model loading, between a study's units, baselines and analyses, before the
report) and KeyboardInterrupt is raised there, where everything that checkpoints on Ctrl-C (the training loop at
its last consistent instant, a study, the baselines) does so. A repeated signal keeps the flag set (a second
SIGTERM does not cut the checkpoint being written short); a second Ctrl-C stops at once, for a person who will
not wait. The CLI exits 143 after a SIGTERM and 130 after a Ctrl-C (128 + the signal), also when the signal came
after the command's last safe point.

In a data-parallel process (`accelerate launch`: the launcher forwards SIGTERM to every process) a stop decided
alone would leave the others waiting in a collective, so local checks are off (`agree_before_stopping`) and the
training loop stops where every process checks together (`DataParallel.raise_if_stopped`).

`hold_point` is a test hook: with SOFTPROMPT_TEST_HOLD=POINT:N the process waits at the N-th pass of POINT
until a signal arrives (or the test deletes the file), after creating the file SOFTPROMPT_TEST_HOLD_FILE (which
says where it waits), so a test signals a run at a chosen instant instead of racing it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

EXIT_SIGINT = 130  # 128 + SIGINT: Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM: what schedulers and shells expect of a terminated job

HOLD_ENV = "SOFTPROMPT_TEST_HOLD"  # test hook: POINT:N, e.g. train-batch:5
HOLD_FILE_ENV = "SOFTPROMPT_TEST_HOLD_FILE"  # created (once, exclusively) when the process starts waiting there
HOLD_TIMEOUT_S = 600.0  # a held process whose test went away goes on after this


@dataclass
class Signals:
    """Which stop signals arrived while `stop_at_safe_points` ran."""

    terminated: bool = False  # a SIGTERM arrived
    interrupted: bool = False  # a SIGINT (Ctrl-C) arrived

    @property
    def received(self) -> bool:
        return self.terminated or self.interrupted

    @property
    def exit_code(self) -> int:
        return EXIT_SIGTERM if self.terminated else EXIT_SIGINT


_active: Signals | None = None  # the innermost `stop_at_safe_points`' record
_agreed_only = False  # a data-parallel process: only checks every process makes together may stop it
_passes: Counter[str] = Counter()  # hold points passed in this process


@contextlib.contextmanager
def stop_at_safe_points() -> Iterator[Signals]:
    """SIGINT and SIGTERM set a flag while the block runs (main thread only; elsewhere nothing changes), which
    `raise_if_stopped` turns into KeyboardInterrupt at the next safe point; the previous handlers are restored."""
    global _active
    seen = Signals()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def on_signal(signum: int, frame) -> None:
        if signum == signal.SIGTERM:
            seen.terminated = True
        elif seen.interrupted:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (the flag stays set should this one be lost)
        else:
            seen.interrupted = True

    outer = _active
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    _active = seen
    try:
        yield seen
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _active = outer


def stop_requested() -> bool:
    """Whether a stop signal arrived in the current `stop_at_safe_points` (whoever checks, wherever)."""
    return _active is not None and _active.received


def raise_if_stopped() -> None:
    """A safe point: KeyboardInterrupt if a stop signal arrived (every time it is called from then on, so a stop
    cannot be lost by code that swallows one). A no-op in a data-parallel process (`agree_before_stopping`)."""
    if not _agreed_only and stop_requested():
        raise KeyboardInterrupt


def agree_before_stopping() -> None:
    """This process is one of a data-parallel group: from now on it stops only where all of them check together."""
    global _agreed_only
    _agreed_only = True


def hold_point(name: str) -> None:
    """Test hook (no effect unless SOFTPROMPT_TEST_HOLD is set): at the N-th pass of point `name` (SOFTPROMPT_TEST_HOLD
    is `name:N`), create SOFTPROMPT_TEST_HOLD_FILE holding `name:N PID` and wait until a stop signal arrives, the file
    is deleted (the test lets it go on) or the process is killed, so a test signals it at that instant. The file is
    created exclusively: one hold per file, so a retried or resumed process that finds it goes on."""
    spec = os.environ.get(HOLD_ENV)
    if not spec:
        return
    _passes[name] += 1
    point, _, nth = spec.rpartition(":")
    if point != name or nth != str(_passes[name]):
        return
    path = os.environ.get(HOLD_FILE_ENV)
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{spec} {os.getpid()}\n")
    try:
        os.link(tmp, path)  # complete when it appears; fails if another process held here first
    except FileExistsError:
        return
    finally:
        os.unlink(tmp)
    deadline = time.monotonic() + HOLD_TIMEOUT_S
    while not stop_requested() and os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def safe_point(name: str) -> None:
    """`hold_point(name)`, then `raise_if_stopped()`: where a command may stop, named for tests."""
    hold_point(name)
    raise_if_stopped()
