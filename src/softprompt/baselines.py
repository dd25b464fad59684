"""Baselines for one task, side by side: majority class, no prompt, the English prompt, full
fine-tuning and LoRA.

- `majority`: the most frequent label of the (possibly subsampled) TRAINING examples, predicted for
  every validation example; no model.
- `no_prompt` / `english_prompt`: the frozen model scores the label words after the template alone,
  or after the task's English description as a hard prompt (what `text` init starts from).
- `finetune` / `lora`: ordinary training runs (`train.train` with method finetune / lora) in
  `OUT/finetune` and `OUT/lora`, on the same training subsample, with their own artifacts,
  metrics and resume. Each gets its own copy of the model: fine-tuning changes the weights and
  LoRA injects adapters in place, so the shared backbone stays untouched.

`run_baselines` returns one row per method and writes them to `OUT/baselines.json`. A completed
trained run with the same config is reused, an interrupted one is resumed.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from softprompt.backbones import Backbone, load_backbone, resolve_compute_dtype
from softprompt.errors import SoftPromptError
from softprompt.evaluate import EvalResult, Evaluator, majority_result
from softprompt.io import read_json, write_json
from softprompt.runs import RUN_FILE
from softprompt.tasks import get_task

METHODS = ("majority", "no_prompt", "english_prompt", "finetune", "lora")
TRAINED = ("finetune", "lora")
BASELINES_FILE = "baselines.json"


def _check_methods(methods: Sequence[str]) -> list[str]:
    out: list[str] = []
    for m in methods:
        if m not in METHODS:
            raise SoftPromptError(f"unknown baseline {m!r}: expected some of {', '.join(METHODS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise SoftPromptError("no baseline method given")
    return out


def _row(method: str, res: EvalResult | dict, trainable: int, total: int | None, **extra: Any) -> dict[str, Any]:
    m = res.summary() if isinstance(res, EvalResult) else res
    row = {
        "method": method,
        "accuracy": float(m["accuracy"]),
        "f1_macro": float(m["f1_macro"]),
        "acc_norm": float(m["acc_norm"]),
        "n": int(m["n"]),
        "truncated": int(m.get("truncated", 0)),
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


def run_baselines(
    task: str,
    model: str,
    out_dir: str | Path,
    *,
    max_train: int | None = None,
    epochs: int = 3,
    seed: int = 0,
    data_dir: str | Path | None = None,
    methods: Sequence[str] = METHODS,
    backbone: Backbone | None = None,
    backbone_factory: Callable[[], Backbone] | None = None,
    evaluator: Evaluator | None = None,
    max_eval: int | None = None,
    max_length: int = 512,
    batch_size: int = 8,
    lr: dict[str, float] | None = None,
    lora_r: int = 8,
    dtype: str = "float32",
    compute_dtype: str = "auto",
    device: str = "auto",
    train_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run the requested baselines of `task` (a built-in name or a .toml path) on validation.

    `backbone` (already loaded, frozen) serves the untrained baselines; the trained ones get a copy
    from `backbone_factory`, else a deep copy of `backbone`, else a fresh `load_backbone(model)`.
    `evaluator` may be shared with other work on the same backbone (its tokenization cache is reused).
    `lr` maps finetune/lora to a learning rate (default: train.DEFAULT_LR); `train_options` are
    further TrainConfig fields for the trained runs. Returns one dict per method, in the order given.
    """
    from softprompt.train import TrainConfig, train

    methods = _check_methods(methods)
    task_obj = get_task(task)
    out_dir = Path(out_dir)
    data = None if data_dir is None else str(data_dir)
    lr = dict(lr or {})
    unknown = sorted(set(lr) - set(TRAINED))
    if unknown:
        raise SoftPromptError(f"lr given for {unknown}: only {', '.join(TRAINED)} are trained")
    configs = {
        m: TrainConfig(
            **{
                **dict(
                    task=task,
                    model=model,
                    method=m,
                    lr=lr.get(m),
                    epochs=epochs,
                    batch_size=batch_size,
                    seed=seed,
                    max_train=max_train,
                    max_eval=max_eval,
                    max_length=max_length,
                    dtype=dtype,
                    compute_dtype=compute_dtype,
                    lora_r=lora_r,
                    data_dir=data,
                    device=device,
                ),
                **(train_options or {}),
            }
        )
        for m in methods
        if m in TRAINED
    }  # built first, so a bad option fails before any work

    need_model = any(m in ("no_prompt", "english_prompt") for m in methods)
    if evaluator is not None:
        backbone = backbone or evaluator.backbone
    if backbone is None and need_model:
        backbone = load_backbone(model, dtype=dtype, device=device)
    if evaluator is None and backbone is not None:
        evaluator = Evaluator(
            backbone,
            data_dir=data_dir,
            max_length=max_length,
            compute_dtype=resolve_compute_dtype(compute_dtype, backbone.device),
            progress=progress,
        )
    total = sum(p.numel() for p in backbone.model.parameters()) if backbone is not None else None

    rows: list[dict[str, Any]] = []
    meta = {
        "task": task_obj.name,
        "task_spec": task,
        "model": model,
        "split": "validation",
        "settings": {
            "max_train": max_train,
            "max_eval": max_eval,
            "epochs": epochs,
            "seed": seed,
            "batch_size": batch_size,
            "max_length": max_length,
            "data_dir": data,
        },
    }

    def save(status: str) -> None:
        write_json(out_dir / BASELINES_FILE, {**meta, "status": status, "methods": methods, "rows": rows})

    out_dir.mkdir(parents=True, exist_ok=True)
    for method in methods:
        started = time.perf_counter()
        if method == "majority":
            train_ex = task_obj.load("train", data_dir, limit=max_train, seed=seed)
            if evaluator is not None:
                val_ex = evaluator.examples(task_obj, "validation", max_eval, seed)
            else:
                val_ex = task_obj.load("validation", data_dir, limit=max_eval, seed=seed)
            res = majority_result(task_obj, train_ex, val_ex)
            label = task_obj.label_words[res.predictions[0]] if res.predictions else None
            row = _row(method, res, 0, None, majority_label=label, train_examples=len(train_ex))
        elif method == "no_prompt":
            assert evaluator is not None
            res = evaluator.evaluate(task_obj, None, limit=max_eval, seed=seed)
            row = _row(method, res, 0, total)
        elif method == "english_prompt":
            assert evaluator is not None
            res = evaluator.evaluate(task_obj, None, hard_prompt=task_obj.description, limit=max_eval, seed=seed)
            row = _row(method, res, 0, total, hard_prompt=task_obj.description)
        else:
            row = _trained(method, configs[method], out_dir / method, backbone, backbone_factory, overwrite, progress, train)
        row.setdefault("wall_time_s", round(time.perf_counter() - started, 2))
        rows.append(row)
        save("partial")
    save("complete")
    return rows


