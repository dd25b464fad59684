"""Which soft-prompt positions matter: ablate one row at a time and score the prompt again.

Position i is replaced by its initial vector (`init`: what training added at that position, undone) or by
the mean input embedding over the vocabulary (`mean`: a neutral token, what the position's content is worth
at all), and the ablated prompt is scored through the one scoring path on a seeded validation subsample. The
drop in accuracy, in the task's metric and the rise of the loss ("choices" cross-entropy, graded where accuracy
moves in steps of 1/n) say how much the model relies on that row; each drop comes with its paired standard error
over the examples (the same examples score both prompts).

The ablated prompts are scored together (`Evaluator.evaluate_stacked`: every example behind each ablated
prompt in the same forwards), which gives the numbers one `Evaluator.evaluate` per ablation gives, to float
rounding, in fewer forwards (`stacked=False` scores them one at a time, as before).

What it does not say: a position whose effect only shows together with another one (interactions) looks
unimportant alone, and on a small subsample a drop of one or two examples is noise (`n` is reported).
A row that equals its replacement is not scored again: its drop is exactly 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from softprompt.analysis.ablation_effects import SE_KEYS, accuracy_se, effect, per_example, scores_of
from softprompt.analysis.common import as_runs, json_safe, run_labels, run_meta
from softprompt.analysis.deep_importance import deep_importance
from softprompt.analysis.token_text import TokenReader
from softprompt.errors import SoftPromptError
from softprompt.model.prompt import input_embedding_matrix
from softprompt.records.readouts import ImportanceResult
from softprompt.runs.directory import scoring_prompt

REPLACEMENTS = ("init", "mean")
NOTE = (
    "Each position is ablated alone (replaced by its initial vector, or by the mean vocabulary embedding) and the "
    "prompt scored again on the same examples: interactions between positions are not captured, and with few "
    "examples (n) a drop of 1/n in accuracy is within noise; the loss increase is the graded readout."
)


def neutral_vector(model, tokenizer=None) -> torch.Tensor:
    """The mean input embedding over the vocabulary (float32, CPU, shape (d,)): a replacement row that reads as no
    particular token, on the scale of the embeddings (scaled ones included, see `input_embedding_matrix`)."""
    n = len(tokenizer) if tokenizer is not None else None
    return input_embedding_matrix(model, n_tokens=n).mean(0).cpu()


def _check_args(prompt: torch.Tensor, initial: torch.Tensor | None, replacements: Sequence[str], mean_vector) -> None:
    if prompt.dim() != 2:
        raise SoftPromptError(f"a soft prompt is an (n, d) matrix, got shape {tuple(prompt.shape)}")
    if not replacements or len(set(replacements)) != len(replacements):
        raise SoftPromptError(f"replacements {list(replacements)}: expected distinct names from {', '.join(REPLACEMENTS)}")
    unknown = [r for r in replacements if r not in REPLACEMENTS]
    if unknown:
        raise SoftPromptError(f"unknown replacement {unknown[0]!r}: expected one of {', '.join(REPLACEMENTS)}")
    if "init" in replacements:
        if initial is None:
            raise SoftPromptError("replacement 'init' needs the prompt's initial matrix, got none")
        if tuple(initial.shape) != tuple(prompt.shape):
            raise SoftPromptError(f"initial prompt {tuple(initial.shape)} and prompt {tuple(prompt.shape)} differ in shape")
    if mean_vector is not None and tuple(mean_vector.shape) != (prompt.shape[1],):
        raise SoftPromptError(
            f"mean vector of shape {tuple(mean_vector.shape)}: expected ({prompt.shape[1]},), the prompt's width"
        )


def _replacement_rows(evaluator, prompt, initial, replacements: Sequence[str], mean_vector) -> dict[str, torch.Tensor]:
    """Each replacement's rows, shaped like the prompt (float32, CPU)."""
    rows: dict[str, torch.Tensor] = {}
    if "init" in replacements:
        rows["init"] = initial.detach().float().cpu()
    if "mean" in replacements:
        if mean_vector is None:
            mean_vector = neutral_vector(evaluator.backbone.model, evaluator.backbone.tokenizer)
        rows["mean"] = mean_vector.detach().float().cpu().expand_as(prompt)
    return rows


