"""The training loop: soft prompt (or full fine-tuning / LoRA as baselines) on one task.

Read top to bottom: config -> data -> model -> trainable parameters -> optimiser and schedule ->
epochs of (batches -> scorer -> cross-entropy over the choices -> step) -> evaluation -> artifacts.
The loop checkpoints at each epoch end, every `checkpoint_every` steps and on Ctrl-C; `resume`
continues from the checkpoint to the same result an uninterrupted run gives.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from softprompt.backbones import Backbone, load_backbone, resolve_compute_dtype, resolve_dtype
from softprompt.batching import collate, encode_examples, length_grouped_order
from softprompt.distributed import setup_data_parallel
from softprompt.errors import SoftPromptError
from softprompt.evaluate import EvalResult, Evaluator
from softprompt.io import atomic_path, read_json, remove_stale_temporaries, write_json, write_text
from softprompt.prompt import INIT_METHODS, PROMPT_FILE, SoftPrompt, init_prompt
from softprompt.runs import (
    BEST_PROMPT_FILE,
    CHECKPOINT_FILE,
    METRICS_FILE,
    RUN_FILE,
    RUN_FORMAT,
    package_versions,
)
from softprompt.scoring import LOSSES, autocast_context, batch_choice_scores
from softprompt.tasks import get_task

METHODS = ("prompt", "finetune", "lora")
# The validation subsample (--max-eval) is the same for every seed and method, so numbers compare;
# only the few-shot training subsample (--max-train) depends on the run's seed.
EVAL_SEED = 0
DIVERGED = 1e6  # no embedding-scale parameter gets near this unless the learning rate exploded
DEFAULT_LR = {"prompt": 3e-2, "finetune": 2e-5, "lora": 1e-3}


@dataclass
class TrainConfig:
    """Everything that determines a run's result (and nothing that does not)."""

    task: str = "rte"
    model: str = "smollm2-135m"
    method: str = "prompt"
    tokens: int = 20
    init: str = "text"
    init_text: str | None = None
    lr: float | None = None
    optimizer: str = "adamw"
    loss: str = "choices"  # "choices": cross-entropy over the choices; "lm": the answer's NLL (PEFT's recipe)
    weight_decay: float = 0.0
    epochs: int = 3
    batch_size: int = 8
    group_by_length: bool = False  # batches of similar length: ~17% faster on RTE, but other batches than the default
    grad_accum: int = 1
    schedule: str = "linear"
    warmup: float = 0.06
    seed: int = 0
    max_train: int | None = None
    max_eval: int | None = None
    max_length: int = 512
    dtype: str = "float32"
    compute_dtype: str = "auto"
    lora_r: int = 8
    lora_alpha: int = 16
    data_dir: str | None = None
    device: str = "auto"
    checkpoint_every: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SoftPromptError(f"unknown method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.init not in INIT_METHODS:
            raise SoftPromptError(f"unknown init {self.init!r}: expected one of {', '.join(INIT_METHODS)}")
        if self.loss not in LOSSES:
            raise SoftPromptError(f"unknown loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        if not isinstance(self.group_by_length, bool):
            raise SoftPromptError(f"group_by_length must be true or false, got {self.group_by_length!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise SoftPromptError(f"unknown optimizer {self.optimizer!r}: expected adam or adamw")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise SoftPromptError(f"unknown schedule {self.schedule!r}: expected linear, cosine or constant")
        for name in ("tokens", "epochs", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise SoftPromptError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SoftPromptError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise SoftPromptError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        resolve_dtype(self.dtype)
        if self.compute_dtype != "auto":
            resolve_dtype(self.compute_dtype)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SoftPromptError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**d)

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """The fields whose value in a saved run's config differs from this one's (a field the saved
        config predates counts as its default, so adding an option does not invalidate old runs)."""
        mine = asdict(self)
        full = {**{k: v for k, v in asdict(TrainConfig()).items() if k not in saved}, **saved}
        return sorted(k for k in set(full) | set(mine) if full.get(k) != mine.get(k))


# ----------------------------------------------------------------------------- helpers


def _lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)

    return f


def _trainable(cfg: TrainConfig, backbone: Backbone, prompt: SoftPrompt | None) -> dict[str, torch.nn.Parameter]:
    """The parameters this method trains, by stable name (used for checkpoints)."""
    model = backbone.model
    if cfg.method == "prompt":
        assert prompt is not None
        return {"prompt": prompt.weight}
    if cfg.method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lcfg = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=True
        )
        torch.manual_seed(cfg.seed)
        inject_adapter_in_model(lcfg, model)
        params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    else:
        params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    return params


def count_parameters(cfg: TrainConfig, backbone: Backbone, trainable: dict[str, torch.nn.Parameter]) -> dict[str, int]:
    total = sum(p.numel() for p in backbone.model.parameters())
    n_train = sum(p.numel() for p in trainable.values())
    if cfg.method == "prompt":
        total += n_train
    return {"trainable": int(n_train), "total": int(total)}


def _save_trainables(path: Path, trainable: dict[str, torch.nn.Parameter]) -> None:
    with atomic_path(path) as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in trainable.items()}, str(tmp))


