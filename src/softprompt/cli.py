"""The command line: a thin layer over the package's functions. Errors print one line, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from softprompt.errors import SoftPromptError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)


def print_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    if not rows:
        return
    columns = list(columns or rows[0].keys())

    def fmt(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="offline alias, local folder or Hub id (default: smollm2-135m)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weight dtype")
    p.add_argument(
        "--compute-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="autocast dtype for matmuls; auto = bfloat16 where the CPU/GPU runs it natively, else float32",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.add_argument(
        "--data-dir", default=None, help="local data folder (default: $SOFTPROMPT_DATA or ../shared/data); 'hub' for the Hub"
    )
    p.add_argument(
        "--max-length", type=int, default=512, help="max tokens per row, prompt included (inputs are cut, answers never)"
    )


# ----------------------------------------------------------------------------- train


def cmd_train(a: argparse.Namespace) -> int:
    from softprompt.train import TrainConfig, train

    cfg = TrainConfig(
        task=a.task,
        model=a.model,
        method=a.method,
        tokens=a.tokens,
        init=a.init,
        init_text=a.init_text,
        lr=a.lr,
        optimizer=a.optimizer,
        loss=a.loss,
        weight_decay=a.weight_decay,
        epochs=a.epochs,
        batch_size=a.batch_size,
        group_by_length=a.group_by_length,
        grad_accum=a.grad_accum,
        schedule=a.schedule,
        warmup=a.warmup,
        seed=a.seed,
        max_train=a.max_train,
        max_eval=a.max_eval,
        max_length=a.max_length,
        dtype=a.dtype,
        compute_dtype=a.compute_dtype,
        lora_r=a.lora_r,
        data_dir=a.data_dir,
        device=a.device,
        checkpoint_every=a.checkpoint_every,
    )
    out = Path(a.out or f"runs/{cfg.task.replace('/', '_').removesuffix('.toml')}-{cfg.method}-s{cfg.seed}")
    res = train(cfg, out, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet)
    from softprompt.distributed import setup_data_parallel

    if not setup_data_parallel(cfg.device).is_main:  # under `accelerate launch`, one summary
        return 0
    rows = [{"prompt": f"soft ({cfg.method}, last)" if cfg.method == "prompt" else cfg.method, **_row(res.final)}]
    rows += [{"prompt": name.replace("_", " "), **_row(r)} for name, r in res.baselines.items()]
    print(
        f"\n{res.final.task} {res.final.split} (n={res.final.n}); best epoch {res.best['epoch']} "
        f"{res.best['metric']} {res.best['value']:.4f}; trainable parameters {res.parameters['trainable']:,}"
    )
    print_table(rows)
    print(f"run saved to {out}")
    return 0


def _row(r) -> dict:
    return {"accuracy": r.accuracy, "f1_macro": r.f1_macro, "acc_norm": r.acc_norm}


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a soft prompt (or a fine-tuning/LoRA baseline) on a task",
        description="Train a soft prompt on a task with a frozen causal LM, then evaluate it next to "
        "no prompt and the English prompt.",
    )
    p.add_argument("--task", required=True, help="built-in task name (see `softprompt tasks`) or a task .toml file")
    _add_model_args(p)
    p.add_argument("--method", default="prompt", choices=["prompt", "finetune", "lora"])
    p.add_argument("--tokens", type=int, default=20, help="soft prompt length n")
    p.add_argument("--init", default="text", choices=["text", "random", "vocab", "labels"])
    p.add_argument("--init-text", default=None, help="text for --init text (default: the task's description)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 3e-2 prompt, 2e-5 finetune, 1e-3 lora)")
    p.add_argument("--optimizer", default="adamw", choices=["adam", "adamw"])
    p.add_argument(
        "--loss",
        default="choices",
        choices=["choices", "lm"],
        help="choices: cross-entropy over the choices' log-likelihoods; lm: NLL of the correct answer (PEFT's recipe)",
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--group-by-length",
        action="store_true",
        help="batches of similar length (less padding, ~17%% faster on RTE; other batches than the default random ones)",
    )
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--schedule", default="linear", choices=["linear", "cosine", "constant"])
    p.add_argument("--warmup", type=float, default=0.06, help="warmup as a fraction of all steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=None, help="few-shot: a seeded subsample of N training examples")
    p.add_argument("--max-eval", type=int, default=None, help="evaluate on a seeded subsample of N validation examples")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N optimiser steps")
    p.add_argument("--out", default=None, help="run directory (default: runs/TASK-METHOD-sSEED)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------- eval


def cmd_eval(a: argparse.Namespace) -> int:
    from softprompt.backbones import load_backbone, resolve_compute_dtype
    from softprompt.evaluate import Evaluator
    from softprompt.runs import load_run
    from softprompt.tasks import get_task

    run = load_run(a.run) if a.run else None
    task_name = a.task or (run.task if run else None)
    if not task_name or task_name == "unknown":
        raise SoftPromptError("--task is required (the run does not name a task)")
    task = get_task(task_name)
    backbone = load_backbone(a.model, dtype=a.dtype, device=a.device, trust_remote_code=a.trust_remote_code)
    ev = Evaluator(
        backbone,
        data_dir=a.data_dir,
        max_length=a.max_length,
        compute_dtype=resolve_compute_dtype(a.compute_dtype, backbone.device),
        progress=not a.quiet,
    )
    rows = []
    if run is not None:
        prompt = run.prompt(a.which)
        prompt.check_model(backbone.hidden_size, where=f"the prompt of {a.run}")
        rows.append(
            {"prompt": f"soft {a.run}", **_row(ev.evaluate(task, prompt.weight.detach(), split=a.split, limit=a.max_eval))}
        )
    if a.no_prompt or run is None and a.hard_prompt is None and not a.english:
        rows.append({"prompt": "no prompt", **_row(ev.evaluate(task, None, split=a.split, limit=a.max_eval))})
    if a.english:
        rows.append(
            {
                "prompt": "english prompt",
                **_row(ev.evaluate(task, None, hard_prompt=task.description, split=a.split, limit=a.max_eval)),
            }
        )
    if a.hard_prompt:
        rows.append(
            {
                "prompt": f"hard {a.hard_prompt[:30]!r}",
                **_row(ev.evaluate(task, None, hard_prompt=a.hard_prompt, split=a.split, limit=a.max_eval)),
            }
        )
    print(f"{task.name} {a.split}")
    print_table(rows)
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained prompt, no prompt, or a hard prompt on a task split")
    p.add_argument("--run", default=None, help="run directory whose soft prompt is evaluated")
    p.add_argument("--which", default="last", choices=["last", "best"], help="the run's last or best-epoch prompt")
    p.add_argument("--task", default=None, help="task (default: the run's task); any task works: cross-task transfer")
    _add_model_args(p)
    p.add_argument("--split", default="validation", choices=["train", "validation"])
    p.add_argument("--no-prompt", action="store_true", help="also evaluate with no prompt (template only)")
    p.add_argument("--english", action="store_true", help="also evaluate the task description as a hard prompt")
    p.add_argument("--hard-prompt", default=None, help="evaluate this text as a hard prompt")
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)


# ----------------------------------------------------------------------------- generate, models, tasks


def cmd_generate(a: argparse.Namespace) -> int:
    from softprompt.backbones import load_backbone
    from softprompt.generate import generate
    from softprompt.runs import load_run

    backbone = load_backbone(a.model, dtype=a.dtype, device=a.device, trust_remote_code=a.trust_remote_code)
    prompt = None
    if a.run:
        sp = load_run(a.run).prompt()
        sp.check_model(backbone.hidden_size, where=f"the prompt of {a.run}")
        prompt = sp.weight.detach()
    print(a.text + generate(backbone, a.text, prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed))
    return 0


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a soft prompt in front of the input")
    p.add_argument("text", help="input text")
    p.add_argument("--run", default=None, help="run directory whose soft prompt is used (default: none)")
    _add_model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)


def cmd_models(a: argparse.Namespace) -> int:
    from softprompt.backbones import list_models

    print_table(list_models())
    return 0


def cmd_tasks(a: argparse.Namespace) -> int:
    from softprompt.tasks import BUILTIN_TASKS
    from softprompt.tasks.stats import task_stats

    if not a.stats:
        print_table(
            [
                {"task": t.name, "classes": "/".join(t.label_words), "metric": t.metric, "description": t.description}
                for t in BUILTIN_TASKS.values()
            ]
        )
        return 0
    print_table(task_stats(list(a.task or BUILTIN_TASKS), a.data_dir))
    return 0


def add_info(sub) -> None:
    sub.add_parser("models", help="list offline model aliases and the Hub default").set_defaults(func=cmd_models)
    p = sub.add_parser("tasks", help="list built-in tasks (--stats: split sizes and majority baselines)")
    p.add_argument("--stats", action="store_true", help="load each task's files: sizes, label balance, majority accuracy")
    p.add_argument("--task", action="append", help="only these tasks (names or .toml files)")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_tasks)


# ----------------------------------------------------------------------------- PEFT


def cmd_export(a: argparse.Namespace) -> int:
    from softprompt.peft_interop import export_peft

    print(f"PEFT adapter written to {export_peft(a.run, a.peft, which=a.which)}")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from softprompt.peft_interop import import_peft

    out = import_peft(a.adapter, a.out, task=a.task, model=a.model, allow_pickle=a.allow_pickle)
    print(f"run written to {out}")
    return 0


def add_peft(sub) -> None:
    p = sub.add_parser("export", help="export a run's prompt as a PEFT prompt-tuning adapter")
    p.add_argument("run")
    p.add_argument("--peft", required=True, help="output adapter directory")
    p.add_argument("--which", default="last", choices=["last", "best"])
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import-peft", help="turn a PEFT prompt-tuning adapter into a softprompt run")
    p.add_argument("adapter", help="PEFT adapter directory")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--task", default=None, help="task the prompt was trained on (recorded in the run)")
    p.add_argument("--model", default=None, help="base model (default: the adapter's base_model_name_or_path)")
    p.add_argument("--allow-pickle", action="store_true", help="accept adapter_model.bin (pickle) from a trusted source")
    p.set_defaults(func=cmd_import)


# ----------------------------------------------------------------------------- study


# argparse name -> (flag, RayOptions field); a flag left unset keeps RayOptions' default
RAY_FLAGS = {
    "ray_address": ("--ray-address", "address"),
    "cpus_per_run": ("--cpus-per-run", "cpus_per_run"),
    "gpus_per_run": ("--gpus-per-run", "gpus_per_run"),
    "max_retries": ("--max-retries", "max_retries"),
}


def cmd_study(a: argparse.Namespace) -> int:
    from softprompt.study import run_study

    given = {name: getattr(a, name) for name in RAY_FLAGS if getattr(a, name) is not None}
    ray_options = None
    if a.executor == "ray":
        from softprompt.study_ray import RayOptions

        ray_options = RayOptions(**{RAY_FLAGS[name][1]: value for name, value in given.items()})
    elif given:
        flags = [RAY_FLAGS[name][0] for name in given]
        raise SoftPromptError(f"{', '.join(flags)} appl{'ies' if len(flags) == 1 else 'y'} to --executor ray only")
    results = run_study(a.config, a.out, progress=not a.quiet, executor=a.executor, ray_options=ray_options)
    out = Path(a.out)
    print(f"\nstudy {results['study']['name']}: {len(results['runs'])} prompt runs; report: {out / 'report.html'}")
    return 0


def add_study(sub) -> None:
    p = sub.add_parser(
        "study",
        help="run a whole study from a TOML config and write report.html",
        description="Prompt runs (tasks x seeds), baselines, analyses and the HTML report. Re-running skips "
        "finished work, resumes interrupted runs and redoes only what a config change affects.",
    )
    p.add_argument("config", help="study config (.toml), e.g. configs/demo.toml")
    p.add_argument(
        "--out",
        required=True,
        help="study directory (runs, analyses, report.html, results.json, tables/); a local path, not a URL; "
        "with --executor ray one that every worker sees (shared filesystem)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--executor",
        default="local",
        choices=["local", "ray"],
        help="local: every unit in this process (default); ray: prompt runs and baselines as Ray tasks "
        "(pip install 'softprompt[ray]'; see docs/scale-out.md)",
    )
    g = p.add_argument_group("Ray executor (--executor ray)")
    g.add_argument(
        "--ray-address",
        default=None,
        help="cluster to connect to, passed to ray.init: 'auto' (a `ray start` cluster on this machine) or "
        "HEAD_IP:6379 (default: $RAY_ADDRESS, else start a local cluster)",
    )
    g.add_argument("--cpus-per-run", type=float, default=None, help="CPUs (and torch threads) each unit reserves (default 1)")
    g.add_argument("--gpus-per-run", type=float, default=None, help="GPUs each unit reserves (default 0)")
    g.add_argument(
        "--max-retries", type=int, default=None, help="retries of a unit whose worker died (default 3); errors are not retried"
    )
    p.set_defaults(func=cmd_study)


# ----------------------------------------------------------------------------- baselines


def cmd_baselines(a: argparse.Namespace) -> int:
    import time

    from softprompt.backbones import load_backbone
    from softprompt.baselines import run_baselines, table_rows

    started = time.perf_counter()
    out = Path(a.out or f"runs/baselines-{Path(a.task).stem if a.task.endswith('.toml') else a.task}-s{a.seed}")
    needs_model = any(m in ("no_prompt", "english_prompt") for m in a.methods)
    backbone = (
        load_backbone(a.model, dtype=a.dtype, device=a.device, trust_remote_code=a.trust_remote_code) if needs_model else None
    )
    rows = run_baselines(
        a.task,
        a.model,
        out,
        max_train=a.max_train,
        epochs=a.epochs,
        seed=a.seed,
        data_dir=a.data_dir,
        methods=a.methods,
        backbone=backbone,
        max_eval=a.max_eval,
        max_length=a.max_length,
        batch_size=a.batch_size,
        lr={m: v for m, v in (("finetune", a.finetune_lr), ("lora", a.lora_lr)) if v is not None},
        lora_r=a.lora_r,
        dtype=a.dtype,
        compute_dtype=a.compute_dtype,
        device=a.device,
        overwrite=a.overwrite,
        progress=not a.quiet,
    )
    n = rows[0]["n"] if rows else 0
    print(f"\n{a.task} validation (n={n}); training examples: {a.max_train or 'all'}; epochs {a.epochs}; seed {a.seed}")
    print_table(table_rows(rows))
    print(f"results in {out / 'baselines.json'} ({time.perf_counter() - started:.0f} s)")
    return 0


BASELINE_METHODS = ("majority", "no_prompt", "english_prompt", "finetune", "lora")  # = baselines.METHODS (no torch import here)


def add_baselines(sub) -> None:
    p = sub.add_parser(
        "baselines",
        help="majority class, no prompt, English prompt, full fine-tuning and LoRA on a task, in one table",
        description="Evaluate the untrained baselines and train the fine-tuning and LoRA baselines (normal run "
        "directories under --out, resumable) on the same training subsample; print one table.",
    )
    p.add_argument("--task", required=True, help="built-in task name or a task .toml file")
    _add_model_args(p)
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(BASELINE_METHODS),
        choices=BASELINE_METHODS,
        metavar="METHOD",
        help=f"baselines to run (default: all of {' '.join(BASELINE_METHODS)})",
    )
    p.add_argument("--max-train", type=int, default=None, help="a seeded subsample of N training examples (all methods)")
    p.add_argument("--max-eval", type=int, default=None, help="evaluate on a seeded subsample of N validation examples")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the finetune and LoRA runs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--finetune-lr", type=float, default=None, help="default 2e-5")
    p.add_argument("--lora-lr", type=float, default=None, help="default 1e-3")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: runs/baselines-TASK-sSEED)")
    p.add_argument("--overwrite", action="store_true", help="retrain finetune/LoRA runs already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_baselines)


# ----------------------------------------------------------------------------- analysis (neighbors, geometry, transfer)


def add_analysis(sub) -> None:
    from softprompt.analysis.commands import add_analysis as register

    register(sub)


# ----------------------------------------------------------------------------- main

REGISTRARS: list[Callable] = [add_train, add_eval, add_generate, add_info, add_peft, add_study, add_baselines, add_analysis]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softprompt", description="Train, evaluate and interpret soft prompts on frozen causal LMs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except SoftPromptError as e:
        print(f"softprompt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "rerun the same command to continue" if args.command == "study" else "rerun with --resume to continue"
        print(f"\nsoftprompt: interrupted; progress was checkpointed: {how}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
