"""How many threads torch computes with, and how its OpenMP threads wait: chosen once, before torch loads.

torch's default is one OpenMP thread per core it sees, and an OpenMP parallel region waits for its slowest
thread: when another process takes one of two cores, every region waits for the thread that lost its core, while
a thread done early spins (libgomp, torch's OpenMP on Linux, spins 300,000 times before it sleeps) on the core the
others need. Reported in issue 36 on an idle 2-core AMD EPYC: a small SST-2 run took 19.5 s alone, 61 s (3.1x)
beside one busy single-thread process, and 26 s alone on one thread; the demo's training steps went from ~1.0 s to
6-10 s the moment a one-thread job started beside it. Two levers, both set here:

- the count (`SOFTPROMPT_THREADS`): `auto` (the default) takes the cores this process may use (its affinity set,
  capped by a cgroup CPU quota; not `os.cpu_count`, which counts the machine's) less those other processes keep
  busy when the command starts (/proc/stat over 0.2 s); `cores` all usable cores; `torch` torch's own default (the
  behaviour before issue 36); or a number;
- the wait (`SOFTPROMPT_OMP_WAIT`): `short` (the default) lets a waiting thread spin 10,000 times (GOMP_SPINCOUNT)
  before it sleeps, `passive` sleeps at once (OMP_WAIT_POLICY=PASSIVE), `default` keeps libgomp's 300,000.

Why these defaults (a guess until `bench/threads_share.py` runs on an idle machine; bench/docs/cpu.md, "Sharing the
cores"): with a process already busy, one thread fewer leaves each thread a core (the figures above predict about
26 / 19.5 = 1.3x its time alone), and on an idle machine `auto` changes nothing; a process that starts after the
count is chosen is met only by the wait policy, and a short spin stops a waiting thread from holding a core for long
while still catching the next parallel region when nothing else runs (passive pays a wake-up for every region).

Set by the command line (`--threads N` on every command) through the environment, before torch is imported
(libgomp reads its settings once, when it loads), so child processes (a local Ray cluster's workers) inherit them. A
user's own `OMP_NUM_THREADS` / `MKL_NUM_THREADS` (or `torch.set_num_threads` before calling `main`: torch already
loaded) and `OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` / `KMP_BLOCKTIME` are never overridden, except the count by an
explicit `--threads`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from softprompt.errors import SoftPromptError

ENV_COUNT = "SOFTPROMPT_THREADS"
ENV_WAIT = "SOFTPROMPT_OMP_WAIT"
COUNT_POLICIES = ("auto", "cores", "torch")  # or a positive integer
WAIT_ENV = {"short": {"GOMP_SPINCOUNT": "10000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "default": {}}
WAIT_POLICIES = tuple(WAIT_ENV)
DEFAULT_COUNT = "auto"  # pending the idle run of bench/threads_share.py (see the module's docstring)
DEFAULT_WAIT = "short"
USER_COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
USER_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
BUSY_SAMPLE_S = 0.2  # how long `auto` watches /proc/stat at start
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def affinity_set() -> set[int]:
    """The CPUs this process may run on (`os.sched_getaffinity`; every CPU where the OS has no such call)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def usable_cores(affinity: set[int] | None = None, cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may run on: its affinity set (`os.sched_getaffinity`), capped by a cgroup v2 CPU
    quota (`cpu.max`: "quota period", e.g. a container given 2 CPUs on a 64-core host), at least 1."""
    cores = max(1, len(affinity_set() if affinity is None else affinity))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def cpu_times(stat: str) -> dict[int, tuple[int, int]]:
    """Per CPU, (idle, total) jiffies from /proc/stat's text (idle counts iowait too)."""
    out = {}
    for line in stat.splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            v = [int(x) for x in values[:8]]
            out[int(name[3:])] = (v[3] + v[4], sum(v))
    return out


def _read_stat() -> str:
    return Path("/proc/stat").read_text()


def busy_cores(cpus: set[int], interval: float = BUSY_SAMPLE_S, read: Callable[[], str] = _read_stat, sleep=time.sleep) -> float:
    """How many of `cpus` other processes kept busy over `interval` seconds, from /proc/stat (this process sleeps
    meanwhile); 0.0 where /proc/stat cannot be read (not Linux)."""
    try:
        before = cpu_times(read())
        sleep(interval)
        after = cpu_times(read())
    except (OSError, ValueError):
        return 0.0
    busy = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after:
            idle, total = (a - b for a, b in zip(after[cpu], before[cpu], strict=True))
            busy += 1.0 - idle / total if total > 0 else 0.0
    return busy


def free_threads(cores: int, cpus: int, busy: float) -> int:
    """`auto`'s count: the usable cores, fewer by the cores other processes keep busy (rounded), at least 1. The
    busy share is counted over the `cpus` of the affinity set (all the machine's under a quota alone)."""
    return max(1, min(cores, int(cpus - busy + 0.5)))


@dataclass(frozen=True)
class ThreadPlan:
    """What a command sets: `threads` (None: torch's own count) and `wait` (a `WAIT_ENV` policy; None: leave the
    wait settings as they are), and why."""

    threads: int | None
    wait: str | None
    why: str
    explicit: bool = False  # --threads: exactly this many, even above the cores (torch caps OMP_NUM_THREADS there)


def parse_count(value: str, where: str) -> str | int:
    """A count policy (auto, cores, torch) or a positive integer, from `where` (a flag or variable name)."""
    if value in COUNT_POLICIES:
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise SoftPromptError(f"{where}={value!r}: expected a positive number of threads or one of {', '.join(COUNT_POLICIES)}")
    return n


def plan_threads(
    requested: int | None = None,
    environ: Mapping[str, str] = os.environ,
    *,
    torch_loaded: bool | None = None,
    affinity: Callable[[], set[int]] = affinity_set,
    cpu_max: Path = CGROUP_CPU_MAX,
    busy: Callable[[set[int]], float] = busy_cores,
) -> ThreadPlan:
    """The thread count and wait policy for this process: `requested` (--threads) first, then the user's own
    OpenMP variables (left alone), then `SOFTPROMPT_THREADS` / `SOFTPROMPT_OMP_WAIT` (defaults `auto`, `short`)."""
    loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    policy = parse_count(environ.get(ENV_COUNT, DEFAULT_COUNT), ENV_COUNT)  # checked whether it applies or not
    wait_policy = environ.get(ENV_WAIT, DEFAULT_WAIT)
    if wait_policy not in WAIT_POLICIES:
        raise SoftPromptError(f"{ENV_WAIT}={wait_policy!r}: expected one of {', '.join(WAIT_POLICIES)}")
    user_wait = [v for v in USER_WAIT_VARS if v in environ]
    wait = wait_policy if not user_wait and not loaded else None
    if requested is not None:
        if requested < 1:
            raise SoftPromptError(f"--threads {requested}: expected at least 1 thread")
        return ThreadPlan(requested, wait, f"--threads {requested}", explicit=True)
    user = [f"{v}={environ[v]}" for v in USER_COUNT_VARS if v in environ]
    if user:
        return ThreadPlan(None, wait, f"the user's {', '.join(user)}")
    if loaded:
        return ThreadPlan(None, None, "torch was loaded before the command: its thread count is the caller's")
    if policy == "torch":
        return ThreadPlan(None, wait, f"{ENV_COUNT}=torch: torch's default")
    if isinstance(policy, int):
        return ThreadPlan(policy, wait, f"{ENV_COUNT}={policy}")
    cpus = affinity()
    n = usable_cores(cpus, cpu_max)
    if policy == "cores":
        return ThreadPlan(n, wait, f"{n} usable core(s)")
    taken = busy(cpus)
    threads = free_threads(n, len(cpus), taken)
    return ThreadPlan(threads, wait, f"{n} usable core(s), {taken:.1f} kept busy by other processes at start")


def apply_threads(plan: ThreadPlan, environ: os._Environ | dict = os.environ, *, torch_loaded: bool | None = None) -> None:
    """Put `plan` in force: as environment variables while torch is not loaded (it and libgomp read them when they
    load; child processes inherit them), and through `torch.set_num_threads` once torch is loaded or when the count
    is explicit (torch caps OMP_NUM_THREADS at the cores it sees). The wait policy cannot change after torch loads."""
    loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    if plan.wait is not None:
        environ.update(WAIT_ENV[plan.wait])
    if plan.threads is None:
        return
    if not loaded:
        environ["OMP_NUM_THREADS"] = str(plan.threads)
        if "MKL_NUM_THREADS" in environ:  # torch reads it after OMP_NUM_THREADS: an explicit --threads wins
            environ["MKL_NUM_THREADS"] = str(plan.threads)
    if loaded or plan.explicit:
        import torch

        torch.set_num_threads(plan.threads)


def configure_threads(requested: int | None = None) -> ThreadPlan:
    """`plan_threads` then `apply_threads`, for this process (the command line calls it before any command runs)."""
    plan = plan_threads(requested)
    apply_threads(plan)
    return plan
