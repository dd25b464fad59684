"""Evaluation speed: softprompt's Evaluator vs the naive per-choice scoring evaluation harnesses do.

naive: one full forward over [soft prompt; context; choice] per (example, choice), batch 1, logits
over the full vocabulary at every position, log-softmax, sum of the choice tokens' log-probs
(lm-evaluation-harness's loglikelihood request, without its batching).

softprompt: `Evaluator.evaluate` (a fresh Evaluator each run, so tokenization is timed too):
length-sorted batches, one row for all single-token choices of an example, logits only at scored
positions, the prompt's keys/values computed once, multi-token choices on top of a shared context.
"softprompt-plain" is the same Evaluator with the fast paths switched off (`ScoringOptions(strategy="plain")`);
"softprompt-padded" and "softprompt-kv_tree" with that strategy (`--arms`; "softprompt" is `auto`: the
prefix tree on a CPU, padded on a GPU).

Every arm scores the same examples with the same prompt in the same compute dtype; runs are
interleaved (A, B, C, A, B, C, ...) and the medians reported, with the agreement of predictions.

On a GPU (`--device cuda`, issue #13): `--shape` builds a random-weight model of a real shape (the
GPU machine has no weights), every pass sits between two `torch.cuda.synchronize()`, and each row also
gives real and padded tokens/s, MFU against the card's measured bf16 matmul rate and peak memory
(common.PeakMemory); `fp32_identical_predictions` in the JSON says whether the fast and plain paths
picked the naive scorer's answer for every example in float32. `--cpu-dry-run`: the same on CPU with a
tiny model of the shape's family and 6 examples.

    .venv/bin/python bench/eval_vs_naive.py                          # ~4 min on 2 cores
    .venv/bin/python bench/eval_vs_naive.py --tasks rte,copa,cb --limit 200 --reps 5
    python3 bench/eval_vs_naive.py --device cuda --shape bloomz-560m --tasks rte,sst2 --limit 128 --reps 2 \
        --arms softprompt,softprompt-kv_tree,naive
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from softprompt import scoring  # noqa: E402
from softprompt.evaluate import Evaluator  # noqa: E402
from softprompt.model.backbones import resolve_compute_dtype  # noqa: E402
from softprompt.model.prompt import SoftPrompt, init_prompt  # noqa: E402
from softprompt.scoring import autocast_context, full_logits  # noqa: E402
from softprompt.tasks import get_task  # noqa: E402

ARMS = ("softprompt", "softprompt-plain", "softprompt-padded", "softprompt-kv_tree", "softprompt-cudnn", "softprompt-lowp")
ARMS += ("naive",)
ARM_OPTIONS = {  # softprompt arm -> its scoring options (softprompt: the default, `auto`, the device's strategy)
    "softprompt": scoring.DEFAULT,
    "softprompt-plain": scoring.PLAIN,
    "softprompt-padded": scoring.ScoringOptions(strategy="padded"),
    "softprompt-kv_tree": scoring.ScoringOptions(strategy="kv_tree"),
    "softprompt-cudnn": common.arm_scoring("softprompt-cudnn"),
    "softprompt-lowp": common.arm_scoring("softprompt-lowp"),
}


@torch.no_grad()
def naive_scores(backbone, examples, prompt, compute_dtype, counts: Counter | None = None) -> list[list[float]]:
    """`counts` gets the tokens computed ("real" = "padded": batch 1) and LM-head rows ("head")."""
    model, tok = backbone.model, backbone.tokenizer
    n = 0 if prompt is None else prompt.shape[0]
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
            start = n + len(ctx) - 1
            row.append(sum(float(logprobs[start + j, t]) for j, t in enumerate(cont)))
            if counts is not None:
                counts.update(real=n + ids.shape[1], padded=n + ids.shape[1], head=n + ids.shape[1], forwards=1)
        out.append(row)
    return out


def argmax(rows):
    return [max(range(len(r)), key=r.__getitem__) for r in rows]


def run_arm(arm, backbone, task, examples, prompt, dtype, counts: Counter):
    """One timed pass of `arm` over `examples`: its log-likelihoods; `counts` gets its tokens and head rows."""
    if arm == "naive":
        return naive_scores(backbone, examples, prompt, dtype, counts)
    options = ARM_OPTIONS[arm]
    stats = scoring.ScoringStats()
    try:
        ev = Evaluator(backbone, compute_dtype=dtype, scoring=options, prompt_format="plain")  # as recorded
        enc = ev.encoded(task, examples, prompt.shape[0], None, (task.name, "bench"))
        return scoring.choice_scores(
            backbone.model, enc, prompt, pad_id=backbone.tokenizer.pad_token_id, compute_dtype=dtype, options=options, stats=stats
        ).logprobs
    finally:
        counts.update(stats)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="rte,copa")
    ap.add_argument("--limit", type=int, default=48, help="validation examples per task (seeded subset)")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--prompt", type=Path, help="a prompt.safetensors to evaluate (default: text init of each task)")
    ap.add_argument("--dtypes", default="float32,auto", help="compute dtypes, float32 first (the reference; auto = bf16 here)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--arms", default="softprompt,softprompt-plain,naive", help=f"comma-separated, from {', '.join(ARMS)}")
    common.add_device_args(ap, "every arm")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(args.arm_list) - set(ARMS))
    if unknown or "naive" not in args.arm_list:
        ap.error(f"--arms {args.arms!r}: expected some of {', '.join(ARMS)}, naive (the reference) among them")
    args.arm_list = [a for a in args.arm_list if a != "naive"] + ["naive"]
    if args.cpu_dry_run:
        args.limit = min(args.limit, 6)
        args.reps = 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = common.resolve_device_args(args)
    info = {
        "machine": common.machine(device),
        "load_before": common.load_average(),
        "args": vars(args)
        | {"json": None, "prompt": str(args.prompt) if args.prompt else None}
        | {"tokenizer": str(args.tokenizer) if args.tokenizer else None},
    }
    print(json.dumps(info["machine"]))
    pk = common.device_peaks(device)
    backbone = common.make_backbone(args, device)
    info["model"] = common.describe_model(backbone)
    resident = common.model_bytes(backbone.model)
    rows = []
    identical: dict[str, bool] = {}
    for name in args.tasks.split(","):
        task = get_task(name)
        if args.prompt:
            prompt = SoftPrompt.load(args.prompt).weight.detach()
        else:
            prompt = init_prompt(backbone.model, backbone.tokenizer, args.tokens, "text", text=task.description).weight.detach()
        prompt = prompt.to(device)
        examples = Evaluator(backbone, data_dir=args.data_dir).examples(task, "validation", args.limit, 0)
        ref32 = None  # the float32 naive scores, the reference for the other dtypes
        for dname in args.dtypes.split(","):
            dtype = resolve_compute_dtype(dname, backbone.device)
            times = {arm: [] for arm in args.arm_list}
            counts = {arm: Counter() for arm in args.arm_list}
            mem = {arm: common.PeakMemory(device) for arm in args.arm_list}
            result = {}
            scoring.compute_model(backbone.model, dtype)  # one-time low-precision copy, outside the timing
            for _ in range(args.reps):
                for arm in times:
                    counts[arm].clear()  # one pass's counts (every pass computes the same)
                    common.sync(device)
                    t = time.perf_counter()
                    with mem[arm]:
                        result[arm] = run_arm(arm, backbone, task, examples, prompt, dtype, counts[arm])
                        common.sync(device)
                    times[arm].append(time.perf_counter() - t)
            ref = result["naive"]
            if dtype == torch.float32:
                ref32 = ref
            for arm, t in times.items():
                lp = result[arm]
                diffs = [abs(a - b) for ra, rb in zip(lp, ref, strict=True) for a, b in zip(ra, rb, strict=True)]
                agree = sum(int(a == b) for a, b in zip(argmax(lp), argmax(ref), strict=True))
                if dtype == torch.float32 and arm != "naive":
                    identical[f"{name} {arm}"] = agree == len(examples)
                c, secs = counts[arm], common.med(t)
                row = {
                    "task": name,
                    "dtype": str(dtype).replace("torch.", ""),
                    "arm": arm,
                    "examples": len(examples),
                    "median s": secs,
                    "examples/s": len(examples) / secs,
                    "speedup vs naive": common.med(times["naive"]) / secs,
                    "same predictions as naive": f"{agree}/{len(examples)}",
                    "max |dlogp| vs naive": max(diffs),
                }
                if ref32 is not None:
                    d32 = [abs(a - b) for ra, rb in zip(lp, ref32, strict=True) for a, b in zip(ra, rb, strict=True)]
                    a32 = sum(int(a == b) for a, b in zip(argmax(lp), argmax(ref32), strict=True))
                    row["same predictions as fp32 naive"] = f"{a32}/{len(examples)}"
                    row["mean |dlogp| vs fp32"] = sum(d32) / len(d32)
                row.update(
                    {
                        "real tokens/s": c["real"] / secs,
                        "padded tokens/s": c["padded"] / secs,
                        "forwards": c["forwards"],
                        "MFU bf16 peak": common.forward_flops(backbone.model, c["real"], c["head"]) / secs / pk["bf16"],
                        "peak GiB": mem[arm].gib(resident),
                        "runs s": [round(x, 2) for x in t],
                    }
                )
                rows.append(row)
            print(common.fmt_table(rows[-len(times) :], [c for c in rows[-1] if c != "runs s"]), flush=True)
    info.update(
        results=rows,
        fp32_identical_predictions=identical,
        peaks_gflops={k: v / 1e9 for k, v in pk.items()},
        load_after=common.load_average(),
    )
    print()
    print(f"load {info['load_before']} -> {info['load_after']}")
    if identical:
        print(f"float32: identical predictions to the naive scorer: {all(identical.values())} ({identical})")
    hidden = {"runs s"} | ({"peak GiB"} if device.type != "cuda" else set())
    cols = list(dict.fromkeys(c for r in rows for c in r if c not in hidden))
    common.finish(info, rows, args.json, cols)


if __name__ == "__main__":
    main()
