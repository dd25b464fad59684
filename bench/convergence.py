"""Accuracy-vs-step curves of training recipes over seeds, with paired statistics: does the prompt learn?

Each recipe is a set of TrainConfig overrides trained with the library's own `softprompt.training.train` on the
same seeded training subsamples (one per seed), evaluated every `--eval-every` optimiser steps on the
validation set (the number the report shows) and on a development split held out of the training data
(`--dev`, the number recipes are CHOSEN on). Runs are ordinary run directories under `--runs`: an
interrupted benchmark is rerun with the same command and skips the finished runs.

    .venv/bin/python bench/convergence.py --task sst2 --train 512 --epochs 2 --seeds 0,1,2,3,4 \\
        --recipes default,old-default,lora --json bench/results/convergence_sst2.json \\
        --plot bench/results/convergence_sst2.png

Prints a per-seed table, mean/std/min per recipe, and every recipe's paired difference from the
reference recipe (95% t interval over seeds, wins/ties/losses), on validation and on dev.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, load_average, machine  # noqa: F401  (puts src/ on the path)
from scipy import stats

from softprompt.config import DEFAULT_MODEL, PROMPT_METHODS, TrainConfig
from softprompt.io import write_figure, write_json
from softprompt.records.run import RunRecord
from softprompt.runs.state import COMPLETE, run_state

# Named recipes: TrainConfig overrides. "default" is the library's defaults; the others are what was tried.
RECIPES: dict[str, dict] = {
    "default": {},
    "old-default": {"prompt_format": "plain", "lr": 3e-2},  # the defaults before issue #14
    "plain": {"prompt_format": "plain"},
    "chat-lr1e-2": {"prompt_format": "chat", "lr": 1e-2},
    "chat-lr3e-2": {"prompt_format": "chat", "lr": 3e-2},
    "chat-lr1e-3": {"prompt_format": "chat", "lr": 1e-3},
    "labels": {"init": "labels"},
    "text+labels": {"init": "text+labels"},  # the description, then the label words (issue 38 item 3: "both")
    "residual": {"reparam": "residual"},
    "mlp": {"reparam": "mlp", "lr": 1e-3},
    "tokens-50": {"tokens": 50},
    "tokens-100": {"tokens": 100},  # Lester et al.'s longest (issue 38 item 3; dearer per step)
    "warmup-peak": {"warmup": 0.2, "lr_per_std": 0.082},  # a longer warm-up to twice the default peak (issue 38 item 3)
    "batch4": {"batch_size": 4},  # half the examples per step (issue 36: a cheaper demo at the same step count)
    "constant": {"schedule": "constant"},  # no decay after warmup: do slow seeds catch up?
    "cosine": {"schedule": "cosine"},
    # the learning rate as a multiple of the model's embedding std (today's default: PROMPT_LR_PER_STD = 0.041)
    "std0.041": {"lr_per_std": 0.041},
    "std0.082": {"lr_per_std": 0.082},  # the default of the second round (= chat-lr1e-2 on SmolLM2)
    "std0.164": {"lr_per_std": 0.164},
    "std0.328": {"lr_per_std": 0.328},
    "lora": {"method": "lora"},
    "finetune": {"method": "finetune"},  # full fine-tuning (issue 38's per-second table)
    "hard": {"method": "hard"},  # the PEZ discrete prompt (issue 38's per-second table)
    # deep prompts (issue 38: keys/values at every layer); lr in units of each layer's key/value std
    "deep": {"method": "deep"},
    "deep-lr0.01": {"method": "deep", "lr": 0.01},
    "deep-lr0.03": {"method": "deep", "lr": 0.03},
    "deep-lr0.1": {"method": "deep", "lr": 0.1},
    "deep-lr0.3": {"method": "deep", "lr": 0.3},
    # dev selection (issue 27): the runs record the dev loss at every point and dev_loss's own choice; `last`,
    # `dev_accuracy` and argmin dev loss without the margin are read off the same runs' histories
    "dev-loss": {"selection": "dev_loss"},
    "lora-plain": {"method": "lora", "prompt_format": "plain"},
    # class-balanced loss (issue 27, MRPC: the majority class from step 0)
    "balanced": {"class_balance": "on"},
    "balanced-std0.082": {"class_balance": "on", "lr_per_std": 0.082},
    "balanced-std0.164": {"class_balance": "on", "lr_per_std": 0.164},
    "std0.082-plain-loss": {"lr_per_std": 0.082},
    "lora-balanced": {"method": "lora", "class_balance": "on"},
    "unbalanced": {"class_balance": "off"},  # the plain mean, for a paired test of `auto` on a two-class macro-F1 task
    # the same, evaluated at epoch ends only (a third of the evaluation time: for the arms whose curve is not the point)
    "lora-epochs": {"method": "lora", "eval_every": 0},
    "old-default-epochs": {"prompt_format": "plain", "lr": 3e-2, "eval_every": 0},
}


def paired(a: list[float], b: list[float]) -> tuple[float, float, str]:
    """Mean of a - b, the half-width of its 95% t interval, and wins/ties/losses."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.mean(d)
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    return mean, half, f"{sum(x > 0 for x in d)}/{sum(x == 0 for x in d)}/{sum(x < 0 for x in d)}"


