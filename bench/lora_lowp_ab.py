"""Does LoRA train faster through the bf16 copy of its frozen weights? An interleaved A/B of one training step.

The scorer keeps a bf16 copy of a model's frozen weights on the CPU (`scoring.lowp`), so bf16 autocast does not
cast every frozen fp32 weight again in every forward. Since issue #28 the copy also serves LoRA: the adapters are
shared (trained in fp32), only the frozen weights are stored in bf16. This times one LoRA step (forward + backward
of the choice loss, the optimiser aside) on the same batches with the copy and without, alternating A/B/B/A per
batch so that load from other processes falls on both arms alike. It reports process CPU seconds per step (one
torch thread), median and mean, and the ratio; with `--wall` also wall seconds. A ratio measured under load is a
direction, not a published speed figure: run it on an idle machine for that.

    .venv/bin/python bench/lora_lowp_ab.py --json bench/results/lora_lowp_ab.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import load_average, write_result
from peft import LoraConfig, inject_adapter_in_model

from softprompt import scoring
from softprompt.data.batching import collate, encode_examples
from softprompt.model.backbones import load_backbone
from softprompt.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="passes over the batches, each timing both arms")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    backbone = load_backbone(args.model)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)  # softprompt's LoRA baseline
    model = inject_adapter_in_model(lora, backbone.model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    trained = [p for p in model.parameters() if p.requires_grad]
    examples = get_task(args.task).load("train", None, limit=args.examples, seed=0)
    encoded = encode_examples(examples, backbone.tokenizer, prompt_format="chat")
    pad = backbone.tokenizer.pad_token_id
    batches = [collate(encoded[i : i + args.batch_size], pad) for i in range(0, len(encoded), args.batch_size)]

    def step(batch, copy: bool) -> tuple[float, float]:
        options = scoring.ScoringOptions(lowp_weights=copy)
        wall, cpu = time.perf_counter(), time.process_time()
        with scoring.autocast_context(torch.device("cpu"), torch.bfloat16):
            scores = scoring.batch_choice_scores(model, None, batch, options=options)
        torch.autograd.grad(scoring.choice_loss(scores, batch.labels), trained)
        return time.process_time() - cpu, time.perf_counter() - wall

    warm = {arm: step(batches[0], arm) for arm in (True, False)}  # the copy is built in the first step with it
    cpu: dict[bool, list[float]] = {True: [], False: []}
    wall: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(args.reps):
        for batch in batches:
            for arm in (True, False) if rep % 2 == 0 else (False, True):
                c, w = step(batch, arm)
                cpu[arm].append(c)
                wall[arm].append(w)
    arms = {
        ("copy" if arm else "cast per use"): {
            "cpu_s_per_step_median": statistics.median(cpu[arm]),
            "cpu_s_per_step_mean": statistics.mean(cpu[arm]),
            "wall_s_per_step_median": statistics.median(wall[arm]),
            "warm_up_step_cpu_s": warm[arm][0],
            "steps": len(cpu[arm]),
        }
        for arm in (True, False)
    }
    ratio = statistics.median(cpu[False]) / statistics.median(cpu[True])
    for name, row in arms.items():
        print(name, {k: round(v, 3) for k, v in row.items()})
    print(f"cast per use / copy (median CPU s per step): {ratio:.3f}")
    if args.json:
        write_result(args.json, args, load_before, {"arms": arms, "ratio_cpu_median": ratio})


if __name__ == "__main__":
    main()
