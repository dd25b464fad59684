"""The training loop: a soft prompt (or full fine-tuning / LoRA as baselines) on one task.

`train()` reads as its steps: hash the inputs -> lock and claim the run directory -> prepare data ->
build trainables -> the loop (optimiser, schedule, resumed state; what is scored later tokenized now)
-> fit the epochs -> finalize (artifacts, reference evaluations, run.json). The loop checkpoints at
each epoch end, every `checkpoint_every` steps and on Ctrl-C or SIGTERM; `resume` continues from the
checkpoint to the same result an uninterrupted run gives, and refuses a run whose inputs changed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones import Backbone, load_backbone, resolve_compute_dtype, resolve_device
from softprompt.baselines import reference_results
from softprompt.batching import EncodedExample, bucketed_length, collate, encode_examples, length_grouped_order
from softprompt.chat import resolve_prompt_format
from softprompt.checkpoint import load_checkpoint, save_checkpoint, save_trainables, verify_checkpoint
from softprompt.config import INIT_METHODS, LR_PER_STD, PROMPT_METHODS, TASK_INIT, TrainConfig
from softprompt.cuda_graphs import LENGTH_BUCKET, SPLIT_OVERHEAD_TOKENS, SPLIT_PARTS, StepGraphs
from softprompt.distributed import DataParallel, setup_data_parallel
from softprompt.errors import SoftPromptError, os_error_line
from softprompt.evaluate import EVAL_SEED, EvalResult, choice_losses, evaluator_for
from softprompt.inputs import MODEL_REVISION, task_inputs
from softprompt.io import remove_stale_temporaries, write_json, write_text
from softprompt.locks import directory_lock
from softprompt.prompt import PROMPT_FILE, SoftPrompt, check_source_length, embedding_scale, init_prompt, prompt_from_source
from softprompt.reparam import HardPromptEncoder, PromptEncoder, hard_prompt_encoder, hard_prompt_facts
from softprompt.runs import (
    ABSENT,
    BEST_ADAPTER_FILE,
    BEST_PROMPT_FILE,
    CHECKPOINT_FILE,
    CONFLICT,
    HARD_PROMPT_FILE,
    METRICS_FILE,
    WEIGHTS_FILES,
    InitSource,
    RunRecord,
    RunState,
    artifact_facts,
    execution_history,
    init_source,
    package_versions,
    run_state,
    warn_unknown_inputs,
)
from softprompt.scoring import LOSSES, ScoringOptions, ScoringStats, autocast_context, batch_choice_scores, padded_counts
from softprompt.tasks import Task, get_task
from softprompt.tasks.base import Example
from softprompt.trackers import FAILED, FINISHED, KILLED, Trackers, open_trackers, require_trackers

DIVERGED = 1e6  # no embedding-scale parameter gets near this unless the learning rate exploded
# Optimiser steps between two reads of the device (the losses, the NaN/divergence check) when
# `log_every` is 0, by device type: a read waits for the device, which on a GPU stalls the queue of
# kernels the host has launched ahead; on a CPU it costs nothing, so every step is read there, as always.
READ_EVERY = {"cpu": 1}
READ_EVERY_DEFAULT = 16


@dataclass
class TrainResult:
    out: Path
    final: EvalResult
    best: dict[str, Any]
    baselines: dict[str, EvalResult]
    history: list[dict[str, Any]]
    parameters: dict[str, int]
    hard_prompt: dict[str, Any] | None = None  # method hard: run.json's hard_prompt (the discrete prompt, its text's score)


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
    trust_remote_code: bool = False,
) -> TrainResult:
    """Train one run into `out` and evaluate it; returns its final metrics.

    Under `accelerate launch` with N processes, `cfg.batch_size` is per process (global batch
    N x batch_size), each process scores its share of every batch and of every evaluation, and
    only the main process writes into `out` (see `softprompt.distributed`). `baselines` adds the
    no-prompt and English-prompt evaluations to a prompt run; `scoring` (the scorer's options, switches
    included) replaces `ScoringOptions(strategy=cfg.scoring_strategy)`, whose strategy it must match
    unless the config says `auto`. `trust_remote_code` lets a Hub model run its own code when it is loaded
    here (never on unless asked: `softprompt train --trust-remote-code`).
    """
    out = Path(out)
    source = trained_init_source(cfg)
    require_trackers(cfg.report_to)  # a missing tracker package (--report-to) fails before anything loads
    dp = setup_data_parallel(cfg.device)
    if backbone is None:
        resolve_device(cfg.device)  # a device this machine lacks fails before anything is written
    inputs = task_inputs(cfg.task, cfg.data_dir)  # reads every data file the run needs: a missing one fails now
    with owned_run_dir(out, dp):
        claim_run_dir(out, cfg, dp, inputs, resume=resume, overwrite=overwrite)
        torch.manual_seed(cfg.seed)
        data = prepare_data(cfg, backbone, dp, trust_remote_code=trust_remote_code)
        if resume:  # the model is known now: a run trained on other weights is not continued
            here = compute_dtype_name(cfg, data.backbone)  # and not in another precision than it was (`auto`: by device)
            refuse_changed_run(out, run_state(out, cfg, {**inputs, MODEL_REVISION: data.backbone.revision}, compute_dtype=here))
        trainables = build_trainables(cfg, data, dp, source)
        loop = TrainingLoop(cfg, out, data, trainables, dp, scoring=scoring, progress=progress)
        references = baselines and cfg.method in PROMPT_METHODS
        loop.preflight(references=references)
        if resume:
            loop.resume()
        loop.start(inputs, resumed=resume)
        loop.fit()
        with loop.outcome_recorded():
            return finalize(loop, references=references)


# ----------------------------------------------------------------------------- steps


def trained_init_source(cfg: TrainConfig) -> InitSource | None:
    """The trained prompt a `run:PATH` init starts from, checked against --tokens before anything is loaded or written."""
    if cfg.method not in PROMPT_METHODS or cfg.init in INIT_METHODS:
        return None
    if cfg.init.startswith(TASK_INIT):
        raise SoftPromptError(
            f"init {cfg.init!r} names a study's prompt: it works inside a study config; outside one use run:PATH"
        )
    source = init_source(cfg.init)
    check_source_length(source.prompt, cfg.tokens, cfg.init)
    return source


@contextlib.contextmanager
def owned_run_dir(out: Path, dp: DataParallel) -> Iterator[None]:
    """The run directory is this run's until it returns: the main process holds its lock
    (`softprompt.locks`), so a second `train` into the same --out fails at once, naming this one;
    the other processes of a data-parallel launch learn whether the main one got it."""
    with contextlib.ExitStack() as stack:
        error: SoftPromptError | None = None
        if dp.is_main:
            try:
                stack.enter_context(directory_lock(out, "run directory"))
            except SoftPromptError as e:
                error = e
        if dp.sum([1.0 if error else 0.0])[0] > 0:
            raise error or SoftPromptError(f"run directory {out}: the main process could not claim it")
        yield


def compute_dtype_name(cfg: TrainConfig, backbone: Backbone) -> str:
    """What the config's compute dtype resolves to on the model's device (`bfloat16`, `float32`): run.json records it."""
    return str(resolve_compute_dtype(cfg.compute_dtype, backbone.device)).removeprefix("torch.")


def refuse_changed_run(out: Path, state: RunState) -> None:
    """--resume of a run whose config or inputs changed would mix two runs: refuse, saying what to do."""
    if state.kind != CONFLICT:
        return
    if state.changed:
        raise SoftPromptError(f"{out}: --resume with a different config (changed: {list(state.changed)}); use another --out")
    raise SoftPromptError(
        f"{out}: the {', '.join(state.inputs_changed)} changed since this run started, so --resume would mix old and "
        "new inputs: pass --overwrite (without --resume) to retrain it from scratch, or restore the original files"
    )


def claim_run_dir(out: Path, cfg: TrainConfig, dp: DataParallel, inputs: dict, *, resume: bool, overwrite: bool) -> None:
    """Refuse a directory holding another run (unless `overwrite`), or another config or changed inputs
    (on `resume`), then drop the half-written files of a killed earlier attempt."""
    if resume or not overwrite:
        state = run_state(out, cfg, inputs)
        if not resume and state.kind != ABSENT:
            raise SoftPromptError(
                f"{out} already holds {'an' if str(state.status)[:1] in 'aeiou' else 'a'} {state.status} run: "
                "pass --resume to continue it or choose another --out"
            )
        if resume:
            refuse_changed_run(out, state)
            if state.inputs_unknown and dp.is_main:
                warn_unknown_inputs(out)
            verify_checkpoint(out, warn_unverified=dp.is_main)  # before the model loads
    dp.barrier()  # every process has read what was there before the main process writes
    out.mkdir(parents=True, exist_ok=True)
    if dp.is_main:
        remove_stale_temporaries(out)
        if not resume:  # an overwritten run's checkpoint is not this run's to resume from
            (out / CHECKPOINT_FILE).unlink(missing_ok=True)


@dataclass
class TrainData:
    """The task, the model, the training examples tokenized for the prompt length, and the development
    split (held-out training examples for model selection; empty without `dev_size`)."""

    task: Task
    backbone: Backbone
    examples: list[Example]
    encoded: list[EncodedExample]
    dev: list[Example]
    prompt_format: str  # plain or chat (resolved from the config's `auto`)


def prepare_data(cfg: TrainConfig, backbone: Backbone | None, dp: DataParallel, *, trust_remote_code: bool = False) -> TrainData:
    """The task's examples (training subsample and dev split), the backbone (loaded unless given; a Hub
    model's own code only with `trust_remote_code`), the resolved prompt format and the tokenized rows."""
    task = get_task(cfg.task)
    examples, dev = task.load_train(cfg.data_dir, limit=cfg.max_train, seed=cfg.seed, dev_size=cfg.dev_size)
    device = str(dp.device) if dp.active else cfg.device
    backbone = backbone or load_backbone(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=trust_remote_code)
    prompt_format = resolve_prompt_format(cfg.prompt_format, backbone.tokenizer)
    n_prompt = cfg.tokens if cfg.method in PROMPT_METHODS else 0
    encoded = encode_examples(
        examples, backbone.tokenizer, n_prompt=n_prompt, max_length=cfg.max_length, prompt_format=prompt_format
    )
    return TrainData(task, backbone, examples, encoded, dev, prompt_format)


