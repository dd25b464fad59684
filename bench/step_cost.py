"""Seconds per optimiser step of each training method on the same examples (issue 38: accuracy per second of training).

The per-second comparison trains every method for the steps its share of LoRA's wall time buys (`--max-steps`), so the
accuracy runs may share the cores (accuracy does not depend on the load) while the price of a step is measured here,
alone: each method builds its trainables and `TrainStep` through the library's own code (`prepare_data`,
`build_trainables`, `TrainStep`: the step a real run takes), takes `--warmup` steps, then `--steps` timed steps over the
same seeded batches; each method runs in a fresh process (nothing one leaves behind slows the next), in the order given,
`--repeats` times, alternating. Reported: the median step, the total wall time of each process (model load and warm-up
included), the CPU model and the load before and after.

    .venv/bin/python bench/step_cost.py --task sst2 --max-train 512 --methods prompt,deep,lora,finetune \\
        --json bench/results/step_cost_sst2_epyc.json

An evaluation costs the same for every method (the same examples scored), so it is not part of a step's price.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, load_average, machine  # noqa: F401  (puts src/ on the path)

METHOD_SETTINGS = {  # TrainConfig overrides beyond the method (the recipes of the per-second comparison)
    "prompt": {},
    "prompt-50": {"method": "prompt", "tokens": 50},
    "prompt-10": {"method": "prompt", "tokens": 10},  # a DePT-style split's prompt (bench/dept_screen.py)
    "prompt-100": {"method": "prompt", "tokens": 100},
    "prompt-plain": {"method": "prompt", "prompt_format": "plain"},  # the old defaults' step (no chat template; lr costs nothing)
    "deep": {},
    "hard": {},
    "lora": {},
    "finetune": {},
}


def one_method(args: argparse.Namespace) -> dict:
    """Time `args.method` in this process: warm-up, then the timed steps (each step's wall time)."""
    import torch

    from softprompt.config import TrainConfig
    from softprompt.distributed import SINGLE
    from softprompt.host_memory import keep_freed_host_memory
    from softprompt.training.data import batch_order, prepare_data
    from softprompt.training.step import TrainStep
    from softprompt.training.trainables import build_trainables

    keep_freed_host_memory()  # as every softprompt command does
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"method": args.method, **METHOD_SETTINGS[args.method]}
    cfg = TrainConfig(task=args.task, model=args.model, max_train=args.max_train, batch_size=args.batch_size, epochs=1,
                      seed=0, **settings)  # fmt: skip
    torch.manual_seed(0)
    data = prepare_data(cfg, None, SINGLE)
    trainables = build_trainables(cfg, data, SINGLE)
    step = TrainStep(cfg, data, trainables, SINGLE, scoring=None)
    order = batch_order(cfg, data, 0, step.global_batch)
    times = []
    for k in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        micro = k % step.micro_per_epoch
        step.forward_backward(0, micro, order)
        step.optimizer_step()
        step.read()  # the loss read every step, as a CPU run does
        if k >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {
        "method": args.method,
        "settings": settings,
        "median_step_s": statistics.median(times),
        "steps_s": [round(t, 4) for t in times],
        "process_wall_s": round(time.perf_counter() - started, 2),
        "trainable": trainables.counts(data.backbone)["trainable"],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-train", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--methods", default="prompt,deep,lora,finetune", help=f"some of {', '.join(METHOD_SETTINGS)}")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=1, help="each method this many times, alternating")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)  # one method, in a child process
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.method:  # the child: time one method, print its JSON
        print(json.dumps(one_method(args)))
        return
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHOD_SETTINGS]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}: expected some of {list(METHOD_SETTINGS)}")
    load_before, results = load_average(), []
    child = [sys.executable, __file__, "--task", args.task, "--model", args.model, "--max-train", str(args.max_train),
             "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps)]  # fmt: skip
    if args.threads:
        child += ["--threads", str(args.threads)]
    for rep in range(args.repeats):
        for m in methods:
            out = subprocess.run([*child, "--method", m], capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1]) | {"repeat": rep}
            results.append(row)
            print(f"{m} (repeat {rep}): median step {row['median_step_s']:.3f} s, process {row['process_wall_s']} s", flush=True)
    summary = {
        m: statistics.median([r["median_step_s"] for r in results if r["method"] == m]) for m in methods
    }  # fmt: skip
    print("median step (s): " + ", ".join(f"{m} {s:.3f}" for m, s in summary.items()))
    if args.json:
        from common import write_result

        write_result(args.json, args, load_before, {"median_step_s": summary, "runs": results})


if __name__ == "__main__":
    main()
