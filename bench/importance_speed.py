"""Wall time of `softprompt importance` before and after issue 36: ablations one evaluation each vs stacked.

One prompt of `--tokens` rows (the task description's tokens, moved by seeded noise so that no row equals its
init and every ablation is scored), both replacements (init and mean: the CLI's default, 2 x tokens + 1
scorings), on SST-2's validation split, through `analysis.importance.position_importance` on one `Evaluator`:

- `one`: one `Evaluator.evaluate` per ablated prompt (the implementation before stacking);
- `stacked`: every ablated prompt scored together (`Evaluator.evaluate_stacked`, the default now);

each at every `--limits` (`all`: the whole split, the CLI's default before; 200: its default now). Arms run
interleaved, `--reps` times; each arm gets a fresh Evaluator (no memo), after one warm-up evaluation outside the
timing. Reported per arm: median wall time, what the scorer computed (`ScoringStats`: forwards, padded and real
tokens), and for `stacked` the largest difference of its loss increases from `one`'s at the same limit (bf16
autocast rounds differently in batches of another shape; float32 agrees to ~1e-6, tests/test_importance.py).

    .venv/bin/python bench/importance_speed.py --json bench/results/importance_speed.json   # ~25-35 min on 2 cores
    .venv/bin/python bench/importance_speed.py --limits 200 --reps 3                       # the new default only, ~3 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

from softprompt import scoring  # noqa: E402
from softprompt.analysis.importance import neutral_vector, position_importance  # noqa: E402
from softprompt.evaluate import Evaluator  # noqa: E402
from softprompt.model.backbones import load_backbone, resolve_compute_dtype  # noqa: E402
from softprompt.model.prompt import init_prompt  # noqa: E402
from softprompt.tasks import get_task  # noqa: E402

ARMS = ("one", "stacked")


def run_arm(backbone, task, prompt, initial, mean, *, stacked: bool, limit: int | None, args, dtype) -> dict:
    ev = Evaluator(backbone, compute_dtype=dtype, max_tokens=args.max_tokens, prompt_format=args.prompt_format)
    ev.evaluate(task, initial, limit=limit)  # tokenization and data loading, outside the timing
    ev.stats.clear()
    start = time.perf_counter()
    res = position_importance(ev, task, prompt, initial, limit=limit, stacked=stacked, mean_vector=mean)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "stats": dict(ev.stats), "result": res}


def loss_increases(res: dict) -> list[float]:
    return [e["loss_increase"] for p in res["positions"] for e in p["by_replacement"].values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--tokens", type=int, default=8, help="prompt rows (issue 36's example: an 8-token SST-2 run)")
    ap.add_argument("--limits", default="all,200", help="comma-separated validation subsample sizes; all: the whole split")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=8192, help="the Evaluator's tokens per forward (its default 8192)")
    ap.add_argument("--prompt-format", default="auto")
    ap.add_argument("--compute-dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as the process starts)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [a for a in args.arms.split(",") if a]
    if not arms or set(arms) - set(ARMS):
        ap.error(f"--arms: expected some of {', '.join(ARMS)}")
    limits = [None if x == "all" else int(x) for x in args.limits.split(",") if x]

    load_before = common.load_average()
    backbone = load_backbone(args.model)
    dtype = resolve_compute_dtype(args.compute_dtype, backbone.device)
    task = get_task(args.task)
    sp = init_prompt(backbone.model, backbone.tokenizer, args.tokens, "text", text=task.description)
    initial = sp.weight.detach().clone()
    noise = torch.randn(initial.shape, generator=torch.Generator().manual_seed(0))
    prompt = initial + 0.3 * initial.std() * noise  # every row moved: every ablation is scored
    mean = neutral_vector(backbone.model, backbone.tokenizer)
    scoring.compute_model(backbone.model, dtype)  # the one-time low-precision copy, outside the timing

    runs: dict[str, list[dict]] = {}
    for _ in range(args.reps):
        for limit in limits:
            for arm in arms:
                key = f"{arm} n={'all' if limit is None else limit}"
                out = run_arm(
                    backbone, task, prompt, initial, mean, stacked=arm == "stacked", limit=limit, args=args, dtype=dtype
                )
                runs.setdefault(key, []).append(out)
                print(f"{key}: {out['wall_s']:.1f} s, {out['stats']}", flush=True)

    rows, detail = [], {}
    for key, outs in runs.items():
        arm, n_key = key.split(" ")
        res = outs[-1]["result"]
        ref = runs.get(f"one {n_key}")
        diff = None
        if arm == "stacked" and ref:
            diff = max(abs(a - b) for a, b in zip(loss_increases(res), loss_increases(ref[-1]["result"]), strict=True))
        wall = common.med([o["wall_s"] for o in outs])
        row = {
            "arm": arm,
            "n": res["n"],
            "scorings": res["evaluations"],
            "median s": wall,
            "runs s": [round(o["wall_s"], 1) for o in outs],
            "forwards": outs[-1]["stats"].get("forwards"),
            "real tokens": outs[-1]["stats"].get("real"),
            "padded tokens": outs[-1]["stats"].get("padded"),
            "max |loss increase - one's|": diff,
        }
        rows.append(row)
        detail[key] = {"row": row, "stats": [o["stats"] for o in outs], "ranking": res["ranking"]}
    base = next((r["median s"] for r in rows if r["arm"] == "one" and r["n"] == max(r2["n"] for r2 in rows)), None)
    for r in rows:
        r["speedup vs one at the largest n"] = base / r["median s"] if base else None
    cols = ["arm", "n", "scorings", "median s", "speedup vs one at the largest n", "forwards", "real tokens", "padded tokens"]
    print(common.fmt_table(rows, [*cols, "max |loss increase - one's|"]))
    if args.json:
        common.write_result(args.json, args, load_before, {"rows": rows, "detail": detail})
        print(f"written to {args.json}")
    else:
        print(json.dumps({"machine": common.machine(), "load_before": load_before, "load_after": common.load_average()}))


if __name__ == "__main__":
    main()