@dataclass
class Trainables:
    """What the method trains, by stable name (the checkpoint's tensor names), the prompt fed to the scorer,
    and the learning rate (a prompt's default follows the model's embedding scale)."""

    prompt: SoftPrompt | None
    params: dict[str, torch.nn.Parameter]
    lr: float
    encoder: PromptEncoder | HardPromptEncoder | None = None
    source: dict[str, Any] | None = None  # a run: init's source run, file and content hash (run.json records it)

    def prompt_matrix(self) -> torch.Tensor | None:
        """The (n, d) matrix placed before the input embeddings (computed through the reparameterisation)."""
        return self.encoder() if self.encoder is not None else None

    def prompt_to_save(self) -> SoftPrompt | None:
        """The materialised prompt with its init facts: what prompt files, exports and analyses see."""
        if self.prompt is None or self.encoder is None:
            return None
        if self.encoder.kind == "none":
            return self.prompt
        with torch.no_grad():
            return SoftPrompt(self.encoder().detach(), self.prompt.init, self.prompt.initial)

    def counts(self, backbone: Backbone) -> dict[str, int]:
        total = sum(p.numel() for p in backbone.model.parameters())
        n_train = sum(p.numel() for p in self.params.values())
        if self.prompt is not None:
            total += n_train
        return {"trainable": int(n_train), "total": int(total)}


