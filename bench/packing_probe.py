"""Probe of a technique NOT kept: packing a training batch into one sequence (one forward, no padding).

The scorer's fast path splits a batch into length groups (a few forwards with a little padding).
Packing instead concatenates every example's tokens into ONE row after the shared soft-prompt
keys/values, with per-example RoPE positions, and runs attention example by example (a custom
transformers attention function: each segment sees the prompt and itself, causally). The linear
layers then see all tokens at once (the largest M possible) and the many small ops run once per
layer instead of once per group. It only handles single-token choices (RTE, SST-2, ...) on llama-style
models, so it is a probe, not a path of the package.

Checks first that it computes the same scores and gradient as the default path (float32), then times
training steps (bf16 autocast, the default) interleaved with the default path, medians over rounds.

    .venv/bin/python bench/packing_probe.py          # ~2 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from softprompt import scoring  # noqa: E402
from softprompt.data.batching import collate, encode_examples  # noqa: E402
from softprompt.model.backbones import load_backbone  # noqa: E402
from softprompt.model.prompt import init_prompt  # noqa: E402
from softprompt.scoring import (  # noqa: E402
    autocast_context,
    batch_choice_scores,
    choice_loss,
    kv_cache,
    kv_plan,
    kv_prefix,
)
from softprompt.tasks import get_task  # noqa: E402
from softprompt.training import epoch_order  # noqa: E402


def segment_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
    """Attention of a packed row: each segment attends to the cached prompt and, causally, to itself."""
    from transformers.models.llama.modeling_llama import repeat_kv

    n = key.shape[2] - query.shape[2]  # cached prompt positions in front
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    outs = []
    for s, e in kw["packed_segments"]:
        k = torch.cat([key[:, :, :n], key[:, :, n + s : n + e]], dim=2)
        v = torch.cat([value[:, :, :n], value[:, :, n + s : n + e]], dim=2)
        w = torch.matmul(query[:, :, s:e], k.transpose(2, 3)) * scaling + kw["packed_masks"][e - s]
        outs.append(torch.matmul(torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype), v))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def packed_scores(model, prompt: torch.Tensor, batch, stats: scoring.ScoringStats) -> torch.Tensor:
    """`batch_choice_scores` for single-token choices, through one packed forward."""
    low = scoring.compute_model(model, scoring.autocast_dtype(prompt.device))
    n = prompt.shape[0]
    lengths = batch.attention_mask.sum(1).tolist()
    rows = [batch.input_ids[r, : lengths[r]].tolist() for r in range(len(lengths))]
    row_ex = batch.row_example.tolist()
    units: list[list[int]] = [[] for _ in range(batch.num_examples)]
    for r, e in enumerate(row_ex):
        units[e].append(r)
    flat, pos, segs = [], [], []
    for u in units:
        length = kv_plan.longest_common_prefix([rows[r] for r in u])
        if any(lengths[r] > length for r in u):
            raise SystemExit("packing_probe handles single-token choices only (e.g. --task rte or sst2)")
        segs.append((len(flat), len(flat) + length))
        flat += rows[u[0]][:length]
        pos += range(n, n + length)
    masks = {}
    for s, e in segs:
        m = torch.zeros(e - s, n + e - s)
        m[:, n:] = torch.triu(torch.full((e - s, e - s), float("-inf")), 1)
        masks[e - s] = m
    kv0 = kv_prefix.prompt_kv(low, prompt, scoring.DEFAULT, stats)
    cfg = low.config
    saved = cfg._attn_implementation  # noqa: SLF001
    cfg._attn_implementation = "softprompt_packed_probe"  # noqa: SLF001
    try:
        emb = low.get_input_embeddings()(torch.tensor([flat])).to(kv_cache.residual_dtype(low, scoring.DEFAULT))
        out = scoring.base_model(low)(
            inputs_embeds=emb,
            position_ids=torch.tensor([pos]),
            cache=kv_cache.new_cache(kv0),
            use_cache=True,
            packed_segments=segs,
            packed_masks=masks,
        )
    finally:
        cfg._attn_implementation = saved  # noqa: SLF001
    idx = [segs[row_ex[r]][0] + p for r, p in zip(batch.target_row.tolist(), batch.target_pos.tolist(), strict=True)]
    picked = out.last_hidden_state[0, torch.tensor(idx)]
    stats["forwards"] += 1
    stats["real"] += len(flat)
    stats["head"] += len(idx)
    return scoring.summed_choice_scores(batch, scoring.head_logprobs(model, low, picked, scoring.DEFAULT))


def main() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register("softprompt_packed_probe", segment_attention)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--batches", type=int, default=8, help="random training batches of 8 per round")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    info = {"machine": common.machine(), "load_before": common.load_average(), "args": vars(args) | {"json": None}}
    bb = load_backbone(args.model)
    task = get_task(args.task)
    enc = encode_examples(task.load("train", limit=8 * args.batches, seed=0), bb.tokenizer, n_prompt=args.tokens)
    order = epoch_order(len(enc), 0, 0)
    batches = [collate([enc[i] for i in order[k : k + 8]], bb.tokenizer.pad_token_id) for k in range(0, len(enc), 8)]
    prompt = init_prompt(bb.model, bb.tokenizer, args.tokens, "text", text=task.description).weight

    def step(batch, packed: bool, dtype, st=None):
        st = st if st is not None else scoring.ScoringStats()
        with autocast_context(bb.device, dtype):
            scores = (
                packed_scores(bb.model, prompt, batch, st) if packed else batch_choice_scores(bb.model, prompt, batch, stats=st)
            )
        choice_loss(scores, batch.labels).backward()
        grad, prompt.grad = prompt.grad, None
        return scores.detach(), grad

    # same numbers as the default path, in float32
    s0, g0 = step(batches[0], False, None)
    s1, g1 = step(batches[0], True, None)
    info["fp32_max_abs_score_diff"] = float((s0 - s1).abs().max())
    info["fp32_grad_max_abs_diff"] = float((g0 - g1).abs().max())
    print(
        f"float32: max |score diff| {info['fp32_max_abs_score_diff']:.2e}, max |grad diff| {info['fp32_grad_max_abs_diff']:.2e}"
    )

    arms = {"default (length groups)": False, "packed (one forward)": True}
    times = {a: [] for a in arms}
    stats = {a: {} for a in arms}
    for b in batches[:2]:  # warm-up
        for packed in arms.values():
            step(b, packed, torch.bfloat16)
    for _ in range(args.reps):
        tot = dict.fromkeys(arms, 0.0)
        for b in batches:
            for arm, packed in arms.items():
                st = scoring.ScoringStats()
                t = time.perf_counter()
                step(b, packed, torch.bfloat16, st)
                tot[arm] += time.perf_counter() - t
                stats[arm] = {k: stats[arm].get(k, 0) + v / args.reps for k, v in st.items()}
        for arm in arms:
            times[arm].append(tot[arm])
    peak = common.matmul_peak(torch.bfloat16)
    rows = []
    base = common.med(times["default (length groups)"])
    for arm in arms:
        t = common.med(times[arm])
        st = stats[arm]
        rows.append(
            {
                "path": arm,
                "s per round": t,
                "examples/s": 8 * len(batches) / t,
                "speedup": base / t,
                "forwards/round": st["forwards"],
                "MFU bf16": common.step_flops(bb.model, st["real"], st["head"]) / t / peak,
            }
        )
    info.update(results=rows, times=times, peak_bf16_gflops=peak / 1e9, load_after=common.load_average())
    print(
        f"{args.task}: {len(batches)} batches of 8 per round, {args.reps} rounds; load {info['load_before']} -> {info['load_after']}"
    )
    common.finish(info, rows, args.json)


if __name__ == "__main__":
    main()
