"""The local executor with worker processes: a study's prompt runs and baselines several at a time on one machine.

Why: a small model's steps do not use many cores well (on 2 cores, a SmolLM2-135M training step on one thread takes
~1.3x its time on two), so two runs with one thread each finish more work per second than the same runs one after
another with two threads each (docs/results.md, "The demo study", has the measured gain). `[execution] workers` (or
`softprompt study --workers N`) asks for it; the default stays one unit at a time in this process.

Every unit runs the same function as the other executors (`study.units.run_unit`) in a fresh (spawned) process with
its own model cache, so a worker loads the model once and keeps it for the units it is given. A unit that starts
from another unit's trained prompt (a `task:` init, [transfer] init) is handed out only after its source finished.
The analyses run in the workers too, each as one task (its own cache entry, its own timing), once the runs it reads
are done: the per-run readouts (importance, describe) of `[analysis] readout_seeds` start beside the other runs; the
transferred-init comparison and results.json follow here.

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
from softprompt.study.analysis_units import PER_RUN_READOUTS, analysis_kinds, analysis_unit, finish_analyses
from softprompt.study.executors import ExecutorResult, StudyProgress
from softprompt.study.model_cache import ModelCache, process_model_cache
from softprompt.study.plan import Unit, source_unit
from softprompt.study.units import Study, run_unit

POLL_S = 0.5  # how often this process, waiting for its workers, looks for a stop signal
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
    """Keep `workers` processes of `threads` torch threads each busy with the units and the analyses (`_schedule`),
    then finish the analyses here."""
    remote = dataclasses.replace(study, progress=False)  # no per-run bars from workers: the study's bar says what runs
    waiting = _schedule(study, units)
    results: dict[Unit | str, dict[str, Any]] = {}
    running: dict[Future, Unit | str] = {}
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold torch's threads
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads,))
    try:
        while waiting or running:
            raise_if_stopped()
            for item in [x for x in waiting if _ready(study, x, units, results)][: workers - len(running)]:
                waiting.remove(item)
                running[pool.submit(_worker_item, remote, item)] = item
            bar.current(", ".join(_name(x) for x in running.values()))
            finished, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                item = running.pop(future)
                results[item] = _result(future, _name(item))
                if isinstance(item, Unit):
                    bar.done()
    except BaseException:  # a failed unit or a stop: the running units checkpoint, the waiting ones never start
        _stop_workers(running)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    safe_point("analysis")
    bar.current("analyses")
    analyses = {k: v for k, v in results.items() if isinstance(k, str)}
    final = finish_analyses(study, ModelCache(study.cfg.train), analyses, bar.current)
    bar.done()
    return {u: results[u] for u in units}, final, {"name": "local", "workers": workers, "threads_per_worker": threads}


def _schedule(study: Study, units: list[Unit]) -> list[Unit | str]:
    """The order work is handed out in, each item once it is `_ready`: the prompt runs the per-run readouts read (so
    those readouts, the dearest analyses, can start beside the other runs), the readouts, the other prompt runs, the
    trained baselines, the analyses of every run, and last the scoring-only baselines (seconds each: they fill the gap
    a worker would otherwise idle in while the other finishes a long item)."""
    seeds = study.cfg.analysis.readout_seeds
    kinds = analysis_kinds(study)

    def rank(item: Unit | str) -> int:
        if isinstance(item, str):
            return 1 if item in PER_RUN_READOUTS else 4
        if item.method is None:
            return 0 if seeds is None or item.seed in seeds else 2
        return 3 if item.method in TRAINED_BASELINES else 5

    return sorted([*units, *kinds], key=rank)


def _ready(study: Study, item: Unit | str, units: list[Unit], results: dict) -> bool:
    """A unit once its source run (if any) is done; an analysis once every prompt run it reads is done."""
    if isinstance(item, Unit):
        source = source_unit(study.cfg, item)
        return source is None or source not in units or source in results
    seeds = study.cfg.analysis.readout_seeds if item in PER_RUN_READOUTS else None
    return all(u in results for u in units if u.method is None and (seeds is None or u.seed in seeds))


def _name(item: Unit | str) -> str:
    return str(item) if isinstance(item, Unit) else f"analysis {item}"


def _result(future: Future, unit: str) -> dict[str, Any]:
    """The unit's (or analysis's) result, or a one-line error naming it (a stop inside it is a stop here too)."""
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


def _stop_workers(running: dict[Future, Unit | str]) -> None:
    """SIGTERM to every worker (a running unit checkpoints at its next safe point and stops), then wait for them."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError, TypeError):  # already gone
            os.kill(child.pid, signal.SIGTERM)
    if running:
        wait(running, timeout=STOP_GRACE_S)
