"""Metrics and evaluation of a prompt (soft, hard or none) on a task split, through the one scorer.

`Evaluator` keeps one loaded model and caches tokenized splits, so many (prompt, task) pairs, as in
the transfer matrix, cost one model load and one tokenization per task.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import Any

import torch

from softprompt.config import TrainConfig
from softprompt.data.batching import EncodedExample, encode_examples
from softprompt.data.chat import resolve_prompt_format
from softprompt.distributed import SINGLE, DataParallel
from softprompt.eval_metrics import (  # noqa: F401  (the names callers import from here)
    CONTENT_FREE,
    EVAL_SEED,
    EvalResult,
    calibrated_metrics,
    calibrated_predictions,
    choice_loss_mean,
    choice_losses,
    content_free_examples,
    content_free_prior,
    metrics_from_predictions,
    result_from_scores,
)
from softprompt.model.backbones import Backbone, resolve_compute_dtype
from softprompt.model.deep_prompt import KVPrompt, prompt_length
from softprompt.score_store import ScoreStore, inputs_digest
from softprompt.scoring import Scores, ScoringOptions, ScoringStats, choice_scores, stacked_choice_scores
from softprompt.tasks import Task, get_task
from softprompt.tasks.base import Example


class Evaluator:
    """Evaluate prompts on tasks with one loaded backbone, caching examples and tokenization."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        data_dir: str | Path | None = None,
        max_length: int = 512,
        compute_dtype: torch.dtype | None = None,
        max_tokens: int = 8192,
        progress: bool = False,
        parallel: DataParallel = SINGLE,
        scoring: ScoringOptions | None = None,
        prompt_format: str = "auto",  # as TrainConfig's: chat where the tokenizer has a chat template
        memoize: bool = False,
        store: ScoreStore | None = None,
    ):
        self.backbone = backbone  # every example it scores is laid out in one format (plain or chat template):
        self.prompt_format = resolve_prompt_format(prompt_format, backbone.tokenizer)
        self.parallel = parallel  # under a data-parallel launch each process scores a shard
        self.data_dir, self.max_length, self.compute_dtype, self.max_tokens = data_dir, max_length, compute_dtype, max_tokens
        self.progress = progress
        self.scoring = scoring  # how the scorer computes (default: the fastest strategy for the model)
        self._examples: dict[tuple, list[Example]] = {}
        self._encoded: dict[tuple, list[EncodedExample]] = {}
        self._held: dict[int, list[Example]] = {}  # the examples `evaluate_examples` keys by id, kept alive
        # memoize: `evaluate` returns the result it computed before for the same task, split, subsample, prompt values and
        # hard prompt. Only for a backbone nothing trains while this evaluator lives: a fine-tuned one gets its first score.
        self.memoize = memoize
        self._results: dict[tuple, EvalResult] = {}
        # store: results shared on disk with a study's other processes (`score_store`), for a frozen backbone as the
        # memo; not under data parallelism (every process scores its shard)
        self.store = store if not parallel.active else None
        self._content_free: dict[tuple, list[Example]] = {}  # per task: the content-free inputs (calibration)
        self.stats = ScoringStats()  # what this evaluator's scorer computed (forwards, tokens), for tests and benchmarks

    def examples(self, task: Task, split: str = "validation", limit: int | None = None, seed: int = 0) -> list[Example]:
        key = (task.name, id(task), split, limit, seed)
        if key not in self._examples:
            self._examples[key] = task.load(split, self.data_dir, limit=limit, seed=seed)
        return self._examples[key]

    def encoded(
        self, task: Task, examples: list[Example], n_prompt: int, hard_prompt: str | None, key: tuple
    ) -> list[EncodedExample]:
        full_key = (*key, n_prompt, hard_prompt)
        if full_key not in self._encoded:
            self._encoded[full_key] = encode_examples(
                examples,
                self.backbone.tokenizer,
                n_prompt=n_prompt,
                hard_prompt=hard_prompt,
                max_length=self.max_length,
                prompt_format=self.prompt_format,
            )
        return self._encoded[full_key]

    def prepare(
        self,
        task: Task,
        n_prompt: int = 0,
        *,
        hard_prompt: str | None = None,
        split: str = "validation",
        limit: int | None = None,
        seed: int = 0,
    ) -> list[EncodedExample]:
        """Load and tokenize what `evaluate` scores (cached): called early, a missing split or a max_length too small
        for an answer fails before hours of training, not after."""
        examples = self.examples(task, split, limit, seed)
        return self.encoded(task, examples, n_prompt, hard_prompt, (task.name, id(task), split, limit, seed))

    def evaluate(
        self,
        task: Task | str,
        prompt: torch.Tensor | KVPrompt | None = None,
        *,
        hard_prompt: str | None = None,
        split: str = "validation",
        limit: int | None = None,
        seed: int = 0,
        calibrate: bool = False,
    ) -> EvalResult:
        """Score `prompt` (soft, a tensor; `hard_prompt`, text; or neither) on a split; `calibrate` adds the
        content-free calibrated metrics (`EvalResult.calibrated`), from the same prompt on the content-free inputs."""
        task = get_task(task) if isinstance(task, str) else task
        examples = self.examples(task, split, limit, seed)
        key = (task.name, id(task), split, limit, seed)
        memo = (*key, hard_prompt, _values_key(prompt), calibrate) if self.memoize else None  # (hashed only when kept)
        if memo in self._results:
            return self._results[memo]
        score = self._score if self.store is None else partial(_through_store, self)  # the store: see `score_store`
        result = score(task, examples, prompt, hard_prompt, split, key, calibrate)
        if memo is not None:
            self._results[memo] = result
        return result

    def evaluate_stacked(
        self, task: Task | str, prompts: torch.Tensor, *, split: str = "validation", limit: int | None = None, seed: int = 0
    ) -> list[EvalResult]:
        """`evaluate` of each of K soft prompts of one length (K, n, d), every example behind each in the same forwards
        (`stacked_choice_scores`): K `evaluate` calls' numbers, to float rounding, in fewer forwards. Not memoized."""
        task = get_task(task) if isinstance(task, str) else task
        examples = self.examples(task, split, limit, seed)
        scores = self._stacked_scores(task, examples, prompts, None, split, (task.name, id(task), split, limit, seed))
        return [result_from_scores(task, split, s) for s in scores]

    def evaluate_examples(
        self,
        task: Task,
        examples: list[Example],
        prompt: torch.Tensor | KVPrompt | None = None,
        *,
        split: str = "dev",
        hard_prompt: str | None = None,
        calibrate: bool = False,
    ) -> EvalResult:
        """Score a given list of examples (e.g. a development split carved from the training data)."""
        self._held[id(examples)] = examples  # keeps the id in the cache key unique while cached
        return self._score(task, examples, prompt, hard_prompt, split, ("examples", id(examples)), calibrate)

    def _score(
        self,
        task: Task,
        examples: list[Example],
        prompt: torch.Tensor | KVPrompt | None,
        hard_prompt: str | None,
        split: str,
        key: tuple,
        calibrate: bool = False,
    ) -> EvalResult:
        result = result_from_scores(task, split, self._scores(task, examples, prompt, hard_prompt, split, key))
        if calibrate:
            result.calibrated = self.calibration(task, result, prompt, hard_prompt)
        return result

    def calibration(
        self, task: Task, result: EvalResult, prompt: torch.Tensor | KVPrompt | None, hard_prompt: str | None
    ) -> dict[str, Any]:
        """`result`'s content-free calibrated metrics: the content-free inputs go through the same tokenization
        and scorer, with the same prompt; {"skipped": why} where calibration is ill-defined."""
        examples, why = content_free_examples(task)
        if not examples:
            return {"skipped": why}
        if result.scores is None:
            raise ValueError("calibration needs the result's scores (an EvalResult read back from JSON has none)")
        held = self._content_free.setdefault((task.name, id(task)), examples)
        content_free = self._scores(task, held, prompt, hard_prompt, "content-free", ("content-free", task.name, id(task)))
        return calibrated_metrics(task, result.scores, content_free, held)

    def _scores(
        self,
        task: Task,
        examples: list[Example],
        prompt: torch.Tensor | KVPrompt | None,
        hard_prompt: str | None,
        split: str,
        key: tuple,
    ) -> Scores:
        return self._stacked_scores(task, examples, prompt, hard_prompt, split, key)[0]

    def _stacked_scores(
        self,
        task: Task,
        examples: list[Example],
        prompt: torch.Tensor | KVPrompt | None,
        hard_prompt: str | None,
        split: str,
        key: tuple,
    ) -> list[Scores]:
        """The scores of `prompt` (one, a deep prompt, or each of a stack (K, n, d)) on `examples`, gathered over
        data-parallel shards."""
        stacked = isinstance(prompt, torch.Tensor) and prompt.dim() == 3
        enc = self.encoded(task, examples, prompt_length(prompt), hard_prompt, key)
        mine = self.parallel.shard(list(range(len(enc))))
        k = prompt.shape[0] if stacked else 1  # type: ignore[union-attr]
        bar = (
            _bar(len(mine) * k, f"eval {task.name} {split}" + (f" x{k}" if stacked else ""))
            if self.progress and self.parallel.is_main
            else None
        )
        kwargs = {
            "pad_id": self.backbone.tokenizer.pad_token_id,
            "max_tokens": self.max_tokens,
            "compute_dtype": self.compute_dtype,
            "progress": bar.update if bar is not None else None,
            "options": self.scoring,
            "stats": self.stats,
        }
        shard = [enc[i] for i in mine] if self.parallel.active else enc
        if stacked:
            scores = stacked_choice_scores(self.backbone.model, shard, prompt, **kwargs)
        else:
            scores = [choice_scores(self.backbone.model, shard, prompt, **kwargs)]
        if bar is not None:
            bar.close()
        if self.parallel.active:
            scores = [_merge_shards(self.parallel.gather((mine, s)), len(enc)) for s in scores]
        return scores


