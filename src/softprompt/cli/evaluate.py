"""`softprompt eval` and `softprompt generate`: a run's prompt (or none, or a hard prompt) on a task, or on text."""

from __future__ import annotations

import argparse

from softprompt.cli.common import add_model_args, load_model, print_table, resolve_settings, result_row
from softprompt.errors import SoftPromptError

# generation needs a model, its weight dtype, a device and the layout of the input; no row length, compute dtype,
# data folder or scoring strategy (those flags would be accepted and ignored)
GENERATE_FIELDS = ("model", "dtype", "device", "prompt_format")


def cmd_eval(a: argparse.Namespace) -> int:
    from softprompt.runs.directory import load_run, scoring_prompt
    from softprompt.tasks import get_task

    run = load_run(a.run) if a.run else None
    task_name = a.task or (run.task if run else None)
    if not task_name or task_name == "unknown":
        raise SoftPromptError("--task is required (the run does not name a task)")
    task = get_task(task_name)
    soft = run.prompt(a.which) if run is not None else None  # checked against run.json before the model loads
    backbone, ev = load_model(a, [run] if run is not None else [])  # the run's own model and layout by default
    priors: list[str] = []

    def row(label: str, prompt=None, hard_prompt: str | None = None) -> dict:
        res = ev.evaluate(task, prompt, hard_prompt=hard_prompt, split=a.split, limit=a.max_eval, calibrate=a.calibrate)
        out = {"prompt": label, **result_row(res)}
        if a.calibrate:
            out.update(calibrated_columns(res.calibrated or {}))
            priors.append(calibration_line(label, task.label_words, res.calibrated or {}))
        return out

    rows = []
    if soft is not None and run is not None:
        kind = "deep" if run.method == "deep" else "soft"
        rows.append(row(f"{kind} {a.run}", scoring_prompt(run, soft, backbone, f"the prompt of {a.run}")))
    if a.no_prompt or run is None and a.hard_prompt is None and not a.english:
        rows.append(row("no prompt"))
    if a.english:
        rows.append(row("english prompt", hard_prompt=task.description))
    if a.hard_prompt:
        rows.append(row(f"hard {a.hard_prompt[:30]!r}", hard_prompt=a.hard_prompt))
    print(f"{task.name} {a.split}")
    print_table(rows)
    for line in dict.fromkeys(priors):
        print(line)
    return 0


def calibrated_columns(calibrated: dict) -> dict:
    """The calibrated accuracy and macro-F1 as table cells ("-" where calibration does not apply)."""
    return {
        "calibrated accuracy": calibrated.get("accuracy", "-"),
        "calibrated f1_macro": calibrated.get("f1_macro", "-"),
    }


def calibration_line(label: str, words, calibrated: dict) -> str:
    """What the calibrated columns divided by: the prompt's prior over the label words on content-free inputs."""
    if "prior" not in calibrated:
        return f"calibration: {calibrated.get('skipped', 'not calibrated')}"
    prior = ", ".join(f"{w} {p:.3f}" for w, p in zip(words, calibrated["prior"], strict=True))
    inputs = ", ".join(repr(x) for x in calibrated["content_free"])
    return f"calibration of {label}: prior over the label words {prior} (mean over content-free inputs {inputs})"


def cmd_generate(a: argparse.Namespace) -> int:
    from softprompt.data.chat import resolve_prompt_format
    from softprompt.generate import check_generation_args, generate
    from softprompt.model.backbones import load_backbone
    from softprompt.runs.directory import load_run, scoring_prompt

    check_generation_args(a.max_new_tokens, a.temperature, a.seed, cli=True)  # before the model loads
    run = load_run(a.run) if a.run else None
    sp = run.prompt() if run is not None else None  # checked against run.json before the model loads
    resolve_settings(a, [run] if run is not None else [])  # the run's own model, dtype and prompt format by default
    backbone = load_backbone(a.model, dtype=a.dtype, device=a.device, trust_remote_code=a.trust_remote_code)
    prompt = None
    if sp is not None and run is not None:
        prompt = scoring_prompt(run, sp, backbone, f"the prompt of {a.run}")
    layout = resolve_prompt_format(a.prompt_format, backbone.tokenizer)
    text = generate(
        backbone, a.text, prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed, prompt_format=layout
    )
    print(a.text + text if layout == "plain" else f"{a.text}\n{text}")  # chat: the assistant's reply on its own line
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained prompt, no prompt, or a hard prompt on a task split")
    p.add_argument("--run", default=None, help="run directory whose soft prompt is evaluated")
    p.add_argument("--which", default="last", choices=["last", "best"], help="the run's last or best-epoch prompt")
    p.add_argument("--task", default=None, help="task (default: the run's task); any task works: cross-task transfer")
    add_model_args(p, from_runs=True)
    p.add_argument("--split", default="validation", choices=["train", "validation"])
    p.add_argument("--no-prompt", action="store_true", help="also evaluate with no prompt (template only)")
    p.add_argument("--english", action="store_true", help="also evaluate the task description as a hard prompt")
    p.add_argument("--hard-prompt", default=None, help="evaluate this text as a hard prompt")
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="add content-free calibrated accuracy and macro-F1 columns (Zhao et al. 2021: each prompt's label "
        "probabilities divided by their mean on the inputs 'N/A', '' and '[MASK]' in the task's template)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a soft prompt in front of the input")
    p.add_argument("text", help="input text")
    p.add_argument("--run", default=None, help="run directory whose soft prompt is used (default: none)")
    add_model_args(p, GENERATE_FIELDS, from_runs=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)
