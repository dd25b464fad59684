"""SIGTERM (what Slurm, Kubernetes and cloud preemption send) and Ctrl-C stop a command at its next safe point and are
never lost: a checkpoint at the last consistent instant, run.json `interrupted`, a message saying what was kept and
how to continue, exit 143 (130 for Ctrl-C); a study stopped at any phase resumes with nothing lost.
(Random instants and SIGKILL: tests/test_reliability.py; `accelerate launch`: tests/test_data_parallel.py.)"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import softprompt.training.step as step_mod
from softprompt.config import TrainConfig
from softprompt.preemption import EXIT_SIGINT, EXIT_SIGTERM, raise_if_stopped, stop_at_safe_points
from softprompt.runs.directory import load_run
from softprompt.training import train
from tests.test_reliability import _signalled, _train_cmd, held_process


def test_a_signal_only_sets_a_flag_that_every_later_safe_point_raises():
    """Nothing is raised where the signal lands; each safe point from then on raises (a swallowed one cannot lose it);
    a repeated SIGTERM changes nothing; Ctrl-C is told apart (130); the handlers are restored."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stop_at_safe_points() as seen:
        raise_if_stopped()  # nothing yet
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs at the next bytecode boundary, and raises nothing
        assert seen.terminated and seen.exit_code == EXIT_SIGTERM == 143
        for _ in range(2):
            with pytest.raises(KeyboardInterrupt):
                raise_if_stopped()
        os.kill(os.getpid(), signal.SIGTERM)  # a repeat while stopping: the flag stays, nothing raised
        time.sleep(0.1)
    assert {s: signal.getsignal(s) for s in before} == before
    raise_if_stopped()  # outside the block: nothing is pending
    with stop_at_safe_points() as seen:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert seen.interrupted and not seen.terminated and seen.exit_code == EXIT_SIGINT == 130
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once, for a person who will not wait
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)


class _SignalsWhenCollected:
    """An object whose finaliser receives SIGTERM: Python's own handling raised KeyboardInterrupt inside `__del__`,
    where it is printed as "Exception ignored" and discarded, and the run went on to exit 0."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs here, inside the finaliser
            time.sleep(0.001)


def test_a_sigterm_that_lands_in_a_finaliser_still_stops_the_run(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    from softprompt.cli import main

    calls = {"n": 0}
    real = step_mod.LOSSES["choices"]

    def collecting(scores, labels, weights=None):
        calls["n"] += 1
        if calls["n"] == 3:
            _SignalsWhenCollected()  # collected at once: the signal lands in its finaliser
            gc.collect()
        return real(scores, labels, weights)

    monkeypatch.setitem(step_mod.LOSSES, "choices", collecting)
    out = tmp_path / "run"
    argv = ["train", "--task", "rte", "--model", str(tiny_model_dir), "--data-dir", str(toy_data), "--tokens", "3",
            "--epochs", "3", "--batch-size", "2", "--lr", "0.1", "--compute-dtype", "float32", "--max-length", "128",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == EXIT_SIGTERM
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"])["optimizer_step"] == 3  # stopped before the next step


def test_sigterm_mid_epoch_checkpoints_that_instant_and_resumes_identically(tiny_llama, toy_data, tmp_path, monkeypatch):
    """Without --checkpoint-every, a SIGTERM in the middle of the first epoch keeps that epoch's progress."""
    cfg = TrainConfig(task="rte", model="tiny", tokens=3, epochs=2, batch_size=2, lr=0.1, data_dir=str(toy_data),
                      compute_dtype="float32", max_length=128)  # fmt: skip
    train(cfg, tmp_path / "ref", backbone=tiny_llama, progress=False)
    calls = {"n": 0}
    real = step_mod.LOSSES["choices"]

    def preempted(scores, labels, weights=None):
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th batch of 6 in epoch 1: 3 optimiser steps done
            os.kill(os.getpid(), signal.SIGTERM)
        return real(scores, labels, weights)

    monkeypatch.setitem(step_mod.LOSSES, "choices", preempted)
    out = tmp_path / "cut"
    with stop_at_safe_points() as seen, pytest.raises(KeyboardInterrupt):
        train(cfg, out, backbone=tiny_llama, progress=False)
    assert seen.terminated
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    # the signal came inside the 4th step, which completes; the run stops before the 5th: mid-epoch progress is kept
    assert (state["epoch"], state["optimizer_step"]) == (0, 4)
    monkeypatch.setitem(step_mod.LOSSES, "choices", real)
    train(cfg, out, backbone=tiny_llama, progress=False, resume=True)
    assert torch.equal(
        load_file(str(out / "prompt.safetensors"))["prompt"], load_file(str(tmp_path / "ref" / "prompt.safetensors"))["prompt"]
    )