def _save_checkpoint(out: Path, trainable, optimizer, scheduler, state: dict) -> None:
    """One safetensors file: trainables + optimiser moments as tensors, the loop state as JSON metadata.

    A single file replaced atomically, so a kill at any instant leaves either the old or the new
    checkpoint, never a tensor file and a state file from different steps. Never pickle.
    """
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in trainable.items()}
    names = list(trainable)
    for i, p in enumerate(trainable.values()):
        for k, v in optimizer.state.get(p, {}).items():
            if torch.is_tensor(v):
                tensors[f"opt/{names[i]}/{k}"] = v.detach().cpu().contiguous()
    state = dict(state, scheduler=scheduler.state_dict()["last_epoch"])
    with atomic_path(out / CHECKPOINT_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})


def _load_checkpoint(out: Path, trainable, optimizer, scheduler) -> dict:
    try:
        with safe_open(str(out / CHECKPOINT_FILE), framework="pt") as f:
            state = json.loads((f.metadata() or {})["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise SoftPromptError(
            f"{out / CHECKPOINT_FILE}: unreadable checkpoint ({type(e).__name__}: {e}); delete the run directory to restart"
        ) from None
    with torch.no_grad():
        for n, p in trainable.items():
            if f"param/{n}" not in tensors:
                raise SoftPromptError(f"{out / CHECKPOINT_FILE}: no tensor for {n!r}; the checkpoint is from another config")
            p.copy_(tensors[f"param/{n}"])
    step = state["optimizer_step"]
    for n, p in trainable.items():
        # moments live with their parameter (a GPU run resumes on the GPU); Adam keeps `step` on the CPU
        moments = {
            k.split("/")[-1]: v if k.endswith("/step") else v.to(p.device)
            for k, v in tensors.items()
            if k.startswith(f"opt/{n}/")
        }
        if moments:
            moments["step"] = moments.get("step", torch.tensor(float(step)))
            optimizer.state[p] = moments
    scheduler.last_epoch = state["scheduler"]
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # noqa: SLF001
    for g, lr0 in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        g["lr"] = lr0 * scheduler.lr_lambdas[0](scheduler.last_epoch)
    return state


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    out: Path
    final: EvalResult
    best: dict[str, Any]
    baselines: dict[str, EvalResult]
    history: list[dict[str, Any]]
    parameters: dict[str, int]


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    backbone: Backbone | None = None,
    progress: bool = True,
    baselines: bool = True,
) -> TrainResult:
    """Train one run into `out` and evaluate it; returns its final metrics.

    Under `accelerate launch` with N processes, `cfg.batch_size` is per process (global batch
    N x batch_size), each process scores its share of every batch and of every evaluation, and
    only the main process writes into `out` (see `softprompt.distributed`).
    """
    out = Path(out)
    dp = setup_data_parallel(cfg.device)
    main = dp.is_main
    run_file = out / RUN_FILE
    if run_file.exists() and not resume and not overwrite:
        status = read_json(run_file).get("status")
        raise SoftPromptError(f"{out} already holds a {status} run: pass --resume to continue it or choose another --out")
    if resume and run_file.exists():
        diff = cfg.differences(read_json(run_file).get("config", {}))
        if diff:
            raise SoftPromptError(f"{out}: --resume with a different config (changed: {diff}); use another --out")
    dp.barrier()  # every process has read what was there before the main process writes
    out.mkdir(parents=True, exist_ok=True)
    if main:
        remove_stale_temporaries(out)  # half-written files of a killed earlier attempt
    torch.manual_seed(cfg.seed)

    # data
    task = get_task(cfg.task)
    train_examples = task.load("train", cfg.data_dir, limit=cfg.max_train, seed=cfg.seed)
    backbone = backbone or load_backbone(cfg.model, dtype=cfg.dtype, device=str(dp.device) if dp.active else cfg.device)
    tok = backbone.tokenizer

    # trainable parameters
    prompt: SoftPrompt | None = None
    if cfg.method == "prompt":
        prompt = init_prompt(
            backbone.model,
            tok,
            cfg.tokens,
            cfg.init,
            text=cfg.init_text or task.description,
            label_words=list(task.label_words),
            seed=cfg.seed,
        )
        prompt.check_model(backbone.hidden_size)
        prompt.to(backbone.device)
    trainable = _trainable(cfg, backbone, prompt)
    dp.broadcast_(trainable.values())
    n_prompt = prompt.n_tokens if prompt is not None else 0
    encoded = encode_examples(train_examples, tok, n_prompt=n_prompt, max_length=cfg.max_length)
    compute_dtype = resolve_compute_dtype(cfg.compute_dtype, backbone.device)
    evaluator = Evaluator(
        backbone,
        data_dir=cfg.data_dir,
        max_length=cfg.max_length,
        compute_dtype=compute_dtype,
        progress=progress and main,
        parallel=dp,
    )

    # optimiser and schedule
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(list(trainable.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    global_batch = cfg.batch_size * dp.world
    steps_per_epoch = math.ceil(len(encoded) / (global_batch * cfg.grad_accum))
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.schedule, int(cfg.warmup * total_steps), total_steps))

    state = {"epoch": 0, "micro_step": 0, "optimizer_step": 0, "history": [], "best": None, "elapsed": 0.0}
    state["processes"] = dp.world
    if resume and (out / CHECKPOINT_FILE).exists():
        state = _load_checkpoint(out, trainable, optimizer, scheduler)
        if state.get("processes", 1) != dp.world:
            raise SoftPromptError(
                f"{out}: the checkpoint was written by {state.get('processes', 1)} data-parallel process(es), this is "
                f"{dp.world}: the global batch would change; resume with the same number of processes"
            )
    params = count_parameters(cfg, backbone, trainable)
    info = _run_info(cfg, backbone, task, prompt, params, status="running")
    info["processes"] = dp.world
    if main:  # who is running it, while it runs (a cluster scheduler's worker, a launcher's main process)
        write_json(run_file, dict(info, worker={"host": socket.gethostname(), "pid": os.getpid()}))
        if prompt is not None and not (out / BEST_PROMPT_FILE).exists():
            prompt.save(out / BEST_PROMPT_FILE)

    def checkpoint() -> None:
        if main:
            _save_checkpoint(out, trainable, optimizer, scheduler, state)
            write_text(out / METRICS_FILE, "".join(_jsonl(h) for h in state["history"]))

    micro_per_epoch = math.ceil(len(encoded) / global_batch)
    lengths = [e.num_tokens for e in encoded]  # for --group-by-length
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=micro_per_epoch * cfg.epochs,
            initial=state["epoch"] * micro_per_epoch + state["micro_step"],
            desc=f"train {task.name} seed {cfg.seed}",
            unit="batch",
            dynamic_ncols=True,
        )
    started = time.perf_counter() - state["elapsed"]
    # True while the parameters, optimiser, schedule and `state` describe the same instant, so Ctrl-C
    # may checkpoint them; False inside an optimiser step or an epoch's bookkeeping, where a
    # checkpoint would pair parameters of one step with the counters of another.
    consistent = True
    try:
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            order = _epoch_order(len(encoded), cfg.seed, epoch)
            if cfg.group_by_length:  # global batches of similar length (each process still takes its share)
                order = length_grouped_order(order, lengths, global_batch)
            losses: list[float] = list(state.get("epoch_losses", []))
            pending: list[float] = []  # losses of micro-batches whose optimiser step has not happened yet
            for micro in range(state["micro_step"], micro_per_epoch):
                idx = order[micro * global_batch : (micro + 1) * global_batch]
                idx = idx[dp.rank * cfg.batch_size : (dp.rank + 1) * cfg.batch_size]  # this process's share
                loss = None
                if idx:
                    batch = collate([encoded[i] for i in idx], tok.pad_token_id)
                    with autocast_context(backbone.device, compute_dtype):
                        scores = batch_choice_scores(backbone.model, prompt.weight if prompt else None, batch)
                    loss = LOSSES[cfg.loss](scores, batch.labels)
                loss_sum, rows = dp.sum([float(loss.detach()) * len(idx) if loss is not None else 0.0, float(len(idx))])
                batch_loss = loss_sum / rows  # the global batch's mean loss, the same in every process
                if not math.isfinite(batch_loss):
                    raise SoftPromptError(
                        f"loss became {batch_loss} at epoch {epoch + 1}, batch {micro + 1} (lr {cfg.lr}): "
                        f"stopped; the last good checkpoint in {out} is kept (try a smaller --lr)"
                    )
                if loss is not None:
                    (loss * len(idx) / (global_batch * cfg.grad_accum)).backward()
                pending.append(batch_loss)
                last_micro = micro == micro_per_epoch - 1
                if bar is not None:
                    bar.update(1)
                if (micro + 1) % cfg.grad_accum != 0 and not last_micro:
                    continue
                consistent = False
                dp.sum_gradients(trainable.values())
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if not all(torch.isfinite(p).all() and p.abs().max() < DIVERGED for p in trainable.values()):
                    raise SoftPromptError(
                        f"parameters diverged (NaN/inf or |value| >= {DIVERGED:g}) at epoch {epoch + 1}: lr {cfg.lr} "
                        f"is too large? stopped; the last good checkpoint in {out} is kept"
                    )
                # Progress is committed only at optimiser-step boundaries, so a checkpoint never
                # holds half an accumulated gradient.
                losses = losses + pending
                pending = []
                state.update(optimizer_step=state["optimizer_step"] + 1, micro_step=micro + 1, epoch_losses=losses)
                consistent = True
                if bar is not None:
                    bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if cfg.checkpoint_every and state["optimizer_step"] % cfg.checkpoint_every == 0 and not last_micro:
                    state["elapsed"] = time.perf_counter() - started
                    checkpoint()
            # end of epoch: evaluate, keep the best, checkpoint
            res = evaluator.evaluate(task, prompt.weight.detach() if prompt else None, limit=cfg.max_eval, seed=EVAL_SEED)
            record = {
                "epoch": epoch + 1,
                "step": state["optimizer_step"],
                "train_loss": sum(losses) / max(len(losses), 1),
                **_metrics(res),
                "elapsed_s": round(time.perf_counter() - started, 2),
            }
            primary = res.metric(task.metric)
            best = state["best"]
            consistent = False
            if best is None or primary > best["value"]:
                best = {"epoch": epoch + 1, "metric": task.metric, "value": primary}
                if prompt is not None and main:
                    prompt.save(out / BEST_PROMPT_FILE)
                elif cfg.method == "lora" and main:
                    _save_trainables(out / "best_adapter.safetensors", trainable)
            state.update(
                history=[*state["history"], record],
                best=best,
                last_eval=res.summary(),
                epoch=epoch + 1,
                micro_step=0,
                epoch_losses=[],
                elapsed=time.perf_counter() - started,
            )
            consistent = True
            if bar is not None:
                bar.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  val {task.metric} {primary:.4f}")
            checkpoint()
    except KeyboardInterrupt:
        # Checkpoint only a consistent instant; otherwise the last checkpoint on disk (an earlier
        # consistent instant) is what --resume continues from, to the same result.
        if consistent:
            state["elapsed"] = time.perf_counter() - started
            checkpoint()
        if main:
            write_json(run_file, dict(info, status="interrupted"))
        if bar is not None:
            bar.close()
        raise
    except SoftPromptError as e:  # diverged: keep the last good checkpoint, say why in run.json
        if main:
            write_json(run_file, dict(info, status="failed", error=str(e)))
        if bar is not None:
            bar.close()
        raise
    if bar is not None:
        bar.close()

    # artifacts and final evaluation
    if prompt is not None and main:
        prompt.save(out / PROMPT_FILE)
    elif main:
        _save_trainables(out / ("adapter.safetensors" if cfg.method == "lora" else "model.safetensors"), trainable)
    # The last epoch's evaluation already scored exactly these final parameters.
    final_res = EvalResult(**state["last_eval"])
    base: dict[str, EvalResult] = {}
    if baselines and cfg.method == "prompt":
        base["no_prompt"] = evaluator.evaluate(task, None, limit=cfg.max_eval, seed=EVAL_SEED)
        base["english_prompt"] = evaluator.evaluate(
            task, None, hard_prompt=cfg.init_text or task.description, limit=cfg.max_eval, seed=EVAL_SEED
        )
    info.update(
        status="complete",
        final=_metrics(final_res),
        best=state["best"],
        baselines={k: _metrics(v) for k, v in base.items()},
        train_examples=len(encoded),
        train_truncated=sum(1 for e in encoded if e.truncated),
        wall_time_s=round(time.perf_counter() - started, 2),
    )
    if main:
        write_json(run_file, info)
        # A complete run needs no checkpoint (for full fine-tuning it is ~1.6 GB of Adam moments).
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    dp.barrier()  # the run directory is complete before any process returns
    return TrainResult(out, final_res, state["best"], base, state["history"], params)


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def _metrics(res: EvalResult) -> dict[str, Any]:
    return {"accuracy": res.accuracy, "f1_macro": res.f1_macro, "acc_norm": res.acc_norm, "n": res.n, "truncated": res.truncated}


def _jsonl(obj: dict) -> str:
    import json

    return json.dumps(obj) + "\n"


def _run_info(cfg: TrainConfig, backbone: Backbone, task, prompt: SoftPrompt | None, params: dict, status: str) -> dict:
    tok = backbone.tokenizer
    info: dict[str, Any] = {
        "format": RUN_FORMAT,
        "status": status,
        "config": _config_dict(cfg),
        "model": {
            "name": backbone.name,
            "source": backbone.source,
            "revision": backbone.revision,
            "class": type(backbone.model).__name__,
            "hidden_size": backbone.hidden_size,
            "vocab_size": backbone.vocab_size,
        },
        "tokenizer": {"class": type(tok).__name__, "name_or_path": str(tok.name_or_path), "vocab_size": len(tok)},
        "task": {
            "name": task.name,
            "description": task.description,
            "template": task.template,
            "label_words": list(task.label_words),
            "metric": task.metric,
        },
        "parameters": params,
        "versions": package_versions(),
    }
    if prompt is not None:
        info["prompt"] = {
            "n_tokens": prompt.n_tokens,
            "dim": prompt.dim,
            "init": asdict(prompt.init),
            "init_tokens": [tok.decode([i]) for i in prompt.init.token_ids],
        }
    return info
