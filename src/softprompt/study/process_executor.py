"""The local executor with worker processes: a study's prompt runs and baselines several at a time on one machine.

Why: a small model's steps do not use many cores well (on 2 cores, a SmolLM2-135M training step on one thread takes
~1.3x its time on two), so two runs with one thread each finish more work per second than the same runs one after
another with two threads each (docs/results.md, "The demo study", has the measured gain). `[execution] workers` (or
`softprompt study --workers N`) asks for it; the default stays one unit at a time in this process.

Every unit runs the same function as the other executors (`study.units.run_unit`) in a fresh (spawned) process with
its own model cache, so a worker loads the model once and keeps it for the units it is given. A unit that starts
from another unit's trained prompt (a `task:` init, [transfer] init) is handed out only after its source finished.
The analyses need every run, so they run afterwards in this process, with all of its threads.

Stops: Ctrl-C reaches every process of the terminal's group, and this process forwards a stop (Ctrl-C, SIGTERM) to
its workers as SIGTERM, so a running prompt run checkpoints at its next safe point and a rerun resumes it. A worker
that dies (killed, out of memory) fails the study with a line naming the unit; its finished units stay done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from softprompt.config import TRAINED_BASELINES
from softprompt.errors import SoftPromptError
from softprompt.host_memory import keep_freed_host_memory
from softprompt.logging_setup import quiet_libraries
from softprompt.preemption import raise_if_stopped, safe_point, stop_at_safe_points
from softprompt.study.analysis_units import analyses_unit
from softprompt.study.executors import ExecutorResult, StudyProgress
from softprompt.study.model_cache import ModelCache, process_model_cache
from softprompt.study.plan import Unit, source_unit
from softprompt.study.units import Study, run_unit

POLL_S = 0.5  # how often this process, waiting for units, looks for a stop signal
STOP_GRACE_S = 120.0  # how long running units get to checkpoint after a stop before this process gives up on them


def _init_worker(threads: int) -> None:
    """In each worker, once: its torch threads, quiet libraries, freed memory kept. Between units a worker ignores
    Ctrl-C and SIGTERM (a worker dying there would break the pool under the units still running); while a unit runs,
    `stop_at_safe_points` turns either into a checkpoint and a stop at the unit's next safe point."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    quiet_libraries()
    keep_freed_host_memory()
    import torch

    torch.set_num_threads(threads)


def _worker_unit(study: Study, unit: Unit) -> dict[str, Any]:
    """In a worker: one unit on the worker's cached model; a stop signal checkpoints it at its next safe point."""
    with stop_at_safe_points():
        return run_unit(study, process_model_cache(study.cfg.train), unit)


def run_in_processes(study: Study, units: list[Unit], bar: StudyProgress, workers: int, threads: int) -> ExecutorResult:
    """Hand the units to `workers` processes of `threads` torch threads each (sources first), then run the analyses
    here."""
    remote = dataclasses.replace(study, progress=False)  # no per-run bars from workers: the study's bar says what runs
    # trained units first (prompt runs, trained baselines: minutes each), the scoring-only baselines (seconds) last,
    # where they fill the gap a worker would otherwise idle in while the other finishes the last long unit
    waiting = sorted(units, key=lambda u: u.method is not None and u.method not in TRAINED_BASELINES)
    planned = set(units)
    done: dict[Unit, dict[str, Any]] = {}
    running: dict[Future, Unit] = {}
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold torch's threads
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads,))
    try:
        while waiting or running:
            raise_if_stopped()
            for unit in [u for u in waiting if _source_done(study, u, planned, done)][: workers - len(running)]:
                waiting.remove(unit)
                running[pool.submit(_worker_unit, remote, unit)] = unit
            bar.current(", ".join(str(u) for u in running.values()))
            finished, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                unit = running.pop(future)
                done[unit] = _result(future, unit)
                bar.done()
    except BaseException:  # a failed unit or a stop: the running units checkpoint, the waiting ones never start
        _stop_workers(running)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    safe_point("unit")
    bar.current("analyses")
    final = analyses_unit(study, ModelCache(study.cfg.train), bar.current)
    bar.done()
    return done, final, {"name": "local", "workers": workers, "threads_per_worker": threads}


def _source_done(study: Study, unit: Unit, planned: set[Unit], done: dict[Unit, dict[str, Any]]) -> bool:
    source = source_unit(study.cfg, unit)
    return source is None or source not in planned or source in done


def _result(future: Future, unit: Unit) -> dict[str, Any]:
    """The unit's result, or a one-line error naming it (a stop inside the unit is a stop here too)."""
    try:
        return future.result()
    except KeyboardInterrupt:
        raise
    except SoftPromptError as e:
        raise SoftPromptError(f"{unit} failed in a worker process: {e}") from None
    except BrokenProcessPool:
        raise SoftPromptError(
            f"{unit}: a worker process died (killed, or out of memory?); the finished units are kept, rerun the study "
            "to resume (fewer [execution] workers need less memory)"
        ) from None
    except Exception as e:
        raise SoftPromptError(f"{unit} failed in a worker process: {type(e).__name__}: {e}") from e


def _stop_workers(running: dict[Future, Unit]) -> None:
    """SIGTERM to every worker (a running unit checkpoints at its next safe point and stops), then wait for them."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError, TypeError):  # already gone
            os.kill(child.pid, signal.SIGTERM)
    if running:
        wait(running, timeout=STOP_GRACE_S)
