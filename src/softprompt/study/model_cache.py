"""The model a process's study units share: its backbone and Evaluator, loaded on first use and kept.

One per process (a module global, `process_model_cache`), so a reused Ray worker does not reload the model;
lazy, so units that need no model (a skipped run, the majority baseline) never load one.
"""

from __future__ import annotations

import os
import platform
import time
from typing import TYPE_CHECKING, Any

from softprompt.config import TrainConfig
from softprompt.runs.directory import package_versions
from softprompt.study.plan import model_cache_key, model_result_key

if TYPE_CHECKING:
    import torch

    from softprompt.evaluate import Evaluator
    from softprompt.model.backbones import Backbone
    from softprompt.score_store import ScoreStore


class ModelCache:
    """The backbone and Evaluator that a process's units share, loaded on first use.

    Lazy, so units that need no model (a skipped run, the majority baseline) never load one.
    """

    def __init__(self, train: TrainConfig):
        self.train = train
        self.key = model_cache_key(train)
        self.result_key = model_result_key(train)
        self._backbone: Backbone | None = None
        self._evaluator: Evaluator | None = None
        self.scores: ScoreStore | None = None  # the study's shared evaluation results (`share_scores`)
        self.load_s = 0.0  # seconds spent loading the model and building its evaluator (a unit's timing leaves them out)

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            from softprompt.model.backbones import load_backbone

            start = time.perf_counter()
            self._backbone = load_backbone(self.train.model, dtype=self.train.dtype, device=self.train.device)
            self.load_s += time.perf_counter() - start
        return self._backbone

    @property
    def compute_dtype(self) -> torch.dtype:
        from softprompt.model.backbones import resolve_compute_dtype

        return resolve_compute_dtype(self.train.compute_dtype, self.backbone.device)

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            from softprompt.evaluate import evaluator_for

            backbone = self.backbone
            start = time.perf_counter()
            # memoize: the units' shared backbone is frozen, and the analyses re-score some prompts
            self._evaluator = evaluator_for(self.train, backbone, memoize=True, store=self.scores)
            self.load_s += time.perf_counter() - start
        return self._evaluator

    def share_scores(self, store: ScoreStore | None) -> None:
        """Evaluate through `store` from now on (a study's `score_store`, which its other processes share): a unit
        sets it, as a reused worker may have served another study."""
        self.scores = store
        if self._evaluator is not None:
            self._evaluator.store = store

    def facts(self) -> dict[str, Any]:
        """What results.json's "setup" says about the model and the machine this cache runs on."""
        import torch

        backbone = self.backbone
        return {
            "model": {
                "name": backbone.name,
                "source": backbone.source,
                "revision": backbone.revision,
                "hidden_size": backbone.hidden_size,
                "vocab_size": backbone.vocab_size,
                "parameters": sum(p.numel() for p in backbone.model.parameters()),
            },
            "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
            "device": str(backbone.device),
            "hardware": {
                "machine": platform.machine(),
                "processor": platform.processor() or platform.machine(),
                "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
                "torch_threads": torch.get_num_threads(),
            },
            "versions": package_versions(),
        }


_PROCESS_CACHE: ModelCache | None = None


def process_model_cache(train: TrainConfig) -> ModelCache:
    """This process's model cache for `train`, kept in a module global so a reused Ray worker does not reload
    the model. Only the latest one is kept, so a worker serving another study frees the old model."""
    global _PROCESS_CACHE
    if _PROCESS_CACHE is None or _PROCESS_CACHE.key != model_cache_key(train):
        _PROCESS_CACHE = None
        _PROCESS_CACHE = ModelCache(train)
    return _PROCESS_CACHE