def evaluator_for(
    cfg: TrainConfig,
    backbone: Backbone,
    *,
    progress: bool = False,
    parallel: DataParallel = SINGLE,
    scoring: ScoringOptions | None = None,
    memoize: bool = False,
    prompt_format: str | None = None,
    store: ScoreStore | None = None,
) -> Evaluator:
    """The Evaluator a config scores with: its data folder, row length, compute dtype (`auto` resolved on the
    backbone's device), prompt format and scoring strategy, so training, baselines, studies and commands that
    share a config score alike. `scoring` replaces the options the config's strategy gives; `prompt_format` the
    config's format (a run's resolved one); `store` shares results with other processes (`score_store`: for a
    backbone that nothing trains)."""
    return Evaluator(
        backbone,
        data_dir=cfg.data_dir,
        max_length=cfg.max_length,
        compute_dtype=resolve_compute_dtype(cfg.compute_dtype, backbone.device),
        progress=progress,
        parallel=parallel,
        scoring=scoring if scoring is not None else ScoringOptions(strategy=cfg.scoring_strategy),
        prompt_format=prompt_format if prompt_format is not None else cfg.prompt_format,
        memoize=memoize,
        store=store,
    )


RUN_EVAL_FIELDS = ("data_dir", "max_length", "compute_dtype", "scoring_strategy")  # what a run's config gives its Evaluator


