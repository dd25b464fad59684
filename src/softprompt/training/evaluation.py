"""What the loop scores between steps: the validation subsample (the same for every seed and method) and the
dev split, with the current parameters, as one history record. The evaluator also scores the reference
prompts after the last epoch (`recipe.finalize`)."""

from __future__ import annotations

import time
from typing import Any

import torch

from softprompt.config import PROMPT_METHODS, TrainConfig
from softprompt.distributed import DataParallel
from softprompt.evaluate import EVAL_SEED, EvalResult, evaluator_for
from softprompt.model.deep_prompt import KVPrompt, detached, prompt_length
from softprompt.score_store import ScoreStore
from softprompt.scoring import ScoringOptions
from softprompt.training.data import TrainData
from softprompt.training.trainables import Trainables

Evaluation = tuple[dict[str, Any], EvalResult, EvalResult | None]  # (history record, validation, dev split)


class Evaluations:
    """The run's `Evaluator` (data-parallel shards, cached tokenization) and the evaluations the loop records."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainData,
        trainables: Trainables,
        dp: DataParallel,
        *,
        scoring: ScoringOptions,
        progress: bool,
        store: ScoreStore | None = None,
    ):
        self.cfg, self.data, self.trainables = cfg, data, trainables
        # a store only where the backbone stays frozen: LoRA's or fine-tuning's "no prompt" is not the base model's
        self.evaluator = evaluator_for(
            cfg,
            data.backbone,
            progress=progress,
            parallel=dp,
            scoring=scoring,
            prompt_format=data.prompt_format,
            store=store if cfg.method in PROMPT_METHODS else None,
        )

    def preflight(self, *, references: bool) -> None:
        """Load and tokenize now what is only scored later (the validation split at each epoch's end, the
        reference evaluations after the last one): a missing split, or a --max-length too small for an
        answer or for the hard prompt, fails before training instead of after it. Cached, so nothing is
        done twice."""
        task, cfg, ev = self.data.task, self.cfg, self.evaluator
        ev.prepare(task, prompt_length(self.trainables.scoring_prompt()), limit=cfg.max_eval, seed=EVAL_SEED)
        if references:
            ev.prepare(task, 0, limit=cfg.max_eval, seed=EVAL_SEED)
            ev.prepare(task, 0, hard_prompt=cfg.init_text or task.description, limit=cfg.max_eval, seed=EVAL_SEED)

    def evaluate(self) -> EvalResult:
        """The validation subsample with the current parameters (the same subsample for every seed and method)."""
        return self.evaluator.evaluate(self.data.task, self._prompt(), limit=self.cfg.max_eval, seed=EVAL_SEED, calibrate=True)

    def _prompt(self) -> torch.Tensor | KVPrompt | None:
        return detached(self.trainables.scoring_prompt())

    def point(self, epoch: float, *, step: int, recent: list[float], started: float) -> Evaluation:
        """Evaluate the current prompt on validation (and the dev split if any): one history record, whose
        train_loss is the mean of `recent` (the losses since the last evaluation)."""
        res = self.evaluate()
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": sum(recent) / len(recent) if recent else None,
            **res.metrics(),
        }
        # with selection = last no rule reads the dev split's scores: it stays held out of training, unscored
        scored = self.data.dev and self.cfg.selection != "last"
        dev = self.evaluator.evaluate_examples(self.data.task, self.data.dev, self._prompt()) if scored else None
        if dev is not None:
            record["dev"] = {**dev.metrics(), "loss": dev.loss}  # the loss: what selection = dev_loss compares
        record["elapsed_s"] = round(time.perf_counter() - started, 2)
        return record, res, dev
