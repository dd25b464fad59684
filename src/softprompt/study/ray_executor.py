"""The Ray executor: a study's independent units as Ray tasks, then the analyses as one more task.

Every unit runs the same function as the local executor (`study.units.run_unit`) on a worker's
cached `ModelCache`, and writes into the study directory, which must be a path every worker sees
(a shared filesystem). The driver only schedules, shows progress and writes results.json and the
report, so it never loads the model.

Faults: a worker that dies (SIGKILL, OOM, a lost node) has its unit retried up to `max_retries`
times, and a retried prompt run resumes from its checkpoint (`Study.ensure_run`). An exception
raised by the unit itself (a SoftPromptError such as divergence or a bad task file) is not retried:
it would fail again. It stops the study with a one-line error naming the unit.

A unit that starts from another unit's trained prompt (a `task:` init, [transfer] init) gets that
unit's result as an argument, so Ray starts it only after its source finished.

Ray is imported only here, and this module only when `--executor ray` is asked for.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from softprompt.errors import SoftPromptError
from softprompt.host_memory import keep_freed_host_memory
from softprompt.logging_setup import quiet_libraries
from softprompt.study.analysis_units import analyses_unit
from softprompt.study.executors import ExecutorResult, StudyProgress
from softprompt.study.model_cache import process_model_cache
from softprompt.study.plan import source_unit
from softprompt.study.units import Study, run_unit
from softprompt.threads import USER_WAIT_VARS

if TYPE_CHECKING:
    from softprompt.study.plan import Unit

CANCEL_GRACE_S = 60.0  # how long a cancelled run gets to checkpoint before the driver gives up on it


@dataclass
class RayOptions:
    """Where the cluster is and what each unit asks of it."""

    address: str | None = None  # None: $RAY_ADDRESS if set, else start a local cluster
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 3  # retries of a unit whose worker died; errors the unit raises are never retried
    torch_threads: int | None = None  # --threads: each unit's torch threads, whatever CPUs it reserved

    def __post_init__(self) -> None:
        if not self.cpus_per_run > 0:
            raise SoftPromptError(f"--cpus-per-run must be a positive number of CPUs, got {self.cpus_per_run}")
        if not self.gpus_per_run >= 0:
            raise SoftPromptError(f"--gpus-per-run must be 0 or more GPUs, got {self.gpus_per_run}")
        if self.max_retries < 0:
            raise SoftPromptError(f"--max-retries must be 0 or more, got {self.max_retries}")

    @property
    def threads(self) -> int:
        """Torch threads per unit: --threads, else the CPUs it reserved (at least one)."""
        return self.torch_threads or max(1, int(self.cpus_per_run))


def import_ray():
    try:
        import ray
    except ImportError:
        raise SoftPromptError("--executor ray needs Ray, which is not installed: pip install 'softprompt[ray]'") from None
    return ray


def _remote_unit(study: Study, unit: Unit | None, threads: int, *after: Any) -> dict[str, Any]:
    """On a Ray worker: one unit, or the analyses when `unit` is None, on this process's cached models. `after`:
    the results of the units it depends on (Ray runs it once they exist; their values are not needed)."""
    import torch

    quiet_libraries()
    keep_freed_host_memory()
    torch.set_num_threads(threads)
    models = process_model_cache(study.cfg.train)
    return analyses_unit(study, models) if unit is None else run_unit(study, models, unit)


def run_on_ray(study: Study, units: list[Unit], bar: StudyProgress, options: RayOptions | None) -> ExecutorResult:
    """Submit every unit at once, collect them as they finish, then run the analyses task."""
    ray = import_ray()
    options = options or RayOptions()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, logging_level=logging.WARNING)
    try:
        task = ray.remote(_remote_unit).options(
            num_cpus=options.cpus_per_run,
            num_gpus=options.gpus_per_run,
            max_retries=options.max_retries,
            retry_exceptions=False,
            **_worker_env(),
        )
        remote_study = dataclasses.replace(study, progress=False)  # no per-run bars from workers
        refs: dict[Unit, Any] = {}
        for unit in units:  # a unit's source comes before it in `units`
            source = source_unit(study.cfg, unit)
            refs[unit] = task.remote(remote_study, unit, options.threads, *([refs[source]] if source in refs else []))
        pending = {ref: unit for unit, ref in refs.items()}
        done: dict[Unit, dict[str, Any]] = {}
        bar.current(f"{len(pending)} units queued")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                unit = pending.pop(ready[0])
                done[unit] = _get(ray, ready[0], str(unit), options)
                bar.current(f"{unit} finished, {len(pending)} to go" if pending else "analyses")
                bar.done()
            final = _get(ray, task.remote(remote_study, None, options.threads), "analyses", options)
            bar.done()
        except BaseException:  # a failed unit or Ctrl-C: stop the others, which checkpoint on the way out
            _cancel(ray, list(pending))
            raise
        return done, final, _executor_info(ray, options)
    finally:
        if started_here:
            ray.shutdown()


def _worker_env() -> dict[str, Any]:
    """The OpenMP wait settings of this process (`softprompt.threads`, or the user's), for the workers of a cluster
    this process did not start (a local one inherits them): set before the worker imports torch."""
    env = {k: os.environ[k] for k in USER_WAIT_VARS if k in os.environ}
    return {"runtime_env": {"env_vars": env}} if env else {}


def _get(ray, ref, name: str, options: RayOptions) -> Any:
    """The unit's result, or a one-line SoftPromptError naming the unit."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the unit itself raised: not retried
        cause = getattr(e, "cause", None)
        if isinstance(cause, SoftPromptError):
            raise SoftPromptError(f"{name} failed on a Ray worker: {cause}") from None
        what = f"{type(cause).__name__}: {cause}" if cause is not None else str(e).splitlines()[-1]
        raise SoftPromptError(f"{name} failed on a Ray worker: {what}") from e
    except ray.exceptions.RayError as e:  # the worker or its node died more often than retried
        first = (str(e).strip().splitlines() or [""])[0]
        raise SoftPromptError(
            f"{name} failed on a Ray worker after {options.max_retries} retries: {type(e).__name__}: {first}"
        ) from e


def _cancel(ray, refs: list) -> None:
    """Cancel queued and running units; a running prompt run gets KeyboardInterrupt, checkpoints and stops."""
    for ref in refs:
        ray.cancel(ref)
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)


def _executor_info(ray, options: RayOptions) -> dict[str, Any]:
    """results.json's "executor": the cluster this study ran on and what each unit asked of it."""
    resources = {k: v for k, v in sorted(ray.cluster_resources().items()) if not k.startswith("node:")}
    return {
        "name": "ray",
        "address": ray.get_runtime_context().gcs_address,
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        "resources": resources,
        "cpus_per_run": options.cpus_per_run,
        "gpus_per_run": options.gpus_per_run,
        "max_retries": options.max_retries,
    }
