"""`softprompt train`: one flag per TrainConfig field, then `softprompt.training.train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from softprompt.cli.common import add_config_flags, config_values, print_table, result_row
from softprompt.config import TrainConfig


def cmd_train(a: argparse.Namespace) -> int:
    from softprompt.distributed import setup_data_parallel
    from softprompt.training import RunComplete, train

    cfg = TrainConfig(**config_values(a))
    out = run_out(a, cfg)
    try:
        res = train(cfg, out, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet, trust_remote_code=a.trust_remote_code)
    except RunComplete as done:  # --resume of a finished run: say so, change nothing
        if setup_data_parallel(cfg.device).is_main:
            print(done)
        return 0
    if not setup_data_parallel(cfg.device).is_main:  # under `accelerate launch`, one summary
        return 0
    label = {"prompt": "soft (prompt, last)", "hard": "hard (PEZ token rows, last)"}.get(cfg.method, cfg.method)
    rows = [{"prompt": label, **result_row(res.final)}]
    hard, typed = res.hard_prompt, res.hard_prompt and res.hard_prompt.text_final
    if typed:
        rows.append(
            {"prompt": "hard, its text typed", "accuracy": typed.accuracy, "f1_macro": typed.f1_macro, "acc_norm": typed.acc_norm}
        )
    rows += [{"prompt": name.replace("_", " "), **result_row(r)} for name, r in res.baselines.items()]
    print(
        f"\n{res.final.task} {res.final.split} (n={res.final.n}); best epoch {res.best['epoch']} "
        f"{res.best['metric']} {res.best['value']:.4f}; trainable parameters {res.parameters['trainable']:,}"
    )
    print_table(rows)
    if hard:
        last = hard.last
        same = "" if last.retokenizes_to_same_ids else " (typed, it tokenizes to other ids)"
        print(f"hard prompt: {last.text!r}{same}; tokens {last.tokens}")
        if hard.text_error is not None:
            print(f"its text was not scored: {hard.text_error}")
    print(f"run saved to {out}")
    return 0


def run_out(a: argparse.Namespace, cfg: TrainConfig | None = None) -> Path:
    """--out, else runs/TASK-METHOD-sSEED."""
    cfg = cfg or TrainConfig(**config_values(a))
    return Path(a.out or f"runs/{cfg.task.replace('/', '_').removesuffix('.toml')}-{cfg.method}-s{cfg.seed}")


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a soft prompt (or a hard prompt, or a fine-tuning/LoRA baseline) on a task",
        description="Train a soft prompt on a task with a frozen causal LM, then evaluate it next to "
        "no prompt and the English prompt. Every training option is a flag (softprompt.config.TrainConfig).",
    )
    add_config_flags(p)
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.add_argument("--out", default=None, help="run directory (default: runs/TASK-METHOD-sSEED)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)
