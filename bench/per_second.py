"""Accuracy per second of training (issue 38): every method given the training time LoRA takes on the same examples.

Inputs: run directories made by `bench/convergence.py` (`RUNS/TASK/RECIPE-sSEED`: each recipe trained for the
optimiser steps its share of LoRA's time buys, `--set max_steps=N`) and the seconds per optimiser step of each method
measured alone on the same examples (`bench/step_cost.py --json`). A run's training time is its steps times its
method's idle step cost (evaluations excluded: every method scores the same examples), so the accuracy runs could
share the cores while the prices were measured on an idle machine.

    .venv/bin/python bench/per_second.py --runs runs/per-second --task sst2 --cost bench/results/step_cost_sst2_epyc.json \\
        --recipes lora:lora,default:prompt,deep:deep --seeds 0,1,2,3,4 --json bench/results/per_second_sst2.json

Prints, per recipe: steps, training seconds, the task's metric (mean +- std over seeds, n), the paired difference
from LoRA (95% t interval over seeds, wins/ties/losses), and the time each recipe's curve took to reach 90 / 95 / 100%
of LoRA's final value (its evaluation points, priced the same way; median over seeds and how many got there).
`--compare A:B` adds the paired difference of two recipes (e.g. the default against the old default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import ROOT  # noqa: F401  (puts src/ on the path)
from convergence import paired

from softprompt.records.run import RunRecord

FRACTIONS = (0.9, 0.95, 1.0)


def load(run_dir: Path) -> dict:
    record = RunRecord.read(run_dir)
    metric = (record.task.metric if record.task else None) or "accuracy"
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert record.final is not None, f"{run_dir} is not complete"
    steps = record.stopped.optimizer_step if record.stopped else history[-1]["step"]
    return {
        "metric": metric,
        "value": getattr(record.final, metric),
        "n": record.final.n,
        "steps": steps,
        "curve": [(h["step"], h[metric]) for h in history],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--task", required=True, help="the runs' folder under --runs (convergence.py's run_group)")
    ap.add_argument(
        "--cost",
        type=Path,
        action="append",
        required=True,
        help="bench/step_cost.py's JSON for this task (repeatable: a later file adds methods the first lacks)",
    )
    ap.add_argument("--recipes", required=True, help="RECIPE:METHOD,... (the step cost each recipe is priced at)")
    ap.add_argument("--reference", default="lora", help="the recipe whose time is the budget")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        help="A:B (repeatable): also the paired difference A - B of two listed recipes, e.g. default:old-default",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cost: dict[str, float] = {}
    for path in args.cost:  # the first file's price of a method wins: one measurement per method
        for method, seconds in json.loads(path.read_text())["median_step_s"].items():
            cost.setdefault(method, seconds)
    pairs = [tuple(x.split(":")) for x in args.recipes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    compare = [tuple(x.split(":")) for x in args.compare]
    for a, b in compare:  # refused before any run is read
        if a not in dict(pairs) or b not in dict(pairs):
            sys.exit(f"--compare {a}:{b}: both must be among --recipes ({', '.join(dict(pairs))})")
    runs = {r: {s: load(args.runs / args.task / f"{r}-s{s}") for s in seeds} for r, _ in pairs}
    price = dict(pairs)
    ref = runs[args.reference]
    ref_final = statistics.mean(x["value"] for x in ref.values())
    budget = statistics.mean(x["steps"] for x in ref.values()) * cost[price[args.reference]]
    metric = ref[seeds[0]]["metric"]
    out, lines = {}, [f"{args.task}: LoRA's budget {budget:.0f} s of training; {metric} (n={ref[seeds[0]]['n']}, seeds {seeds})"]
    head = "| recipe | steps | training s | " + metric + " mean +- std | vs " + args.reference + " (95% t) | w/t/l |"
    lines += [head + " " + " | ".join(f"to {f:.0%} (s)" for f in FRACTIONS) + " |", "|---" * (6 + len(FRACTIONS)) + "|"]
    for recipe, method in pairs:
        vals = [runs[recipe][s]["value"] for s in seeds]
        steps = statistics.mean(runs[recipe][s]["steps"] for s in seeds)
        d, half, wtl = paired(vals, [ref[s]["value"] for s in seeds])
        times = {}
        for f in FRACTIONS:
            reached = [
                next((st * cost[method] for st, v in runs[recipe][s]["curve"] if v >= f * ref_final - 1e-12), None) for s in seeds
            ]
            got = [t for t in reached if t is not None]
            times[f] = (statistics.median(got) if got else None, len(got))
        cells = " | ".join(f"{t:.0f} ({k}/{len(seeds)})" if t is not None else f"- (0/{len(seeds)})" for t, k in times.values())
        std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        lines.append(
            f"| {recipe} | {steps:.0f} | {steps * cost[method]:.0f} | {statistics.mean(vals):.3f} +- {std:.3f} | "
            f"{d:+.3f} [{d - half:+.3f}, {d + half:+.3f}] | {wtl} | {cells} |"
        )
        out[recipe] = {"method": method, "values": vals, "steps": steps, "training_s": steps * cost[method], "diff": d,
                       "half_width": half, "wins_ties_losses": wtl, "time_to": {str(f): t for f, t in times.items()}}  # fmt: skip
    compared = {}
    for a, b in compare:
        d, half, wtl = paired([runs[a][s]["value"] for s in seeds], [runs[b][s]["value"] for s in seeds])
        compared[f"{a}-{b}"] = {"diff": d, "half_width": half, "wins_ties_losses": wtl}
        lines.append(f"{a} minus {b}, paired over {len(seeds)} seeds: {d:+.3f} [{d - half:+.3f}, {d + half:+.3f}] {wtl}")
    print("\n".join(lines))
    if args.json:
        from softprompt.io import write_json

        write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "budget_s": budget, "cost": cost,
                               "reference_final": ref_final, "recipes": out, "compared": compared, "table": lines})  # fmt: skip


if __name__ == "__main__":
    main()