def test_sigterm_to_softprompt_train_exits_143_with_the_resume_message(tmp_path, tiny_model_dir, toy_data):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    cmd = [c for c in _train_cmd(tiny_model_dir, toy_data, out) if c not in ("--checkpoint-every", "1")]
    # before anything is written (the model loading): the message used to claim a checkpoint there
    code, err = _signalled(held_process(cmd, "model-load:1", tmp_path / "hold0", stderr=subprocess.PIPE), signal.SIGTERM)
    assert code == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"softprompt: interrupted (SIGTERM); nothing was written to {out}: rerun the same command to start"
    )
    assert not out.exists()  # the folder this command created is removed again
    proc = held_process(cmd, "train-batch:9", tmp_path / "hold", stderr=subprocess.PIPE)  # the 3rd batch of epoch 2
    code, err = _signalled(proc, signal.SIGTERM)
    assert code == 143
    assert err.strip().splitlines()[-1] == (
        f"softprompt: interrupted (SIGTERM); progress was checkpointed at step 8 in {out}: rerun with --resume to continue"
    )
    assert "Traceback" not in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_run(out).complete


def test_sigterm_to_softprompt_baselines_and_the_same_command_continues(tmp_path, tiny_model_dir, toy_data):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "softprompt.cli", "baselines", "--task", "rte", "--model", str(tiny_model_dir),
           "--data-dir", str(toy_data), "--methods", "majority", "lora", "--epochs", "60", "--batch-size", "2",
           "--compute-dtype", "float32", "--max-length", "128", "--quiet", "--out", str(out)]  # fmt: skip
    proc = held_process(cmd, "train-batch:15", tmp_path / "hold", stderr=subprocess.PIPE)  # LoRA's 15th batch
    code, err = _signalled(proc, signal.SIGTERM)
    assert code == 143, err
    assert err.strip().splitlines()[-1] == (
        f"softprompt: interrupted (SIGTERM); progress was kept in {out} (lora checkpointed at step 14): rerun the "
        "same command to continue"
    )
    assert json.loads((out / "lora" / "run.json").read_text())["status"] == "interrupted"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    saved = json.loads((out / "baselines.json").read_text())
    assert saved["status"] == "complete" and [row["method"] for row in saved["rows"]] == ["majority", "lora"]
    assert load_run(out / "lora").complete


# Every phase of a study a SIGTERM can land in, in the order one study meets them (each POINT:N counts in its own
# process): loading the model, a training step, a checkpoint's write, an evaluation, between two units, a baseline,
# between analyses, before the report, and after the last safe point.
STUDY_PHASES = (
    "model-load:1",
    "train-batch:4",
    "checkpoint-write:2",
    "evaluate-batch:2",  # a batch of rte-s1's evaluation (its step-0 point and references come from the score store)
    "unit:2",
    "baseline:1",
    "analysis:3",
    "report:1",
    "command-end:1",
)


def _kept(out) -> dict:
    """Every run directory under a study: (status, its prompt's bytes once complete, its checkpoint's step)."""
    from softprompt.runs.progress import checkpoint_step

    kept = {}
    for record in out.rglob("run.json"):
        status = json.loads(record.read_text())["status"]
        prompt = (record.parent / "prompt.safetensors").read_bytes() if status == "complete" else None
        kept[record.parent] = (status, prompt, checkpoint_step(record.parent / "checkpoint.safetensors"))
    return kept


def test_sigterm_at_every_phase_of_a_study_stops_it_and_nothing_kept_is_lost(tmp_path, tiny_model_dir, toy_data):
    """One study, signalled once in each phase: every time exit 143 and a last line saying what was kept (never exit 0,
    never a signal lost); complete runs stay byte-identical, checkpoints never go back, and the last re-run only
    finds finished work."""
    from tests.test_study import CONFIG

    cfg = tmp_path / "study.toml"
    cfg.write_text(
        CONFIG.format(model=tiny_model_dir, data=toy_data, methods='["majority", "no_prompt"]').replace(
            "seeds = [0, 1, 2]", "seeds = [0, 1]"
        )
    )
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "softprompt.cli", "study", str(cfg), "--quiet", "--out", str(out)]
    lines = []
    for i, point in enumerate(STUDY_PHASES):
        before = _kept(out)
        code, err = _signalled(held_process(cmd, point, tmp_path / f"hold{i}", stderr=subprocess.PIPE), signal.SIGTERM)
        assert code == 143 and "Traceback" not in err, (point, code, err[-3000:])
        lines.append(err.strip().splitlines()[-1])
        assert lines[-1].startswith("softprompt: interrupted (SIGTERM)"), (point, lines[-1])
        after = _kept(out)
        for run, (status, prompt, step) in before.items():
            if status == "complete":
                assert after[run][:2] == (status, prompt), (point, run)  # not retrained, not rewritten
            elif step is not None and after[run][0] != "complete":
                assert after[run][2] is not None and after[run][2] >= step, (point, run)  # progress kept
    assert lines[0] == f"softprompt: interrupted (SIGTERM); no run was started in {out} yet: rerun the same command to start"
    assert "rte-s0 checkpointed at step 3" in lines[1]
    assert lines[-1] == "softprompt: interrupted (SIGTERM) as the command finished; its output is complete"
    assert (out / "report.html").exists()
    r = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(json.loads((out / "results.json").read_text())["setup"]["actions"].values()) == {"skipped"}
