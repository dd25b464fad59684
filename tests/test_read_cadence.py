"""The training loop reads losses back from the device every `log_every` optimiser steps (on a GPU: every 16,
`training.step.READ_EVERY`) instead of every step: the same results, and the same guarantees. A non-finite loss or
diverged parameters are still reported with their epoch and batch; no checkpoint or best prompt is ever
written from parameters that were not checked; Ctrl-C still checkpoints a consistent instant and
`--resume` continues it bit-identically. Run on a CPU with `log_every` forced above 1.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import softprompt.training.step as step_mod
from softprompt.errors import SoftPromptError
from softprompt.runs.directory import BEST_PROMPT_FILE
from softprompt.training import TrainingLoop, train

from .test_train import _cfg


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """The optimiser step of every read of the device that had losses to read."""
    steps: list[int] = []
    real = TrainingLoop.read_losses

    def recording(self):
        if self.step.unread:
            steps.append(self.state["optimizer_step"])
        return real(self)

    monkeypatch.setattr(TrainingLoop, "read_losses", recording)
    return steps


def _prompt(run) -> torch.Tensor:
    return load_file(str(run / "prompt.safetensors"))["prompt"]


def _losses(run) -> list[dict]:
    return [
        {k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in (run / "metrics.jsonl").read_text().splitlines()
    ]


def _at_loss(monkeypatch, at: int, what: str) -> None:
    """The `at`-th training loss (counting from 1) becomes NaN (`what` "nan") or raises KeyboardInterrupt ("interrupt")."""
    calls = {"n": 0}
    real = step_mod.LOSSES["choices"]

    def patched(scores, labels, weights=None):
        calls["n"] += 1
        if calls["n"] == at and what == "interrupt":
            raise KeyboardInterrupt
        loss = real(scores, labels, weights)
        return loss * float("nan") if calls["n"] == at else loss

    monkeypatch.setitem(step_mod.LOSSES, "choices", patched)


def test_reading_every_n_steps_changes_nothing_else(tiny_backbone, toy_data, tmp_path, reads):
    """12 examples in batches of 2: 6 optimiser steps per epoch, 18 in all."""
    every = train(_cfg(toy_data, batch_size=2), tmp_path / "every", backbone=tiny_backbone, progress=False)
    assert reads == list(range(1, 19))  # the CPU default: every step, as before
    reads.clear()
    sparse = train(_cfg(toy_data, batch_size=2, log_every=4), tmp_path / "sparse", backbone=tiny_backbone, progress=False)
    assert reads == [4, 6, 8, 12, 16, 18]  # every 4th step and every epoch's end
    assert torch.equal(_prompt(every.out), _prompt(sparse.out))
    assert _losses(every.out) == _losses(sparse.out)  # the per-epoch training losses to the last bit


def test_nan_loss_read_late_is_reported_and_nothing_diverged_is_written(tiny_llama, toy_data, tmp_path, monkeypatch, reads):
    _at_loss(monkeypatch, 8, "nan")  # epoch 2, batch 2 (step 8); read at step 9 (checkpoint_every 3), not step 8
    cfg = _cfg(toy_data, batch_size=2, log_every=5, checkpoint_every=3)
    with pytest.raises(
        SoftPromptError, match=r"loss became nan at epoch 2, batch 2 .*seen at optimiser step 9, up to 5 steps later"
    ):
        train(cfg, tmp_path / "r", backbone=tiny_llama, progress=False)
    assert reads == [3, 5, 6, 9]
    ckpt = load_file(str(tmp_path / "r" / "checkpoint.safetensors"))
    assert torch.isfinite(ckpt["param/prompt"]).all()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "r" / "checkpoint.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["optimizer_step"] == 6  # epoch 1's end; step 9's never written
    assert torch.isfinite(load_file(str(tmp_path / "r" / BEST_PROMPT_FILE))["prompt"]).all()
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "failed"


def test_divergence_read_late_is_reported_and_nothing_diverged_is_written(tiny_llama, toy_data, tmp_path, monkeypatch):
    """Parameters past the divergence bound (lowered here, so the losses stay finite) are found at the next read."""
    monkeypatch.setattr(step_mod, "DIVERGED", 0.12)
    cfg = _cfg(toy_data, batch_size=2, log_every=4, epochs=6)
    with pytest.raises(SoftPromptError, match=r"parameters diverged .* within the 4 optimiser steps up to step (\d+)") as err:
        train(cfg, tmp_path / "r", backbone=tiny_llama, progress=False)
    step = int(err.value.args[0].split("up to step ")[1].split(":")[0])
    assert step % 4 == 0 or step % 6 == 0  # a read: every 4th step or an epoch's end
    best = load_file(str(tmp_path / "r" / BEST_PROMPT_FILE))["prompt"]
    assert best.abs().max() < 0.12
    if (tmp_path / "r" / "checkpoint.safetensors").exists():
        assert load_file(str(tmp_path / "r" / "checkpoint.safetensors"))["param/prompt"].abs().max() < 0.12


@pytest.mark.parametrize("stop_at", [4, 10])
def test_interrupt_with_unread_losses_checkpoints_them_and_resumes_identically(
    tiny_llama, toy_data, tmp_path, monkeypatch, stop_at
):
    cfg = _cfg(toy_data, batch_size=2, log_every=4)
    train(cfg, tmp_path / "ref", backbone=tiny_llama, progress=False)
    real = step_mod.LOSSES["choices"]
    _at_loss(monkeypatch, stop_at, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "cut" / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    assert state["optimizer_step"] == stop_at - 1  # the steps done, their losses read at the interrupt
    assert len(state["epoch_losses"]) == (stop_at - 1) % 6
    monkeypatch.setitem(step_mod.LOSSES, "choices", real)
    train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False, resume=True)
    assert torch.equal(_prompt(tmp_path / "ref"), _prompt(tmp_path / "cut"))
    assert _losses(tmp_path / "ref") == _losses(tmp_path / "cut")


def test_interrupt_with_an_unread_nan_writes_no_checkpoint(tiny_llama, toy_data, tmp_path, monkeypatch):
    """A NaN the interrupt's read finds: no checkpoint (the last good one, here none, stays); --resume redoes the steps."""
    cfg = _cfg(toy_data, batch_size=2, log_every=4)
    real = step_mod.LOSSES["choices"]
    _at_loss(monkeypatch, 2, "nan")
    _at_loss(monkeypatch, 3, "interrupt")  # on top of the NaN
    with (
        pytest.raises(KeyboardInterrupt),
        pytest.warns(RuntimeWarning, match="no checkpoint written at the interrupt: loss became nan"),
    ):
        train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False)
    assert not (tmp_path / "cut" / "checkpoint.safetensors").exists()
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setitem(step_mod.LOSSES, "choices", real)
    train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False, resume=True)
    train(cfg, tmp_path / "ref", backbone=tiny_llama, progress=False)
    assert torch.equal(_prompt(tmp_path / "ref"), _prompt(tmp_path / "cut"))
