"""Projected wall time of a study config, priced only with measured rates: on one device, and with `--executor ray`.

Reads the config (tasks, seeds, epochs, batch size, training/validation limits, baselines, analyses), counts each
task's training and validation examples in the data files, and prices every unit of the study with examples/s
MEASURED on one device kind (`--device`, e.g. H100, EPYC, Xeon) for one model shape:

- prompt run (task x seed): epochs x training examples / the prompt training rate, plus (epochs + 2) validation
  passes (the end-of-epoch evaluations, then the no-prompt and English-prompt references of the run);
- baselines (per task, the first seed): no_prompt and english_prompt one validation pass each; every trained
  baseline (finetune, lora, ...) epochs x training examples / ITS OWN measured training rate, plus one validation
  pass per epoch; majority costs nothing;
- analyses (after every unit): 3 validation passes per run on its own task (soft, projected soft, projected text)
  if `project`, one per run and task if `transfer`, and 2 no-prompt passes per task.

Where each rate comes from (bench/train_vs_peft.py training rows, the config's batch size; bench/eval_vs_naive.py
rows of arm softprompt in `--eval-dtype`; merged bench/gpu_suite.sh JSONs hold both), per method:

    prompt     the arm(s) of `--arm` (default softprompt: the library's own step with its defaults)
    lora       arms lora, softprompt-lora (the study's own LoRA step); stand-ins: peft-lora, peft-lora-bf16
               (PEFT's LoRA recipe, eager: a measurement of LoRA training, not of the study's step)
    finetune   arms finetune, softprompt-finetune; stand-ins: hf-finetune, hf-finetune-bf16 (a plain HF loop)
    hard       arms hard, softprompt-hard
    evaluation eval_vs_naive's arm softprompt (the Evaluator every unit scores with)

`--arm METHOD=ARM[,ARM]` and `--stand-in METHOD=ARM[,ARM]` replace these lists. A rate is, in this order: the
median of the method's own arms on that task; a stand-in arm's (labelled "stand-in"); the same for the measured
task nearest in characters per example, scaled by the ratio of characters (labelled; `--no-task-stand-ins` refuses
that). A method with no such measurement is MISSING: the projection prints which rate is missing, reports only the
priced part (a lower bound), writes `"complete": false` and exits 3. It never assumes a rate. `--proxy
METHOD=ARM[,ARM]` prices a method with another method's measured arm on explicit request (e.g. LoRA at PEFT's
prompt-tuning step): every such rate is labelled "proxy", and the JSON says `"measured_only": false`.

The JSON (`--json`) records, per rate, every measurement it was taken from: file, entry (the path inside the file)
and value. `--executor ray` on N devices: every unit is submitted at once and each takes one device
(`--gpus-per-run 1`), so units run in the config's order on the first free device (list scheduling), then the
analyses; model loads and Ray's own overheads are not counted. --cpu-dry-run results are ignored unless
`--include-dry-runs`.

    .venv/bin/python bench/project_study_time.py bench/results/gpu_suite_h100_buckets_run1.json --gpus 1,4,8,16
    .venv/bin/python bench/project_study_time.py bench/results/train_vs_peft_rte_default.json \\
        bench/results/train_vs_peft_sst2_n256-s*.json bench/results/eval_vs_naive_default.json --shape smollm2-135m
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets sys.path and offline env)

from softprompt.io import write_json  # noqa: E402
from softprompt.study import load_study_config  # noqa: E402
from softprompt.tasks import get_task  # noqa: E402

SHAPE_OF_MODEL = {"bigscience/bloomz-560m": "bloomz-560m", "smollm2-135m": "smollm2-135m"}
EVALUATION = "evaluation"
# method -> the arms that measure the study's own step for it, and arms that measure the same method another way
OWN_ARMS = {
    "prompt": ("softprompt",),
    "lora": ("lora", "softprompt-lora"),
    "finetune": ("finetune", "softprompt-finetune"),
    "hard": ("hard", "softprompt-hard"),
    EVALUATION: ("softprompt",),
}
STAND_IN_ARMS = {
    "lora": ("peft-lora", "peft-lora-bf16"),  # PEFT's LoRA recipe, eager
    "finetune": ("hf-finetune", "hf-finetune-bf16"),  # a plain HF full-fine-tuning loop
}
UNTRAINED = {"majority": 0, "no_prompt": 1, "english_prompt": 1}  # validation passes of an untrained baseline
EXIT_INCOMPLETE = 3


@dataclass(frozen=True)
class Measurement:
    """One measured rate: examples/s of `arm` on `task` (training at batch `key`, or evaluation in dtype `key`)."""

    device: str
    shape: str
    kind: str  # "train" or "eval"
    task: str
    key: str
    arm: str
    rate: float
    file: str
    entry: str

    def source(self) -> dict:
        return {"file": self.file, "entry": self.entry, "arm": self.arm, "examples/s": self.rate}


@dataclass
class Rate:
    """A method's rate on a task, and how it was obtained (measured, stand-in, proxy; scaled from another task)."""

    value: float
    how: str
    sources: list[dict]
    proxy: bool = False
    scaled_from: str | None = None  # the measured task whose rate this is, times `scale` (characters per example)
    scale: float = 1.0

    def as_json(self) -> dict:
        out = {"examples/s": self.value, "how": self.how, "proxy": self.proxy, "sources": self.sources}
        return out | ({"scaled_from": self.scaled_from, "scale": self.scale} if self.scaled_from else {})


