"""Every baseline of one task, side by side: `run_baselines` (the `baselines` command, a study's baseline units).

The trained baselines (`finetune`, `lora`, `hard`) are ordinary training runs in `OUT/finetune`,
`OUT/lora` and `OUT/hard`, on the same training subsample, with their own artifacts, metrics and resume.
Fine-tuning and LoRA each get their own copy of the model: fine-tuning changes the weights and LoRA
injects adapters in place, so the shared backbone stays untouched; a hard prompt leaves the model as it
is, so it trains on the shared backbone. A completed run with the same config is reused, an interrupted
one is resumed (`runs.run_state`). Rows go to `OUT/baselines.json` after every method.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from softprompt.config import PROMPT_METHODS, TrainConfig
from softprompt.data.inputs import task_inputs
from softprompt.errors import SoftPromptError
from softprompt.evaluate import EVAL_SEED, Evaluator, evaluator_for
from softprompt.io import write_json
from softprompt.locks import directory_lock
from softprompt.model.backbones import Backbone, load_backbone
from softprompt.preemption import safe_point
from softprompt.records.history import read_metrics
from softprompt.records.run import HardPromptFacts, RunRecord
from softprompt.runs.baselines import (
    METHODS,
    NEEDS_MODEL,
    TRAINED,
    baseline_config,
    baseline_row,
    check_methods,
    majority_result,
    untrained_result,
)
from softprompt.runs.state import COMPLETE, CONFLICT, RESUMABLE, run_state, warn_unknown_inputs
from softprompt.score_store import ScoreStore
from softprompt.tasks import Task, get_task
from softprompt.training.recipe import train

BASELINES_FILE = "baselines.json"


def run_baselines(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    backbone: Backbone | None = None,
    backbone_factory: Callable[[], Backbone] | None = None,
    evaluator: Evaluator | None = None,
    overwrite: bool = False,
    progress: bool = False,
    trust_remote_code: bool = False,
) -> list[dict[str, Any]]:
    """Run the requested baselines of `cfg.task` on validation; one dict per method, in the order given.

    `cfg` holds the shared settings (task, model, seed, subsample sizes, epochs, batch size, dtypes);
    a trained method's config is `baseline_config(cfg, method, overrides[method])`. `backbone`
    (already loaded, frozen) serves the untrained baselines; the trained ones get a copy from
    `backbone_factory`, else a deep copy of `backbone`, else a fresh `load_backbone(cfg.model)`.
    `evaluator` may be shared with other work on the same backbone (its tokenization cache is reused).
    The output directory is locked, and the data files read, before any model is loaded.
    """
    methods = check_methods(methods)
    task = get_task(cfg.task)
    inputs = task_inputs(cfg.task, cfg.data_dir)  # reads the data files: a missing or unreadable one fails now
    out_dir = Path(out_dir)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(TRAINED))
    if unknown:
        keys = sorted({k for m in unknown for k in overrides[m]}) or ["settings"]
        raise SoftPromptError(f"{', '.join(keys)} given for {unknown}: only {', '.join(TRAINED)} are trained")
    # built first, so a bad option fails before any work
    configs = {m: baseline_config(cfg, m, overrides.get(m)) for m in methods if m in TRAINED}
    with directory_lock(out_dir, "baselines directory"):  # before the model loads: a second writer fails at once
        evaluator = _evaluator(cfg, methods, backbone, evaluator, progress, trust_remote_code)
        backbone = backbone or (evaluator.backbone if evaluator is not None else None)
        total = sum(p.numel() for p in backbone.model.parameters()) if backbone is not None else None

        rows: list[dict[str, Any]] = []
        meta = {
            "task": task.name,
            "task_spec": cfg.task,
            "model": cfg.model,
            "split": "validation",
            "settings": {
                "max_train": cfg.max_train,
                "max_eval": cfg.max_eval,
                "epochs": cfg.epochs,
                "seed": cfg.seed,
                "batch_size": cfg.batch_size,
                "max_length": cfg.max_length,
                "data_dir": cfg.data_dir,
            },
        }

        def save(status: str) -> None:
            write_json(out_dir / BASELINES_FILE, {**meta, "status": status, "methods": methods, "rows": rows})

        for method in methods:
            safe_point("baseline")  # between two methods (each saved in baselines.json once done)
            started = time.perf_counter()
            if method in TRAINED:
                copies = backbone_factory or ((lambda: copy.deepcopy(backbone)) if backbone is not None else None)
                if method in PROMPT_METHODS and backbone is not None:  # frozen and unchanged by a prompt: no copy needed
                    copies = lambda: backbone  # noqa: E731
                store = evaluator.store if evaluator is not None else None  # the prompt methods' evaluations share it
                row = _trained(method, configs[method], out_dir / method, copies, overwrite, progress, inputs, store)
            else:
                row = _untrained(method, cfg, task, evaluator, total)
            row.setdefault("wall_time_s", round(time.perf_counter() - started, 2))
            rows.append(row)
            save("partial")
        save("complete")
        return rows


def _evaluator(
    cfg: TrainConfig, methods: list[str], backbone, evaluator: Evaluator | None, progress: bool, trust_remote_code: bool = False
) -> Evaluator | None:
    """The evaluator of the untrained baselines: the one given, else one on `backbone` (loaded if a method needs it)."""
    if evaluator is not None:
        return evaluator
    if backbone is None and any(m in NEEDS_MODEL for m in methods):
        backbone = load_backbone(cfg.model, dtype=cfg.dtype, device=cfg.device, trust_remote_code=trust_remote_code)
    if backbone is None:
        return None
    return evaluator_for(cfg, backbone, progress=progress)


def _untrained(method: str, cfg: TrainConfig, task: Task, evaluator: Evaluator | None, total: int | None) -> dict[str, Any]:
    if method == "majority":
        train_ex, _ = task.load_train(cfg.data_dir, limit=cfg.max_train, seed=cfg.seed, dev_size=cfg.dev_size)
        if evaluator is not None:
            val_ex = evaluator.examples(task, "validation", cfg.max_eval, EVAL_SEED)
        else:
            val_ex = task.load("validation", cfg.data_dir, limit=cfg.max_eval, seed=EVAL_SEED)
        res = majority_result(task, train_ex, val_ex)
        label = task.label_words[res.predictions[0]] if res.predictions else None
        return baseline_row(method, res.metrics(), 0, None, majority_label=label, train_examples=len(train_ex))
    assert evaluator is not None
    res = untrained_result(method, evaluator, task, limit=cfg.max_eval, seed=EVAL_SEED, hard_prompt=task.description)
    extra = {"hard_prompt": task.description} if method == "english_prompt" else {}
    return baseline_row(method, res.metrics(), 0, total, **extra)


def _trained(
    method: str,
    cfg: TrainConfig,
    run_dir: Path,
    copies,
    overwrite: bool,
    progress: bool,
    inputs: dict,
    store: ScoreStore | None = None,
) -> dict[str, Any]:
    """A finetune or LoRA run: reused when complete with the same config and inputs, resumed when unfinished,
    else trained."""
    resume = False
    if not overwrite:
        state = run_state(run_dir, cfg, inputs)
        if state.kind == CONFLICT:
            raise SoftPromptError(f"{run_dir} holds a run with {state.conflict()}: use another --out or --overwrite")
        if state.inputs_unknown and state.kind == COMPLETE:
            warn_unknown_inputs(run_dir)
        if state.kind == COMPLETE:  # done before: reuse it
            record = RunRecord.read(run_dir)
            params = record.parameters
            return baseline_row(
                method,
                record.final.to_dict() if record.final else {},
                params.trainable if params else 0,
                params.total if params else None,
                run=str(run_dir),
                reused=True,
                wall_time_s=record.wall_time_s,
                history=read_metrics(run_dir),
                **hard_prompt_columns(record.hard_prompt),
            )
        resume = state.kind == RESUMABLE
    model_copy = copies() if copies is not None else None  # None: train() loads a fresh one from cfg.model
    try:
        res = train(
            cfg,
            run_dir,
            resume=resume,
            overwrite=overwrite,
            backbone=model_copy,
            progress=progress,
            baselines=False,
            scores=store,
        )
    finally:
        del model_copy
        gc.collect()
    return baseline_row(
        method,
        res.final.metrics(),
        res.parameters["trainable"],
        res.parameters["total"],
        run=str(run_dir),
        best_epoch=res.best["epoch"] if res.best else None,
        wall_time_s=RunRecord.read(run_dir).wall_time_s,
        history=read_metrics(run_dir),
        **hard_prompt_columns(res.hard_prompt),
    )


def hard_prompt_columns(hard: HardPromptFacts | None) -> dict[str, Any]:
    """A hard baseline's extra columns: its text (the last prompt, what the row's accuracy scores as token rows),
    whether the text tokenizes back to those tokens, and the text's own score typed as a hard prompt."""
    if not hard:
        return {}
    text = hard.text_final
    return {
        "hard_prompt": hard.last.text,
        "hard_prompt_tokens": hard.last.tokens,
        "retokenizes_to_same_ids": hard.last.retokenizes_to_same_ids,
        "text_accuracy": text.accuracy if text else None,
        "text_f1_macro": text.f1_macro if text else None,
    }
