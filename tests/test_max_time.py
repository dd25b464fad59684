"""--max-time: a run stops training at the first optimiser-step boundary where its wall time has reached the budget,
finishes with its final evaluation, records why and where it stopped, and a resumed run spends only what is left.

Each training step is slowed by a fixed sleep (the loss function is wrapped) so a budget spans several steps, and the
loop's own clock is read at every step boundary (`boundaries`): the tests assert the stop came at the first boundary
past the budget (the one before it was still inside), which holds on any machine, idle or loaded.
"""

from __future__ import annotations

import time

import pytest

from softprompt.errors import SoftPromptError
from softprompt.records.run import RunRecord
from tests.conftest import tiny_config

STEP_S = 0.25


@pytest.fixture
def slow_steps(monkeypatch) -> list[float]:
    """Every training step sleeps STEP_S; returns the times the steps' losses were computed (a step's real cost on this
    machine, under whatever load, is the gap between two of them)."""
    import softprompt.training.step as step_mod

    real, calls = step_mod.LOSSES["choices"], []

    def slow(scores, labels, weights=None):
        time.sleep(STEP_S)
        calls.append(time.perf_counter())
        return real(scores, labels, weights)

    monkeypatch.setitem(step_mod.LOSSES, "choices", slow)
    return calls


@pytest.fixture
def boundaries(monkeypatch) -> list[float]:
    """The run's elapsed time (its own clock) at every step boundary where the loop checks the budget."""
    from softprompt.training.loop import TrainingLoop

    real, seen = TrainingLoop._budget_spent, []

    def watched(self, epoch, micro):
        seen.append(time.perf_counter() - self.started)
        return real(self, epoch, micro)

    monkeypatch.setattr(TrainingLoop, "_budget_spent", watched)
    return seen


def _cfg(toy_data, **kw):
    # 12 training examples, batch 2: 6 steps an epoch, 10 epochs planned (60 steps, >= 15 s of sleeping alone)
    return tiny_config(toy_data, batch_size=2, epochs=10, dev_size=0, **kw)


def test_max_time_stops_within_a_step_and_records_why(tmp_path, toy_data, tiny_llama, slow_steps, boundaries):
    from softprompt.training import train

    budget = 2.0
    res = train(_cfg(toy_data, max_time=budget), tmp_path / "run", backbone=tiny_llama, progress=False)
    record = RunRecord.read(tmp_path / "run")
    stopped = record.stopped
    assert record.status == "complete" and stopped is not None and stopped.reason == "max_time"
    assert stopped.planned_steps == 60 and 0 < stopped.optimizer_step < 60
    # stopped at the first step boundary past the budget: every boundary before it was inside the budget
    first_past = next(i for i, t in enumerate(boundaries) if t >= budget)
    assert all(t < budget for t in boundaries[:first_past]) and stopped.elapsed_s >= budget
    assert stopped.elapsed_s == pytest.approx(boundaries[first_past], abs=0.05)
    history = res.history
    assert history[-1]["step"] == stopped.optimizer_step and history[-1]["epoch"] == stopped.epoch < 10
    assert record.final is not None and record.final.accuracy == history[-1]["accuracy"]  # the final evaluation ran


def test_resume_spends_only_what_is_left(tmp_path, toy_data, tiny_llama, slow_steps, boundaries, interrupt_at):
    """Interrupted after a few steps, the resumed run stops once the time before the interrupt plus the time after it
    reach the budget: it does not get a fresh budget."""
    from softprompt.training import train

    budget = 8.0  # well past the 2 steps before the interrupt, on a loaded machine too
    cfg = _cfg(toy_data, max_time=budget)
    interrupt_at(3)  # Ctrl-C inside the 3rd micro-batch: 2 steps done and checkpointed
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", backbone=tiny_llama, progress=False)
    interrupt_at(None)
    before = RunRecord.read(tmp_path / "run")
    assert before.status == "interrupted"
    boundaries.clear()
    train(cfg, tmp_path / "run", backbone=tiny_llama, progress=False, resume=True)
    stopped = RunRecord.read(tmp_path / "run").stopped
    assert stopped is not None and stopped.elapsed_s >= budget
    # the resumed run's clock starts where the interrupted one stopped: its boundaries continue from there, and the
    # stop is the first one past the budget counted from the run's start (not a fresh budget)
    resumed = boundaries
    assert resumed[0] > 0.5  # the time spent before the interrupt counts
    first_past = next(i for i, t in enumerate(resumed) if t >= budget)
    assert all(t < budget for t in resumed[:first_past])


def test_max_time_must_be_positive():
    from softprompt.config import TrainConfig

    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(SoftPromptError, match="max_time must be a positive number of seconds"):
            TrainConfig(task="rte", max_time=bad)


def test_without_a_budget_nothing_stops_early(tmp_path, toy_data, tiny_llama):
    from softprompt.training import train

    train(tiny_config(toy_data, dev_size=0), tmp_path / "run", backbone=tiny_llama, progress=False)
    assert RunRecord.read(tmp_path / "run").stopped is None


def test_max_steps_stops_there_and_the_schedule_spans_it(tmp_path, toy_data, tiny_llama):
    """--max-steps: the run does exactly that many optimiser steps, its learning rate decays to zero over them (the
    schedule spans the budget, not the epochs), and a budget at or past the planned end changes nothing."""
    from softprompt.training import train

    res = train(_cfg(toy_data, max_steps=7, eval_every=3), tmp_path / "run", backbone=tiny_llama, progress=False)
    stopped = RunRecord.read(tmp_path / "run").stopped
    assert stopped.reason == "max_steps" and stopped.optimizer_step == 7 and stopped.planned_steps == 7
    assert [h["step"] for h in res.history] == [0, 3, 6, 7]  # curve points, then the final evaluation at the stop
    from softprompt.training.trainables import lr_lambda

    assert lr_lambda("linear", int(0.06 * 7), 7)(7) == 0.0
    train(tiny_config(toy_data, dev_size=0, max_steps=99), tmp_path / "long", backbone=tiny_llama, progress=False)
    assert RunRecord.read(tmp_path / "long").stopped is None
    with pytest.raises(SoftPromptError, match="max_steps must be at least 1"):
        tiny_config(toy_data, max_steps=0)