def _ablated_results(evaluator, task, prompts: list[torch.Tensor], stacked: bool, **where) -> list:
    """Each ablated prompt's evaluation: all in one stacked scoring, or one `evaluate` each (the reference)."""
    if not prompts:
        return []
    if stacked:
        return evaluator.evaluate_stacked(task, torch.stack(prompts), **where)
    return [evaluator.evaluate(task, p, **where) for p in prompts]


def position_importance(
    evaluator,
    task,
    prompt: torch.Tensor,
    initial: torch.Tensor | None,
    *,
    limit: int | None = None,
    seed: int = 0,
    split: str = "validation",
    replacements: Sequence[str] = REPLACEMENTS,
    mean_vector: torch.Tensor | None = None,
    stacked: bool = True,
) -> dict[str, Any]:
    """Per position: the accuracy drop, loss increase and task-metric drop when that one row is replaced, with the
    paired standard errors of the first two over the examples.

    Every score is on the same seeded subsample (`limit`, `seed`): the prompt's by `evaluator.evaluate`, the
    ablated prompts' together (`stacked`, see the module's docstring). The top-level numbers of a position are its
    `init` replacement's (else the first one asked for); `by_replacement` holds each. `ranking` lists the positions
    by loss increase, largest first. `mean_vector` defaults to `neutral_vector` of the model.
    """
    from softprompt.tasks import get_task

    task = get_task(task) if isinstance(task, str) else task
    _check_args(prompt, initial, replacements, mean_vector)
    prompt = prompt.detach().float().cpu()
    rows = _replacement_rows(evaluator, prompt, initial, replacements, mean_vector)
    where = {"split": split, "limit": limit, "seed": seed}
    base_res = evaluator.evaluate(task, prompt, **where)
    if base_res.loss is None:
        raise SoftPromptError(f"task {task.name}: no {split} examples to score the prompt on")
    base = scores_of(base_res, task.metric)
    primary = "init" if "init" in replacements else replacements[0]
    todo = [(i, name) for i in range(prompt.shape[0]) for name in replacements if not torch.equal(prompt[i], rows[name][i])]
    ablated = []
    for i, name in todo:
        p = prompt.clone()
        p[i] = rows[name][i]
        ablated.append(p)
    done = dict(zip(todo, _ablated_results(evaluator, task, ablated, stacked, **where), strict=True))
    base_examples, positions = per_example(base_res), []
    for i in range(prompt.shape[0]):
        by: dict[str, dict[str, Any]] = {}
        for name in replacements:
            res = done.get((i, name))
            paired = None if res is None else (per_example(res), base_examples)
            by[name] = effect(base, base if res is None else scores_of(res, task.metric), res is None, paired)
        top = {k: by[primary][k] for k in ("accuracy_drop", "loss_increase", "metric_drop", *SE_KEYS)}
        positions.append({"index": i, **top, "by_replacement": by})
    ranking = [p["index"] for p in sorted(positions, key=lambda p: (-p["loss_increase"], p["index"]))]
    return {
        "task": task.name,
        "split": split,
        "n": base_res.n,
        "metric": task.metric,
        "primary": primary,
        "base": {**base, "accuracy_se": accuracy_se(base_res.accuracy, base_res.n)},
        "positions": positions,
        "ranking": ranking,
        "evaluations": 1 + len(todo),
    }


def _init_tokens(sp, tokenizer) -> list[str] | None:
    """The readable initial token of every position (text or vocab init), or None when the init was not tokens."""
    ids = list(sp.init.token_ids or [])
    if len(ids) != sp.n_tokens or not all(0 <= int(i) < len(tokenizer) for i in ids):
        return None
    return [d["token"] for d in TokenReader(tokenizer).describe(ids)]