def _trained(method, cfg, run_dir: Path, backbone, backbone_factory, overwrite: bool, progress: bool, train) -> dict:
    resume = False
    run_file = run_dir / RUN_FILE
    if run_file.exists() and not overwrite:
        info = read_json(run_file)
        saved = info.get("config", {}) if isinstance(info, dict) else {}
        changed = cfg.differences(saved)
        if changed:
            raise SoftPromptError(
                f"{run_dir} holds a run with a different config (changed: {changed}): use another --out or --overwrite"
            )
        if info.get("status") == "complete":  # done before: reuse it
            params = info.get("parameters", {})
            return _row(
                method,
                info["final"],
                params.get("trainable", 0),
                params.get("total"),
                run=str(run_dir),
                reused=True,
                wall_time_s=info.get("wall_time_s"),
            )
        resume = True
    if backbone_factory is not None:
        model_copy = backbone_factory()
    elif backbone is not None:
        model_copy = copy.deepcopy(backbone)
    else:
        model_copy = None  # train() loads a fresh one from cfg.model
    try:
        res = train(cfg, run_dir, resume=resume, overwrite=overwrite, backbone=model_copy, progress=progress, baselines=False)
    finally:
        del model_copy
        gc.collect()
    info = read_json(run_file)
    return _row(
        method,
        res.final,
        res.parameters["trainable"],
        res.parameters["total"],
        run=str(run_dir),
        best_epoch=res.best["epoch"] if res.best else None,
        wall_time_s=info.get("wall_time_s"),
    )
