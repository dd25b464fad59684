"""Does a DePT-style split measure well here? (issue 38 item 3: "a DePT-style split ... as a method if it measures well")

DePT (Shi & Lipani 2024, "DePT: Decomposed Prompt Tuning for Parameter-Efficient Fine-tuning") trains a shorter soft
prompt plus a low-rank update of the frozen input embeddings by position: the embedding of the input's token at
position p gets `(A @ B)[p]` added, A (s, r), B (r, d), B starting at zero (training starts from the plain prompt), so
a prompt of m tokens becomes m' < m tokens and s*r + r*d parameters at about the same count, and each step scores
m - m' fewer positions. This screen measures it before anything is built into the library: the update is a forward hook
on the model's input-embedding module that adds `(A @ B)[:L]` to every (rows, L) lookup, which is DePT exactly where
the scorer embeds whole right-padded input rows at once (the `plain` strategy: `scoring.model.prompt_embeds`). Every
arm here, the default prompt included, trains and scores through `plain` so the arms differ only in the method; the
prefix tree (the CPU default) embeds rows in pieces at offsets and would need the positions threaded through it, which
is the library work this screen decides on. The library's own `train()` runs every arm (`build_trainables` is wrapped
to add A and B to the trainables and register the hook; `--ab-lr` gives them their own learning rate, in units of the
model's embedding std like the prompt's, through `optimizer_and_schedule`). Only the dev points of the curve are read
(each scored with the prompt, A and B of that step), and no reference baselines run: the hook stays on for the whole
run, so `best.safetensors` without its A and B (or an evaluation with no prompt) would be another model.

    .venv/bin/python bench/dept_screen.py --task sst2 --train 512 --epochs 1 --dev 100 --eval-every 16 \\
        --seeds 0,1,2,3,4 --arms prompt-20,dept-10 --threads 1 --runs runs/dept --json bench/results/dept_screen_sst2.json

Reported per arm and seed: dev accuracy at each evaluation point (what a choice may use), the step count, the
trainable count; paired differences from the first arm over seeds (95% t interval, wins/ties/losses). Step prices are
not measured here (the arms may share the cores): `bench/step_cost.py` prices a prompt of each length.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import ROOT, load_average, machine  # noqa: F401  (puts src/ on the path)
from convergence import paired

ARMS = {  # name: (prompt tokens, DePT rank or 0 for none)
    "prompt-20": (20, 0),
    "prompt-10": (10, 0),
    "dept-10": (10, 8),  # 10 tokens + rank 8: 5,760 + 8 * (s + 576) parameters, about the 11,520 of 20 tokens at s ~ 140
    "dept-10-r4": (10, 4),
}


class PositionUpdate:
    """DePT's low-rank update of the input embeddings by position, applied by a forward hook on the embedding module."""

    def __init__(self, positions: int, rank: int, width: int, seed: int, device, dtype):
        gen = torch.Generator().manual_seed(10_000 + seed)
        # A ~ N(0, 1/r): each row of A @ B has the size of B's entries, which move by ~ the learning rate per step
        self.a = torch.nn.Parameter((torch.randn(positions, rank, generator=gen) / rank**0.5).to(device, dtype))
        self.b = torch.nn.Parameter(torch.zeros(rank, width, device=device, dtype=dtype))
        self.lr = 0.0  # set by the caller

    def hook(self, module, inputs, output):
        ids = inputs[0]
        length = min(ids.shape[-1], self.a.shape[0])
        delta = (self.a[:length] @ self.b).to(output.dtype)
        # positions past s keep their embeddings (DePT truncates inputs at s)
        return output + torch.nn.functional.pad(delta, (0, 0, 0, ids.shape[-1] - length))


