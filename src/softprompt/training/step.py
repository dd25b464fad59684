"""One optimiser step's work, and nothing about the run around it: a micro-batch's forward, loss and gradients
(eager, or replayed from a CUDA graph per batch shape: `softprompt.training.cuda_graphs`), the optimiser step, and the
one read of the queued losses that checks the parameters too.

Nothing here reads a value back from the device except `TrainStep.read`: each micro-batch's loss stays on the
device until the loop asks (every `read_every` optimiser steps, at each epoch's end, before anything is written).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from softprompt.config import PROMPT_METHODS, TrainConfig
from softprompt.data.batching import bucketed_length, collate
from softprompt.distributed import DataParallel
from softprompt.errors import SoftPromptError
from softprompt.model.backbones import resolve_compute_dtype
from softprompt.scoring import (
    LOSSES,
    ScoringOptions,
    ScoringStats,
    autocast_context,
    batch_choice_scores,
    padded_counts,
)
from softprompt.training.cuda_graphs import LENGTH_BUCKET, SPLIT_OVERHEAD_TOKENS, SPLIT_PARTS, StepGraphs
from softprompt.training.data import TrainData
from softprompt.training.trainables import Trainables, optimizer_and_schedule

DIVERGED = 1e6  # no embedding-scale parameter gets near this unless the learning rate exploded
# Optimiser steps between two reads of the device (the losses, the NaN/divergence check) when
# `log_every` is 0, by device type: a read waits for the device, which on a GPU stalls the queue of
# kernels the host has launched ahead; on a CPU it costs nothing, so every step is read there, as always.
READ_EVERY = {"cpu": 1}
READ_EVERY_DEFAULT = 16


@dataclass
class Reading:
    """One read of the queued losses: (epoch, micro-batch) of each, the values read ([loss x rows, rows] per
    micro-batch summed over processes, then 1.0 if the parameters are healthy), each micro-batch's mean loss."""

    where: list[tuple[int, int]]
    values: list[float]
    losses: list[float]
    healthy: bool


