"""The local executor with worker processes: a study's prompt runs and baselines several at a time on one machine.

Why: a small model's steps do not use many cores well (on 2 cores, a SmolLM2-135M training step on one thread takes
~1.3x its time on two), so two runs with one thread each finish more work per second than the same runs one after
another with two threads each (docs/results.md, "The demo study", has the measured gain). `[execution] workers` (or
`softprompt study --workers N`) asks for it; the default stays one unit at a time in this process.

Every unit runs the same function as the other executors (`study.units.run_unit`) in a fresh (spawned) process with
its own model cache, so a worker loads the model once and keeps it for the units it is given. A unit that starts
from another unit's trained prompt (a `task:` init, [transfer] init) is handed out only after its source finished.
The analyses need every run, so they come after the units, side by side in the workers too (each is one task: its
own cache entry, its own timing); the transferred-init comparison and results.json follow here.

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
from softprompt.study.analysis_units import analysis_kinds, analysis_unit, finish_analyses
from softprompt.study.executors import ExecutorResult, StudyProgress
from softprompt.study.model_cache import ModelCache, process_model_cache
from softprompt.study.plan import Unit, source_unit
from softprompt.study.units import Study, run_unit

POLL_S = 0.5  # how often this process, waiting for units, looks for a stop signal
ANALYSIS_COST_ORDER = ("importance", "neighbors", "describe", "transfer")  # dearest first on the demo (its phase table)
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


def _worker_item(study: Study, item: Unit | str) -> dict[str, Any]:
    """In a worker: one unit, or one analysis (its kind), on the worker's cached model; a stop signal checkpoints a
    prompt run at its next safe point."""
    with stop_at_safe_points():
        models = process_model_cache(study.cfg.train)
        return run_unit(study, models, item) if isinstance(item, Unit) else analysis_unit(study, models, item)


def run_in_processes(study: Study, units: list[Unit], bar: StudyProgress, workers: int, threads: int) -> ExecutorResult:
    """Hand the units to `workers` processes of `threads` torch threads each (sources first), then the analyses."""
    remote = dataclasses.replace(study, progress=False)  # no per-run bars from workers: the study's bar says what runs
    planned = set(units)
    # trained units first (prompt runs, trained baselines: minutes each), the scoring-only baselines (seconds) last,
    # where they fill the gap a worker would otherwise idle in while the other finishes the last long unit
    waiting = sorted(units, key=lambda u: u.method is not None and u.method not in TRAINED_BASELINES)
    done: dict[Unit, dict[str, Any]] = {}
    analyses: dict[str, dict[str, Any]] = {}
    running: dict[Future, Unit | str] = {}
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold torch's threads
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads,))
    try:
        _drain(pool, remote, waiting, running, workers, bar, lambda u: _source_done(study, u, planned, done), done)
        # then the analyses side by side, the dearest first (each reads every run, and is cached on its own)
        kinds = sorted(analysis_kinds(study), key=_analysis_rank)
        _drain(pool, remote, kinds, running, workers, bar, lambda _kind: True, analyses, count=False)
    except BaseException:  # a failed unit or a stop: the running units checkpoint, the waiting ones never start
        _stop_workers(running)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    safe_point("analysis")
    bar.current("analyses")
    final = finish_analyses(study, ModelCache(study.cfg.train), analyses, bar.current)
    bar.done()
    return done, final, {"name": "local", "workers": workers, "threads_per_worker": threads}


def _drain(pool, remote: Study, waiting: list, running: dict, workers: int, bar, ready, results: dict, count=True) -> None:
    """Keep `workers` of the `waiting` items (units, or analysis kinds) running, each once `ready`, until all are in
    `results`; a stop signal between two polls raises here."""
    while waiting or running:
        raise_if_stopped()
        for item in [x for x in waiting if ready(x)][: workers - len(running)]:
            waiting.remove(item)
            running[pool.submit(_worker_item, remote, item)] = item
        bar.current(", ".join(str(x) if isinstance(x, Unit) else f"analysis {x}" for x in running.values()))
        finished, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
        for future in finished:
            item = running.pop(future)
            results[item] = _result(future, item if isinstance(item, Unit) else f"analysis {item}")
            if count:
                bar.done()


def _analysis_rank(kind: str) -> int:
    return ANALYSIS_COST_ORDER.index(kind) if kind in ANALYSIS_COST_ORDER else len(ANALYSIS_COST_ORDER)


def _source_done(study: Study, unit: Unit, planned: set[Unit], done: dict[Unit, dict[str, Any]]) -> bool:
    source = source_unit(study.cfg, unit)
    return source is None or source not in planned or source in done


def _result(future: Future, unit: Unit | str) -> dict[str, Any]:
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
