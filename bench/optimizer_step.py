"""How long one Adam(W) step takes over a real model's parameters, per torch implementation: the cost full
fine-tuning pays once per optimiser step (a LoRA's or a prompt's parameters are too few to matter).

softprompt's loop uses torch's fused kernel where it exists (`training.trainables.fused_where_available`: CPU, CUDA);
torch's default on a CPU is the `foreach` implementation, which the plain recipes (`AdamW(model.parameters(), lr)`)
get. Each implementation is stepped over every parameter of the model with random gradients, interleaved
A/B/B/A, and timed in wall and process CPU seconds; the medians and the ratio are printed.

    .venv/bin/python bench/optimizer_step.py --json bench/results/optimizer_step_epyc.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import load_average, write_result

from softprompt.model.backbones import load_backbone

IMPLEMENTATIONS = {"foreach (torch's default)": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per implementation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    params = [p.requires_grad_(True) for p in load_backbone(args.model).model.parameters()]
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    optimizers = {name: torch.optim.AdamW(params, lr=1e-5, **kw) for name, kw in IMPLEMENTATIONS.items()}
    for opt in optimizers.values():
        opt.step()  # allocates the moments: not timed
    wall: dict[str, list[float]] = {name: [] for name in optimizers}
    cpu: dict[str, list[float]] = {name: [] for name in optimizers}
    for k in range(args.steps):
        for name in list(optimizers) if k % 2 == 0 else list(optimizers)[::-1]:
            w, c = time.perf_counter(), time.process_time()
            optimizers[name].step()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    rows = {
        name: {"wall_s_median": statistics.median(wall[name]), "cpu_s_median": statistics.median(cpu[name]), "steps": args.steps}
        for name in optimizers
    }
    ratio = rows["foreach (torch's default)"]["wall_s_median"] / rows["fused"]["wall_s_median"]
    n = sum(p.numel() for p in params)
    for name, row in rows.items():
        print(f"{name}: {row['wall_s_median']:.3f} s wall, {row['cpu_s_median']:.3f} s CPU per step ({n / 1e6:.1f}M parameters)")
    print(f"foreach / fused (median wall s per step): {ratio:.2f}x")
    if args.json:
        write_result(args.json, args, load_before, {"parameters": n, "implementations": rows, "ratio_wall_median": ratio})


if __name__ == "__main__":
    main()
