"""Baselines: what each one is, how the untrained ones are evaluated, and the config of the trained ones.

- `majority`: the most frequent label of the (possibly subsampled) TRAINING examples, predicted for
  every validation example; no model.
- `no_prompt` / `english_prompt`: the frozen model scores the label words after the template alone,
  or after an English description as a hard prompt (what `text` init starts from). A prompt run
  reports both next to its own numbers (`train` calls `reference_results`).
- `finetune` / `lora`: ordinary training runs of the study's (or command's) training config with
  another method (`baseline_config`); `softprompt.training.baseline_runs.run_baselines` trains them.
- `hard`: the discrete counterpart of the soft prompt (PEZ, `softprompt.model.reparam.HardPromptEncoder`), a
  training run too, of the same length and init; its row also holds its text and that text's score when
  typed as a hard prompt. Run only when named (`DEFAULT_BASELINES` leaves it out).
- `deep`: keys and values trained at every layer (prefix tuning / P-Tuning v2, `softprompt.model.deep_prompt`), a
  training run of the same length and init (from the words of a `run:`/`task:` init's text); run only when named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from softprompt.config import BASELINE_METHODS, DEFAULT_BASELINES, INIT_METHODS, TRAINED_BASELINES, TrainConfig, check_keys
from softprompt.errors import SoftPromptError
from softprompt.evaluate import CONTENT_FREE, EvalResult, Evaluator, metrics_from_predictions
from softprompt.tasks import Task, majority_label
from softprompt.tasks.base import Example

METHODS = DEFAULT_BASELINES  # what runs when no methods are named
CHOICES = BASELINE_METHODS  # every baseline there is
TRAINED = TRAINED_BASELINES
NEEDS_MODEL = ("no_prompt", "english_prompt")  # the untrained baselines that score with the model
# What an untrained baseline's result depends on (a trained one: its config's identity). Not the data folder: the
# data's digests are compared (a study keys by the folder only where they cannot be: softprompt.study.units).
EVALUATION_FIELDS = (
    "task",
    "model",
    "seed",
    "max_train",
    "max_eval",
    "max_length",
    "dtype",
    "compute_dtype",
    "prompt_format",
    "dev_size",
)


def check_methods(methods: Sequence[str]) -> list[str]:
    out: list[str] = []
    for m in methods:
        if m not in CHOICES:
            raise SoftPromptError(f"unknown baseline {m!r}: expected some of {', '.join(CHOICES)}")
        if m not in out:
            out.append(m)
    if not out:
        raise SoftPromptError("no baseline method given")
    return out


def baseline_config(cfg: TrainConfig, method: str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A trained baseline's config: `cfg` with `method` and `overrides`.

    The learning rate is the method's default unless an override sets it: a prompt's learning rate
    would wreck full fine-tuning. Prompt-only settings (the reparameterisation) do not apply. A hard prompt keeps
    the length and init of `cfg`'s prompt, but starts from its text when `cfg` starts from a trained prompt
    (run:PATH, task:NAME): the baseline is PEZ from words, not a projection of another run. Its row reports the
    last prompt (token rows and typed text), so it is not selected on the dev split (`selection = last`: the dev
    split is held out of training as for the soft prompt, but not scored) and draws no learning curve
    (`eval_every = 0`: validation at epoch ends only); an override sets either back."""
    overrides = dict(overrides or {})
    check_keys(TrainConfig, overrides, f"{method} overrides")
    if "method" in overrides:
        raise SoftPromptError(f"{method} overrides: 'method' is the baseline's own")
    fixed: dict[str, Any] = {"lr": None, "reparam": "none"}
    if method == "hard":
        fixed.update(selection="last", eval_every=0)
    if method in ("hard", "deep") and cfg.init not in INIT_METHODS:
        fixed["init"] = "text"
    return replace(cfg, method=method, **{**fixed, **overrides})


def result_inputs(cfg: TrainConfig, method: str) -> dict[str, Any]:
    """What determines a baseline's result: a trained one's config identity (`TrainConfig.identity_dict`: not how it
    is executed), an untrained one's evaluation settings (and, scored by the model, its calibration's content-free
    inputs: results cached before it are redone)."""
    if method in TRAINED:
        return cfg.identity_dict()
    calibration = {"calibration": list(CONTENT_FREE)} if method in NEEDS_MODEL else {}
    return {name: getattr(cfg, name) for name in EVALUATION_FIELDS} | calibration


def majority_result(task: Task, train: Sequence[Example], evaluation: Sequence[Example], split: str = "validation") -> EvalResult:
    """Predict the training set's most frequent label for every evaluation example."""
    label = majority_label(train)
    preds = [label] * len(evaluation)
    acc, f1 = metrics_from_predictions(preds, [e.label for e in evaluation], task.num_classes)
    return EvalResult(task.name, split, acc, f1, acc, len(preds), 0, preds)


def untrained_result(
    method: str, evaluator: Evaluator, task: Task, *, limit: int | None, seed: int, hard_prompt: str, calibrate: bool = True
) -> EvalResult:
    """`no_prompt` (the template alone) or `english_prompt` (`hard_prompt` before it) on the validation split, with
    its content-free calibrated metrics unless `calibrate` is False (3 more inputs scored)."""
    if method == "no_prompt":
        return evaluator.evaluate(task, None, limit=limit, seed=seed, calibrate=calibrate)
    if method == "english_prompt":
        return evaluator.evaluate(task, None, hard_prompt=hard_prompt, limit=limit, seed=seed, calibrate=calibrate)
    raise SoftPromptError(f"{method!r} is not evaluated with the model: expected one of {', '.join(NEEDS_MODEL)}")


def reference_results(
    evaluator: Evaluator, task: Task, *, limit: int | None, seed: int, hard_prompt: str
) -> dict[str, EvalResult]:
    """The no-prompt and English-prompt results a prompt run is compared with."""
    return {m: untrained_result(m, evaluator, task, limit=limit, seed=seed, hard_prompt=hard_prompt) for m in NEEDS_MODEL}


def baseline_row(method: str, metrics: Mapping[str, Any], trainable: int, total: int | None, **extra: Any) -> dict[str, Any]:
    """One row of baselines.json from an EvalResult's `metrics()` (or a finished run's `final`); the content-free
    calibrated accuracy and macro-F1 next to the raw ones (None where not calibrated, with the reason if skipped)."""
    calibrated = metrics.get("calibrated") or {}
    row = {
        "method": method,
        "accuracy": float(metrics["accuracy"]),
        "f1_macro": float(metrics["f1_macro"]),
        "calibrated_accuracy": calibrated.get("accuracy"),
        "calibrated_f1_macro": calibrated.get("f1_macro"),
        **({"calibration_note": calibrated["skipped"]} if calibrated.get("skipped") else {}),
        "acc_norm": float(metrics["acc_norm"]),
        "n": int(metrics["n"]),
        "truncated": int(metrics.get("truncated", 0)),
        "trainable_parameters": int(trainable),
        "total_parameters": total,
    }
    row.update(extra)
    return row


def table_rows(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """The printed table: method, accuracy, macro-F1, the same calibrated ("-": not calibrated), trainable parameters."""
    return [
        {
            "method": r["method"].replace("_", " "),
            "accuracy": r["accuracy"],
            "f1_macro": r["f1_macro"],
            "calibrated accuracy": "-" if r.get("calibrated_accuracy") is None else r["calibrated_accuracy"],
            "calibrated f1_macro": "-" if r.get("calibrated_f1_macro") is None else r["calibrated_f1_macro"],
            "trainable parameters": f"{r['trainable_parameters']:,}",
        }
        for r in rows
    ]
