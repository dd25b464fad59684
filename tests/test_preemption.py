"""SIGTERM (what Slurm, Kubernetes and cloud preemption send) behaves like Ctrl-C in `train` and `baselines`:
a checkpoint at the last consistent instant, run.json `interrupted`, the message saying how to continue, exit 143.
(`study` and random instants: tests/test_reliability.py; `accelerate launch`: tests/test_data_parallel.py.)"""

from __future__ import annotations

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
from softprompt.preemption import EXIT_SIGINT, EXIT_SIGTERM, sigterm_as_interrupt
from softprompt.runs.directory import load_run
from softprompt.training import train
from tests.test_reliability import _train_cmd


def test_sigterm_raises_keyboard_interrupt_once_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt() as seen:
        assert seen.exit_code == EXIT_SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode boundary
        assert seen.terminated and seen.exit_code == EXIT_SIGTERM == 143
        os.kill(os.getpid(), signal.SIGTERM)  # a repeat while stopping is ignored: the checkpoint completes
        time.sleep(0.1)
    assert signal.getsignal(signal.SIGTERM) is before


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
    with sigterm_as_interrupt() as seen, pytest.raises(KeyboardInterrupt):
        train(cfg, out, backbone=tiny_llama, progress=False)
    assert seen.terminated
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    assert (state["epoch"], state["optimizer_step"]) == (0, 3)  # mid-epoch progress was not lost
    monkeypatch.setitem(step_mod.LOSSES, "choices", real)
    train(cfg, out, backbone=tiny_llama, progress=False, resume=True)
    assert torch.equal(
        load_file(str(out / "prompt.safetensors"))["prompt"], load_file(str(tmp_path / "ref" / "prompt.safetensors"))["prompt"]
    )


def _wait_for(path, proc, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not (path.exists() and path.read_text().strip()):
        time.sleep(0.02)


def test_sigterm_to_softprompt_train_exits_143_with_the_resume_message(tmp_path, tiny_model_dir, toy_data):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    cmd = [c for c in _train_cmd(tiny_model_dir, toy_data, out) if c not in ("--checkpoint-every", "1")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "metrics.jsonl", proc)  # an epoch is done: mid-training
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 143
    assert (
        err.strip().splitlines()[-1]
        == "softprompt: interrupted (SIGTERM); progress was checkpointed: rerun with --resume to continue"
    )
    assert "Traceback" not in err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert (out / "checkpoint.safetensors").exists()
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_run(out).complete


def test_sigterm_to_softprompt_baselines_and_the_same_command_continues(tmp_path, tiny_model_dir, toy_data):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "softprompt.cli", "baselines", "--task", "rte", "--model", str(tiny_model_dir),
           "--data-dir", str(toy_data), "--methods", "majority", "lora", "--epochs", "60", "--batch-size", "2",
           "--compute-dtype", "float32", "--max-length", "128", "--quiet", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "lora" / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 143, err
    assert (
        err.strip().splitlines()[-1]
        == "softprompt: interrupted (SIGTERM); progress was checkpointed: rerun the same command to continue"
    )
    assert json.loads((out / "lora" / "run.json").read_text())["status"] == "interrupted"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    saved = json.loads((out / "baselines.json").read_text())
    assert saved["status"] == "complete" and [row["method"] for row in saved["rows"]] == ["majority", "lora"]
    assert load_run(out / "lora").complete