def _run_warnings(run, evaluator) -> list[str]:
    """What makes a run's importance questionable with this evaluator: another model, another prompt format."""
    from softprompt.data.chat import resolve_prompt_format

    out = []
    backbone = evaluator.backbone
    trained_on = (run.record.model and run.record.model.name) or run.config.get("model")
    if trained_on and trained_on != backbone.name:
        out.append(f"prompt trained on {trained_on!r}, scored with {backbone.name!r}")
    try:
        fmt = resolve_prompt_format(run.prompt_format, backbone.tokenizer)
    except SoftPromptError:
        fmt = run.prompt_format
    if fmt != evaluator.prompt_format:
        out.append(f"prompt trained in the {fmt!r} format, scored in {evaluator.prompt_format!r}")
    return out


def _run_importance(evaluator, run, sp, target, replacements, mean, stacked: bool, where: dict) -> dict[str, Any]:
    """One run's position importance: a soft prompt's rows (`position_importance`), or a deep prompt's virtual tokens
    and layers, each put back to its initial keys/values (`deep_importance`)."""
    if run.method == "deep":
        prompt = scoring_prompt(run, sp, evaluator.backbone, f"the prompt of {run.path}")
        return deep_importance(evaluator, target, sp.weight, sp.initial, prompt.shape, **where)
    sp.check_model(evaluator.backbone.hidden_size, where=f"the prompt of {run.path}")
    return position_importance(
        evaluator, target, sp.weight, sp.initial, replacements=replacements, mean_vector=mean, stacked=stacked, **where
    )


def importance_report(
    evaluator,
    runs: Iterable,
    out_dir: str | Path | None = None,
    *,
    which: str = "last",
    limit: int | None = None,
    seed: int = 0,
    task: str | None = None,
    replacements: Sequence[str] = REPLACEMENTS,
    progress: Callable[[str], None] | None = None,
    stacked: bool = True,
) -> dict[str, Any]:
    """Position importance of every run's prompt (`which`: last or best) on `task` (default: each run's own);
    `progress` hears which run it scores (its label and count). A deep prompt's run gets its virtual tokens' and its
    layers' importance (`deep_importance`: the `init` replacement only, as a vocabulary mean is no key or value).

    Uses the given evaluator as it is (a study's loaded one works: its memo only repeats the unablated score),
    computes the neutral vector once, and writes `importance.json` to `out_dir` when given. `stacked`: see
    `position_importance`.
    """
    from softprompt.tasks import get_task

    runs = as_runs(runs)
    labels = run_labels(runs)
    backbone = evaluator.backbone
    mean = neutral_vector(backbone.model, backbone.tokenizer) if "mean" in replacements else None
    per_run = []
    for i, (run, label) in enumerate(zip(runs, labels, strict=True), 1):
        sp = run.prompt(which)
        if progress is not None:
            progress(f"{label} ({i}/{len(runs)}), {sp.weight.shape[0]} positions x {len(replacements)} replacement(s)")
        start = time.perf_counter()
        where = {"limit": limit, "seed": seed}
        res = _run_importance(evaluator, run, sp, get_task(task or run.task), replacements, mean, stacked, where)
        meta = run_meta(run, label)
        tokens = _init_tokens(sp, backbone.tokenizer)
        for p in res["positions"]:
            p["initial_token"] = None if tokens is None else tokens[p["index"]]
        entry = {"run": label, **meta, **res, "trained_task": meta["task"], "wall_time_s": time.perf_counter() - start}
        warnings = _run_warnings(run, evaluator)
        if warnings:
            entry["warning"] = "; ".join(warnings)
        per_run.append(entry)
    report = json_safe(
        {
            "model": backbone.name,
            "settings": {
                "which": which,
                "split": "validation",
                "limit": limit,
                "seed": seed,
                "task": task,
                "replacements": list(replacements),
                "primary": "init" if "init" in replacements else replacements[0],
            },
            "runs": per_run,
            "note": NOTE,
        }
    )
    report = ImportanceResult.from_dict(report, "importance report").to_dict()  # checked by its record, versioned
    if out_dir is not None:
        from softprompt.io import write_json

        write_json(Path(out_dir) / "importance.json", report)
    return report