def build_trainables(cfg: TrainConfig, data: TrainData, dp: DataParallel, source: InitSource | None = None) -> Trainables:
    backbone = data.backbone
    if cfg.method not in PROMPT_METHODS:
        params = _method_parameters(cfg, backbone)
        dp.broadcast_(params.values())
        return Trainables(None, params, float(cfg.lr))
    if source is not None:
        prompt = prompt_from_source(source.prompt, cfg.tokens, cfg.init, cfg.seed)
    else:
        prompt = init_prompt(
            backbone.model,
            backbone.tokenizer,
            cfg.tokens,
            cfg.init,
            text=cfg.init_text or data.task.description,
            label_words=list(data.task.label_words),
            seed=cfg.seed,
        )
    prompt.check_model(backbone.hidden_size, where=f"init {cfg.init}: the source prompt" if source else "the prompt")
    prompt.to(backbone.device)
    encoder: PromptEncoder | HardPromptEncoder
    if cfg.method == "hard":
        encoder = hard_prompt_encoder(prompt, backbone.model, backbone.tokenizer)
    else:
        encoder = PromptEncoder(prompt, cfg.reparam, cfg.reparam_hidden, seed=cfg.seed)
    if cfg.reparam == "mlp" or cfg.method == "hard":  # training starts from MLP(E) or E's tokens: drift is measured from there
        with torch.no_grad():
            prompt.initial.copy_(encoder().detach())
    params = encoder.named_trainables()
    dp.broadcast_(params.values())
    lr = cfg.lr if cfg.lr is not None else LR_PER_STD[cfg.method] * embedding_scale(backbone.model)
    return Trainables(prompt, params, float(lr), encoder, source.facts if source is not None else None)


