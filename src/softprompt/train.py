"""The training loop: a soft prompt (or full fine-tuning / LoRA as baselines) on one task.

`train()` reads as its steps: claim the run directory -> prepare data -> build trainables -> the
loop (optimiser, schedule, resumed state) -> fit the epochs -> finalize (artifacts, reference
evaluations, run.json). The loop checkpoints at each epoch end, every `checkpoint_every` steps and
on Ctrl-C; `resume` continues from the checkpoint to the same result an uninterrupted run gives.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones import Backbone, load_backbone, resolve_compute_dtype
from softprompt.baselines import reference_results
from softprompt.batching import EncodedExample, collate, encode_examples, length_grouped_order
from softprompt.checkpoint import load_checkpoint, save_checkpoint, save_trainables
from softprompt.config import INIT_METHODS, TASK_INIT, TrainConfig
from softprompt.distributed import DataParallel, setup_data_parallel
from softprompt.errors import SoftPromptError
from softprompt.evaluate import EVAL_SEED, EvalResult, Evaluator
from softprompt.io import remove_stale_temporaries, write_text
from softprompt.prompt import PROMPT_FILE, SoftPrompt, check_source_length, init_prompt, prompt_from_source
from softprompt.runs import (
    ABSENT,
    BEST_ADAPTER_FILE,
    BEST_PROMPT_FILE,
    CHECKPOINT_FILE,
    CONFLICT,
    METRICS_FILE,
    WEIGHTS_FILES,
    InitSource,
    RunRecord,
    init_source,
    package_versions,
    run_state,
)
from softprompt.scoring import LOSSES, ScoringOptions, autocast_context, batch_choice_scores
from softprompt.tasks import Task, get_task
from softprompt.tasks.base import Example

DIVERGED = 1e6  # no embedding-scale parameter gets near this unless the learning rate exploded


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
    scoring: ScoringOptions | None = None,
) -> TrainResult:
    """Train one run into `out` and evaluate it; returns its final metrics.

    Under `accelerate launch` with N processes, `cfg.batch_size` is per process (global batch
    N x batch_size), each process scores its share of every batch and of every evaluation, and
    only the main process writes into `out` (see `softprompt.distributed`). `baselines` adds the
    no-prompt and English-prompt evaluations to a prompt run; `scoring` picks the scorer's strategy.
    """
    out = Path(out)
    source = trained_init_source(cfg)
    dp = setup_data_parallel(cfg.device)
    claim_run_dir(out, cfg, dp, resume=resume, overwrite=overwrite)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg, backbone, dp)
    trainables = build_trainables(cfg, data, dp, source)
    loop = TrainingLoop(cfg, out, data, trainables, dp, scoring=scoring, progress=progress)
    if resume:
        loop.resume()
    loop.start()
    loop.fit()
    return finalize(loop, references=baselines and cfg.method == "prompt")


# ----------------------------------------------------------------------------- steps


def trained_init_source(cfg: TrainConfig) -> InitSource | None:
    """The trained prompt a `run:PATH` init starts from, checked against --tokens before anything is loaded or written."""
    if cfg.method != "prompt" or cfg.init in INIT_METHODS:
        return None
    if cfg.init.startswith(TASK_INIT):
        raise SoftPromptError(
            f"init {cfg.init!r} names a study's prompt: it works inside a study config; outside one use run:PATH"
        )
    source = init_source(cfg.init)
    check_source_length(source.prompt, cfg.tokens, cfg.init)
    return source


def claim_run_dir(out: Path, cfg: TrainConfig, dp: DataParallel, *, resume: bool, overwrite: bool) -> None:
    """Refuse a directory holding another run (unless `overwrite`) or another config (on `resume`), then
    create it and drop the half-written files of a killed earlier attempt."""
    if resume or not overwrite:
        state = run_state(out, cfg)
        if not resume and state.kind != ABSENT:
            raise SoftPromptError(
                f"{out} already holds a {state.status} run: pass --resume to continue it or choose another --out"
            )
        if resume and state.kind == CONFLICT:
            raise SoftPromptError(f"{out}: --resume with a different config (changed: {list(state.changed)}); use another --out")
    dp.barrier()  # every process has read what was there before the main process writes
    out.mkdir(parents=True, exist_ok=True)
    if dp.is_main:
        remove_stale_temporaries(out)


@dataclass
class TrainData:
    """The task, the model and the training examples, tokenized for the prompt length.

    (A development split carved from the training examples for model selection belongs here.)"""

    task: Task
    backbone: Backbone
    examples: list[Example]
    encoded: list[EncodedExample]


def prepare_data(cfg: TrainConfig, backbone: Backbone | None, dp: DataParallel) -> TrainData:
    task = get_task(cfg.task)
    examples = task.load("train", cfg.data_dir, limit=cfg.max_train, seed=cfg.seed)
    backbone = backbone or load_backbone(cfg.model, dtype=cfg.dtype, device=str(dp.device) if dp.active else cfg.device)
    n_prompt = cfg.tokens if cfg.method == "prompt" else 0
    encoded = encode_examples(examples, backbone.tokenizer, n_prompt=n_prompt, max_length=cfg.max_length)
    return TrainData(task, backbone, examples, encoded)


@dataclass
class Trainables:
    """What the method trains, by stable name (the checkpoint's tensor names), and the prompt fed to the scorer."""

    prompt: SoftPrompt | None
    params: dict[str, torch.nn.Parameter]
    source: dict[str, Any] | None = None  # a run: init's source run, file and content hash (run.json records it)

    def prompt_matrix(self) -> torch.Tensor | None:
        """The (n, d) matrix placed before the input embeddings (a reparameterised prompt would compute it here)."""
        return self.prompt.weight if self.prompt is not None else None

    def counts(self, backbone: Backbone) -> dict[str, int]:
        total = sum(p.numel() for p in backbone.model.parameters())
        n_train = sum(p.numel() for p in self.params.values())
        if self.prompt is not None:
            total += n_train
        return {"trainable": int(n_train), "total": int(total)}


def build_trainables(cfg: TrainConfig, data: TrainData, dp: DataParallel, source: InitSource | None = None) -> Trainables:
    backbone = data.backbone
    prompt: SoftPrompt | None = None
    if cfg.method == "prompt" and source is not None:
        prompt = prompt_from_source(source.prompt, cfg.tokens, cfg.init, cfg.seed)
    elif cfg.method == "prompt":
        prompt = init_prompt(
            backbone.model,
            backbone.tokenizer,
            cfg.tokens,
            cfg.init,
            text=cfg.init_text or data.task.description,
            label_words=list(data.task.label_words),
            seed=cfg.seed,
        )
    if prompt is not None:
        prompt.check_model(backbone.hidden_size, where=f"init {cfg.init}: the source prompt" if source else "the prompt")
        prompt.to(backbone.device)
    params = _method_parameters(cfg, backbone, prompt)
    dp.broadcast_(params.values())
    return Trainables(prompt, params, source.facts if source is not None else None)


def _method_parameters(cfg: TrainConfig, backbone: Backbone, prompt: SoftPrompt | None) -> dict[str, torch.nn.Parameter]:
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


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """The learning-rate multiplier per optimiser step: linear warmup, then linear, cosine or constant."""

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


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a function of (seed, epoch) alone, so a resumed run repeats it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


# ----------------------------------------------------------------------------- the loop


class TrainingLoop:
    """The optimiser, schedule and loop state of one run, and the epochs that advance them.

    `state` is what a checkpoint saves: epoch, micro_step, optimizer_step, the epoch's losses so far,
    history, best, last_eval, elapsed. `consistent` is True while parameters, optimiser, schedule and
    `state` describe the same instant, so Ctrl-C may checkpoint them; False inside an optimiser step
    or an epoch's bookkeeping, where a checkpoint would pair parameters of one step with the
    counters of another.
    """

    def __init__(self, cfg, out: Path, data: TrainData, trainables: Trainables, dp: DataParallel, *, scoring, progress: bool):
        self.cfg, self.out, self.data, self.trainables, self.dp = cfg, out, data, trainables, dp
        self.main, self.progress, self.scoring = dp.is_main, progress, scoring
        backbone = data.backbone
        self.compute_dtype = resolve_compute_dtype(cfg.compute_dtype, backbone.device)
        self.evaluator = Evaluator(
            backbone,
            data_dir=cfg.data_dir,
            max_length=cfg.max_length,
            compute_dtype=self.compute_dtype,
            progress=progress and self.main,
            parallel=dp,
            scoring=scoring,
        )
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(list(trainables.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.global_batch = cfg.batch_size * dp.world
        n = len(data.encoded)
        total_steps = math.ceil(n / (self.global_batch * cfg.grad_accum)) * cfg.epochs
        schedule = lr_lambda(cfg.schedule, int(cfg.warmup * total_steps), total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.micro_per_epoch = math.ceil(n / self.global_batch)
        self.lengths = [e.num_tokens for e in data.encoded]  # for --group-by-length
        self.state: dict[str, Any] = {"epoch": 0, "micro_step": 0, "optimizer_step": 0, "history": [], "best": None}
        self.state.update(elapsed=0.0, processes=dp.world)
        self.consistent = True
        self.bar = None
        self.started = 0.0
        self.losses: list[float] = []  # the current epoch's losses, up to the last optimiser step
        self.pending: list[float] = []  # losses of micro-batches whose optimiser step has not happened yet
        self.record = RunRecord()

    def resume(self) -> None:
        """Continue from the checkpoint in `out`, if there is one."""
        if not (self.out / CHECKPOINT_FILE).exists():
            return
        self.state = load_checkpoint(self.out, self.trainables.params, self.optimizer, self.scheduler)
        if self.state.get("processes", 1) != self.dp.world:
            raise SoftPromptError(
                f"{self.out}: the checkpoint was written by {self.state.get('processes', 1)} data-parallel process(es), this is "
                f"{self.dp.world}: the global batch would change; resume with the same number of processes"
            )

    def start(self) -> None:
        """run.json says running (and who runs it: a cluster's worker, a launcher's main process)."""
        self.record = run_record(self.cfg, self.data, self.trainables, processes=self.dp.world)
        if self.main:
            replace(self.record, worker={"host": socket.gethostname(), "pid": os.getpid()}).write(self.out)
            prompt = self.trainables.prompt
            if prompt is not None and not (self.out / BEST_PROMPT_FILE).exists():
                prompt.save(self.out / BEST_PROMPT_FILE)

    def fit(self) -> None:
        """The epochs, from wherever the state says; Ctrl-C and divergence leave a resumable directory."""
        self.bar = self._progress_bar()
        self.started = time.perf_counter() - self.state["elapsed"]
        self.consistent = True
        try:
            while self.state["epoch"] < self.cfg.epochs:
                self._epoch(self.state["epoch"])
        except KeyboardInterrupt:
            # Checkpoint only a consistent instant; otherwise the last checkpoint on disk (an earlier
            # consistent instant) is what --resume continues from, to the same result.
            if self.consistent:
                self.state["elapsed"] = time.perf_counter() - self.started
                self.checkpoint()
            if self.main:
                replace(self.record, status="interrupted").write(self.out)
            self._close_bar()
            raise
        except SoftPromptError as e:  # diverged: keep the last good checkpoint, say why in run.json
            if self.main:
                replace(self.record, status="failed", error=str(e)).write(self.out)
            self._close_bar()
            raise
        self._close_bar()

    def _epoch(self, epoch: int) -> None:
        order = epoch_order(len(self.data.encoded), self.cfg.seed, epoch)
        if self.cfg.group_by_length:  # global batches of similar length (each process still takes its share)
            order = length_grouped_order(order, self.lengths, self.global_batch)
        self.losses = list(self.state.get("epoch_losses", []))
        self.pending = []
        for micro in range(self.state["micro_step"], self.micro_per_epoch):
            self._micro_batch(epoch, micro, order)
        self._end_epoch(epoch)

    def _micro_batch(self, epoch: int, micro: int, order: list[int]) -> None:
        """This process's share of one global batch: forward, loss, backward; an optimiser step every grad_accum."""
        cfg, dp, gb = self.cfg, self.dp, self.global_batch
        idx = order[micro * gb : (micro + 1) * gb]
        idx = idx[dp.rank * cfg.batch_size : (dp.rank + 1) * cfg.batch_size]  # this process's share
        loss = None
        if idx:
            backbone = self.data.backbone
            batch = collate([self.data.encoded[i] for i in idx], backbone.tokenizer.pad_token_id)
            with autocast_context(backbone.device, self.compute_dtype):
                scores = batch_choice_scores(backbone.model, self.trainables.prompt_matrix(), batch, options=self.scoring)
            loss = LOSSES[cfg.loss](scores, batch.labels)
        loss_sum, rows = dp.sum([float(loss.detach()) * len(idx) if loss is not None else 0.0, float(len(idx))])
        batch_loss = loss_sum / rows  # the global batch's mean loss, the same in every process
        if not math.isfinite(batch_loss):
            raise SoftPromptError(
                f"loss became {batch_loss} at epoch {epoch + 1}, batch {micro + 1} (lr {cfg.lr}): "
                f"stopped; the last good checkpoint in {self.out} is kept (try a smaller --lr)"
            )
        if loss is not None:
            (loss * len(idx) / (gb * cfg.grad_accum)).backward()
        self.pending.append(batch_loss)
        last_micro = micro == self.micro_per_epoch - 1
        if self.bar is not None:
            self.bar.update(1)
        if (micro + 1) % cfg.grad_accum == 0 or last_micro:
            self._optimizer_step(epoch, micro, last_micro)

    def _optimizer_step(self, epoch: int, micro: int, last_micro: bool) -> None:
        cfg, params = self.cfg, self.trainables.params.values()
        self.consistent = False
        self.dp.sum_gradients(params)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not all(torch.isfinite(p).all() and p.abs().max() < DIVERGED for p in params):
            raise SoftPromptError(
                f"parameters diverged (NaN/inf or |value| >= {DIVERGED:g}) at epoch {epoch + 1}: lr {cfg.lr} "
                f"is too large? stopped; the last good checkpoint in {self.out} is kept"
            )
        # Progress is committed only at optimiser-step boundaries, so a checkpoint never holds half an
        # accumulated gradient.
        self.losses = self.losses + self.pending
        self.pending = []
        self.state.update(optimizer_step=self.state["optimizer_step"] + 1, micro_step=micro + 1, epoch_losses=self.losses)
        self.consistent = True
        if self.bar is not None:
            recent = self.losses[-20:]
            self.bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        if cfg.checkpoint_every and self.state["optimizer_step"] % cfg.checkpoint_every == 0 and not last_micro:
            self.state["elapsed"] = time.perf_counter() - self.started
            self.checkpoint()

    def evaluate(self) -> EvalResult:
        """The validation subsample with the current parameters (the same subsample for every seed and method)."""
        prompt = self.trainables.prompt_matrix()
        return self.evaluator.evaluate(
            self.data.task, prompt.detach() if prompt is not None else None, limit=self.cfg.max_eval, seed=EVAL_SEED
        )

    def _end_epoch(self, epoch: int) -> None:
        """Evaluate, keep the best parameters, record the epoch, checkpoint."""
        task, state = self.data.task, self.state
        res = self.evaluate()
        record = {
            "epoch": epoch + 1,
            "step": state["optimizer_step"],
            "train_loss": sum(self.losses) / max(len(self.losses), 1),
            **res.metrics(),
            "elapsed_s": round(time.perf_counter() - self.started, 2),
        }
        primary = res.metric(task.metric)
        best = state["best"]
        self.consistent = False
        if best is None or primary > best["value"]:
            best = {"epoch": epoch + 1, "metric": task.metric, "value": primary}
            self._save_best()
        state.update(
            history=[*state["history"], record],
            best=best,
            last_eval={"task": res.task, "split": res.split, **res.metrics()},
            epoch=epoch + 1,
            micro_step=0,
            epoch_losses=[],
            elapsed=time.perf_counter() - self.started,
        )
        self.consistent = True
        if self.bar is not None:
            self.bar.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  val {task.metric} {primary:.4f}")
        self.checkpoint()

    def _save_best(self) -> None:
        if not self.main:
            return
        if self.trainables.prompt is not None:
            self.trainables.prompt.save(self.out / BEST_PROMPT_FILE)
        elif self.cfg.method == "lora":
            save_trainables(self.out / BEST_ADAPTER_FILE, self.trainables.params)

    def checkpoint(self) -> None:
        if self.main:
            save_checkpoint(self.out, self.trainables.params, self.optimizer, self.scheduler, self.state)
            write_text(self.out / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in self.state["history"]))

    def _progress_bar(self):
        if not (self.progress and self.main):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.micro_per_epoch * self.cfg.epochs,
            initial=self.state["epoch"] * self.micro_per_epoch + self.state["micro_step"],
            desc=f"train {self.data.task.name} seed {self.cfg.seed}",
            unit="batch",
            dynamic_ncols=True,
        )

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- finalize


def finalize(loop: TrainingLoop, *, references: bool) -> TrainResult:
    """Final artifacts, the no-prompt/English-prompt reference evaluations, run.json complete, no checkpoint."""
    cfg, out, task, trainables = loop.cfg, loop.out, loop.data.task, loop.trainables
    if trainables.prompt is not None and loop.main:
        trainables.prompt.save(out / PROMPT_FILE)
    elif loop.main:
        save_trainables(out / WEIGHTS_FILES[cfg.method], trainables.params)
    final = EvalResult(**loop.state["last_eval"])  # the last epoch's evaluation scored exactly these parameters
    base: dict[str, EvalResult] = {}
    if references:
        hard_prompt = cfg.init_text or task.description
        base = reference_results(loop.evaluator, task, limit=cfg.max_eval, seed=EVAL_SEED, hard_prompt=hard_prompt)
    encoded = loop.data.encoded
    record = replace(
        loop.record,
        status="complete",
        final=final.metrics(),
        best=loop.state["best"],
        baselines={k: v.metrics() for k, v in base.items()},
        train_examples=len(encoded),
        train_truncated=sum(1 for e in encoded if e.truncated),
        wall_time_s=round(time.perf_counter() - loop.started, 2),
    )
    if loop.main:
        record.write(out)
        # A complete run needs no checkpoint (for full fine-tuning it holds the weights and two Adam moments).
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    loop.dp.barrier()  # the run directory is complete before any process returns
    return TrainResult(out, final, loop.state["best"], base, loop.state["history"], loop.record.parameters or {})


def run_record(cfg: TrainConfig, data: TrainData, trainables: Trainables, *, processes: int) -> RunRecord:
    """run.json of a run being trained: its config, model, tokenizer, task, parameter counts and prompt facts."""
    backbone, task, prompt = data.backbone, data.task, trainables.prompt
    tok = backbone.tokenizer
    record = RunRecord(
        status="running",
        config=cfg.to_dict(),
        model={
            "name": backbone.name,
            "source": backbone.source,
            "revision": backbone.revision,
            "class": type(backbone.model).__name__,
            "hidden_size": backbone.hidden_size,
            "vocab_size": backbone.vocab_size,
        },
        tokenizer={"class": type(tok).__name__, "name_or_path": str(tok.name_or_path), "vocab_size": len(tok)},
        task={
            "name": task.name,
            "description": task.description,
            "template": task.template,
            "label_words": list(task.label_words),
            "metric": task.metric,
        },
        parameters=trainables.counts(backbone),
        versions=package_versions(),
        processes=processes,
    )
    if prompt is not None:
        record.prompt = {
            "n_tokens": prompt.n_tokens,
            "dim": prompt.dim,
            "init": asdict(prompt.init),
            "init_tokens": [tok.decode([i]) for i in prompt.init.token_ids],
        }
        if trainables.source is not None:
            record.prompt["source"] = trainables.source
    return record