class TrainStep:
    """The optimiser, its schedule and the step's device-side work for one process of a run.

    `forward_backward` adds one micro-batch's gradients and queues its loss (`pending`); `optimizer_step`
    applies them and moves the queue to `unread`; `read` reads it in one wait for the device."""

    def __init__(
        self, cfg: TrainConfig, data: TrainData, trainables: Trainables, dp: DataParallel, *, scoring: ScoringOptions | None
    ):
        if scoring is not None and cfg.scoring_strategy not in ("auto", scoring.strategy):
            raise SoftPromptError(
                f"scoring_strategy {cfg.scoring_strategy!r} and the scoring options' {scoring.strategy!r} differ"
            )
        self.cfg, self.data, self.trainables, self.dp = cfg, data, trainables, dp
        self.scoring = scoring if scoring is not None else ScoringOptions(strategy=cfg.scoring_strategy)
        self.stats = ScoringStats()  # what the training steps' scorer computed (forwards, tokens), for benchmarks
        device = data.backbone.device
        self.read_every = cfg.log_every or READ_EVERY.get(device.type, READ_EVERY_DEFAULT)
        self.compute_dtype = resolve_compute_dtype(cfg.compute_dtype, device)
        self.global_batch = cfg.batch_size * dp.world
        n = len(data.encoded)
        self.micro_per_epoch = math.ceil(n / self.global_batch)
        planned = math.ceil(n / (self.global_batch * cfg.grad_accum)) * cfg.epochs
        self.total_steps = min(planned, cfg.max_steps or planned)  # what the schedule spans (--max-time may stop sooner)
        self.optimizer, self.scheduler = optimizer_and_schedule(cfg, trainables, self.total_steps)
        weights = data.class_weights(cfg.class_balance)  # --class-balance; None: the plain mean
        self.class_weights = weights.to(device) if weights is not None else None
        # (epoch, micro-batch, [loss x rows, rows] on the device) of the micro-batches whose optimiser step has
        # not happened yet (pending), and of those whose step has but that were not read yet (unread)
        self.pending: list[tuple[int, int, torch.Tensor]] = []
        self.unread: list[tuple[int, int, torch.Tensor]] = []
        self.graphs = step_graphs(cfg, device, self.scoring)
        self.bucket = LENGTH_BUCKET if self.graphs is not None else 0  # batch lengths padded to buckets: shapes repeat
        self.split_overhead = SPLIT_OVERHEAD_TOKENS if self.graphs is not None else 0  # 0: one forward per micro-batch

    def forward_backward(self, epoch: int, micro: int, order: list[int]) -> None:
        """This process's share of one global batch: forward, loss, backward, the gradients added to the
        trainables' and the loss queued (`pending`). With CUDA graphs the same `loss_and_grads` is replayed
        from its graph for the batch's shape."""
        cfg, dp, gb = self.cfg, self.dp, self.global_batch
        idx = order[micro * gb : (micro + 1) * gb]
        idx = idx[dp.rank * cfg.batch_size : (dp.rank + 1) * cfg.batch_size]  # this process's share
        backbone = self.data.backbone
        loss_rows = torch.zeros(2, dtype=torch.float64, device=backbone.device)  # a process with no rows adds nothing
        for group in self.length_groups(idx) if idx else []:
            host = collate([self.data.encoded[i] for i in group], backbone.tokenizer.pad_token_id, bucket=self.bucket)
            if self.graphs is not None:
                rows = len(group)
                group_loss, *grads = self.graphs.run(lambda b, rows=rows: self.loss_and_grads(b, rows), host, key=(rows,))
                self.stats.update(padded_counts(host, cfg.tokens))
                self.stats["head"] += host.target_row.numel()
            else:
                group_loss, *grads = self.loss_and_grads(host.to(backbone.device), len(group), self.stats)
            loss_rows = loss_rows + group_loss
            for p, g in zip(self.trainables.params.values(), grads, strict=True):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad.add_(g)
        self.pending.append((epoch, micro, loss_rows))

    def ends_accumulation(self, micro: int) -> bool:
        """Whether an optimiser step follows this micro-batch: every `grad_accum` of them, and at the epoch's end."""
        return (micro + 1) % self.cfg.grad_accum == 0 or micro == self.micro_per_epoch - 1

    def length_groups(self, idx: list[int]) -> list[list[int]]:
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

    def loss_and_grads(self, batch, rows: int, stats: ScoringStats | None = None) -> tuple[torch.Tensor | None, ...]:
        """([loss x rows, rows], *gradients of the trainables) of one micro-batch of `rows` examples already on
        the device: the loss scaled to its share of the optimiser step. Reads nothing back from the device and
        depends on no Python value but `rows` and the batch's shape, so a CUDA graph can replay it."""
        cfg = self.cfg
        with autocast_context(batch.input_ids.device, self.compute_dtype):
            scores = batch_choice_scores(
                self.data.backbone.model, self.trainables.scoring_prompt(), batch, options=self.scoring, stats=stats
            )
        loss = LOSSES[cfg.loss](scores, batch.labels, self.class_weights)
        detached = loss.detach().double()  # [loss x rows, rows]: summed over processes, the global batch's mean
        loss_rows = torch.stack([detached * rows, torch.full_like(detached, rows)])
        params = list(self.trainables.params.values())
        grads = torch.autograd.grad(loss * rows / (self.global_batch * cfg.grad_accum), params, allow_unused=True)
        return (loss_rows, *grads)

    def optimizer_step(self) -> None:
        """The accumulated gradients (summed over processes, clipped) applied, the schedule advanced, and the
        queued losses of these micro-batches handed to the next read: a checkpoint never holds half an
        accumulated gradient."""
        params = self.trainables.params.values()
        self.dp.sum_gradients(params)
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(params), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.unread += self.pending
        self.pending = []

    def read(self) -> Reading | None:
        """The losses queued since the last read, and whether the parameters are finite and below DIVERGED, in
        one wait for the device (and one all-reduce across processes); None if nothing is queued."""
        if not self.unread:
            return None
        where = [(epoch, micro) for epoch, micro, _ in self.unread]
        sums = torch.stack([t for _, _, t in self.unread])  # [micro-batches, 2]
        self.unread = []
        self.dp.sum_(sums)
        healthy = torch.stack([torch.isfinite(p).all() & (p.abs().max() < DIVERGED) for p in self.trainables.params.values()])
        values = torch.cat([sums.flatten(), healthy.all().double().reshape(1)]).tolist()  # the one read
        losses = [values[2 * k] / values[2 * k + 1] for k in range(len(where))]
        return Reading(where, values, losses, healthy=bool(values[-1]))


def step_graphs(cfg: TrainConfig, device: torch.device, scoring: ScoringOptions) -> StepGraphs | None:
    """CUDA graphs for the training steps (`cuda_graphs`, on by default), where they apply: a soft prompt
    trained on a CUDA device with a one-forward scoring strategy (the prefix tree plans on the host, per
    batch; LoRA and fine-tuning would hold a copy of every gradient in the graph's memory)."""
    if not cfg.cuda_graphs or device.type != "cuda" or cfg.method != "prompt":
        return None
    return StepGraphs(device) if scoring.resolved(device) in ("padded", "plain") else None


def raise_if_diverged(reading: Reading, *, step: int, read_every: int, lr: float, advice: Callable[[], str]) -> None:
    """SoftPromptError if a read loss is not finite or the parameters diverged, naming the batch (or step) and,
    when reads are `read_every` > 1 steps apart, how late it may have been seen; `advice`: what the run keeps."""
    late = f"; seen at optimiser step {step}, up to {read_every} steps later (--log-every)" if read_every > 1 else ""
    for (epoch, micro), loss in zip(reading.where, reading.losses, strict=True):
        if not math.isfinite(loss):
            raise SoftPromptError(
                f"loss became {loss} at epoch {epoch + 1}, batch {micro + 1} (lr {lr:.3g}{late}): stopped; {advice()}"
            )
    if not reading.healthy:
        when = f"within the {read_every} optimiser steps up to step {step}" if read_every > 1 else f"at step {step}"
        raise SoftPromptError(
            f"parameters diverged (NaN/inf or |value| >= {DIVERGED:g}) at epoch {reading.where[-1][0] + 1}, {when}: "
            f"lr {lr:.3g}: stopped; {advice()}"
        )