@dataclass
class Pricing:
    """The arms each method is priced with, in order of preference, and the tasks' characters per example."""

    own: dict[str, tuple[str, ...]]
    stand_in: dict[str, tuple[str, ...]]
    proxy: dict[str, tuple[str, ...]]
    task_stand_ins: bool
    chars: dict[str, dict[str, float]] = field(default_factory=dict)  # "train"/"eval" -> task -> characters


def device_kind(machine: dict) -> str:
    """The device a result was measured on: the GPU's name, else the CPU's (`lscpu` model name)."""
    return machine.get("gpu") or machine.get("cpu") or "unknown"


def _results(doc: dict) -> list[tuple[str, dict]]:
    """(entry prefix, result) of a file: one script's --json, or every finished cell of a merged suite JSON."""
    if "cells" in doc:
        return [(f"cells.{name}.result", c["result"]) for name, c in doc["cells"].items() if c.get("result")]
    return [("", doc)]


def read_measurements(paths: list[Path], include_dry_runs: bool) -> list[Measurement]:
    """Every rate measured in the files: training rows (arm, task, batch) and evaluation rows (arm, task, dtype)."""
    out = []
    for path in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: not a readable results JSON ({e})") from None
        for prefix, res in _results(doc):
            a = res.get("args", {})
            if a.get("cpu_dry_run") and not include_dry_runs:
                continue
            device, shape = device_kind(res.get("machine", {})), a.get("shape") or a.get("model")
            for i, r in enumerate(res.get("results", [])):
                if "examples/s" not in r or "arm" not in r:
                    continue
                entry = f"{prefix}.results[{i}]".lstrip(".")
                if "tasks" in a:  # eval_vs_naive
                    m = Measurement(device, shape, "eval", r["task"], r["dtype"], r["arm"], r["examples/s"], str(path), entry)
                else:
                    key = str(a["batch_size"])
                    m = Measurement(device, shape, "train", a["task"], key, r["arm"], r["examples/s"], str(path), entry)
                out.append(m)
    return out


def pick_device(measurements: list[Measurement], wanted: str | None) -> str:
    """The one device kind the projection prices: `--device` (a case-insensitive substring) or the only one there is."""
    kinds = sorted({m.device for m in measurements})
    if wanted:
        kinds = [k for k in kinds if wanted.lower() in k.lower()]
    if len(kinds) != 1:
        what = "no measured results" if not kinds else f"measurements from {len(kinds)} device kinds ({'; '.join(kinds)})"
        raise SystemExit(f"{what}{' matching --device ' + repr(wanted) if wanted else ''}: name one with --device")
    return kinds[0]


def chars_per_example(examples) -> float:
    """Mean characters of context + a choice: the proxy for an example's cost across tasks."""
    return statistics.fmean(len(e.context) + statistics.fmean(len(c) for c in e.choices) for e in examples)


