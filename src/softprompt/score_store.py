"""Evaluation results kept on disk, shared by every process of a study.

A prompt's score on a validation subsample is the same numbers whichever process computes it, and a study asks for
many of them more than once: every seed of a task starts from the same text-initialised prompt (the step-0 point of
each learning curve), every prompt run scores the no-prompt and English-prompt references that its task's baselines
score again, and the transfer matrix and the importance readout re-score each run's last prompt on its own task. One
process's evaluator memo caught some of these; worker processes (`[execution] workers`) and Ray tasks caught none.

An entry is keyed by everything its numbers depend on: the store's namespace (the study's model and precision), the
evaluator's settings (compute dtype, scoring options, token budget, device type), the task's name, the split's name
and a digest of the encoded inputs (data, template, tokenizer, hard prompt, row length and prompt length in one), and
the prompt's values. So a hit is the result the evaluation would have computed (bit-identical where the same thread
count computed it, within float rounding elsewhere). Only evaluations on a backbone that nothing trains go through a
store (a prompt run, a study's shared evaluator); LoRA and full fine-tuning never use one. Entries are written
atomically (one JSON file each, `records.scores.ScoreEntry`), so concurrent writers of the same entry leave one whole
file; an unreadable entry is a miss and is written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.eval_metrics import EvalResult
from softprompt.io import read_json, write_text
from softprompt.records.metrics import EvalMetrics
from softprompt.records.scores import SCORE_SUFFIX, ScoreEntry, StoredEvaluation, StoredScores
from softprompt.scoring import Scores

log = logging.getLogger(__name__)

FORMAT = 1


def entry_key(*parts: Any) -> str:
    """A store key from JSON-able parts (their order matters)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def inputs_digest(encoded: list[Any]) -> str:
    """A digest of encoded examples (`data.batching.EncodedExample`: token ids, targets, labels, answer lengths,
    truncation): what a store key says about the task's data, template, tokenizer, hard prompt and row length."""
    rows = [[[r.ids, r.targets] for r in e.rows] + [e.label, e.choice_chars, e.truncated] for e in encoded]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


class ScoreStore:
    """Evaluation results under `root`, one file per key; `namespace` is mixed into every key (a study's model)."""

    def __init__(self, root: str | Path, namespace: Any = None):
        self.root = Path(root)
        self.namespace = namespace
        self.hits = 0
        self.misses = 0

    def key(self, *parts: Any) -> str:
        return entry_key(self.namespace, *parts)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SCORE_SUFFIX}"

    def get(self, key: str, *, calibrated: bool) -> EvalResult | None:
        """The stored result under `key`, or None; with `calibrated`, only an entry that has its calibrated metrics
        (one without them, stored by an evaluation that did not calibrate, is a miss). Without, the result comes back
        without them, as an evaluation that did not calibrate returns it."""
        path = self.path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            entry = ScoreEntry.from_dict(read_json(path), str(path))
            if entry.format != FORMAT or entry.key != key:
                raise SoftPromptError(f"{path}: format {entry.format} or key {entry.key[:12]}... is not this store's")
        except SoftPromptError as e:
            log.warning("score store: %s; scoring again", e)
            self.misses += 1
            return None
        result = _result(entry.result)
        if calibrated and result.calibrated is None:
            self.misses += 1
            return None
        if not calibrated:
            result.calibrated = None
        self.hits += 1
        return result

    def put(self, key: str, result: EvalResult) -> None:
        """Store `result` (a scored one: with its scores, which calibration and the ablation readouts read) under `key`."""
        s = result.scores
        assert s is not None, "only a result just scored is stored"
        scores = StoredScores(logprobs=s.logprobs, labels=s.labels, choice_chars=s.choice_chars, truncated=s.truncated)
        metrics = EvalMetrics.from_dict({**result.metrics(), "loss": result.loss}, "metrics")
        stored = StoredEvaluation(result.task, result.split, metrics, result.predictions, scores)
        write_text(self.path(key), json.dumps(ScoreEntry(format=FORMAT, key=key, result=stored).to_dict()) + "\n")


def _result(stored: StoredEvaluation) -> EvalResult:
    s = stored.scores
    scores = Scores(logprobs=s.logprobs, labels=s.labels, choice_chars=s.choice_chars, truncated=s.truncated)
    # the record's numbers are EvalResult's own fields (`EvalResult.metrics()` and its loss, as `put` wrote them)
    return EvalResult(stored.task, stored.split, predictions=stored.predictions, scores=scores, **stored.metrics.to_dict())
