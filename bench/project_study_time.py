"""Projected wall time of a study config from measured rates: on one device, and with `--executor ray`.

Reads the config (tasks, seeds, epochs, batch size, training/validation limits), counts each task's
training and validation examples in the data files, and prices every unit of the study with the
examples/s measured by bench/train_vs_peft.py (training, arm `--arm`, the config's batch size) and
bench/eval_vs_naive.py (evaluation, arm softprompt, dtype `--eval-dtype`), for one model shape:

- prompt run (task x seed): epochs x training examples / training rate, plus (epochs + 2) validation
  passes (the end-of-epoch evaluations, then the no-prompt and English-prompt baselines of the run);
- baselines (per task, the first seed): no_prompt and english_prompt one validation pass each;
  finetune and lora train like a prompt run at `--finetune-factor` / `--lora-factor` times the prompt
  step's cost (assumptions, not measurements: weight gradients add ~50% to a frozen-model step, LoRA
  little), with the same evaluations per epoch; majority costs nothing;
- analyses (after every unit): 3 validation passes per run on its own task (soft, projected soft,
  projected text) if `project`, one per run and task if `transfer`, and 2 no-prompt passes per task.

A task without a measured rate borrows the measured task closest in characters per example, its rate
scaled by the ratio of characters (cost taken as linear in length). `--executor ray` on N devices:
every unit is submitted at once and each takes one device (`--gpus-per-run 1`), so units run in the
config's order on the first free device (list scheduling), then the analyses; model loads and Ray's
own overheads are not counted. Inputs: train_vs_peft/eval_vs_naive --json files or a merged
bench/gpu_suite.sh JSON; --cpu-dry-run results are ignored unless `--include-dry-runs`.

    .venv/bin/python bench/project_study_time.py bench/results/gpu_suite_h100.json --gpus 1,4,8
    .venv/bin/python bench/project_study_time.py bench/results/train_vs_peft_rte_default.json \\
        bench/results/train_vs_peft_sst2_n256-s*.json bench/results/eval_vs_naive_default.json --shape smollm2-135m
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets sys.path and offline env)

from softprompt.study import load_study_config  # noqa: E402
from softprompt.tasks import get_task  # noqa: E402

SHAPE_OF_MODEL = {"bigscience/bloomz-560m": "bloomz-560m", "smollm2-135m": "smollm2-135m"}


@dataclass
class Rates:
    """Measured examples/s: training by (shape, task, batch), evaluation by (shape, task, dtype)."""

    train: dict[tuple[str, str, int], list[float]]
    evaluation: dict[tuple[str, str, str], list[float]]
    sources: list[str]


def _results(doc: dict) -> list[dict]:
    """The benchmark results in a file: one script's --json, or every cell of a merged suite JSON."""
    if "cells" in doc:
        return [c["result"] for c in doc["cells"].values() if c.get("result")]
    return [doc]


def read_rates(paths: list[Path], arm: str, include_dry_runs: bool) -> Rates:
    rates = Rates({}, {}, [])
    for path in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: not a readable results JSON ({e})") from None
        for res in _results(doc):
            a = res.get("args", {})
            if a.get("cpu_dry_run") and not include_dry_runs:
                continue
            shape = a.get("shape") or a.get("model")
            for r in res.get("results", []):
                if r.get("arm") != arm and "tasks" not in a:
                    continue
                if "tasks" in a:  # eval_vs_naive: the Evaluator's rate
                    if r.get("arm") == "softprompt":
                        rates.evaluation.setdefault((shape, r["task"], r["dtype"]), []).append(r["examples/s"])
                else:
                    rates.train.setdefault((shape, a["task"], int(a["batch_size"])), []).append(r["examples/s"])
            rates.sources.append(str(path))
    return rates


def chars_per_example(examples) -> float:
    """Mean characters of context + a choice: the proxy for an example's cost across tasks."""
    return statistics.fmean(len(e.context) + statistics.fmean(len(c) for c in e.choices) for e in examples)


def rate_for(measured: dict[str, float], chars: dict[str, float], task: str, what: str) -> tuple[float, str]:
    """`task`'s rate: measured, else the nearest measured task's scaled by characters per example."""
    if task in measured:
        return measured[task], "measured"
    if not measured:
        raise SystemExit(f"no measured {what} rate for this shape and setting: see --help for the inputs")
    near = min(measured, key=lambda t: abs(chars[t] - chars[task]))
    return measured[near] * chars[near] / chars[task], f"from {near}, scaled by length"


@dataclass
class Unit:
    name: str
    seconds: float


