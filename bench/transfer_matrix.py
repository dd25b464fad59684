"""Wall time of a transfer matrix: P prompts x T tasks, each prompt evaluated on each task's validation subset.

Prompts are initialised randomly (seeded; the timing does not depend on what they learned). One
`Evaluator` per matrix (one model, each task's split tokenized once), as `softprompt study` does.
The matrix runs with the scorer's fast paths and with them switched off (`scoring.PLAIN`),
interleaved, and the medians are reported; then once in float32, the reference both are compared to
(in bf16 a near-tie prediction can flip either way).

    .venv/bin/python bench/transfer_matrix.py                 # 4 x 4, 40 examples per task, ~3 min
    .venv/bin/python bench/transfer_matrix.py --limit 100 --reps 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from softprompt import scoring  # noqa: E402
from softprompt.evaluate import Evaluator  # noqa: E402
from softprompt.model.backbones import load_backbone, resolve_compute_dtype  # noqa: E402
from softprompt.model.prompt import init_prompt  # noqa: E402
from softprompt.tasks import get_task  # noqa: E402


def matrix(backbone, prompts, tasks, limit, dtype, options=None) -> tuple[float, list[list[float]]]:
    t = time.perf_counter()
    ev = Evaluator(backbone, compute_dtype=dtype, scoring=options, prompt_format="plain")  # as recorded
    acc = [[ev.evaluate(task, p, limit=limit).accuracy for task in tasks] for p in prompts]
    return time.perf_counter() - t, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="rte,cb,copa,wsc")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--limit", type=int, default=40, help="validation examples per task")
    ap.add_argument("--compute-dtype", default="auto")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    info = {"machine": common.machine(), "load_before": common.load_average(), "args": vars(args) | {"json": None}}
    print(json.dumps(info["machine"]))
    backbone = load_backbone(args.model)
    dtype = resolve_compute_dtype(args.compute_dtype, backbone.device)
    tasks = [get_task(t) for t in args.tasks.split(",")]
    prompts = [
        init_prompt(backbone.model, backbone.tokenizer, args.tokens, "random", seed=s).weight.detach()
        for s in range(args.prompts)
    ]
    Evaluator(backbone).examples(tasks[0], "validation", args.limit)  # warm the data loaders' imports
    scoring.compute_model(backbone.model, dtype)  # one-time low-precision copy, outside the timing
    times = {"fast": [], "plain": []}
    accs = {}
    for _ in range(args.reps):
        for arm in times:
            t, acc = matrix(backbone, prompts, tasks, args.limit, dtype, scoring.DEFAULT if arm == "fast" else scoring.PLAIN)
            times[arm].append(t)
            accs[arm] = acc
    n_eval = sum(min(args.limit, 10**9) for _ in tasks) * len(prompts)
    rows = [
        {
            "path": arm,
            "matrix": f"{len(prompts)} x {len(tasks)}",
            "median s": common.med(t),
            "evaluations/s": len(prompts) * len(tasks) / common.med(t),
            "speedup": common.med(times["plain"]) / common.med(t),
            "runs s": [round(x, 1) for x in t],
        }
        for arm, t in times.items()
    ]

    def max_diff(a, b):
        return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))

    # the float32 matrix once (the fast path agrees with the plain one to ~1e-5 there): how far each
    # low-precision path's accuracies are from it (near-tie predictions flip under bf16 rounding)
    _, accs["float32"] = matrix(backbone, prompts, tasks, args.limit, None)
    for r in rows:
        r["max |acc - fp32 acc|"] = max_diff(accs[r["path"]], accs["float32"])
    info.update(results=rows, accuracy=accs, max_accuracy_difference=max_diff(accs["fast"], accs["plain"]))
    info["load_after"] = common.load_average()
    print(f"\n{args.prompts} prompts x {args.tasks} ({args.limit} validation examples each, <= {n_eval} scored), {dtype}")
    print(
        f"load {info['load_before']} -> {info['load_after']}; max |accuracy fast - plain| = {info['max_accuracy_difference']:.4f}"
    )
    common.finish(info, rows, args.json, [c for c in rows[0] if c != "runs s"] + ["runs s"])


if __name__ == "__main__":
    main()
