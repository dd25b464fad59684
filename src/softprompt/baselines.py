"""Baselines: what each one is, how the untrained ones are evaluated, and the config of the trained ones.

- `majority`: the most frequent label of the (possibly subsampled) TRAINING examples, predicted for
  every validation example; no model.
- `no_prompt` / `english_prompt`: the frozen model scores the label words after the template alone,
  or after an English description as a hard prompt (what `text` init starts from). A prompt run
  reports both next to its own numbers (`train` calls `reference_results`).
- `finetune` / `lora`: ordinary training runs of the study's (or command's) training config with
  another method (`baseline_config`); `softprompt.baseline_runs.run_baselines` trains them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from softprompt.config import BASELINE_METHODS, TRAINED_BASELINES, TrainConfig, check_keys
from softprompt.errors import SoftPromptError
from softprompt.evaluate import EvalResult, Evaluator, metrics_from_predictions
from softprompt.tasks import Task, majority_label
from softprompt.tasks.base import Example

METHODS = BASELINE_METHODS
TRAINED = TRAINED_BASELINES
NEEDS_MODEL = ("no_prompt", "english_prompt")  # the untrained baselines that score with the model
# What an untrained baseline's result depends on (a trained one: its whole config).
EVALUATION_FIELDS = (
    "task",
    "model",
    "seed",
    "max_train",
    "max_eval",
    "max_length",
    "dtype",
    "compute_dtype",
    "data_dir",
    "prompt_format",
    "dev_size",
)


def check_methods(methods: Sequence[str]) -> list[str]:
    out: list[str] = []
    for m in methods:
        if m not in METHODS:
            raise SoftPromptError(f"unknown baseline {m!r}: expected some of {', '.join(METHODS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise SoftPromptError("no baseline method given")
    return out


def baseline_config(cfg: TrainConfig, method: str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A trained baseline's config: `cfg` with `method` and `overrides`.

    The learning rate is the method's default unless an override sets it: a prompt's learning rate
    would wreck full fine-tuning. Prompt-only settings (the reparameterisation) do not apply."""
    overrides = dict(overrides or {})
    check_keys(TrainConfig, overrides, f"{method} overrides")
    if "method" in overrides:
        raise SoftPromptError(f"{method} overrides: 'method' is the baseline's own")
    return replace(cfg, method=method, **{"lr": None, "reparam": "none", **overrides})


def result_inputs(cfg: TrainConfig, method: str) -> dict[str, Any]:
    """What determines a baseline's result: a trained one's whole config, an untrained one's evaluation settings."""
    if method in TRAINED:
        return cfg.to_dict()
    return {name: getattr(cfg, name) for name in EVALUATION_FIELDS}


def majority_result(task: Task, train: Sequence[Example], evaluation: Sequence[Example], split: str = "validation") -> EvalResult:
    """Predict the training set's most frequent label for every evaluation example."""
    label = majority_label(train)
    preds = [label] * len(evaluation)
    acc, f1 = metrics_from_predictions(preds, [e.label for e in evaluation], task.num_classes)
    return EvalResult(task.name, split, acc, f1, acc, len(preds), 0, preds)


def untrained_result(
    method: str, evaluator: Evaluator, task: Task, *, limit: int | None, seed: int, hard_prompt: str
) -> EvalResult:
    """`no_prompt` (the template alone) or `english_prompt` (`hard_prompt` before it) on the validation split."""
    if method == "no_prompt":
        return evaluator.evaluate(task, None, limit=limit, seed=seed)
    if method == "english_prompt":
        return evaluator.evaluate(task, None, hard_prompt=hard_prompt, limit=limit, seed=seed)
    raise SoftPromptError(f"{method!r} is not evaluated with the model: expected one of {', '.join(NEEDS_MODEL)}")


def reference_results(
    evaluator: Evaluator, task: Task, *, limit: int | None, seed: int, hard_prompt: str
) -> dict[str, EvalResult]:
    """The no-prompt and English-prompt results a prompt run is compared with."""
    return {m: untrained_result(m, evaluator, task, limit=limit, seed=seed, hard_prompt=hard_prompt) for m in NEEDS_MODEL}


def baseline_row(method: str, metrics: Mapping[str, Any], trainable: int, total: int | None, **extra: Any) -> dict[str, Any]:
    """One row of baselines.json from an EvalResult's `metrics()` (or a finished run's `final`)."""
    row = {
        "method": method,
        "accuracy": float(metrics["accuracy"]),
        "f1_macro": float(metrics["f1_macro"]),
        "acc_norm": float(metrics["acc_norm"]),
        "n": int(metrics["n"]),
        "truncated": int(metrics.get("truncated", 0)),
        "trainable_parameters": int(trainable),
        "total_parameters": total,
    }
    row.update(extra)
    return row


def table_rows(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """The printed table: method, accuracy, macro-F1, trainable parameters."""
    return [
        {
            "method": r["method"].replace("_", " "),
            "accuracy": r["accuracy"],
            "f1_macro": r["f1_macro"],
            "trainable parameters": f"{r['trainable_parameters']:,}",
        }
        for r in rows
    ]
