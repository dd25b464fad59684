"""What each fast path of the scorer buys: training steps and evaluation with one switch changed at a time.

Configurations (softprompt.scoring.ScoringOptions; bf16 autocast unless said):
  plain        fast paths off: one padded forward under autocast on the float32 weights
  lowp         + low-precision weight copy only (one padded forward, sdpa attention)
  +split       + length groups (dynamic padding inside a batch)
  +prompt-kv   + the prompt's keys/values computed once (batch 1) and shared
  all          + eager attention while recording gradients (= the default)
  all-sdpa     the default but torch's sdpa (flash) attention in the backward too
  all-bf16res  the default but a bf16 residual stream

Each configuration runs the same training batches (random batches of 8, as `softprompt train`
draws them) and the same evaluation, interleaved configuration by configuration per batch, for
--reps rounds; medians are reported.

    .venv/bin/python bench/ablation.py                  # ~3 min on 2 quiet cores
    .venv/bin/python bench/ablation.py --configs all --batches 8 --reps 1 --eval 0 --profile   # op-level profile of the default step
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from softprompt.data.batching import collate, encode_examples  # noqa: E402
from softprompt.model.backbones import load_backbone  # noqa: E402
from softprompt.model.prompt import init_prompt  # noqa: E402
from softprompt.scoring import (  # noqa: E402
    ScoringOptions,
    ScoringStats,
    autocast_context,
    batch_choice_scores,
    choice_loss,
    choice_scores,
)
from softprompt.tasks import get_task  # noqa: E402
from softprompt.training import epoch_order  # noqa: E402

OFF = {"share_prompt": False, "share_prefix": False, "split_lengths": False, "eager_backward": False}
CONFIGS = {
    "plain": {"strategy": "plain"},
    "lowp": dict(OFF),
    "+split": dict(OFF, split_lengths=True, share_prefix=True),
    "+prompt-kv": dict(OFF, split_lengths=True, share_prefix=True, share_prompt=True),
    "all": {},
    "all-sdpa": {"eager_backward": False},
    "all-bf16res": {"fp32_residual": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--batches", type=int, default=4, help="training batches of 8 per round")
    ap.add_argument("--eval", type=int, default=48, help="validation examples scored per round (0: skip)")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--profile", action="store_true", help="also print torch.profiler's op table for one round of the default config"
    )
    args = ap.parse_args()

    info = {"machine": common.machine(), "load_before": common.load_average(), "args": vars(args) | {"json": None}}
    bb = load_backbone(args.model)
    task = get_task(args.task)
    train = task.load("train", limit=8 * args.batches, seed=0)
    prompt = init_prompt(bb.model, bb.tokenizer, args.tokens, "text", text=task.description)
    enc = encode_examples(train, bb.tokenizer, n_prompt=args.tokens)
    order = epoch_order(len(enc), 0, 0)
    batches = [collate([enc[i] for i in order[k : k + 8]], bb.tokenizer.pad_token_id) for k in range(0, len(enc), 8)]
    val = (
        encode_examples(task.load("validation", limit=args.eval, seed=0), bb.tokenizer, n_prompt=args.tokens) if args.eval else []
    )
    names = args.configs.split(",")
    n_nonemb = common.non_embedding_params(bb.model)

    def step(batch, options=None, stats=None):
        with autocast_context(bb.device, torch.bfloat16):
            scores = batch_choice_scores(bb.model, prompt.weight, batch, options=options, stats=stats)
        choice_loss(scores, batch.labels).backward()
        prompt.weight.grad = None

    def evaluate(options):
        choice_scores(
            bb.model, val, prompt.weight.detach(), pad_id=bb.tokenizer.pad_token_id, compute_dtype=torch.bfloat16, options=options
        )

    options = {name: ScoringOptions(**CONFIGS[name]) for name in names}
    for name in names:  # warm-up: the weight copy, allocator, first-call costs
        step(batches[0], options[name])
    train_t = {n: [] for n in names}
    eval_t = {n: [] for n in names}
    executed = {}
    for _ in range(args.reps):
        tot = dict.fromkeys(names, 0.0)
        for b in batches:
            for name in names:
                stats = ScoringStats()
                t = time.perf_counter()
                step(b, options[name], stats)
                tot[name] += time.perf_counter() - t
                prev = executed.get(name, {})
                executed[name] = {k: prev.get(k, 0) + v for k, v in stats.items()}
        for name in names:
            train_t[name].append(tot[name])
            if val:
                t = time.perf_counter()
                evaluate(options[name])
                eval_t[name].append(time.perf_counter() - t)
    if args.profile:  # where a default training step spends its time (matmuls vs everything else)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches:
                step(b)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    peak = common.matmul_peak(torch.bfloat16)
    rows = []
    base_train, base_eval = common.med(train_t[names[0]]), common.med(eval_t[names[0]]) if val else None
    for name in names:
        t = common.med(train_t[name])
        ex = {k: v / args.reps for k, v in executed[name].items()}
        flops = common.step_flops(bb.model, ex["real"], ex["head"])
        row = {
            "config": name,
            "train s": t,
            "train ex/s": 8 * len(batches) / t,
            "train speedup": base_train / t,
            "forwards/round": ex["forwards"],
            "padded tokens": ex["padded"],
            "real tokens": ex["real"],
            "MFU bf16": flops / t / peak,
        }
        if val:
            e = common.med(eval_t[name])
            row.update({"eval s": e, "eval speedup": base_eval / e})
        rows.append(row)
    info.update(
        results=rows, train_times=train_t, eval_times=eval_t, peak_bf16_gflops=peak / 1e9, load_after=common.load_average()
    )
    print(f"{args.task}: {len(batches)} training batches of 8 and {len(val)} validation examples per round; {args.reps} rounds")
    print(
        f"load {info['load_before']} -> {info['load_after']}; bf16 peak {peak / 1e9:.0f} GFLOP/s; {n_nonemb / 1e6:.1f}M non-embedding parameters"
    )
    common.finish(info, rows, args.json)


if __name__ == "__main__":
    main()