def _tiers(method: str, pricing: Pricing) -> list[tuple[tuple[str, ...], str, bool]]:
    """(arms, label, is proxy) in order of preference: the method's own arms, its stand-ins, then requested proxies."""
    tiers = [(pricing.own.get(method, ()), "measured", False)]
    if pricing.stand_in.get(method):
        tiers.append((pricing.stand_in[method], f"stand-in for {method}", False))
    if pricing.proxy.get(method):
        tiers.append((pricing.proxy[method], f"PROXY for {method} (a measurement of another method)", True))
    return tiers


def find_rate(method: str, task: str, pool: list[Measurement], pricing: Pricing) -> Rate | None:
    """`method`'s rate on `task` from the measurements in `pool` (one device, shape and batch or dtype), or None."""
    kind = "eval" if method == EVALUATION else "train"
    for arms, label, proxy in _tiers(method, pricing):
        hits = [m for m in pool if m.arm in arms]
        same = [m for m in hits if m.task == task]
        if same:
            rate = statistics.median(m.rate for m in same)
            how = label if label == "measured" else f"{label}: {', '.join(sorted({m.arm for m in same}))}"
            return Rate(rate, how, [m.source() for m in same], proxy)
        chars = pricing.chars.get(kind, {})
        measured_tasks = sorted({m.task for m in hits if m.task in chars})
        if measured_tasks and pricing.task_stand_ins and task in chars:
            near = min(measured_tasks, key=lambda t: abs(chars[t] - chars[task]))
            from_near = [m for m in hits if m.task == near]
            scale = chars[near] / chars[task]
            how = f"{label} on {near}, x {scale:.3g} for {task}'s characters per example (cost taken as linear in length)"
            arms_used = ", ".join(sorted({m.arm for m in from_near}))
            how = how if label == "measured" else f"{how}: {arms_used}"
            rate = statistics.median(m.rate for m in from_near) * scale
            return Rate(rate, how, [m.source() for m in from_near], proxy, scaled_from=near, scale=scale)
    return None


@dataclass
class Unit:
    name: str
    parts: list[float | None]  # training, then validation passes: None where a rate it needs is missing

    @property
    def seconds(self) -> float | None:
        return None if None in self.parts else sum(self.parts)

    @property
    def priced(self) -> float:
        """The parts that have a measured rate: a lower bound of the unit's time."""
        return sum(p for p in self.parts if p is not None)


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


def hours(s: float | None) -> str:
    if s is None:
        return "MISSING"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"


def parse_arms(specs: list[str], option: str) -> dict[str, tuple[str, ...]]:
    """METHOD=ARM[,ARM] options (a bare ARM for --arm means the prompt's, as before methods had their own)."""
    out = {}
    for spec in specs:
        method, sep, arms = spec.partition("=")
        if not sep and option == "--arm":
            method, arms = "prompt", spec
        if not sep and option != "--arm" or not arms.strip():
            raise SystemExit(f"{option} {spec!r}: expected METHOD=ARM[,ARM]")
        out[method.strip()] = tuple(a.strip() for a in arms.split(",") if a.strip())
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="results JSON files (train_vs_peft, eval_vs_naive, gpu_suite)")
    ap.add_argument("--config", type=Path, default=common.ROOT / "configs" / "seed-study.toml")
    ap.add_argument("--shape", help="whose rates to use (default: the config's model, e.g. bloomz-560m)")
    ap.add_argument("--device", help="the device kind to price (a substring of the GPU's or CPU's name: H100, EPYC, Xeon)")
    ap.add_argument("--arm", action="append", default=[], help="METHOD=ARM[,ARM]: the method's own arms (bare ARM: prompt's)")
    ap.add_argument("--stand-in", action="append", default=[], help="METHOD=ARM[,ARM]: arms measuring the method another way")
    ap.add_argument(
        "--proxy", action="append", default=[], help="METHOD=ARM[,ARM]: price a method with ANOTHER method's arm (labelled)"
    )
    ap.add_argument("--no-task-stand-ins", action="store_true", help="refuse a rate measured on another task only")
    ap.add_argument("--eval-dtype", default="bfloat16", help="evaluation rows to use (the study's compute dtype)")
    ap.add_argument("--gpus", default="1,2,4,8,16", help="device counts for --executor ray")
    ap.add_argument("--data-dir", help="data folder for the example counts (default: the config's, else ../shared/data)")
    ap.add_argument("--include-dry-runs", action="store_true", help="also use --cpu-dry-run results (to test this script)")
    ap.add_argument("--json", type=Path, help="also write the projection here")
    return ap.parse_args(argv)


