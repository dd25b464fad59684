"""The epochs of one run. For each epoch, for each micro-batch: forward and backward (`TrainStep`), and at
each accumulation's end the optimiser step, then whatever is due: a read of the queued losses (with the
divergence check), a curve point (`eval_every`), a checkpoint (`checkpoint_every`). At the epoch's end:
evaluate, choose the best prompt (`selection.choose`), record the epoch, checkpoint.

`state` is what a checkpoint saves (`checkpoints.fresh_state`). `consistent` is True while parameters,
optimiser, schedule and `state` describe the same instant, so Ctrl-C may checkpoint them; False inside an
optimiser step or an epoch's bookkeeping, where a checkpoint would pair parameters of one step with the
counters of another.

A stop signal (Ctrl-C, SIGTERM: `softprompt.preemption`) is honoured before each micro-batch, in each scoring batch
of an evaluation and at each epoch's start; under data parallelism only where every process checks together (each
read of the losses, each epoch's start), so all stop at the same step.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softprompt.config import TrainConfig
from softprompt.distributed import DataParallel
from softprompt.errors import SoftPromptError
from softprompt.preemption import safe_point
from softprompt.score_store import ScoreStore
from softprompt.scoring import ScoringOptions
from softprompt.training.budget import stop_facts
from softprompt.training.checkpoints import diverged_advice, fresh_state, restore_checkpoint, save_best, write_checkpoint
from softprompt.training.data import TrainData, batch_order
from softprompt.training.evaluation import Evaluation, Evaluations
from softprompt.training.lifecycle import RunLifecycle
from softprompt.training.selection import choose
from softprompt.training.step import TrainStep, raise_if_diverged
from softprompt.training.trainables import Trainables


class TrainingLoop:
    """One run's step (`step`: optimiser, schedule, device work), evaluator, run directory (`run`: run.json, trackers,
    progress bar) and loop state, and the epochs that advance them. Losses stay on the device and are read (with the
    divergence check) every `read_every` optimiser steps, at each epoch's end and before anything is written
    (`read_losses`): no host sync per step."""

    def __init__(
        self,
        cfg: TrainConfig,
        out: Path,
        data: TrainData,
        trainables: Trainables,
        dp: DataParallel,
        *,
        scoring: ScoringOptions | None,
        progress: bool,
        store: ScoreStore | None = None,
    ):
        self.cfg, self.out, self.data, self.trainables, self.dp = cfg, out, data, trainables, dp
        self.main, self.progress = dp.is_main, progress
        self.step = TrainStep(cfg, data, trainables, dp, scoring=scoring)
        self.evals = Evaluations(
            cfg, data, trainables, dp, scoring=self.step.scoring, progress=progress and self.main, store=store
        )
        self.run = RunLifecycle(cfg, out, data, trainables, dp)
        self.state = fresh_state(dp.world)
        self.consistent = True
        self.started = 0.0
        self.losses: list[float] = []  # the current epoch's losses, read from the device

    # ------------------------------------------------------------------ setup

    def resume(self) -> None:
        """Continue from the checkpoint in `out`, if there is one."""
        restored = restore_checkpoint(self.out, self.trainables, self.step.optimizer, self.step.scheduler, self.dp.world)
        if restored is not None:
            self.state, self.run.checkpoint_sha256 = restored

    def start(self, inputs: dict[str, Any] | None = None, *, resumed: bool = False) -> None:
        """run.json says running (`RunLifecycle.start`)."""
        self.run.start(self.state, inputs, resumed=resumed)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> None:
        """The epochs, from wherever the state says; Ctrl-C, SIGTERM, divergence, a full disk: a resumable directory."""
        self.run.open_progress(self.progress, micro_per_epoch=self.step.micro_per_epoch, state=self.state)
        self.started = time.perf_counter() - self.state["elapsed"]
        self.consistent = True
        with self.run.outcome_recorded():
            try:
                if self.cfg.eval_every and not self.state["history"]:
                    self._record_point(0)  # where the curve starts: the initial prompt
                while self.state["epoch"] < self.cfg.epochs:
                    self.dp.raise_if_stopped()  # every process, together
                    self._epoch(self.state["epoch"])
            except KeyboardInterrupt:
                # Checkpoint only a consistent instant; otherwise the last checkpoint on disk (an earlier consistent
                # instant; also when this one cannot be written: disk full) is what --resume continues from, the same.
                if self.consistent:
                    with contextlib.suppress(OSError):
                        checkpoint_on_interrupt(self)  # reads the queued losses first
                raise

    def _epoch(self, epoch: int) -> None:
        """For each micro-batch: forward and backward; at each accumulation's end the optimiser step, then a
        curve point and a checkpoint when due. At the epoch's end: evaluate, select, record, checkpoint."""
        order = batch_order(self.cfg, self.data, epoch, self.step.global_batch)
        self.losses = list(self.state.get("epoch_losses", []))
        self.step.pending = []
        for micro in range(self.state["micro_step"], self.step.micro_per_epoch):
            safe_point("train-batch")  # one process stops here when asked; several where they agree (below)
            if micro % self.cfg.grad_accum == 0 and self._budget_spent(epoch, micro):
                break
            self.step.forward_backward(epoch, micro, order)  # the loss stays queued on the device
            self.run.bar.advance()
            if not self.step.ends_accumulation(micro):
                continue
            evaluate_now, checkpoint_now = self._optimizer_step(micro)
            if self.dp.active and not self.step.unread:  # all just read the losses: stop together if one was asked
                self.dp.raise_if_stopped()
            if self._budget_spent(epoch, micro + 1):
                break  # the epoch-end evaluation below is the run's last
            if evaluate_now:  # a curve point between epoch ends
                self._record_point(round(epoch + (micro + 1) / self.step.micro_per_epoch, 3))
            if checkpoint_now:
                self.state["elapsed"] = time.perf_counter() - self.started
                self.checkpoint()
        self._end_epoch(epoch)

    def _budget_spent(self, epoch: int, micro: int) -> bool:
        """Whether --max-steps or --max-time is spent here (`budget.stop_facts`): the run's last evaluation follows."""
        if not self.state.get("stopped"):
            elapsed = time.perf_counter() - self.started
            self.state["stopped"] = stop_facts(self.cfg, self.step, self.dp, self.state["optimizer_step"], elapsed, epoch, micro)
        return bool(self.state["stopped"])

    def _optimizer_step(self, micro: int) -> tuple[bool, bool]:
        """The optimiser step and its counters, committed together (a checkpoint never holds half an accumulated
        gradient), the queued losses read if something follows or it is time; (evaluate now, checkpoint now)."""
        cfg, last_micro = self.cfg, micro == self.step.micro_per_epoch - 1
        with self._committing():
            self.step.optimizer_step()
            step = self.state["optimizer_step"] + 1
            self.state.update(optimizer_step=step, micro_step=micro + 1)
            checkpoint_now = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0 and not last_micro
            evaluate_now = bool(cfg.eval_every) and step % cfg.eval_every == 0 and not last_micro  # epoch ends evaluate anyway
            if last_micro or checkpoint_now or evaluate_now or step % self.step.read_every == 0:
                self.read_losses()  # an evaluation or a write follows, or it is time: raises if the run diverged
        return evaluate_now, checkpoint_now

    def _end_epoch(self, epoch: int) -> None:
        """Evaluate, keep the best parameters, record the epoch (one state update), checkpoint. A run stopped by its
        budget (`_budget_spent`) ends here: this evaluation is its last."""
        stopped = self.state.get("stopped")
        record, res, dev = evaluation = self._evaluation_point(stopped["epoch"] if stopped else epoch + 1)
        with self._committing():
            best = self._select(evaluation, last=bool(stopped) or epoch + 1 == self.cfg.epochs)
            self.state.update(
                history=[*self.state["history"], record],
                best=best,
                last_eval={"task": res.task, "split": res.split, **res.metrics()},
                epoch=self.cfg.epochs if stopped else epoch + 1,
                micro_step=0,
                epoch_losses=[],
                loss_mark=0,
                elapsed=time.perf_counter() - self.started,
            )
        self.run.bar.epoch_done(epoch, record, res, dev, self.data.task.metric)
        self.checkpoint()

    @contextlib.contextmanager
    def _committing(self) -> Iterator[None]:
        """Parameters, optimiser and state may disagree inside: Ctrl-C there leaves the last checkpoint as it is
        (an exception leaves `consistent` False)."""
        self.consistent = False
        yield
        self.consistent = True

    # ------------------------------------------------------------------ reading the device

    def read_losses(self) -> None:
        """Read the losses queued on the device since the last read, and check the parameters, in one wait for the
        device (`TrainStep.read`): into `losses`, the trackers and `state["epoch_losses"]`. Raises SoftPromptError if a
        loss is not finite or the parameters diverged (`raise_if_diverged`). Call it before anything evaluates or writes
        the parameters: checkpoints and the best prompt do."""
        reading = self.step.read()
        if reading is None:
            return
        step, lr = self.state["optimizer_step"], self.trainables.lr
        raise_if_diverged(reading, step=step, read_every=self.step.read_every, lr=lr, advice=lambda: diverged_advice(self.out))
        self.losses = self.losses + reading.losses
        self.run.log_losses(reading, self.step)
        self.state["epoch_losses"] = self.losses
        self.run.bar.show_loss(self.losses, self.step.scheduler.get_last_lr()[0])

    # ------------------------------------------------------------------ evaluation and selection

    def _record_point(self, epoch: float) -> None:
        """A curve point between optimiser steps: evaluate, maybe keep the prompt as the best, append it."""
        evaluation = self._evaluation_point(epoch)
        with self._committing():
            best = self._select(evaluation)
            self.state.update(history=[*self.state["history"], evaluation[0]], best=best, loss_mark=len(self.losses))

    def _evaluation_point(self, epoch: float) -> Evaluation:
        """Evaluate the current prompt (`Evaluations.point`) and log it to the trackers."""
        step, recent = self.state["optimizer_step"], self.losses[self.state.get("loss_mark", 0) :]
        evaluation = self.evals.point(epoch, step=step, recent=recent, started=self.started)
        self.run.trackers.log_evaluation(step, epoch, evaluation[1], evaluation[2])
        return evaluation

    def _select(self, evaluation: Evaluation, *, last: bool = False) -> dict:
        """The best point after this evaluation (`selection.choose`), its prompt saved when it is the current one;
        the candidate's dev losses and, at the run's last evaluation, the final choice's facts into the state."""
        cfg, state = self.cfg, self.state
        choice = choose(
            cfg.selection, len(self.data.dev), self.data.task.metric, state["best"], evaluation,
            state.get("candidate_losses"), last=last,
        )  # fmt: skip
        if choice.save:
            self._save_best()
        if choice.candidate_losses is not None:
            state["candidate_losses"] = choice.candidate_losses
        if choice.selection is not None:
            state["selection"] = choice.selection
        return choice.best

    # ------------------------------------------------------------------ writing

    def _save_best(self) -> None:
        self.read_losses()  # never from parameters that were not checked
        if self.main:
            save_best(self.out, self.trainables, self.cfg.method, self.state)

    def checkpoint(self) -> None:
        self.read_losses()  # never from parameters that were not checked, and with every committed loss
        if self.main:
            step = self.step
            write_checkpoint(self.out, self.trainables, step.optimizer, step.scheduler, self.state, self.run.record_checkpoint)


def checkpoint_on_interrupt(loop: TrainingLoop) -> None:
    """A stop at a consistent instant: read what the device holds, then checkpoint, unless the read finds a divergence
    (the last good checkpoint stays; --resume repeats the steps and reports it) or is a collective others are not in."""
    if loop.step.unread and loop.dp.active:
        return
    try:
        loop.read_losses()
    except SoftPromptError as e:
        warnings.warn(f"softprompt: no checkpoint written at the interrupt: {e}", RuntimeWarning, stacklevel=2)
        return
    loop.state["elapsed"] = time.perf_counter() - loop.started
    loop.checkpoint()