def _method_parameters(cfg: TrainConfig, backbone: Backbone) -> dict[str, torch.nn.Parameter]:
    """The weights fine-tuning or LoRA trains (LoRA's adapters are injected into the model here)."""
    model = backbone.model
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

    Losses stay on the device and are read (with the divergence check) every `read_every` optimiser
    steps, at each epoch's end and before anything is written (`read_losses`): no host sync per step.
    """

    def __init__(self, cfg, out: Path, data: TrainData, trainables: Trainables, dp: DataParallel, *, scoring, progress: bool):
        self.cfg, self.out, self.data, self.trainables, self.dp = cfg, out, data, trainables, dp
        if scoring is not None and cfg.scoring_strategy not in ("auto", scoring.strategy):
            raise SoftPromptError(
                f"scoring_strategy {cfg.scoring_strategy!r} and the scoring options' {scoring.strategy!r} differ"
            )
        scoring = scoring if scoring is not None else ScoringOptions(strategy=cfg.scoring_strategy)
        self.main, self.progress, self.scoring = dp.is_main, progress, scoring
        self.stats = ScoringStats()  # what the training steps' scorer computed (forwards, tokens), for benchmarks
        backbone = data.backbone
        self.read_every = cfg.log_every or READ_EVERY.get(backbone.device.type, READ_EVERY_DEFAULT)
        self.compute_dtype = resolve_compute_dtype(cfg.compute_dtype, backbone.device)
        self.evaluator = evaluator_for(
            cfg, backbone, progress=progress and self.main, parallel=dp, scoring=scoring, prompt_format=data.prompt_format
        )
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(list(trainables.params.values()), lr=trainables.lr, weight_decay=cfg.weight_decay)
        self.global_batch = cfg.batch_size * dp.world
        n = len(data.encoded)
        total_steps = math.ceil(n / (self.global_batch * cfg.grad_accum)) * cfg.epochs
        schedule = lr_lambda(cfg.schedule, int(cfg.warmup * total_steps), total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.micro_per_epoch = math.ceil(n / self.global_batch)
        self.lengths = [e.num_tokens for e in data.encoded]  # for --group-by-length
        # loss_mark: where in the epoch's losses the last evaluation was (a record's train_loss is the mean since)
        self.state: dict[str, Any] = {"epoch": 0, "micro_step": 0, "optimizer_step": 0, "history": [], "best": None}
        self.state["loss_mark"] = 0
        self.state.update(elapsed=0.0, processes=dp.world)
        self.consistent = True
        self.bar = None
        self.started = 0.0
        self.losses: list[float] = []  # the current epoch's losses, read from the device
        # (epoch, micro-batch, [loss x rows, rows] on the device) of the micro-batches whose optimiser step has
        # not happened yet (pending), and of those whose step has but that were not read yet (unread)
        self.pending: list[tuple[int, int, torch.Tensor]] = []
        self.unread: list[tuple[int, int, torch.Tensor]] = []
        self.record = RunRecord()
        self.checkpoint_sha256: str | None = None  # of the checkpoint on disk, resumed from or written (run.json records it)
        self.trackers = Trackers()  # --report-to's, opened by start() on the main process
        self.graphs = self._step_graphs()
        self.bucket = LENGTH_BUCKET if self.graphs is not None else 0  # batch lengths padded to buckets: shapes repeat
        self.split_overhead = SPLIT_OVERHEAD_TOKENS if self.graphs is not None else 0  # 0: one forward per micro-batch

    def _step_graphs(self) -> StepGraphs | None:
        """CUDA graphs for the training steps (`cuda_graphs`, on by default), where they apply: a soft prompt
        trained on a CUDA device with a one-forward scoring strategy (the prefix tree plans on the host, per
        batch; LoRA and fine-tuning would hold a copy of every gradient in the graph's memory)."""
        device = self.data.backbone.device
        if not self.cfg.cuda_graphs or device.type != "cuda" or self.cfg.method != "prompt":
            return None
        return StepGraphs(device) if self.scoring.resolved(device) in ("padded", "plain") else None

    def resume(self) -> None:
        """Continue from the checkpoint in `out`, if there is one."""
        if not (self.out / CHECKPOINT_FILE).exists():
            return
        self.checkpoint_sha256 = verify_checkpoint(self.out, warn_unverified=False)
        self.state = load_checkpoint(self.out, self.trainables.params, self.optimizer, self.scheduler)
        if self.state.get("processes", 1) != self.dp.world:
            raise SoftPromptError(
                f"{self.out}: the checkpoint was written by {self.state.get('processes', 1)} data-parallel process(es), this is "
                f"{self.dp.world}: the global batch would change; resume with the same number of processes"
            )

    def preflight(self, *, references: bool) -> None:
        """Load and tokenize now what is only scored later (the validation split at each epoch's end, the
        reference evaluations after the last one): a missing split, or a --max-length too small for an
        answer or for the hard prompt, fails before training instead of after it. Cached, so nothing is
        done twice."""
        task, cfg, ev = self.data.task, self.cfg, self.evaluator
        matrix = self.trainables.prompt_matrix()
        ev.prepare(task, 0 if matrix is None else int(matrix.shape[0]), limit=cfg.max_eval, seed=EVAL_SEED)
        if references:
            ev.prepare(task, 0, limit=cfg.max_eval, seed=EVAL_SEED)
            ev.prepare(task, 0, hard_prompt=cfg.init_text or task.description, limit=cfg.max_eval, seed=EVAL_SEED)

    def start(self, inputs: dict[str, Any] | None = None, *, resumed: bool = False) -> None:
        """run.json says running (and who runs it: a cluster's worker, a launcher's main process), with
        the digests of the inputs (`softprompt.inputs`) that --resume and a study compare, and how each
        session ran (`executions`: a resume may change the execution settings)."""
        self.record = run_record(self.cfg, self.data, self.trainables, processes=self.dp.world)
        self.record.inputs = inputs
        if self.checkpoint_sha256 is not None:  # the resumed checkpoint stays verifiable
            self.record.artifacts = {CHECKPOINT_FILE: {"sha256": self.checkpoint_sha256}}
        # --report-to's trackers, before run.json says running (one that cannot start fails the run first); a run
        # resumed from a checkpoint continues their runs after its step
        step = self.state["optimizer_step"]
        resumed_step = step if step or self.state["history"] else None
        self.trackers = open_trackers(self.cfg.report_to, self.out, self.record, resumed_step=resumed_step, main=self.main)
        if self.main:
            self.record.executions = execution_history(self.out, self.cfg, resumed=resumed)
        if self.main:
            self._write_running()
            prompt = self.trainables.prompt_to_save()
            if prompt is not None and not (self.out / BEST_PROMPT_FILE).exists():
                prompt.save(self.out / BEST_PROMPT_FILE)

    def fit(self) -> None:
        """The epochs, from wherever the state says; Ctrl-C, SIGTERM, divergence and a full disk leave a
        resumable directory."""
        self.bar = self._progress_bar()
        self.started = time.perf_counter() - self.state["elapsed"]
        self.consistent = True
        with self.outcome_recorded():
            try:
                if self.cfg.eval_every and not self.state["history"]:
                    self._record_point(0)  # where the curve starts: the initial prompt
                while self.state["epoch"] < self.cfg.epochs:
                    self._epoch(self.state["epoch"])
            except KeyboardInterrupt:
                # Checkpoint only a consistent instant; otherwise the last checkpoint on disk (an earlier
                # consistent instant) is what --resume continues from, to the same result. So does a
                # checkpoint that cannot be written (disk full).
                if self.consistent:
                    with contextlib.suppress(OSError):
                        self._checkpoint_on_interrupt()  # reads the queued losses first
                raise

    @contextlib.contextmanager
    def outcome_recorded(self) -> Iterator[None]:
        """If the block stops the run, run.json says so: `interrupted` (Ctrl-C, SIGTERM) or `failed` with
        the reason (divergence, a full disk, out of memory), as far as run.json can still be written.
        A filesystem failure becomes one line naming the path; the last checkpoint is kept for --resume."""
        try:
            yield
        except KeyboardInterrupt:
            self._mark("interrupted")
            raise
        except OSError as e:
            reason = os_error_line(e)
            self._mark("failed", reason)
            raise SoftPromptError(
                f"{reason}; the run stopped and {self.out} keeps its last checkpoint: fix this, then resume it "
                "(train --resume, or rerun the study)"
            ) from None
        except Exception as e:
            self._mark("failed", str(e) if isinstance(e, SoftPromptError) else f"{type(e).__name__}: {e}")
            raise
        finally:
            self._close_bar()

    def _mark(self, status: str, error: str | None = None) -> None:
        self.trackers.close(KILLED if status == "interrupted" else FAILED)
        if self.main:
            with contextlib.suppress(OSError):  # the disk may be full: the checkpoint still resumes
                replace(self.record, status=status, error=error).write(self.out)

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
        """This process's share of one global batch: forward, loss, backward; an optimiser step every grad_accum.

        Nothing is read back from the device here: the loss is queued (`pending`) for `read_losses`. With CUDA
        graphs (`cuda_graphs`) the same `_loss_and_grads` is replayed from its graph for the batch's shape."""
        cfg, dp, gb = self.cfg, self.dp, self.global_batch
        idx = order[micro * gb : (micro + 1) * gb]
        idx = idx[dp.rank * cfg.batch_size : (dp.rank + 1) * cfg.batch_size]  # this process's share
        backbone = self.data.backbone
        loss_rows = torch.zeros(2, dtype=torch.float64, device=backbone.device)  # a process with no rows adds nothing
        for group in self._length_groups(idx) if idx else []:
            host = collate([self.data.encoded[i] for i in group], backbone.tokenizer.pad_token_id, bucket=self.bucket)
            if self.graphs is not None:
                rows = len(group)
                group_loss, *grads = self.graphs.run(lambda b, rows=rows: self._loss_and_grads(b, rows), host, key=(rows,))
                self.stats.update(padded_counts(host, cfg.tokens))
                self.stats["head"] += host.target_row.numel()
            else:
                group_loss, *grads = self._loss_and_grads(host.to(backbone.device), len(group), self.stats)
            loss_rows = loss_rows + group_loss
            for p, g in zip(self.trainables.params.values(), grads, strict=True):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad.add_(g)
        self.pending.append((epoch, micro, loss_rows))
        last_micro = micro == self.micro_per_epoch - 1
        if self.bar is not None:
            self.bar.update(1)
        if (micro + 1) % cfg.grad_accum == 0 or last_micro:
            self._optimizer_step(epoch, micro, last_micro)

    def _length_groups(self, idx: list[int]) -> list[list[int]]:
        """`idx` as the groups that get one forward each: with CUDA graphs (`split_overhead` > 0) a random batch
        is padded to its longest row while a replayed forward costs little more than its tokens, so the batch,
        sorted by length, is cut into the 1, 2 or 4 equal groups (`SPLIT_PARTS`; equal sizes keep the graphs'
        shapes few) that compute the fewest positions counting `split_overhead` per forward. The gradient is
        the same sum over the same examples. 0: one group."""
        if not self.split_overhead or len(idx) < 2:
            return [idx]
        enc, n = self.data.encoded, self.cfg.tokens if self.cfg.method in PROMPT_METHODS else 0
        longest = {i: max(len(r.ids) for r in enc[i].rows) for i in idx}
        length = {i: (bucketed_length(k, self.bucket) if self.bucket else k) + n for i, k in longest.items()}
        ordered = sorted(idx, key=lambda i: (length[i], i))

        def cost(groups: list[list[int]]) -> int:
            return sum(self.split_overhead + sum(len(enc[i].rows) for i in g) * max(length[i] for i in g) for g in groups)

        splits = []
        for parts in (p for p in SPLIT_PARTS if p <= len(idx)):
            size = -(-len(idx) // parts)
            splits.append([ordered[k : k + size] for k in range(0, len(ordered), size)])
        return min(splits, key=cost)  # ties: the fewest groups (listed first)

    def _loss_and_grads(self, batch, rows: int, stats: ScoringStats | None = None) -> tuple[torch.Tensor | None, ...]:
        """([loss x rows, rows], *gradients of the trainables) of one micro-batch of `rows` examples already on
        the device: the loss scaled to its share of the optimiser step. Reads nothing back from the device and
        depends on no Python value but `rows` and the batch's shape, so a CUDA graph can replay it."""
        cfg = self.cfg
        with autocast_context(batch.input_ids.device, self.compute_dtype):
            scores = batch_choice_scores(
                self.data.backbone.model, self.trainables.prompt_matrix(), batch, options=self.scoring, stats=stats
            )
        loss = LOSSES[cfg.loss](scores, batch.labels)
        detached = loss.detach().double()  # [loss x rows, rows]: summed over processes, the global batch's mean
        loss_rows = torch.stack([detached * rows, torch.full_like(detached, rows)])
        params = list(self.trainables.params.values())
        grads = torch.autograd.grad(loss * rows / (self.global_batch * cfg.grad_accum), params, allow_unused=True)
        return (loss_rows, *grads)

    def _optimizer_step(self, epoch: int, micro: int, last_micro: bool) -> None:
        cfg, params = self.cfg, self.trainables.params.values()
        self.consistent = False
        self.dp.sum_gradients(params)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(params), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Progress is committed only at optimiser-step boundaries, so a checkpoint never holds half an
        # accumulated gradient.
        self.unread += self.pending
        self.pending = []
        step = self.state["optimizer_step"] + 1
        self.state.update(optimizer_step=step, micro_step=micro + 1)
        checkpoint_now = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0 and not last_micro
        evaluate_now = bool(cfg.eval_every) and step % cfg.eval_every == 0 and not last_micro  # epoch ends evaluate anyway
        if last_micro or checkpoint_now or evaluate_now or step % self.read_every == 0:
            self.read_losses()  # an evaluation or a write follows, or it is time: raises if the run diverged
        self.consistent = True
        if evaluate_now:  # a curve point between epoch ends
            self._record_point(round(epoch + (micro + 1) / self.micro_per_epoch, 3))
        if checkpoint_now:
            self.state["elapsed"] = time.perf_counter() - self.started
            self.checkpoint()

    def read_losses(self) -> None:
        """Read the losses queued on the device since the last read, and check the parameters, in one wait
        for the device (and one all-reduce across processes): into `losses` and `state["epoch_losses"]`.

        Raises SoftPromptError if a loss is not finite or the parameters diverged, naming the batch
        (or step) and, when reads are `read_every` > 1 steps apart, how late it may have been seen. Call
        it before anything evaluates or writes the parameters: checkpoints and the best prompt do."""
        if not self.unread:
            return
        where = [(epoch, micro) for epoch, micro, _ in self.unread]
        sums = torch.stack([t for _, _, t in self.unread])  # [micro-batches, 2]
        self.unread = []
        self.dp.sum_(sums)
        healthy = torch.stack([torch.isfinite(p).all() & (p.abs().max() < DIVERGED) for p in self.trainables.params.values()])
        values = torch.cat([sums.flatten(), healthy.all().double().reshape(1)]).tolist()  # the one read
        losses = [values[2 * k] / values[2 * k + 1] for k in range(len(where))]
        self._raise_if_diverged(where, losses, healthy=bool(values[-1]))
        self.losses = self.losses + losses
        self.trackers.log_losses(
            where, values, grad_accum=self.cfg.grad_accum, micro_per_epoch=self.micro_per_epoch, scheduler=self.scheduler
        )
        self.state["epoch_losses"] = self.losses
        if self.bar is not None:
            recent = self.losses[-20:]
            self.bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")

    def _raise_if_diverged(self, where: list[tuple[int, int]], losses: list[float], *, healthy: bool) -> None:
        step = self.state["optimizer_step"]
        late = (
            f"; seen at optimiser step {step}, up to {self.read_every} steps later (--log-every)" if self.read_every > 1 else ""
        )
        for (epoch, micro), loss in zip(where, losses, strict=True):
            if not math.isfinite(loss):
                raise SoftPromptError(
                    f"loss became {loss} at epoch {epoch + 1}, batch {micro + 1} (lr {self.trainables.lr:.3g}{late}): "
                    f"stopped; {self._diverged_advice()}"
                )
        if not healthy:
            when = f"within the {self.read_every} optimiser steps up to step {step}" if self.read_every > 1 else f"at step {step}"
            raise SoftPromptError(
                f"parameters diverged (NaN/inf or |value| >= {DIVERGED:g}) at epoch {where[-1][0] + 1}, {when}: "
                f"lr {self.trainables.lr:.3g}: stopped; {self._diverged_advice()}"
            )

    def _diverged_advice(self) -> str:
        """What a diverged run keeps and what to do: only what is known (a checkpoint is written from parameters the
        check passed, or resumed from one whose digest run.json recorded; --resume would repeat the same steps)."""
        exists = (self.out / CHECKPOINT_FILE).exists()
        kept = f"{self.out} keeps its last checkpoint, from before these steps" if exists else "no checkpoint was written"
        return f"{kept}; the learning rate may be too large: retrain with a smaller --lr (--overwrite; a study's [train] lr)"

    def _checkpoint_on_interrupt(self) -> None:
        """Ctrl-C at a consistent instant: read what the device holds, then checkpoint, unless the read finds
        a divergence (the last good checkpoint stays; --resume repeats the steps and reports it) or would be
        a collective the other processes are not in (then too the last checkpoint is what --resume takes)."""
        if self.unread and self.dp.active:
            return
        try:
            self.read_losses()
        except SoftPromptError as e:
            warnings.warn(f"softprompt: no checkpoint written at the interrupt: {e}", RuntimeWarning, stacklevel=2)
            return
        self.state["elapsed"] = time.perf_counter() - self.started
        self.checkpoint()

    def evaluate(self) -> EvalResult:
        """The validation subsample with the current parameters (the same subsample for every seed and method)."""
        return self.evaluator.evaluate(self.data.task, self._prompt(), limit=self.cfg.max_eval, seed=EVAL_SEED, calibrate=True)

    def _prompt(self) -> torch.Tensor | None:
        prompt = self.trainables.prompt_matrix()
        return prompt.detach() if prompt is not None else None

    def _record_point(self, epoch: float) -> None:
        """A curve point between optimiser steps: evaluate, maybe keep the prompt as the best, append it."""
        record, res, dev = self._evaluation_point(epoch)
        self.consistent = False
        best = self._select(self.state["best"], record, res, dev)
        self.state.update(history=[*self.state["history"], record], best=best, loss_mark=len(self.losses))
        self.consistent = True

    def _evaluation_point(self, epoch: float) -> tuple[dict[str, Any], EvalResult, EvalResult | None]:
        """Evaluate the current prompt on validation (and the dev split if any): one history record."""
        res = self.evaluate()
        recent = self.losses[self.state.get("loss_mark", 0) :]
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": self.state["optimizer_step"],
            "train_loss": sum(recent) / len(recent) if recent else None,
            **res.metrics(),
        }
        dev = self.evaluator.evaluate_examples(self.data.task, self.data.dev, self._prompt()) if self.data.dev else None
        if dev is not None:
            record["dev"] = {**dev.metrics(), "loss": dev.loss}  # the loss: what selection = dev_loss compares
        record["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        self.trackers.log_evaluation(self.state["optimizer_step"], epoch, res, dev)
        return record, res, dev

    def _select(self, best: dict | None, record: dict, res: EvalResult, dev: EvalResult | None, *, last: bool = False) -> dict:
        """The best prompt so far by the run's `selection` rule on the dev split (`improves`); the latest without
        one, or with one too small to choose on (the validation examples the report scores never choose). At the
        run's last evaluation (`last`), the final choice between that candidate and the last prompt
        (`settle_selection`), recorded in state["selection"] for run.json."""
        rule, _ = selection_rule(self.cfg.selection, len(self.data.dev))
        here = selection_point(record, res, dev if rule != "last" else None, self.data.task.metric)
        losses = choice_losses(dev.scores) if rule != "last" and dev is not None and dev.scores is not None else []
        if rule == "last" or improves(rule, here, best):
            self._save_best()
            best = here
            self.state["candidate_losses"] = losses
        if last:
            chosen, facts = settle_selection(
                self.cfg.selection, best, here, self.state.get("candidate_losses") or [], losses, len(self.data.dev)
            )
            if chosen is not best:  # the candidate did not beat the last prompt by the margin: the last one is the best
                self._save_best()
            best, self.state["selection"] = chosen, facts
        return best

    def _end_epoch(self, epoch: int) -> None:
        """Evaluate, keep the best parameters, record the epoch (one state update), checkpoint."""
        record, res, dev = self._evaluation_point(epoch + 1)
        self.consistent = False
        best = self._select(self.state["best"], record, res, dev, last=epoch + 1 == self.cfg.epochs)
        self.state.update(
            history=[*self.state["history"], record],
            best=best,
            last_eval={"task": res.task, "split": res.split, **res.metrics()},
            epoch=epoch + 1,
            micro_step=0,
            epoch_losses=[],
            loss_mark=0,
            elapsed=time.perf_counter() - self.started,
        )
        self.consistent = True
        if self.bar is not None:
            metric = self.data.task.metric
            dev_text = f"  dev {dev.metric(metric):.4f}" if dev is not None else ""
            self.bar.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  val {metric} {res.metric(metric):.4f}{dev_text}")
        self.checkpoint()

    def _save_best(self) -> None:
        self.read_losses()  # never from parameters that were not checked
        if not self.main:
            return
        prompt = self.trainables.prompt_to_save()
        if prompt is not None:
            prompt.save(self.out / BEST_PROMPT_FILE)
            facts = artifact_facts(self.out / BEST_PROMPT_FILE, prompt)  # for run.json
            self.state["artifacts"] = {**self.state.get("artifacts", {}), BEST_PROMPT_FILE: facts}
        elif self.cfg.method == "lora":
            save_trainables(self.out / BEST_ADAPTER_FILE, self.trainables.params)

    def checkpoint(self) -> None:
        self.read_losses()  # never from parameters that were not checked, and with every committed loss
        if self.main:
            params, opt, sched = self.trainables.params, self.optimizer, self.scheduler
            digest = save_checkpoint(self.out, params, opt, sched, self.state, before_replace=self._record_checkpoint)
            self._record_checkpoint(digest, replaced=True)
            write_text(self.out / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in self.state["history"]))

    def _record_checkpoint(self, digest: str, *, replaced: bool = False) -> None:
        """run.json's digest of the checkpoint, which --resume verifies: the new one beside the old while the file
        is replaced (a kill in between leaves either file), then the new one alone."""
        old = ((self.record.artifacts or {}).get(CHECKPOINT_FILE) or {}).get("sha256")
        facts = {"sha256": digest} if replaced or old in (None, digest) else {"sha256": digest, "previous_sha256": old}
        self.record.artifacts = {**(self.record.artifacts or {}), CHECKPOINT_FILE: facts}
        self.checkpoint_sha256 = digest
        self._write_running()

    def _write_running(self) -> None:
        replace(self.record, worker={"host": socket.gethostname(), "pid": os.getpid()}).write(self.out)

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


# ----------------------------------------------------------------------------- selection
# Which prompt is the run's best (best.safetensors, run.json's `best`, `selection`). Issue 27: choosing on 40 dev
# examples by accuracy picked worse prompts than the last; `bench/convergence.py --recipes dev-loss` compares the rules.

MIN_SELECTION_DEV = 30  # below this many dev examples a choice is noise (the normal approximation of a mean): the last
SELECTION_MARGIN_SE = 1.0  # dev_loss keeps a candidate only if its paired loss gain over the last exceeds this many SEs


def selection_rule(selection: str, dev_size: int) -> tuple[str, str | None]:
    """The rule in force for a run (`last` unless a dev split large enough to choose on exists) and why, if it is
    not the configured one."""
    if selection == "last":
        return "last", None
    if dev_size == 0:
        return "last", "no dev split to choose on: the last prompt"
    if dev_size < MIN_SELECTION_DEV:
        return "last", f"a dev split of {dev_size} < {MIN_SELECTION_DEV} examples is too small to choose on: the last prompt"
    return selection, None


def selection_point(record: dict, res: EvalResult, dev: EvalResult | None, metric: str) -> dict[str, Any]:
    """One evaluation as `best` records it: on the dev split (its metric and loss, the validation metric
    beside), or without one the validation metric alone."""
    point = {"epoch": record["epoch"], "step": record["step"], "metric": metric}
    if dev is None:
        return {**point, "split": None, "value": res.metric(metric)}
    return {**point, "split": "dev", "value": dev.metric(metric), "validation": res.metric(metric), "dev_loss": dev.loss}


def improves(rule: str, point: dict, candidate: dict | None) -> bool:
    """Whether `point` replaces `candidate` as the best so far: a lower dev loss (`dev_loss`) or a higher dev
    metric (`dev_accuracy`); ties keep the earlier prompt."""
    if candidate is None or candidate.get("split") != "dev":
        return True
    if rule == "dev_loss":
        return point["dev_loss"] < candidate["dev_loss"]
    return point["value"] > candidate["value"]


def paired_gain(candidate_losses: list[float], last_losses: list[float]) -> tuple[float, float]:
    """The mean over dev examples of (last prompt's loss - candidate's loss) and its standard error (inf for n < 2)."""
    d = [b - a for a, b in zip(candidate_losses, last_losses, strict=True)]
    n = len(d)
    mean = math.fsum(d) / n if n else 0.0
    se = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else math.inf
    return mean, se


def settle_selection(
    selection: str, candidate: dict, last: dict, candidate_losses: list[float], last_losses: list[float], dev_size: int
) -> tuple[dict, dict[str, Any]]:
    """(the best prompt's point: `candidate` or `last`, the facts run.json's `selection` records). `dev_loss` keeps
    its candidate only if it beats the last prompt by SELECTION_MARGIN_SE paired standard errors of the
    per-example loss difference; `dev_accuracy` keeps its candidate (the rule before issue 27)."""
    rule, why = selection_rule(selection, dev_size)
    facts: dict[str, Any] = {"rule": selection, "dev_size": dev_size, "applied": rule}
    if rule == "last" or candidate["step"] == last["step"]:
        why = why or ("selection = last: the last prompt" if rule == "last" else f"the last prompt is the best by {rule}")
        return last if rule == "last" else candidate, {**facts, "chosen": "last", "step": last["step"], "why": why}
    facts["candidate_step"] = candidate["step"]
    if rule == "dev_accuracy":
        why = f"the highest dev {candidate['metric']} ({candidate['value']:.4f}; the first of ties): step {candidate['step']}"
        return candidate, {**facts, "chosen": "candidate", "step": candidate["step"], "why": why}
    gain, se = paired_gain(candidate_losses, last_losses)
    facts.update(loss_gain=gain, loss_gain_se=se if math.isfinite(se) else None, margin_se=SELECTION_MARGIN_SE)
    text = f"step {candidate['step']}'s dev loss is {gain:.4f} below the last prompt's (paired SE {se:.4f}, n={len(last_losses)})"
    if gain > SELECTION_MARGIN_SE * se:
        return candidate, {**facts, "chosen": "candidate", "step": candidate["step"], "why": text + ": kept"}
    why = f"{text}, within {SELECTION_MARGIN_SE:g} SE: the last prompt"
    return last, {**facts, "chosen": "last", "step": last["step"], "why": why}


def select_prompt(selection: str, points: list[dict], losses: list[list[float]], dev_size: int) -> tuple[dict, dict]:
    """The same choice over a whole history at once (`points` as `selection_point` makes them, in order, and each
    one's per-example dev losses): what a run with these evaluations records (tests, benchmarks)."""
    rule, _ = selection_rule(selection, dev_size)
    best, best_losses = None, []
    for point, point_losses in zip(points, losses, strict=True):
        if rule == "last" or improves(rule, point, best):
            best, best_losses = point, point_losses
    return settle_selection(selection, best, points[-1], best_losses, losses[-1], dev_size)


# ----------------------------------------------------------------------------- finalize


def finalize(loop: TrainingLoop, *, references: bool) -> TrainResult:
    """Final artifacts, the no-prompt/English-prompt reference evaluations, run.json complete, no checkpoint."""
    cfg, out, task, trainables = loop.cfg, loop.out, loop.data.task, loop.trainables
    artifacts = dict(loop.state.get("artifacts") or {})  # what loading the prompts checks them against
    prompt = trainables.prompt_to_save()
    if prompt is not None and loop.main:
        prompt.save(out / PROMPT_FILE)
        for name in (PROMPT_FILE, BEST_PROMPT_FILE):
            if name == PROMPT_FILE or name not in artifacts:  # (a checkpoint older than these records)
                artifacts[name] = artifact_facts(out / name, prompt)
    elif loop.main:
        save_trainables(out / WEIGHTS_FILES[cfg.method], trainables.params)
    final = EvalResult(**loop.state["last_eval"])  # the last epoch's evaluation scored exactly these parameters
    hard = hard_prompt_outcome(loop) if cfg.method == "hard" else None
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
        selection=loop.state.get("selection"),
        baselines={k: v.metrics() for k, v in base.items()},
        artifacts=artifacts or None,
        hard_prompt=hard,
        train_examples=len(encoded),
        train_truncated=sum(1 for e in encoded if e.truncated),
        wall_time_s=round(time.perf_counter() - loop.started, 2),
    )
    if loop.main:
        record.write(out)
        # A complete run needs no checkpoint (for full fine-tuning it holds the weights and two Adam moments).
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    loop.trackers.close(FINISHED)
    loop.dp.barrier()  # the run directory is complete before any process returns
    return TrainResult(out, final, loop.state["best"], base, loop.state["history"], loop.record.parameters or {}, hard)