def load_counts(cfg, names: set[str], data_dir) -> dict[str, dict]:
    """Each task's training and validation examples, and their characters per example."""
    tasks = {}
    for name in sorted(names):
        task = get_task(name)
        train, val = task.load("train", data_dir), task.load("validation", data_dir)
        tasks[name] = {"train": train, "val": val, "train_chars": chars_per_example(train), "val_chars": chars_per_example(val)}
    return tasks


def price_units(cfg, tasks: dict, rate_of) -> tuple[list[Unit], list[dict], dict[str, float | None]]:
    """The study's units with their seconds (None where a rate is missing), a row per task, each task's validation pass."""
    rows, units, val_pass = [], [], {}
    trained = [m for m in cfg.baselines.methods if m not in UNTRAINED]
    for name in cfg.tasks:
        t, rc = tasks[name], cfg.run_config(name, cfg.seeds[0])
        n_train = min(len(t["train"]), rc.max_train or len(t["train"]))
        n_val = min(len(t["val"]), rc.max_eval or len(t["val"]))
        ev = rate_of(EVALUATION, name)
        vp = None if ev is None else n_val / ev.value
        val_pass[name] = vp

        def parts(method: str, passes: int, task: str = name, epochs: int = rc.epochs, n: int = n_train, vp=vp) -> list:
            """A trained unit's training seconds and its `passes` validation passes (None: no measured rate)."""
            r = rate_of(method, task)
            return [None if r is None else epochs * n / r.value, None if vp is None else passes * vp]

        run = parts("prompt", rc.epochs + 2)
        units += [Unit(f"run {name}-s{seed}", run) for seed in cfg.seeds]
        base = {m: Unit(f"baseline {name} {m}", [None if vp is None else k * vp] if k else [0.0]) for m, k in UNTRAINED.items()}
        base |= {m: Unit(f"baseline {name} {m}", parts(m, rc.epochs)) for m in trained}
        units += [base[m] for m in cfg.baselines.methods]
        row = {"task": name, "train examples": n_train, "val examples": n_val, "epochs": rc.epochs}
        for method in ("prompt", *trained, EVALUATION):
            r = rate_of(method, name)
            row[f"{method} ex/s"] = "MISSING" if r is None else f"{r.value:.4g}" + ("" if r.how == "measured" else " *")
        row["prompt run"] = hours(Unit("run", run).seconds)
        row |= {m: hours(base[m].seconds) for m in trained}
        rows.append(row)
    return units, rows, val_pass


def analyses_seconds(cfg, val_pass: dict[str, float | None]) -> float | None:
    """The analyses after the units: no-prompt references, projections and the transfer matrix (validation passes)."""
    if any(v is None for v in val_pass.values()):
        return None
    a, n_runs = cfg.analysis, len(cfg.tasks) * len(cfg.seeds)
    s = sum(2 * v for v in val_pass.values())
    if a.project:
        s += sum(3 * val_pass[name] for name in cfg.tasks for _ in cfg.seeds)
    if a.transfer:
        s += n_runs * sum(val_pass.values())
    return s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_study_config(args.config)
    shape = args.shape or SHAPE_OF_MODEL.get(cfg.model, cfg.model)
    run0 = cfg.run_config(cfg.tasks[0], cfg.seeds[0])
    batch = str(run0.batch_size)
    measured = [m for m in read_measurements(args.results, args.include_dry_runs) if m.shape == shape]
    if not measured:
        raise SystemExit(f"no measured rate for shape {shape} in the inputs (see --help for the inputs)")
    device = pick_device(measured, args.device)
    pool = {
        "train": [m for m in measured if m.device == device and m.kind == "train" and m.key == batch],
        "eval": [m for m in measured if m.device == device and m.kind == "eval" and m.key == args.eval_dtype],
    }
    pricing = Pricing(
        own=OWN_ARMS | parse_arms(args.arm, "--arm"),
        stand_in=STAND_IN_ARMS | parse_arms(args.stand_in, "--stand-in"),
        proxy=parse_arms(args.proxy, "--proxy"),
        task_stand_ins=not args.no_task_stand_ins,
    )
    names = {*cfg.tasks, *(m.task for ms in pool.values() for m in ms)}
    tasks = load_counts(cfg, names, args.data_dir or cfg.data_dir)
    pricing.chars = {
        "train": {k: v["train_chars"] for k, v in tasks.items()},
        "eval": {k: v["val_chars"] for k, v in tasks.items()},
    }

    rates: dict[str, dict[str, Rate | None]] = {}

    def rate_of(method: str, task: str) -> Rate | None:
        if task not in rates.setdefault(method, {}):
            kind = "eval" if method == EVALUATION else "train"
            rates[method][task] = find_rate(method, task, pool[kind], pricing)
        return rates[method][task]

    units, rows, val_pass = price_units(cfg, tasks, rate_of)
    return report(args, cfg, shape, device, batch, units, rows, val_pass, rates, pricing)


