"""`softprompt baselines`: majority, no prompt, English prompt, fine-tuning, LoRA (and, when named, a hard prompt)
on one task, in one table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from softprompt.cli.common import MODEL_FIELDS, add_config_flags, add_model_args, config_values, print_table
from softprompt.config import BASELINE_METHODS, DEFAULT_BASELINES, TrainConfig

SHARED_FIELDS = (
    "max_train",
    "max_eval",
    "epochs",
    "batch_size",
    "lora_r",
    "lora_alpha",
    "seed",
    "tokens",
    "init_text",
)  # TrainConfig flags of this command


def cmd_baselines(a: argparse.Namespace) -> int:
    from softprompt.runs.baselines import table_rows
    from softprompt.training.baseline_runs import run_baselines

    started = time.perf_counter()
    cfg = TrainConfig(task=a.task, **config_values(a, MODEL_FIELDS + SHARED_FIELDS))
    out = Path(a.out or f"runs/baselines-{Path(a.task).stem if a.task.endswith('.toml') else a.task}-s{a.seed}")
    given = (("finetune", a.finetune_lr), ("lora", a.lora_lr), ("hard", a.hard_lr), ("deep", a.deep_lr))
    lr = {m: {"lr": v} for m, v in given if v is not None}
    rows = run_baselines(  # loads the model once --out is locked and the data read (a fault there fails first)
        cfg,
        out,
        methods=a.methods,
        overrides=lr,
        overwrite=a.overwrite,
        progress=not a.quiet,
        trust_remote_code=a.trust_remote_code,
    )
    n = rows[0]["n"] if rows else 0
    print(f"\n{a.task} validation (n={n}); training examples: {a.max_train or 'all'}; epochs {a.epochs}; seed {a.seed}")
    print_table(table_rows(rows))
    for note in dict.fromkeys(r["calibration_note"] for r in rows if r.get("calibration_note")):
        print(f"calibration: {note}")
    for r in rows:
        if r["method"] == "hard" and "hard_prompt" in r:  # (the English prompt's row names its text too)
            typed = "not scored" if r.get("text_accuracy") is None else f"accuracy {r['text_accuracy']:.4f}"
            same = "" if r["retokenizes_to_same_ids"] else ", tokenizes to other ids"
            print(f"hard prompt (accuracy above: its token rows): {r['hard_prompt']!r}; typed as text{same}: {typed}")
    print(f"results in {out / 'baselines.json'} ({time.perf_counter() - started:.0f} s)")
    return 0


def add_baselines(sub) -> None:
    p = sub.add_parser(
        "baselines",
        help="majority class, no prompt, English prompt, full fine-tuning, LoRA (and a hard prompt) on a task, in one table",
        description="Evaluate the untrained baselines and train the fine-tuning, LoRA and (when named) hard-prompt "
        "baselines (normal run directories under --out, resumable) on the same training subsample; print one table.",
    )
    p.add_argument("--task", required=True, help="built-in task name or a task .toml file")
    add_model_args(p)
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_BASELINES),
        choices=BASELINE_METHODS,
        metavar="METHOD",
        help=f"baselines to run, some of {' '.join(BASELINE_METHODS)} (default: {' '.join(DEFAULT_BASELINES)}; "
        "hard: a discrete prompt trained by PEZ projected gradients; deep: keys/values at every layer, prefix tuning)",
    )
    add_config_flags(
        p,
        SHARED_FIELDS,
        helps={
            "max_train": "a seeded subsample of N training examples (all methods)",
            "epochs": "epochs of the finetune, LoRA, hard- and deep-prompt runs",
            "tokens": "length of the hard and deep prompts (default 20)",
            "init_text": "the hard and deep prompts' initial text (default: the task's description)",
        },
    )
    p.add_argument("--finetune-lr", type=float, default=None, help="default 2e-5")
    p.add_argument("--lora-lr", type=float, default=None, help="default 1e-3")
    p.add_argument("--hard-lr", type=float, default=None, help="default: relative to the embedding scale, as train's")
    p.add_argument("--deep-lr", type=float, default=None, help="default: relative to each layer's key/value scale, as train's")
    p.add_argument("--out", default=None, help="output directory (default: runs/baselines-TASK-sSEED)")
    p.add_argument("--overwrite", action="store_true", help="retrain finetune/LoRA/hard/deep runs already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_baselines)
