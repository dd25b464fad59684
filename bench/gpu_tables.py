"""The GPU suite's results as one JSON and markdown tables (bench/gpu_suite.sh calls it after every cell).

    python3 bench/gpu_tables.py --cells DIR --out gpu_suite.json --summary summary.md   # merge a suite's cells
    python3 bench/gpu_tables.py bench/results/gpu_suite_h100.json                       # tables of a merged file
    python3 bench/gpu_tables.py bench/results/gpu_suite_h100_buckets_run*.json           # several runs, rows named

A cell is `train-SHAPE-TASK-bBATCH[-auto]` (bench/train_vs_peft.py; -auto: --prompt-format auto) or `eval-SHAPE`
(bench/eval_vs_naive.py); DIR holds each cell's `CELL.json` (the script's --json) and `CELL.status.json` (exit code,
seconds, budget, written by the suite). The tables are the ones bench/README.md's "GPU" section takes: every ratio
published there is computed here from the committed JSON. Per training cell, each arm's steady state (median
examples/s over the timed epochs) stands next to its wall time (timed epochs + the untimed warm-up, where CUDA graphs
are captured), and softprompt is divided by the best PEFT arm BY EACH MEASURE, over every PEFT arm the cell ran
(PEFT's recipe fp32 and bf16, and PEFT tuned for speed: grouped batches, answer-only LM head), the arm named.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# softprompt arms in the order tables show them (softprompt = the defaults: on a GPU the padded strategy, and CUDA
# graphs since results with softprompt-graphs; before those, softprompt ran eagerly)
SOFTPROMPT_ARMS = (
    "softprompt",
    "softprompt-grouped",
    "softprompt-lm",
    "softprompt-bucket64",
    "softprompt-nosplit",
    "softprompt-alibi-eager",
    "softprompt-bloom-gelu",
    "softprompt-eager",
    "softprompt-graphs",
    "softprompt-graphs-lowp",
    "softprompt-lowp",
    "softprompt-cudnn",
    "softprompt-kv_tree",
    "softprompt-plain",
)
SECOND = SOFTPROMPT_ARMS[1:]  # the evaluation table's other softprompt arm (the first a result has)
DEFAULT = "softprompt"
PEFT_ARMS = ("peft", "peft-bf16")  # PEFT's documented recipe, fp32 and bf16
# PEFT tuned for speed: dynamic padding and grouped batches; the LM head only at the answer's positions
PEFT_TUNED = ("peft-bf16-grouped", "peft-bf16-answer", "peft-bf16-grouped-answer")
ALL_PEFT = (*PEFT_ARMS, *PEFT_TUNED)  # "best PEFT" in the tables: the fastest of these that the cell ran


def _second(by_arm: dict) -> str:
    return next((k for k in SECOND if k in by_arm), SECOND[0])


def merge(cells_dir: Path) -> dict:
    """Every cell's status and result (None where the cell wrote none: killed, failed, skipped)."""
    cells = {}
    for status_file in sorted(cells_dir.glob("*.status.json")):
        name = status_file.name.removesuffix(".status.json")
        result_file = cells_dir / f"{name}.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        if result is not None and result.get("partial"):
            result = None  # an epoch's checkpoint of a run that did not finish
        cells[name] = {"status": json.loads(status_file.read_text()), "result": result}
    return {"cells": cells}


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _table(cols: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _finished(runs: list[tuple[str, dict]], kind: str):
    """(run, cell name, result) of the cells of `kind` ("train" or "eval") that wrote a result, run by run."""
    return [
        (run, name, c["result"])
        for run, merged in runs
        for name, c in merged["cells"].items()
        if name.startswith(f"{kind}-") and c["result"] is not None
    ]


def by_arm(res: dict) -> dict[str, dict]:
    return {r["arm"]: r for r in res["results"]}


def arm_times(res: dict) -> dict[str, dict]:
    """Each arm's steady state (median examples/s over the timed epochs) and its wall time: the timed epochs' sum and
    the untimed warm-up's (where graph arms capture; None where the result did not record it). Arms that ran out
    of memory are left out: they did not run every step."""
    warm, rows = res.get("warmup_s") or {}, by_arm(res)
    return {
        arm: {"median": rows[arm]["examples/s"], "timed_s": sum(res["epoch_times"][arm]), "warmup_s": warm.get(arm)}
        for arm in rows
        if arm in res.get("epoch_times", {}) and arm not in res.get("dropped_arms", {})
    }


def _total(t: dict) -> float | None:
    return None if t["warmup_s"] is None else t["timed_s"] + t["warmup_s"]


def _arm_cell(t: dict | None) -> str:
    if t is None:
        return "-"
    warm = "?" if t["warmup_s"] is None else f"{t['warmup_s']:.2f}"
    return f"{t['median']:.1f} · {t['timed_s']:.2f}+{warm} s"


def ratios(res: dict) -> dict[str, str]:
    """The cell's published ratios, each naming the arms it divides: softprompt (the defaults) against the best PEFT
    arm by steady-state medians, by the timed epochs' total time and by the total with the warm-up; the best
    softprompt arm against the best PEFT arm; grouped softprompt against PEFT grouped alike."""
    times = arm_times(res)
    peft = [a for a in ALL_PEFT if a in times]
    sp = [a for a in SOFTPROMPT_ARMS if a in times]
    out = {"median": "-", "timed": "-", "total": "-", "best": "-", "grouped": "-"}
    if not peft or not sp:
        return out
    best_peft = max(peft, key=lambda a: times[a]["median"])
    if DEFAULT in times:
        d = times[DEFAULT]
        out["median"] = f"{d['median'] / times[best_peft]['median']:.2f}x ({best_peft})"
        fastest = min(peft, key=lambda a: times[a]["timed_s"])
        out["timed"] = f"{times[fastest]['timed_s'] / d['timed_s']:.2f}x ({fastest})"
        with_warm = [a for a in peft if _total(times[a]) is not None]
        if with_warm and _total(d) is not None:
            fastest = min(with_warm, key=lambda a: _total(times[a]))
            out["total"] = f"{_total(times[fastest]) / _total(d):.2f}x ({fastest})"
    best_sp = max(sp, key=lambda a: times[a]["median"])
    out["best"] = f"{times[best_sp]['median'] / times[best_peft]['median']:.2f}x ({best_sp} / {best_peft})"
    if "softprompt-grouped" in times and "peft-bf16-grouped" in times:
        out["grouped"] = f"{times['softprompt-grouped']['median'] / times['peft-bf16-grouped']['median']:.2f}x"
    return out


def train_table(runs: list[tuple[str, dict]]) -> str:
    """One row per training cell: every arm's median examples/s and wall time, then the ratios (`ratios`)."""
    finished = _finished(runs, "train")
    ran = {r["arm"] for _, _, res in finished for r in res["results"]}
    sp_arms = [k for k in SOFTPROMPT_ARMS if k in ran] or [DEFAULT]
    arms = [*sp_arms, *(k for k in ALL_PEFT if k in ran)]
    several = len(runs) > 1
    rows = []
    for run, name, res in finished:
        times, r = arm_times(res), ratios(res)
        epochs = f"{len(next(iter(res['epoch_times'].values())))} x {res['timed_steps_per_epoch']}"
        row = [*([run] if several else []), *_cell_id(name, res), epochs]
        row += [_arm_cell(times.get(k)) for k in arms]
        rows.append([*row, r["median"], r["timed"], r["total"], r["best"], r["grouped"]])
    cols = [*(["run"] if several else []), "shape", "task", "batch", "timed epochs x steps", *arms]
    cols += ["softprompt / best PEFT, medians", "... timed epochs' time", "... with warm-up", "best sp / best PEFT, medians"]
    return _table([*cols, "sp-grouped / peft-bf16-grouped"], rows)


def _cell_id(name: str, res: dict) -> list:
    """shape, task (with its prompt format when not plain) and batch of a training cell."""
    a = res["args"]
    batch = a["batch_size"]
    if a.get("cpu_dry_run"):  # the dry run caps the batch: say which cell's it was
        batch = f"{batch} (dry run of b{name.removesuffix('-baselines').removesuffix('-auto').rsplit('-b', 1)[-1]})"
    task = a["task"] + (f" ({res['prompt_format']})" if res.get("prompt_format", "plain") != "plain" else "")
    return [a.get("shape") or a.get("model"), task, batch]


def resources_table(runs: list[tuple[str, dict]]) -> str:
    """Peak GPU memory per arm and MFU per softprompt arm, one row per training cell."""
    finished = _finished(runs, "train")
    ran = {r["arm"] for _, _, res in finished for r in res["results"]}
    sp_arms = [k for k in SOFTPROMPT_ARMS if k in ran] or [DEFAULT]
    arms = [*sp_arms, *(k for k in ALL_PEFT if k in ran)]
    rows = []
    for run, name, res in finished:
        rows_by_arm = by_arm(res)
        mem = [_num(rows_by_arm[k].get("peak GiB"), 3) if k in rows_by_arm else "-" for k in arms]
        mfu = [f"{100 * rows_by_arm[k]['MFU bf16 peak']:.1f}%" if k in rows_by_arm else "-" for k in sp_arms]
        rows.append([*([run] if len(runs) > 1 else []), *_cell_id(name, res), " / ".join(mem), " / ".join(mfu)])
    cols = [*(["run"] if len(runs) > 1 else []), "shape", "task", "batch"]
    cols += ["peak GiB (" + " / ".join(arms) + ")", "MFU vs bf16 peak (" + " / ".join(sp_arms) + ")"]
    return _table(cols, rows)


TRAIN_LEGEND = (
    "Each arm: median examples/s over the timed epochs · seconds of all timed epochs + seconds of the untimed warm-up "
    "(where graph arms capture; ? = not recorded). Ratios: examples/s of the median epochs, then wall time of the "
    "same steps (the timed epochs; then with the warm-up), each against the PEFT arm that is best by that measure "
    "(named), over every PEFT arm the cell ran (" + ", ".join(ALL_PEFT) + ")."
)


# method -> (softprompt's own loop for it, its plain recipe: PEFT's LoRA recipe, a plain HF fine-tuning loop; bench/train_vs_peft.py)
BASELINES = {"lora": ("softprompt-lora", "peft-lora"), "finetune": ("softprompt-finetune", "hf-finetune")}


def baselines_table(runs: list[tuple[str, dict]]) -> str:
    """softprompt's loop for LoRA and full fine-tuning against that method's recipe arms, per training cell that ran
    them: the best recipe arm by steady-state median, the fastest by wall time with the warm-up (both over every
    variant the cell ran, tuned ones included), and the best plain recipe (fp32 or -bf16) by median, each named."""
    rows = []
    for run, name, res in _finished(runs, "train"):
        times = arm_times(res)
        for method, (own, recipe) in BASELINES.items():
            rivals = [a for a in times if a.startswith(recipe)]
            if own not in times or not rivals:
                continue
            t, best = times[own], max(rivals, key=lambda a: times[a]["median"])
            row = [*([run] if len(runs) > 1 else []), *_cell_id(name, res), method, own, _arm_cell(t)]
            row.append(f"{t['median'] / times[best]['median']:.2f}x ({best})")
            with_warm = [a for a in rivals if _total(times[a]) is not None]
            if with_warm and _total(t) is not None:
                fastest = min(with_warm, key=lambda a: _total(times[a]))
                row.append(f"{_total(times[fastest]) / _total(t):.2f}x ({fastest})")
            else:
                row.append("-")
            plain = [a for a in rivals if a in (recipe, f"{recipe}-bf16")]
            best_plain = max(plain, key=lambda a: times[a]["median"]) if plain else None
            row.append(f"{t['median'] / times[best_plain]['median']:.2f}x ({best_plain})" if best_plain else "-")
            rows.append(row)
    if not rows:
        return "(no baselines cell ran)"
    cols = [*(["run"] if len(runs) > 1 else []), "shape", "task", "batch", "method", "softprompt arm"]
    cols += ["its median · timed+warm-up s", "/ best recipe arm, medians", "/ fastest recipe arm, with warm-up"]
    return _table([*cols, "/ best plain recipe, medians"], rows)


def graphs_table(runs: list[tuple[str, dict]]) -> str:
    """The graph arms' captures and replays, and how far each softprompt arm's prompt is from softprompt's."""
    rows = []
    for run, name, res in _finished(runs, "train"):
        diffs = res.get("prompt_diff_vs_softprompt", {})
        for arm, g in res.get("graphs", {}).items():
            row = [name, arm, g["captures"], g["replays"], g["eager"], g["failed"] or "-", _num(diffs.get(arm))]
            rows.append([run, *row] if len(runs) > 1 else row)
    if not rows:
        return "(no graph arm ran)"
    cols = ["cell", "arm", "captures", "replays", "eager steps", "capture failure", "prompt diff vs softprompt"]
    return _table(["run", *cols] if len(runs) > 1 else cols, rows)


def _eval_row(shape: str, task: str, dtype: str, arms: dict) -> list | None:
    sp, other, naive = (arms.get(k) for k in ("softprompt", _second(arms), "naive"))
    if sp is None or naive is None:
        return None
    plain = other or {"examples/s": float("nan"), "speedup vs naive": float("nan"), "same predictions as naive": "-"}
    return [
        shape,
        task,
        dtype,
        f"{sp['examples/s']:.1f}",
        f"{plain['examples/s']:.1f}",
        f"{naive['examples/s']:.1f}",
        f"{sp['speedup vs naive']:.2f}x",
        f"{plain['speedup vs naive']:.2f}x",
        f"{sp['same predictions as naive']} / {plain['same predictions as naive']}",
        f"{100 * sp['MFU bf16 peak']:.1f}%",
        f"{_num(sp.get('peak GiB'))} / {_num(naive.get('peak GiB'))}",
    ]


def eval_table(runs: list[tuple[str, dict]]) -> str:
    rows = []
    for run, _, res in _finished(runs, "eval"):
        shape = res["args"].get("shape") or res["args"].get("model")
        groups: dict[tuple, dict] = {}
        for r in res["results"]:
            groups.setdefault((r["task"], r["dtype"]), {})[r["arm"]] = r
        for (task, dtype), arms in groups.items():
            row = _eval_row(shape, task, dtype, arms)
            if row is not None:
                rows.append([run, *row] if len(runs) > 1 else row)
    cols = ["shape", "task", "dtype", "softprompt (auto) ex/s", "softprompt 2nd arm (lowp, cudnn, kv_tree or plain)", "naive"]
    cols += ["speedup", "speedup 2nd arm", "same predictions as naive (sp / other)", "MFU sp vs bf16 peak"]
    cols += ["peak GiB sp / naive"]
    return _table(["run", *cols] if len(runs) > 1 else cols, rows)


def status_table(runs: list[tuple[str, dict]]) -> str:
    rows = []
    for run, merged in runs:
        for name, cell in merged["cells"].items():
            st = cell["status"]
            state = "ok" if cell["result"] is not None and st.get("rc") == 0 else st.get("state", "failed")
            row = [name, state, st.get("rc", "-"), st.get("seconds", "-"), st.get("budget_s", "-")]
            rows.append([run, *row] if len(runs) > 1 else row)
    cols = ["cell", "state", "exit code", "seconds", "budget s"]
    return _table(["run", *cols] if len(runs) > 1 else cols, rows)


def machine_lines(run: str, merged: dict) -> list[str]:
    """The run's card, library versions and measured matmul peaks (from its first result)."""
    results = [c["result"] for c in merged["cells"].values() if c["result"]]
    machine = results[0]["machine"] if results else {}
    head = ", ".join(f"{k} {machine[k]}" for k in ("gpu", "device", "torch", "transformers", "peft", "cuda") if k in machine)
    line = f"{run + ': ' if run else ''}machine: {head or 'n/a'}"
    peaks = (results[0].get("peaks_gflops") if results else None) or {}
    if peaks:
        line += "; measured matmul peaks: " + ", ".join(f"{k} {v / 1e3:.1f} TFLOP/s" for k, v in peaks.items())
    return [line]


def summary(runs: list[tuple[str, dict]]) -> str:
    """The markdown tables of one or more runs (a merged suite JSON each; rows say which run when several)."""
    parts = [line for run, merged in runs for line in machine_lines(run if len(runs) > 1 else "", merged)]
    identical = {
        f"{run + ' ' if len(runs) > 1 else ''}{n}": c["result"].get("fp32_identical_predictions")
        for run, merged in runs
        for n, c in merged["cells"].items()
        if n.startswith("eval-") and c["result"]
    }
    parts += ["", "Training", "", TRAIN_LEGEND, "", train_table(runs)]
    parts += ["", "Baselines: softprompt's loop for LoRA / fine-tuning vs their recipes", "", baselines_table(runs)]
    parts += ["", "Training: memory and MFU", "", resources_table(runs)]
    parts += ["", "CUDA graphs", "", graphs_table(runs)]
    parts += ["", "Evaluation", "", eval_table(runs)]
    parts += ["", "float32 predictions identical to the naive scorer: " + json.dumps(identical)]
    parts += ["", "Cells", "", status_table(runs)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("merged", nargs="*", type=Path, help="merged suite JSONs to print tables of (rows name their run)")
    ap.add_argument("--cells", type=Path, help="a suite's cell folder to merge")
    ap.add_argument("--out", type=Path, help="write the merged JSON here")
    ap.add_argument("--summary", type=Path, help="write the markdown tables here")
    args = ap.parse_args(argv)
    if bool(args.merged) == (args.cells is not None):
        ap.error("give either merged JSONs or --cells DIR")
    if args.cells:
        merged = merge(args.cells)
        runs = [("", merged)]
    else:
        runs = [(p.stem, json.loads(p.read_text())) for p in args.merged]
        merged = runs[0][1]
    if args.out and len(runs) > 1:
        ap.error("--out writes one merged JSON: give --cells DIR or one merged JSON")
    text = summary(runs)
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(merged, indent=1))
        tmp.replace(args.out)  # the suite may be killed at any moment: never a half-written file
    if args.summary:
        args.summary.write_text(text)
    if not args.out and not args.summary:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
