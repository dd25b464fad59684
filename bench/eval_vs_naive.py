"""Evaluation speed: softprompt's Evaluator vs the naive per-choice scoring evaluation harnesses do.

naive: one full forward over [soft prompt; context; choice] per (example, choice), batch 1, logits
over the full vocabulary at every position, log-softmax, sum of the choice tokens' log-probs
(lm-evaluation-harness's loglikelihood request, without its batching).

softprompt: `Evaluator.evaluate` (a fresh Evaluator each run, so tokenization is timed too):
length-sorted batches, one row for all single-token choices of an example, logits only at scored
positions, the prompt's keys/values computed once, multi-token choices on top of a shared context.
"softprompt-plain" is the same Evaluator with the fast paths switched off (`ScoringOptions(strategy="plain")`).

Every arm scores the same examples with the same prompt in the same compute dtype; runs are
interleaved (A, B, C, A, B, C, ...) and the medians reported, with the agreement of predictions.

    .venv/bin/python bench/eval_vs_naive.py                          # ~4 min on 2 cores
    .venv/bin/python bench/eval_vs_naive.py --tasks rte,copa,cb --limit 200 --reps 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from softprompt import scoring  # noqa: E402
from softprompt.backbones import load_backbone, resolve_compute_dtype  # noqa: E402
from softprompt.evaluate import Evaluator  # noqa: E402
from softprompt.prompt import SoftPrompt, init_prompt  # noqa: E402
from softprompt.scoring import autocast_context, full_logits  # noqa: E402
from softprompt.tasks import get_task  # noqa: E402


@torch.no_grad()
def naive_scores(backbone, examples, prompt, compute_dtype) -> list[list[float]]:
    model, tok = backbone.model, backbone.tokenizer
    out = []
    for ex in examples:
        ctx = tok(ex.context, add_special_tokens=False)["input_ids"]
        row = []
        for choice in ex.choices:
            cont = tok(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + cont], device=backbone.device)
            with autocast_context(backbone.device, compute_dtype):
                logits = full_logits(model, prompt, ids)
            logprobs = logits.float().log_softmax(dim=-1)[0]  # [n + L, vocab]: every position
            start = (0 if prompt is None else prompt.shape[0]) + len(ctx) - 1
            row.append(sum(float(logprobs[start + j, t]) for j, t in enumerate(cont)))
        out.append(row)
    return out


def argmax(rows):
    return [max(range(len(r)), key=r.__getitem__) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="rte,copa")
    ap.add_argument("--limit", type=int, default=48, help="validation examples per task (seeded subset)")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--prompt", type=Path, help="a prompt.safetensors to evaluate (default: text init of each task)")
    ap.add_argument("--dtypes", default="float32,auto", help="compute dtypes, float32 first (the reference; auto = bf16 here)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    info = {"machine": common.machine(), "load_before": common.load_average(), "args": vars(args) | {"json": None}}
    print(json.dumps(info["machine"]))
    backbone = load_backbone(args.model)
    rows = []
    for name in args.tasks.split(","):
        task = get_task(name)
        if args.prompt:
            prompt = SoftPrompt.load(args.prompt).weight.detach()
        else:
            prompt = init_prompt(backbone.model, backbone.tokenizer, args.tokens, "text", text=task.description).weight.detach()
        examples = Evaluator(backbone).examples(task, "validation", args.limit, 0)
        ref32 = None  # the float32 naive scores, the reference for the other dtypes
        for dname in args.dtypes.split(","):
            dtype = resolve_compute_dtype(dname, backbone.device)
            times = {"softprompt": [], "softprompt-plain": [], "naive": []}
            result = {}
            scoring.compute_model(backbone.model, dtype)  # one-time low-precision copy, outside the timing
            for _ in range(args.reps):
                for arm in times:
                    t = time.perf_counter()
                    if arm == "naive":
                        lp = naive_scores(backbone, examples, prompt, dtype)
                    else:
                        options = scoring.DEFAULT if arm == "softprompt" else scoring.PLAIN
                        ev = Evaluator(backbone, compute_dtype=dtype, scoring=options)
                        enc = ev.encoded(task, examples, prompt.shape[0], None, (task.name, "bench"))
                        lp = scoring.choice_scores(
                            backbone.model,
                            enc,
                            prompt,
                            pad_id=backbone.tokenizer.pad_token_id,
                            compute_dtype=dtype,
                            options=options,
                        ).logprobs
                    times[arm].append(time.perf_counter() - t)
                    result[arm] = lp
            ref = result["naive"]
            if dtype == torch.float32:
                ref32 = ref
            for arm, t in times.items():
                lp = result[arm]
                diffs = [abs(a - b) for ra, rb in zip(lp, ref, strict=True) for a, b in zip(ra, rb, strict=True)]
                agree = sum(int(a == b) for a, b in zip(argmax(lp), argmax(ref), strict=True))
                row = {
                    "task": name,
                    "dtype": str(dtype).replace("torch.", ""),
                    "arm": arm,
                    "examples": len(examples),
                    "median s": common.med(t),
                    "examples/s": len(examples) / common.med(t),
                    "speedup vs naive": common.med(times["naive"]) / common.med(t),
                    "same predictions as naive": f"{agree}/{len(examples)}",
                    "max |dlogp| vs naive": max(diffs),
                }
                if ref32 is not None:
                    d32 = [abs(a - b) for ra, rb in zip(lp, ref32, strict=True) for a, b in zip(ra, rb, strict=True)]
                    a32 = sum(int(a == b) for a, b in zip(argmax(lp), argmax(ref32), strict=True))
                    row["same predictions as fp32 naive"] = f"{a32}/{len(examples)}"
                    row["mean |dlogp| vs fp32"] = sum(d32) / len(d32)
                row["runs s"] = [round(x, 2) for x in t]
                rows.append(row)
            print(common.fmt_table(rows[-3:], list(rows[-1])), flush=True)
    info.update(results=rows, load_after=common.load_average())
    print()
    print(f"load {info['load_before']} -> {info['load_after']}")
    cols = list(dict.fromkeys(c for r in rows for c in r if c != "runs s"))
    common.finish(info, rows, args.json, cols)


if __name__ == "__main__":
    main()
