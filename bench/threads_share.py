"""A small training run alone and beside one busy single-thread process, under each thread policy (issue 36).

One `softprompt train` run (SST-2, 64 examples, batch 8, one epoch, on smollm2-135m by default), each in a fresh
process, timed alone and beside one busy single-thread process (a pure-Python spin loop, or `--busy numpy`: a
single-threaded matrix product loop), for each candidate policy:

| policy | what the run's process is given (`softprompt.threads`) |
|---|---|
| `torch-default` | torch's own count (one thread per core it sees) and libgomp's own wait (spin 300,000 times, then sleep): the behaviour before issue 36 |
| `cores` | the cores this process may use (affinity set, cgroup quota), libgomp's own wait |
| `passive` | `cores`, OpenMP threads that sleep at once when idle (OMP_WAIT_POLICY=PASSIVE) |
| `spin-short` | `cores`, libgomp spinning 10,000 times before it sleeps (GOMP_SPINCOUNT) |
| `auto` | the cores less those other processes keep busy when it starts, libgomp's own wait |
| `auto-passive` | `auto` and the passive wait |
| `auto-short` | `auto` and the short spin: softprompt's default now |
| `one` | one thread, libgomp's own wait |

Scenarios: `alone`; `busy` (the spinner starts 1 s before the run); `busy-late` (it starts `--late-s` seconds
after the run, when `auto` has already chosen its count). The target: beside one busy process a run takes at most
2x its time alone (`run_s`, the run's own wall time from run.json: training, evaluations, references; `process_s`
adds interpreter start and model load). The `vs torch-default alone` column says what a policy costs when nothing
else runs. Runs are interleaved (every policy and scenario once per repetition, in a rotating order) and medians
reported; `--cpus 0,1` pins the runs and the spinner to those cores (a 2-core machine inside a larger one).

    .venv/bin/python bench/threads_share.py --json bench/results/threads_share.json     # ~30 min on 2 cores
    .venv/bin/python bench/threads_share.py --policies torch-default,auto --reps 1     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from softprompt.threads import ENV_COUNT, ENV_WAIT, USER_COUNT_VARS, USER_WAIT_VARS  # noqa: E402

POLICIES = {
    "torch-default": {ENV_COUNT: "torch", ENV_WAIT: "default"},
    "cores": {ENV_COUNT: "cores", ENV_WAIT: "default"},
    "passive": {ENV_COUNT: "cores", ENV_WAIT: "passive"},
    "spin-short": {ENV_COUNT: "cores", ENV_WAIT: "short"},
    "auto": {ENV_COUNT: "auto", ENV_WAIT: "default"},
    "auto-passive": {ENV_COUNT: "auto", ENV_WAIT: "passive"},
    "auto-short": {ENV_COUNT: "auto", ENV_WAIT: "short"},
    "one": {ENV_COUNT: "1", ENV_WAIT: "default"},
}
SCENARIOS = ("alone", "busy", "busy-late")
SPIN = {
    "python": "while True:\n    pass\n",
    "numpy": "import numpy as np\na = np.random.rand(512, 512)\nwhile True:\n    a @ a\n",
}
TARGET = 2.0


def pinned(cpus: set[int] | None):
    """A preexec_fn that pins the child to `cpus` (None: as inherited)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def spinner(kind: str, cpus: set[int] | None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", SPIN[kind]], env=env, preexec_fn=pinned(cpus))


def train_command(args, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "softprompt.cli", "train", "--task", args.task, "--model", args.model,
        "--tokens", str(args.tokens), "--max-train", str(args.max_train), "--batch-size", str(args.batch_size),
        "--epochs", "1", "--max-eval", str(args.max_eval), "--seed", "0", "--out", str(out), "--quiet",
    ]  # fmt: skip


def one_run(args, policy: str, scenario: str, cpus: set[int] | None) -> dict:
    """One training run in a fresh process under `policy` in `scenario`: its times and the thread count it used."""
    env = {k: v for k, v in os.environ.items() if k not in (*USER_COUNT_VARS, *USER_WAIT_VARS, ENV_COUNT, ENV_WAIT)}
    # libgomp prints the thread count and spin count it took when torch loads it (stderr): what the policy gave
    env.update(POLICIES[policy], PYTHONPATH=str(common.ROOT / "src"), HF_HUB_OFFLINE="1", OMP_DISPLAY_ENV="VERBOSE")
    tmp = Path(tempfile.mkdtemp(prefix="threads_share_"))
    busy = spinner(args.busy, cpus) if scenario == "busy" else None
    try:
        if busy is not None:
            time.sleep(1.0)  # the spinner is running before the run looks at the machine
        load = common.load_average()
        start = time.perf_counter()
        run = subprocess.Popen(train_command(args, tmp / "run"), env=env, preexec_fn=pinned(cpus), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        if scenario == "busy-late":
            try:
                run.wait(timeout=args.late_s)
            except subprocess.TimeoutExpired:
                busy = spinner(args.busy, cpus)
        stdout, stderr = run.communicate()
        process_s = time.perf_counter() - start
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if run.returncode != 0:
        raise SystemExit(f"{policy} / {scenario}: the run failed ({run.returncode}):\n{stderr[-2000:]}")
    record = json.loads((tmp / "run" / "run.json").read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    final = record.get("final") or {}
    return {
        "policy": policy,
        "scenario": scenario,
        "openmp_threads": _shown(stderr, "OMP_NUM_THREADS"),
        "gomp_spincount": _shown(stderr, "GOMP_SPINCOUNT"),
        "run_s": record.get("wall_time_s"),
        "process_s": round(process_s, 2),
        "accuracy": final.get("accuracy"),
        "load_at_start": load,
        "spinner_started": busy is not None,
    }


def _shown(stderr: str, name: str) -> str | None:
    """A setting libgomp displayed when it loaded (OMP_DISPLAY_ENV), e.g. OMP_NUM_THREADS = '2'."""
    found = re.search(rf"{name} = '([^']*)'", stderr)
    return found.group(1) if found else None


def summary(runs: list[dict], policies: list[str], scenarios: list[str]) -> list[dict]:
    """Per policy: median run_s per scenario, each busy scenario's ratio to alone, and alone vs torch-default."""

    def med(policy: str, scenario: str, key: str = "run_s") -> float | None:
        xs = [r[key] for r in runs if r["policy"] == policy and r["scenario"] == scenario and r[key] is not None]
        return common.med(xs) if xs else None

    base = med("torch-default", "alone")
    rows = []
    for p in policies:
        alone = med(p, "alone")
        row = {"policy": p, "alone s": alone, "vs torch-default alone": (alone / base) if alone and base else None}
        for s in scenarios:
            if s == "alone":
                continue
            t = med(p, s)
            row[f"{s} s"] = t
            row[f"{s} / alone"] = t / alone if t and alone else None
            row[f"{s} within {TARGET:g}x"] = None if not (t and alone) else t / alone <= TARGET
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--busy", default="python", choices=list(SPIN), help="the busy process: a Python or numpy loop")
    ap.add_argument("--late-s", type=float, default=8.0, help="busy-late: seconds after the run starts")
    ap.add_argument("--cpus", default=None, help="pin runs and spinner to these cores, e.g. 0,1 (default: as inherited)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--max-train", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-eval", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    scenarios = [s for s in args.scenarios.split(",") if s]
    if set(policies) - set(POLICIES) or set(scenarios) - set(SCENARIOS) or "alone" not in scenarios:
        ap.error(f"--policies: some of {', '.join(POLICIES)}; --scenarios: alone and some of {', '.join(SCENARIOS)}")
    cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else None

    load_before = common.load_average()
    cells = [(p, s) for p in policies for s in scenarios]
    runs = []
    for rep in range(args.reps):
        shift = rep % len(cells)
        for policy, scenario in cells[shift:] + cells[:shift]:  # a rotating order: no cell always runs first
            r = one_run(args, policy, scenario, cpus)
            runs.append({**r, "rep": rep})
            print(json.dumps(r), flush=True)
    rows = summary(runs, policies, scenarios)
    cols = ["policy", "alone s", "vs torch-default alone"]
    for s in scenarios[1:] if scenarios[0] == "alone" else [s for s in scenarios if s != "alone"]:
        cols += [f"{s} s", f"{s} / alone", f"{s} within {TARGET:g}x"]
    print(common.fmt_table(rows, cols))
    result = {
        "rows": rows,
        "runs": runs,
        "cpus_pinned": sorted(cpus) if cpus else None,
        "cores": len(cpus or os.sched_getaffinity(0)),
    }
    if args.json:
        common.write_result(args.json, args, load_before, result)
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