def list_schedule(units: list[Unit], devices: int) -> float:
    """Makespan when units start in order on the first free device (Ray with all tasks submitted at once)."""
    free = [0.0] * devices
    heapq.heapify(free)
    end = 0.0
    for u in units:
        t = heapq.heappop(free) + u.seconds
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="results JSON files (train_vs_peft, eval_vs_naive, gpu_suite)")
    ap.add_argument("--config", type=Path, default=common.ROOT / "configs" / "seed-study.toml")
    ap.add_argument("--shape", help="whose rates to use (default: the config's model, e.g. bloomz-560m)")
    ap.add_argument("--arm", default="softprompt", help="training arm whose rate prices a prompt run")
    ap.add_argument("--eval-dtype", default="bfloat16", help="evaluation rows to use (the study's compute dtype)")
    ap.add_argument("--gpus", default="1,2,4,8,16", help="device counts for --executor ray")
    ap.add_argument("--finetune-factor", type=float, default=1.5, help="finetune step cost / prompt step cost (assumed)")
    ap.add_argument("--lora-factor", type=float, default=1.1, help="LoRA step cost / prompt step cost (assumed)")
    ap.add_argument("--data-dir", help="data folder for the example counts (default: the config's, else ../shared/data)")
    ap.add_argument("--include-dry-runs", action="store_true", help="also use --cpu-dry-run results (to test this script)")
    ap.add_argument("--json", type=Path, help="also write the projection here")
    args = ap.parse_args(argv)

    cfg = load_study_config(args.config)
    shape = args.shape or SHAPE_OF_MODEL.get(cfg.model, cfg.model)
    rates = read_rates(args.results, args.arm, args.include_dry_runs)
    run0 = cfg.run_config(cfg.tasks[0], cfg.seeds[0])
    epochs, batch = run0.epochs, run0.batch_size
    data_dir = args.data_dir or cfg.data_dir

    measured_train = {t: statistics.median(v) for (s, t, b), v in rates.train.items() if s == shape and b == batch}
    measured_eval = {t: statistics.median(v) for (s, t, d), v in rates.evaluation.items() if s == shape and d == args.eval_dtype}
    if not measured_train:
        have = sorted(f"{s} {t} batch {b}" for s, t, b in rates.train)
        raise SystemExit(f"no training rate for shape {shape} at batch {batch} in the inputs (training rates for: {have})")

    tasks = {}
    for name in sorted({*cfg.tasks, *measured_train, *measured_eval}):
        task = get_task(name)
        train = task.load("train", data_dir)
        val = task.load("validation", data_dir)
        tasks[name] = {
            "train_all": train,
            "val_all": val,
            "train_chars": chars_per_example(train),
            "val_chars": chars_per_example(val),
        }
    rows, units, per_task = [], [], {}
    for name in cfg.tasks:
        t = tasks[name]
        rc = cfg.run_config(name, cfg.seeds[0])
        n_train = min(len(t["train_all"]), rc.max_train or len(t["train_all"]))
        n_val = min(len(t["val_all"]), rc.max_eval or len(t["val_all"]))
        tr, tr_how = rate_for(measured_train, {k: v["train_chars"] for k, v in tasks.items()}, name, "training")
        if measured_eval:
            ev, ev_how = rate_for(measured_eval, {k: v["val_chars"] for k, v in tasks.items()}, name, "evaluation")
        else:  # no evaluation measured: a forward pass costs about a third of a training step's forward + backward
            ev, ev_how = 3 * tr, "assumed 3x the training rate"
        val_pass = n_val / ev
        train_s = rc.epochs * n_train / tr
        run_s = train_s + (rc.epochs + 2) * val_pass
        per_task[name] = {"val_pass_s": val_pass, "n_val": n_val}
        for seed in cfg.seeds:
            units.append(Unit(f"run {name}-s{seed}", run_s))
        base = {"majority": 0.0, "no_prompt": val_pass, "english_prompt": val_pass}
        base["finetune"] = train_s * args.finetune_factor + rc.epochs * val_pass
        base["lora"] = train_s * args.lora_factor + rc.epochs * val_pass
        for m in cfg.baselines.methods:
            units.append(Unit(f"baseline {name} {m}", base[m]))
        rows.append(
            {
                "task": name,
                "train examples": n_train,
                "val examples": n_val,
                "epochs": rc.epochs,
                "train ex/s": tr,
                "train rate": tr_how,
                "eval ex/s": ev,
                "eval rate": ev_how,
                "prompt run": hours(run_s),
                "finetune": hours(base["finetune"]) if "finetune" in cfg.baselines.methods else "-",
            }
        )
    a = cfg.analysis
    n_runs = len(cfg.tasks) * len(cfg.seeds)
    analyses = sum(2 * p["val_pass_s"] for p in per_task.values())  # no-prompt references
    if a.project:
        analyses += sum(3 * per_task[name]["val_pass_s"] for name in cfg.tasks for _ in cfg.seeds)
    if a.transfer:
        analyses += n_runs * sum(p["val_pass_s"] for p in per_task.values())
    total = sum(u.seconds for u in units) + analyses
    gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    ray = {g: list_schedule(units, g) + analyses for g in gpus}

    print(
        f"{args.config}: {cfg.model} as shape {shape}, {len(cfg.tasks)} tasks x {len(cfg.seeds)} seeds, {epochs} epochs, batch {batch}"
    )
    print(f"rates from {len(rates.sources)} file(s): training {measured_train}, evaluation ({args.eval_dtype}) {measured_eval}")
    print(common.fmt_table(rows, list(rows[0])))
    longest = max(units, key=lambda u: u.seconds)
    print(f"\nanalyses {hours(analyses)}; longest unit: {longest.name}, {hours(longest.seconds)}")
    print(f"one device, local executor: {hours(total)}")
    for g, s in ray.items():
        print(f"--executor ray on {g} device(s): {hours(s)}")
    if args.json:
        out = {
            "config": str(args.config),
            "shape": shape,
            "inputs": rates.sources,
            "assumptions": {"finetune_factor": args.finetune_factor, "lora_factor": args.lora_factor},
            "tasks": rows,
            "units_s": {u.name: u.seconds for u in units},
            "analyses_s": analyses,
            "local_s": total,
            "ray_s": ray,
        }
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