def evaluator_for_run(run: Any, backbone: Backbone, **kwargs: Any) -> Evaluator:
    """The Evaluator of a loaded run (a `runs.directory.Run`: its `config` dict and `prompt_format`): scored as it was trained,
    in its resolved prompt format (a field its run.json predates takes TrainConfig's default)."""
    saved = {k: run.config[k] for k in RUN_EVAL_FIELDS if k in run.config}
    kwargs.setdefault("prompt_format", run.prompt_format)
    return evaluator_for(TrainConfig(**saved), backbone, **kwargs)


def _through_store(ev: Evaluator, *args: Any) -> EvalResult:
    """`ev._score(*args)`'s result, read from the evaluator's score store when there, else scored and stored. The key:
    the evaluator's settings, the task, the split, a digest of the encoded inputs (data, template, tokenizer, hard
    prompt, row and prompt lengths) and the prompt's values."""
    assert ev.store is not None
    task, examples, prompt, hard_prompt, split, key, calibrate = args
    weights = next(ev.backbone.model.parameters(), None)
    settings = [
        ev.backbone.name,
        ev.backbone.revision,
        str(weights.dtype) if weights is not None else None,
        ev.backbone.device.type,
        str(ev.compute_dtype),
        repr(ev.scoring),
        ev.max_tokens,
    ]
    encoded = ev.encoded(task, examples, prompt_length(prompt), hard_prompt, key)
    stored = ev.store.key(settings, task.name, task.num_classes, split, inputs_digest(encoded), _values_key(prompt))
    result = ev.store.get(stored, calibrated=calibrate)
    if result is None:
        result = ev._score(*args)
        ev.store.put(stored, result)
    return result


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", leave=False)


def _values_key(prompt: torch.Tensor | KVPrompt | None) -> tuple | None:
    """A prompt's identity by value (kind, shape, dtype and a digest of its numbers), for the evaluator's memo."""
    if prompt is None:
        return None
    kind = "deep" if isinstance(prompt, KVPrompt) else "input"
    data = (prompt.matrix if isinstance(prompt, KVPrompt) else prompt).detach().cpu().contiguous()
    raw = data.view(torch.uint8) if data.dtype == torch.bfloat16 else data
    return (kind, tuple(data.shape), str(data.dtype), hashlib.sha256(raw.numpy().tobytes()).hexdigest())


def _merge_shards(shards: list[tuple[list[int], Scores]], n: int) -> Scores:
    """The processes' shard scores back in the examples' order."""
    logprobs: list = [None] * n
    labels: list = [None] * n
    chars: list = [None] * n
    for idx, s in shards:
        for j, i in enumerate(idx):
            logprobs[i], labels[i], chars[i] = s.logprobs[j], s.labels[j], s.choice_chars[j]
    return Scores(logprobs=logprobs, labels=labels, choice_chars=chars, truncated=sum(s.truncated for _, s in shards))