def report(args, cfg, shape, device, batch, units, rows, val_pass, rates, pricing) -> int:
    """Print the projection (and write its JSON); exit status 3 when a rate is missing."""
    missing = []
    for method, by_task in rates.items():
        for task, r in by_task.items():
            if r is None:
                arms = [*pricing.own.get(method, ()), *pricing.stand_in.get(method, ()), *pricing.proxy.get(method, ())]
                what = f"dtype {args.eval_dtype}" if method == EVALUATION else f"batch {batch}"
                missing.append(
                    {"method": method, "task": task, "why": f"no result of arms {arms} on {device}, shape {shape}, {what}"}
                )
    analyses = analyses_seconds(cfg, val_pass)
    priced = sum(u.priced for u in units) + (analyses or 0.0)
    complete = not missing
    proxies = sorted(f"{m} on {t}" for m, bt in rates.items() for t, r in bt.items() if r is not None and r.proxy)
    gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    ray = {g: list_schedule(units, g) + analyses for g in gpus} if complete else {}

    print(
        f"{args.config}: {cfg.model} as shape {shape} on {device}, {len(cfg.tasks)} tasks x {len(cfg.seeds)} seeds, batch {batch}"
    )
    print(common.fmt_table(rows, list(rows[0])))
    print("(* not measured on that task with the method's own arm: see 'how' below)")
    for method, by_task in rates.items():
        for task, r in by_task.items():
            if r is not None and r.how != "measured":
                print(f"  {method} on {task}: {r.how}")
    if proxies:
        print(f"PROXY, priced with another method's measurement on request (--proxy): {', '.join(proxies)}")
    if not complete:
        print(f"\nINCOMPLETE: {len(missing)} rate(s) missing, not invented:")
        for m in missing:
            print(f"  {m['method']} on {m['task']}: {m['why']}")
        unpriced = sum(u.seconds is None for u in units)
        print(f"priced part only (a lower bound): {unpriced} of {len(units)} units not fully priced, analyses {hours(analyses)}")
        print(f"one device, local executor: at least {hours(priced)}")
    else:
        longest = max(units, key=lambda u: u.seconds)
        print(f"\nanalyses {hours(analyses)}; longest unit: {longest.name}, {hours(longest.seconds)}")
        print(f"one device, local executor: {hours(priced)}")
        for g, s in ray.items():
            print(f"--executor ray on {g} device(s): {hours(s)}")
    if args.json:
        out = {
            "config": str(args.config),
            "shape": shape,
            "device": device,
            "batch_size": int(batch),
            "eval_dtype": args.eval_dtype,
            "complete": complete,
            "measured_only": complete and not proxies,
            "missing": missing,
            "proxies": proxies,
            "inputs": [str(p) for p in args.results],
            "rates": {m: {t: (None if r is None else r.as_json()) for t, r in bt.items()} for m, bt in rates.items()},
            "tasks": rows,
            "units_s": {u.name: u.seconds for u in units},
            "units_priced_s": {u.name: u.priced for u in units},
            "analyses_s": analyses,
            "priced_s": priced,
            "local_s": priced if complete else None,
            "ray_s": ray,
        }
        write_json(args.json, out)
    return 0 if complete else EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
