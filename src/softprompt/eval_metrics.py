"""What an evaluation measures: `EvalResult` and its metrics from a prompt's choice scores (accuracy, macro-F1, the
length-normalised accuracy, the mean choice loss), and content-free calibration (Zhao et al. 2021). `evaluate.Evaluator`
produces them; everything here is pure arithmetic on `Scores`."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from sklearn.metrics import f1_score

from softprompt.scoring import Scores
from softprompt.tasks import Task
from softprompt.tasks.base import Example

# The validation subsample (--max-eval) is the same for every seed and method, so numbers compare;
# only the few-shot training subsample (--max-train) depends on the run's seed.
EVAL_SEED = 0


@dataclass
class EvalResult:
    task: str
    split: str
    accuracy: float
    f1_macro: float
    acc_norm: float
    n: int
    truncated: int = 0
    predictions: list[int] = field(default_factory=list, repr=False)
    # mean cross-entropy of the correct choice under a softmax over the choices' log-likelihoods (the "choices"
    # training loss): a graded score where accuracy moves in steps of 1/n (e.g. a position's importance)
    loss: float | None = None
    # content-free calibration (`Evaluator.evaluate(calibrate=True)`): accuracy, f1_macro, prior, content_free; or
    # {"skipped": why} for a task it does not apply to (choices per example)
    calibrated: dict[str, Any] | None = None
    scores: Scores | None = field(default=None, repr=False, compare=False)  # what the metrics came from (not saved)

    def metric(self, name: str) -> float:
        return float(getattr(self, name))

    def metrics(self) -> dict[str, float | int]:
        """The numbers a run, a baseline row or a table reports (run.json's `final`, metrics.jsonl)."""
        return {
            "accuracy": self.accuracy,
            "f1_macro": self.f1_macro,
            "acc_norm": self.acc_norm,
            "n": self.n,
            "truncated": self.truncated,
        } | ({"calibrated": self.calibrated} if self.calibrated is not None else {})


def metrics_from_predictions(preds: Sequence[int], labels: Sequence[int], num_classes: int) -> tuple[float, float]:
    acc = sum(int(p == y) for p, y in zip(preds, labels, strict=True)) / max(len(labels), 1)
    f1 = float(f1_score(labels, preds, average="macro", labels=list(range(num_classes)), zero_division=0))
    return float(acc), f1


def result_from_scores(task: Task, split: str, scores: Scores) -> EvalResult:
    preds = scores.predictions
    acc, f1 = metrics_from_predictions(preds, scores.labels, task.num_classes)
    norm_acc, _ = metrics_from_predictions(scores.predictions_norm, scores.labels, task.num_classes)
    return EvalResult(
        task.name, split, acc, f1, norm_acc, len(preds), scores.truncated, preds, choice_loss_mean(scores), scores=scores
    )


def choice_loss_mean(scores: Scores) -> float | None:
    """Mean over examples of -log softmax(choice log-likelihoods)[label], as `scoring.choice_loss` computes it
    in training; None for no examples."""
    if not scores.logprobs:
        return None
    total = 0.0
    for lp, y in zip(scores.logprobs, scores.labels, strict=True):
        row = torch.tensor(lp, dtype=torch.float64)
        total -= float(torch.log_softmax(row, 0)[y])
    return total / len(scores.logprobs)


def choice_losses(scores: Scores) -> list[float]:
    """Per example, -log softmax(choice log-likelihoods)[label]: what `choice_loss_mean` averages (dev selection
    compares two prompts on these, paired)."""
    return [
        -float(torch.log_softmax(torch.tensor(lp, dtype=torch.float64), 0)[y])
        for lp, y in zip(scores.logprobs, scores.labels, strict=True)
    ]


# ----------------------------------------------------------------------------- content-free calibration
# Zhao et al. 2021, "Calibrate Before Use": rank classification inherits the model's prior over the label words
# (with or without a prompt). That prior is estimated as the mean, over content-free inputs put in every field of
# the task's template, of the normalised distribution over the choices (softmax of their summed log-likelihoods,
# so label words of several tokens count whole); each example's distribution is divided by it before the argmax.
CONTENT_FREE = ("N/A", "", "[MASK]")


def content_free_examples(task: Task) -> tuple[list[Example], str | None]:
    """The task's template with every field set to each content-free string (an empty context is left out), as
    examples with the task's label words; ([], why) where calibration is ill-defined: choices that differ per
    example (COPA), or a context built by code rather than from the template (WSC)."""
    if task.choices_fn is not None:
        return [], f"{task.name}: the choices differ per example, so there is no prior over fixed label words: not calibrated"
    if task.context_fn is not None and getattr(task.context_fn, "template", None) != task.template:
        return [], f"{task.name}: its input is built by code, not from its template: no content-free input, not calibrated"
    names = {re.split(r"[.\[]", f)[0] for _, f, _, _ in string.Formatter().parse(task.template) if f}
    out = []
    for i, text in enumerate(CONTENT_FREE):
        try:
            context = task.template.format(**dict.fromkeys(names, text))
        except (IndexError, KeyError, AttributeError, TypeError, ValueError) as e:
            return [], f"{task.name}: its template does not take a content-free string ({type(e).__name__}: {e}): not calibrated"
        if context.strip():
            choices = tuple(task.answer_prefix + w for w in task.label_words)
            out.append(Example(context=context, choices=choices, label=0, idx=i))  # idx: which CONTENT_FREE string
    return out, None if out else f"{task.name}: every content-free input is empty: not calibrated"


def content_free_prior(scores: Scores) -> list[float]:
    """The mean over content-free inputs of the softmax over the choices' log-likelihoods: the label prior."""
    return torch.tensor(scores.logprobs, dtype=torch.float64).softmax(-1).mean(0).tolist()


def calibrated_predictions(logprobs: Sequence[Sequence[float]], prior: Sequence[float]) -> list[int]:
    """argmax_k of log softmax(log-likelihoods)_k - log prior_k (the first on ties, as `Scores.predictions`)."""
    if not logprobs:
        return []
    lp = torch.tensor(logprobs, dtype=torch.float64)
    return (lp.log_softmax(-1) - torch.tensor(prior, dtype=torch.float64).log()).argmax(-1).tolist()


def calibrated_metrics(task: Task, scores: Scores, content_free: Scores, examples: Sequence[Example]) -> dict[str, Any]:
    """accuracy and f1_macro of the calibrated predictions, the prior they divide by and its content-free inputs
    (`examples`, from `content_free_examples`, scored into `content_free`)."""
    prior = content_free_prior(content_free)
    acc, f1 = metrics_from_predictions(calibrated_predictions(scores.logprobs, prior), scores.labels, task.num_classes)
    return {"accuracy": acc, "f1_macro": f1, "prior": prior, "content_free": [CONTENT_FREE[e.idx] for e in examples]}
