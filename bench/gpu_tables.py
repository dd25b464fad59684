"""The GPU suite's results as one JSON and markdown tables (bench/gpu_suite.sh calls it after every cell).

    python3 bench/gpu_tables.py --cells DIR --out gpu_suite.json --summary summary.md   # merge a suite's cells
    python3 bench/gpu_tables.py bench/results/gpu_suite_h100.json                       # tables of a merged file

A cell is `train-SHAPE-TASK-bBATCH` (bench/train_vs_peft.py) or `eval-SHAPE` (bench/eval_vs_naive.py);
DIR holds each cell's `CELL.json` (the script's --json) and `CELL.status.json` (exit code, seconds,
budget, written by the suite). The tables are the ones bench/README.md's "GPU" section takes.
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
PEFT_ARMS = ("peft", "peft-bf16")  # the target: >= 3x the better of these (PEFT's documented recipe)
PEFT_TUNED = ("peft-bf16-grouped",)  # PEFT with dynamic padding and grouped batches: shown, not in the target


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


def _rate(row: dict | None) -> str:
    return "-" if row is None else f"{row['examples/s']:.1f} ({row['ms/step']:.0f} ms)"


def _finished(cells: dict, kind: str):
    """(name, result) of the cells of `kind` ("train" or "eval") that wrote a result."""
    return [(name, c["result"]) for name, c in cells.items() if name.startswith(f"{kind}-") and c["result"] is not None]


def train_table(cells: dict) -> str:
    """One row per training cell, one rate column per arm any cell ran (softprompt arms, then PEFT's)."""
    finished = _finished(cells, "train")
    ran = {r["arm"] for _, res in finished for r in res["results"]}
    sp_arms = [k for k in SOFTPROMPT_ARMS if k in ran] or ["softprompt"]
    arms = [*sp_arms, *PEFT_ARMS, *(k for k in PEFT_TUNED if k in ran)]
    rows = []
    for name, res in finished:
        by_arm = {r["arm"]: r for r in res["results"]}
        a = res["args"]
        peft = [by_arm[k]["examples/s"] for k in PEFT_ARMS if k in by_arm]
        sp = {k: by_arm[k]["examples/s"] for k in sp_arms if k in by_arm}
        best = max(sp, key=sp.get) if sp else None
        ratio = f"{sp[best] / max(peft):.2f}x ({best})" if peft and sp else "-"
        tuned = [by_arm[k]["examples/s"] for k in PEFT_TUNED if k in by_arm]
        vs_tuned = f"{sp[best] / max(tuned):.2f}x" if tuned and sp else "-"
        mem = " / ".join(_num(by_arm[k].get("peak GiB"), 3) if k in by_arm else "-" for k in arms)
        mfu = " / ".join(f"{100 * by_arm[k]['MFU bf16 peak']:.1f}%" if k in by_arm else "-" for k in sp_arms)
        shape = a.get("shape") or a.get("model")
        batch = a["batch_size"]
        if a.get("cpu_dry_run"):  # the dry run caps the batch: say which cell's it was
            batch = f"{batch} (dry run of b{name.rsplit('-b', 1)[-1]})"
        rows.append(
            [
                shape,
                a["task"],
                batch,
                *(_rate(by_arm.get(k)) for k in arms),
                ratio,
                vs_tuned,
                mem,
                mfu,
                res["timed_steps_per_epoch"],
            ]
        )
    cols = ["shape", "task", "batch", *arms, "best softprompt / best PEFT", "same / peft-bf16-grouped"]
    cols += ["peak GiB (" + " / ".join(arms) + ")"]
    cols += ["MFU vs bf16 peak (" + " / ".join(sp_arms) + ")", "timed steps"]
    return _table(cols, rows)


def graphs_table(cells: dict) -> str:
    """The graph arms' captures and replays, and how far each softprompt arm's prompt is from softprompt's."""
    rows = []
    for name, res in _finished(cells, "train"):
        diffs = res.get("prompt_diff_vs_softprompt", {})
        for arm, g in res.get("graphs", {}).items():
            rows.append([name, arm, g["captures"], g["replays"], g["eager"], g["failed"] or "-", _num(diffs.get(arm))])
    if not rows:
        return "(no graph arm ran)"
    cols = ["cell", "arm", "captures", "replays", "eager steps", "capture failure", "prompt diff vs softprompt"]
    return _table(cols, rows)


def eval_table(cells: dict) -> str:
    rows = []
    for _, res in _finished(cells, "eval"):
        shape = res["args"].get("shape") or res["args"].get("model")
        groups: dict[tuple, dict] = {}
        for r in res["results"]:
            groups.setdefault((r["task"], r["dtype"]), {})[r["arm"]] = r
        for (task, dtype), arms in groups.items():
            sp, other, naive = (arms.get(k) for k in ("softprompt", _second(arms), "naive"))
            if sp is None or naive is None:
                continue
            plain = other or {"examples/s": float("nan"), "speedup vs naive": float("nan"), "same predictions as naive": "-"}
            rows.append(
                [
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
            )
    cols = [
        "shape",
        "task",
        "dtype",
        "softprompt (auto) ex/s",
        "softprompt 2nd arm (lowp, cudnn, kv_tree or plain)",
        "naive",
        "speedup",
    ]
    cols += ["speedup 2nd arm", "same predictions as naive (sp / other)", "MFU sp vs bf16 peak", "peak GiB sp / naive"]
    return _table(cols, rows)


def status_table(cells: dict) -> str:
    rows = []
    for name, cell in cells.items():
        st = cell["status"]
        state = "ok" if cell["result"] is not None and st.get("rc") == 0 else st.get("state", "failed")
        rows.append([name, state, st.get("rc", "-"), st.get("seconds", "-"), st.get("budget_s", "-")])
    return _table(["cell", "state", "exit code", "seconds", "budget s"], rows)


def summary(merged: dict) -> str:
    cells = merged["cells"]
    machine = next((c["result"]["machine"] for c in cells.values() if c["result"]), {})
    head = ", ".join(f"{k} {machine[k]}" for k in ("gpu", "device", "torch", "transformers", "peft", "cuda") if k in machine)
    peaks = next((c["result"].get("peaks_gflops") for c in cells.values() if c["result"]), None) or {}
    parts = [f"machine: {head or 'n/a'}"]
    if peaks:
        parts.append("measured matmul peaks: " + ", ".join(f"{k} {v / 1e3:.1f} TFLOP/s" for k, v in peaks.items()))
    identical = {
        n: c["result"].get("fp32_identical_predictions") for n, c in cells.items() if n.startswith("eval-") and c["result"]
    }
    parts += ["", "Training (examples/s, ms per step in brackets)", "", train_table(cells)]
    parts += ["", "CUDA graphs", "", graphs_table(cells)]
    parts += ["", "Evaluation", "", eval_table(cells)]
    parts += ["", "float32 predictions identical to the naive scorer: " + json.dumps(identical)]
    parts += ["", "Cells", "", status_table(cells)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("merged", nargs="?", type=Path, help="a merged suite JSON to print tables of")
    ap.add_argument("--cells", type=Path, help="a suite's cell folder to merge")
    ap.add_argument("--out", type=Path, help="write the merged JSON here")
    ap.add_argument("--summary", type=Path, help="write the markdown tables here")
    args = ap.parse_args(argv)
    if (args.merged is None) == (args.cells is None):
        ap.error("give either a merged JSON or --cells DIR")
    merged = merge(args.cells) if args.cells else json.loads(args.merged.read_text())
    text = summary(merged)
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