def run_group(task: str, model: str) -> str:
    """The runs' folder: the task's name (a task file's stem, or its folder's name for a `task.toml`), under the
    model's name unless it is the default."""
    name = task
    if task.endswith(".toml"):  # examples/mrpc/task.toml -> mrpc
        name = Path(task).parent.name if Path(task).stem == "task" else Path(task).stem
    return name if model == DEFAULT_MODEL else f"{model.replace('/', '_')}/{name}"


def run_one(cfg: TrainConfig, out: Path, backbone, collect_only: bool = False) -> dict:
    """Train (or reuse the finished run in `out`) and return its curve and final numbers. `collect_only` reads a
    finished run as it is, whatever the defaults were when it trained (its resolved learning rate is reported)."""
    from softprompt.training import train

    t0 = time.perf_counter()
    if collect_only:
        if not (out / "run.json").exists() or RunRecord.read(out).final is None:
            sys.exit(f"--collect-only: {out} holds no finished run")
        state = None
    else:
        state = run_state(out, cfg)
        if state.kind != COMPLETE:
            train(cfg, out, backbone=backbone, progress=False, resume=state.kind != "absent", overwrite=False)
    record = RunRecord.read(out)
    metric_name = _task_metric(record)
    final, resolved = record.final, record.resolved
    assert final is not None  # a complete run
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    metric = history[-1].get("dev", {}) if history else {}
    return {
        "selection_rules": selection_rules(record, history),
        "selection": record.selection.to_dict() if record.selection else None,
        "curve": [
            {
                "step": h["step"],
                "val": h["accuracy"],
                "val_metric": h[metric_name],
                "dev": h.get("dev", {}).get("accuracy"),
                "train_loss": h["train_loss"],
            }
            for h in history
        ],
        "val": final.accuracy,
        "val_f1": final.f1_macro,
        # the task's own metric (macro-F1 for MRPC and CB), raw and content-free calibrated (issue 27)
        "metric": metric_name,
        "val_metric": getattr(final, metric_name),
        "val_metric_calibrated": getattr(final.calibrated, metric_name) if final.calibrated else None,
        "dev": metric.get("accuracy"),
        "best": record.best.to_dict() if record.best else None,
        "baselines": {k: v.to_dict() for k, v in (record.baselines or {}).items()},
        "lr": resolved.lr if resolved else None,
        "prompt_format": resolved.prompt_format if resolved else None,
        "wall_s": record.wall_time_s,
        "reused": state is None or state.kind == COMPLETE,
        "seconds_here": round(time.perf_counter() - t0, 1),
    }


SELECTION_RULES = ("dev_accuracy", "dev_loss_no_margin", "run")


def _task_metric(record: RunRecord) -> str:
    """The task's own metric (accuracy for runs that did not record their task)."""
    return (record.task.metric if record.task else None) or "accuracy"