@contextlib.contextmanager
def dept_installed(rank: int, ab_lr: float | None, seed: int):
    """Wrap the library's `build_trainables` (add A, B and the hook) and `optimizer_and_schedule` (their own rate)."""
    import softprompt.training.recipe as recipe
    import softprompt.training.step as step
    from softprompt.model.prompt import embedding_scale
    from softprompt.training.trainables import lr_lambda

    build, make_opt = recipe.build_trainables, step.optimizer_and_schedule
    handles = []
    ab_names = ("dept.a", "dept.b")

    def build_with_update(cfg, data, dp, source=None):
        trainables = build(cfg, data, dp, source)
        model = data.backbone.model
        emb = model.get_input_embeddings()
        positions = max(len(row.ids) for e in data.encoded for row in e.rows)  # s: the longest training row
        update = PositionUpdate(positions, rank, emb.weight.shape[1], seed, emb.weight.device, torch.float32)
        handles.append(emb.register_forward_hook(update.hook))
        trainables.params.update({ab_names[0]: update.a, ab_names[1]: update.b})
        update.lr = (ab_lr * embedding_scale(model)) if ab_lr is not None else trainables.lr
        trainables.dept = update
        return trainables

    def optimizer_with_groups(cfg, trainables, total_steps):
        update = getattr(trainables, "dept", None)
        if update is None:
            return make_opt(cfg, trainables, total_steps)
        rest = [p for n, p in trainables.params.items() if n not in ab_names]
        groups = [{"params": rest, "lr": trainables.lr}, {"params": [update.a, update.b], "lr": update.lr}]
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(groups, lr=trainables.lr, weight_decay=cfg.weight_decay)
        schedule = lr_lambda(cfg.schedule, int(cfg.warmup * total_steps), total_steps)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    if rank:
        recipe.build_trainables, step.optimizer_and_schedule = build_with_update, optimizer_with_groups
    try:
        yield
    finally:
        recipe.build_trainables, step.optimizer_and_schedule = build, make_opt
        for h in handles:
            h.remove()


def paired_text(a: list[float], b: list[float]) -> str:
    """a - b in points: mean [95% t interval] wins/ties/losses (`convergence.paired`)."""
    mean, half, wtl = paired(a, b)
    return f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}] {wtl}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--dev", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=16)
    ap.add_argument("--max-eval", type=int, default=100, help="validation subsample (not used to choose)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--arms", default="prompt-20,dept-10", help=f"some of {', '.join(ARMS)}")
    ap.add_argument("--ab-lr", type=float, default=None, help="A, B's rate in embedding stds (default: the prompt's)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "dept")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from softprompt.config import TrainConfig
    from softprompt.io import write_json
    from softprompt.model.backbones import load_backbone
    from softprompt.records.run import RunRecord
    from softprompt.runs.state import COMPLETE, run_state
    from softprompt.training import train

    if args.threads:
        torch.set_num_threads(args.threads)
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        sys.exit(f"unknown arm(s) {unknown}: expected some of {list(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    backbone = load_backbone(args.model)
    started = time.perf_counter()
    results: dict[str, dict[str, dict]] = {}
    for arm in arms:
        tokens, rank = ARMS[arm]
        results[arm] = {}
        for s in seeds:
            cfg = TrainConfig(task=args.task, model=args.model, max_train=args.train, epochs=args.epochs, dev_size=args.dev,
                              eval_every=args.eval_every, max_eval=args.max_eval, tokens=tokens, seed=s,
                              scoring_strategy="plain")  # fmt: skip
            name = arm if args.ab_lr is None or not rank else f"{arm}-ablr{args.ab_lr}"
            out = args.runs / Path(args.task).stem / f"{name}-s{s}"
            state = run_state(out, cfg)
            if state.kind != COMPLETE:
                with dept_installed(rank, args.ab_lr, s):
                    train(cfg, out, backbone=backbone, progress=False, baselines=False, resume=state.kind != "absent")
            record = RunRecord.read(out)
            history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
            curve = [{"step": h["step"], "dev": h.get("dev", {}).get("accuracy"), "val": h["accuracy"]} for h in history]
            trainable = record.parameters.trainable if record.parameters else None
            results[arm][str(s)] = {"curve": curve, "trainable": trainable, "wall_s": record.wall_time_s}
            print(
                f"{arm} seed {s}: " + " ".join(f"{c['step']}:{c['dev']:.2f}" for c in curve if c["dev"] is not None), flush=True
            )
    lines = []
    steps = [c["step"] for c in results[arms[0]][str(seeds[0])]["curve"]]
    for i, step_n in enumerate(steps):
        for arm in arms:
            devs = [results[arm][str(s)]["curve"][i]["dev"] for s in seeds]
            line = f"step {step_n:4d} {arm:12s} dev {statistics.mean(devs):.3f} +- {statistics.pstdev(devs):.3f}"
            if arm != arms[0] and len(seeds) > 1:
                ref = [results[arms[0]][str(s)]["curve"][i]["dev"] for s in seeds]
                line += f"  vs {arms[0]}: {paired_text(devs, ref)}"
            lines.append(line)
    print("\n".join(lines))
    if args.json:
        info = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "arms": {a: {"tokens": ARMS[a][0], "rank": ARMS[a][1]} for a in arms},
            "machine": machine(),
            "load_average_end": load_average(),
            "wall_time_s": round(time.perf_counter() - started, 1),
            "results": results,
            "summary": lines,
        }
        write_json(args.json, info)


if __name__ == "__main__":
    main()