def hard_prompt_outcome(loop: TrainingLoop) -> dict[str, Any]:
    """A hard run's discrete prompt, last and best (ids, tokens, text, whether the text tokenizes back to the ids),
    and the last one's text scored as a typed hard prompt on the validation subsample (`text_final`; `final` is
    its exact token rows, at the soft prompt's place). Written to hard_prompt.json (main process)."""
    cfg, tok, encoder = loop.cfg, loop.data.backbone.tokenizer, loop.trainables.encoder
    assert isinstance(encoder, HardPromptEncoder)
    last = hard_prompt_facts(encoder.ids(), tok)
    best_file = loop.out / BEST_PROMPT_FILE
    best = hard_prompt_facts(encoder.ids(SoftPrompt.load(best_file).weight), tok) if best_file.exists() else None
    out: dict[str, Any] = {"projection": "cosine", "last": last, "best": best}
    try:  # a text longer than --max-length allows is recorded, not a failed run: the exact rows were scored
        res = loop.evaluator.evaluate(loop.data.task, None, hard_prompt=last["text"], limit=cfg.max_eval, seed=EVAL_SEED)
        out["text_final"] = res.metrics()
    except SoftPromptError as e:
        out["text_error"] = str(e)
    if loop.main:
        write_json(loop.out / HARD_PROMPT_FILE, out)
    return out


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
        resolved={
            "lr": trainables.lr,
            "lr_per_std": LR_PER_STD.get(cfg.method) if cfg.lr is None else None,
            "prompt_format": data.prompt_format,
            "compute_dtype": compute_dtype_name(cfg, backbone),
        },
        train_label_counts=[sum(1 for e in data.examples if e.label == k) for k in range(task.num_classes)],
        dev_examples=len(data.dev),
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