def selection_rules(record: RunRecord, history: list[dict]) -> dict:
    """The validation value (the task's metric) of the prompt each selection rule picks from this run's evaluations,
    with the last prompt's: `dev_accuracy` (the first highest dev metric), `dev_loss_no_margin` (the lowest dev
    loss), `run` (what the run's own `selection` rule kept: best.safetensors)."""
    metric = _task_metric(record)
    last = getattr(record.final, metric)
    points = [h for h in history if h.get("dev")]
    out = {"metric": metric, "last": last, "dev_n": points[0]["dev"]["n"] if points else None}
    if points:
        by_metric = max(range(len(points)), key=lambda i: (points[i]["dev"][metric], -i))
        out["dev_accuracy"] = points[by_metric][metric]
        out["dev_accuracy_step"] = points[by_metric]["step"]
        if all(p["dev"].get("loss") is not None for p in points):
            by_loss = min(range(len(points)), key=lambda i: (points[i]["dev"]["loss"], i))
            out["dev_loss_no_margin"] = points[by_loss][metric]
            out["dev_loss_no_margin_step"] = points[by_loss]["step"]
    best = record.best
    out["run"] = best.validation if best is not None and best.split == "dev" else last
    out["run_step"] = best.step if best is not None else None
    return out


def summarize_selection(results: dict, recipes: list[str], seeds: list[int]) -> list[str]:
    """Each selection rule's validation value minus the last prompt's, paired over seeds: mean, SE, 95% t interval."""
    lines = ["", "dev selection: the selected prompt's validation value minus the last prompt's, paired over seeds:"]
    for r in recipes:
        rules = [results[r][str(s)]["selection_rules"] for s in seeds]
        lines.append(
            f"  {r} ({rules[0]['metric']}, dev n={rules[0]['dev_n']}, last mean {statistics.mean(x['last'] for x in rules):.3f}):"
        )
        for rule in SELECTION_RULES:
            if any(rule not in x for x in rules):
                continue
            m, h, wtl = paired([x[rule] for x in rules], [x["last"] for x in rules])
            se = statistics.stdev([x[rule] - x["last"] for x in rules]) / len(rules) ** 0.5 if len(rules) > 1 else float("nan")
            name = f"{rule} ({dict(RECIPES[r]).get('selection', TrainConfig().selection)})" if rule == "run" else rule
            lines.append(f"    {name}: {m:+.3f} (SE {se:.3f}; 95% [{m - h:+.3f}, {m + h:+.3f}]) wins/ties/losses {wtl}")
    return lines


def _val(row: dict) -> float:
    """A run's validation value in its task's metric (runs collected before `val_metric` existed: accuracy)."""
    return row.get("val_metric", row["val"])


def summarize(results: dict, recipes: list[str], seeds: list[int], reference: str) -> list[str]:
    metric = results[recipes[0]][str(seeds[0])].get("metric", "accuracy")
    lines = [f"validation {metric}:", "| seed | " + " | ".join(recipes) + " |", "|---" * (len(recipes) + 1) + "|"]
    for s in seeds:
        lines.append(f"| {s} | " + " | ".join(f"{_val(results[r][str(s)]):.3f}" for r in recipes) + " |")
    for name, fn in (("mean", statistics.mean), ("std", statistics.stdev), ("min", min)):
        if len(seeds) < 2 and name == "std":
            continue
        lines.append(f"| {name} | " + " | ".join(f"{fn([_val(results[r][str(s)]) for s in seeds]):.3f}" for r in recipes) + " |")
    calibrated = [[results[r][str(s)].get("val_metric_calibrated") for s in seeds] for r in recipes]
    if all(None not in c for c in calibrated):
        lines.append("| calibrated mean | " + " | ".join(f"{statistics.mean(c):.3f}" for c in calibrated) + " |")
    lines.append(
        "| dev mean | "
        + " | ".join(
            f"{statistics.mean(d):.3f}" if None not in (d := [results[r][str(s)]["dev"] for s in seeds]) else "n/a"
            for r in recipes
        )
        + " |"
    )
    lines += ["", f"paired difference vs {reference} over {len(seeds)} seeds (95% t interval; wins/ties/losses):"]
    ref_val = [_val(results[reference][str(s)]) for s in seeds]
    ref_dev = [results[reference][str(s)]["dev"] for s in seeds]
    for r in recipes:
        if r == reference:
            continue
        m, h, wtl = paired([_val(results[r][str(s)]) for s in seeds], ref_val)
        text = f"  {r}: validation {m:+.3f} [{m - h:+.3f}, {m + h:+.3f}] {wtl}"
        dev = [results[r][str(s)]["dev"] for s in seeds]
        if None not in dev and None not in ref_dev:
            m, h, wtl = paired(dev, ref_dev)
            text += f"; dev {m:+.3f} [{m - h:+.3f}, {m + h:+.3f}] {wtl}"
        lines.append(text)
    return lines


