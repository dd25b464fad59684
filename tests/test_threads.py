"""softprompt.threads: the thread count from the cores this process may use, fewer when other processes keep some
busy; the OpenMP wait policy set before torch loads; `--threads` on every command; the user's own OpenMP settings
left alone. What reaches torch and libgomp is checked in fresh processes (torch reads its settings once, when it
loads), so this test process keeps its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from softprompt.errors import SoftPromptError
from softprompt.threads import (
    ENV_COUNT,
    ENV_WAIT,
    ThreadPlan,
    apply_threads,
    busy_cores,
    cpu_times,
    free_threads,
    plan_threads,
    usable_cores,
)

OPENMP_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", ENV_COUNT, ENV_WAIT)


def test_usable_cores_are_the_affinity_set_capped_by_a_cgroup_quota(tmp_path, monkeypatch):
    import softprompt.threads as threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {3, 7, 9}, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)
    assert usable_cores(cpu_max=tmp_path / "none") == 3  # this process's set, not the machine's 64
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores({0, 1, 2, 3}, cpu_max) == 4  # no cgroup file: the affinity set, not os.cpu_count()
    assert usable_cores({5}, cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert usable_cores({0, 1, 2, 3}, cpu_max) == 4
    cpu_max.write_text("200000 100000\n")  # a container given 2 CPUs
    assert usable_cores(set(range(64)), cpu_max) == 2
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: 2 threads share them
    assert usable_cores(set(range(64)), cpu_max) == 2
    assert usable_cores({0}, cpu_max) == 1
    assert usable_cores(set(), cpu_max) == 1


def _stat(rows: dict[int, tuple[int, int]]) -> str:
    """/proc/stat text with per-CPU (busy user jiffies, idle jiffies)."""
    lines = ["cpu  1 2 3 4 5 6 7 8 9 10"]
    lines += [f"cpu{c} {user} 0 0 {idle} 0 0 0 0 0 0" for c, (user, idle) in rows.items()]
    return "\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n"


def test_busy_cores_count_only_this_process_cpus():
    snaps = iter([_stat({0: (100, 100), 1: (100, 100), 2: (0, 0)}), _stat({0: (200, 100), 1: (100, 200), 2: (50, 50)})])
    reads = list(snaps)
    assert cpu_times(reads[0])[0] == (100, 200)

    def reader(texts):
        it = iter(texts)
        return lambda: next(it)

    # cpu0 fully busy, cpu1 idle, cpu2 half busy (and not ours)
    assert busy_cores({0, 1}, 0, reader(reads), sleep=lambda s: None) == pytest.approx(1.0)
    assert busy_cores({1}, 0, reader(reads), sleep=lambda s: None) == pytest.approx(0.0)
    assert busy_cores({0, 1, 2}, 0, reader(reads), sleep=lambda s: None) == pytest.approx(1.5)

    def broken():
        raise OSError("no /proc")

    assert busy_cores({0}, 0, broken, sleep=lambda s: None) == 0.0


def test_free_threads_leave_out_the_busy_cores():
    assert free_threads(2, 2, 0.0) == 2
    assert free_threads(2, 2, 0.3) == 2  # a light, bursty neighbour: keep both
    assert free_threads(2, 2, 1.0) == 1  # one busy single-thread process takes one of two cores
    assert free_threads(2, 2, 2.0) == 1  # never fewer than one
    assert free_threads(2, 64, 30.0) == 2  # a 2-CPU quota on a busy 64-core host: 34 cores free
    assert free_threads(16, 16, 3.2) == 13


def _plan(environ, requested=None, busy=0.0, cores=2, loaded=False, cpu_max=Path("/nonexistent/cpu.max")):
    """The plan on a machine whose affinity set is `cores` CPUs, `busy` of them kept busy by other processes."""
    return plan_threads(
        requested, environ, torch_loaded=loaded, affinity=lambda: set(range(cores)), cpu_max=cpu_max, busy=lambda cpus: busy
    )


def test_plan_under_a_cgroup_quota_on_a_busy_host(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("200000 100000\n")
    assert _plan({}, cores=64, busy=30.0, cpu_max=quota).threads == 2  # 2 CPUs' worth; the host has 34 free
    assert _plan({}, cores=64, busy=63.0, cpu_max=quota).threads == 1
    assert _plan({ENV_COUNT: "cores"}, cores=64, cpu_max=quota).threads == 2


def test_plan_respects_the_user_and_reads_the_policies():
    assert _plan({}).threads == 2 and _plan({}).wait == "short"  # the defaults: auto, nothing busy; a short spin
    assert _plan({}, busy=1.0).threads == 1 and "1.0 kept busy" in _plan({}, busy=1.0).why
    assert _plan({ENV_COUNT: "cores"}, busy=1.0).threads == 2
    assert _plan({ENV_COUNT: "torch"}).threads is None
    assert _plan({ENV_COUNT: "3"}).threads == 3
    assert _plan({ENV_COUNT: "cores"}, cores=16).threads == 16 and _plan({}, cores=16, busy=3.2).threads == 13
    # the user's own settings are kept; only an explicit --threads replaces them
    assert _plan({"OMP_NUM_THREADS": "4"}, busy=1.0).threads is None
    assert _plan({"MKL_NUM_THREADS": "4"}).threads is None
    assert _plan({"OMP_NUM_THREADS": "4"}, requested=1).threads == 1
    assert _plan({}, loaded=True).threads is None  # torch loaded first: the caller chose its count
    assert _plan({}, requested=2, loaded=True).threads == 2
    # the wait policy: as asked, never over the user's OpenMP wait settings, never after torch loads
    assert _plan({ENV_WAIT: "passive"}).wait == "passive" and _plan({ENV_WAIT: "default"}).wait == "default"
    assert _plan({ENV_WAIT: "passive", "OMP_WAIT_POLICY": "ACTIVE"}).wait is None
    assert _plan({ENV_WAIT: "passive", "GOMP_SPINCOUNT": "1000"}).wait is None
    assert _plan({ENV_WAIT: "passive"}, loaded=True).wait is None
    for bad, env in (("'many'", {ENV_COUNT: "many"}), ("'0'", {ENV_COUNT: "0"}), ("'spin'", {ENV_WAIT: "spin"})):
        with pytest.raises(SoftPromptError, match=bad):
            _plan(env)
    with pytest.raises(SoftPromptError, match="--threads 0"):
        _plan({}, requested=0)


def test_apply_sets_the_environment_before_torch_loads():
    env: dict[str, str] = {"MKL_NUM_THREADS": "8"}
    apply_threads(ThreadPlan(3, "passive", "test"), env, torch_loaded=False)
    assert env == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    env = {}
    apply_threads(ThreadPlan(None, "short", "test"), env, torch_loaded=False)
    assert env == {"GOMP_SPINCOUNT": "10000"}
    env = {}
    for wait in (None, "default"):
        apply_threads(ThreadPlan(None, wait, "test"), env, torch_loaded=False)
    assert env == {}


# A fresh process: the command line runs first (`tasks` does not load torch), then torch loads and reports what it
# (and libgomp, through OMP_DISPLAY_ENV) took.
PROBE = textwrap.dedent(
    """
    import json, sys
    from softprompt.cli import main
    if sys.argv[1] == "torch-first":
        import torch
        torch.set_num_threads(1)
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["tasks", *sys.argv[2:]])
    loaded_during = "torch" in sys.modules and sys.argv[1] != "torch-first"
    import torch
    print(json.dumps({"code": code, "threads": torch.get_num_threads(), "loaded_during": loaded_during}))
    """
)


def _probe(*args: str, **env: str) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env=clean | env, capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_threads_flag_reaches_torch_in_a_fresh_process():
    # an explicit count is exact, even above the cores (torch caps OMP_NUM_THREADS at them): set through torch
    assert _probe("cli-first", "--threads", "3")[0] == {"code": 0, "threads": 3, "loaded_during": True}
    assert _probe("cli-first", "--threads", "1")[0]["threads"] == 1
    # a policy's count goes through the environment: torch is not loaded for a command that needs none
    assert _probe("cli-first", **{ENV_COUNT: "1"})[0] == {"code": 0, "threads": 1, "loaded_during": False}
    assert _probe("cli-first", **{ENV_COUNT: "torch"})[0]["threads"] == _probe("cli-first", **{ENV_COUNT: "cores"})[0]["threads"]
    # never over the user's choice: their OMP_NUM_THREADS, or torch.set_num_threads before the command line runs
    assert _probe("cli-first", OMP_NUM_THREADS="1", **{ENV_COUNT: "cores"})[0]["threads"] == 1
    assert _probe("torch-first", **{ENV_COUNT: "cores"})[0]["threads"] == 1
    # an explicit --threads is the user's latest word
    assert _probe("cli-first", "--threads", "2", OMP_NUM_THREADS="3")[0]["threads"] == 2


def test_wait_policy_reaches_libgomp_when_torch_loads():
    """libgomp prints the settings it read when it loads (OMP_DISPLAY_ENV=VERBOSE), so each policy was in the
    environment before torch loaded: the default spins 10,000 times before a waiting thread sleeps, passive not at
    all, `default` libgomp's own 300,000; a user's setting is kept."""
    expected = {"short": "GOMP_SPINCOUNT = '10000'", "passive": "GOMP_SPINCOUNT = '0'", "default": "GOMP_SPINCOUNT = '300000'"}
    got, err = _probe("cli-first", OMP_DISPLAY_ENV="VERBOSE")
    assert got["code"] == 0 and not got["loaded_during"] and expected["short"] in err
    for policy in ("passive", "default"):
        assert expected[policy] in _probe("cli-first", OMP_DISPLAY_ENV="VERBOSE", **{ENV_WAIT: policy})[1], policy
    _, err = _probe("cli-first", OMP_DISPLAY_ENV="VERBOSE", OMP_WAIT_POLICY="ACTIVE", **{ENV_WAIT: "passive"})
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in err  # the user's setting is kept


def test_every_command_takes_threads_and_ray_units_get_it(monkeypatch):
    from softprompt.cli import build_parser
    from softprompt.study.ray_executor import RayOptions, _worker_env

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        assert any(a.dest == "threads" for a in command._actions), name
    assert RayOptions(cpus_per_run=2).threads == 2 and RayOptions(cpus_per_run=2, torch_threads=1).threads == 1
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert _worker_env() == {}
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert _worker_env() == {"runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}}


def test_bad_thread_settings_are_one_line_errors(monkeypatch, capsys):
    from softprompt.cli import main

    monkeypatch.setenv(ENV_COUNT, "lots")
    assert main(["tasks"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"softprompt: error: {ENV_COUNT}='lots': expected a positive number of threads or one of auto, cores, torch"
    monkeypatch.setenv(ENV_COUNT, "auto")
    monkeypatch.setenv(ENV_WAIT, "spin")
    assert main(["tasks"]) == 2 and f"{ENV_WAIT}='spin'" in capsys.readouterr().err
    monkeypatch.delenv(ENV_WAIT)
    assert main(["tasks", "--threads", "0"]) == 2 and "--threads 0: expected at least 1 thread" in capsys.readouterr().err