def plot(results: dict, recipes: list[str], seeds: list[int], references: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in recipes:
        curves = [results[r][str(s)]["curve"] for s in seeds]
        steps = [p["step"] for p in curves[0]]
        vals = np.array([[p.get("val_metric", p["val"]) for p in c] for c in curves if [p["step"] for p in c] == steps])
        mean, sd = vals.mean(axis=0), vals.std(axis=0, ddof=1) if len(vals) > 1 else np.zeros(len(steps))
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=f"{r} (n={len(vals)})")
        ax.fill_between(steps, mean - sd, mean + sd, alpha=0.15, color=line.get_color())
    styles = {"no_prompt": ":", "english_prompt": "--", "majority": "-."}
    for name, value in references.items():
        ax.axhline(value, color="grey", ls=styles.get(name, ":"), lw=1, label=name.replace("_", " "))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"validation {results[recipes[0]][str(seeds[0])].get('metric', 'accuracy')}")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_figure(path, fig, dpi=130)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--train", type=int, default=512, help="training examples per seed (seeded subsample)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dev", type=int, default=200, help="development examples held out of the training split")
    ap.add_argument("--eval-every", type=int, default=32)
    ap.add_argument("--max-eval", type=int, default=None, help="validation subsample (default: all of it)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--recipes", default="default,old-default,lora", help=f"names from {', '.join(RECIPES)}")
    ap.add_argument("--reference", default=None, help="the recipe others are compared with (default: the first)")
    ap.add_argument("--set", action="append", default=[], help="extra TrainConfig override for every recipe, KEY=JSON")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "convergence")
    ap.add_argument(
        "--collect-only", action="store_true", help="read finished runs, train nothing (tables after a default changed)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); 1 on a shared machine")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from softprompt.model.backbones import load_backbone
    from softprompt.model.prompt import embedding_scale

    if args.threads:
        torch.set_num_threads(args.threads)

    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipe(s) {unknown}: expected some of {list(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = {k: json.loads(v) for k, v in (x.split("=", 1) for x in args.set)}
    base = dict(
        task=args.task,
        model=args.model,
        max_train=args.train,
        epochs=args.epochs,
        dev_size=args.dev,
        eval_every=args.eval_every,
        max_eval=args.max_eval,
        **extra,
    )
    backbone = load_backbone(args.model) if not args.collect_only else None
    results: dict[str, dict[str, dict]] = {}
    started = time.perf_counter()
    for r in recipes:
        results[r] = {}
        for s in seeds:
            overrides = dict(RECIPES[r])
            if "lr_per_std" in overrides:  # a scale-relative rate: the same recipe on every model
                factor = overrides.pop("lr_per_std")
                overrides["lr"] = None if args.collect_only else factor * embedding_scale(backbone.model)
            cfg = TrainConfig(**{**base, **overrides, "seed": s})
            out = args.runs / run_group(args.task, args.model) / f"{r}-s{s}"
            # trained baselines modify the model (LoRA injects adapters): they get their own copy
            bb = load_backbone(args.model) if cfg.method not in PROMPT_METHODS and not args.collect_only else backbone
            results[r][str(s)] = run_one(cfg, out, bb, args.collect_only)
            print(f"{r} seed {s}: val {_val(results[r][str(s)]):.3f} dev {results[r][str(s)]['dev']}", flush=True)
    first = results[recipes[0]][str(seeds[0])]["baselines"]
    metric = results[recipes[0]][str(seeds[0])].get("metric", "accuracy")
    references = {k: v[metric] for k, v in first.items()}
    references |= {f"{k} calibrated": v["calibrated"][metric] for k, v in first.items() if metric in (v.get("calibrated") or {})}
    lines = summarize(results, recipes, seeds, args.reference or recipes[0]) + summarize_selection(results, recipes, seeds)
    print("\n".join(lines))
    if references:
        print("references (validation): " + ", ".join(f"{k} {v:.3f}" for k, v in references.items()))
    info = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "recipes": {r: RECIPES[r] for r in recipes},
        "machine": machine(),
        "load_average_end": load_average(),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "references": references,
        "results": results,
        "summary": lines,
    }
    if args.json:
        write_json(args.json, info)
    if args.plot:
        title = f"{args.task}, {args.model}: {args.train} examples x {args.epochs} epochs, {len(seeds)} seeds"
        plot(results, recipes, seeds, references, args.plot, title)


if __name__ == "__main__":
    main()
