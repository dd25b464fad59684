"""`softprompt train` under `accelerate launch`: 2 CPU processes (gloo) give one process's result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softprompt.distributed import SINGLE, DataParallel, launched_in_parallel

ACCELERATE = Path(sys.executable).parent / "accelerate"


def _train_args(model_dir, data, out, batch_size):
    return [
        "-m", "softprompt.cli", "train", "--model", str(model_dir), "--task", "rte", "--data-dir", str(data),
        "--tokens", "3", "--epochs", "3", "--lr", "0.1", "--compute-dtype", "float32", "--max-length", "128",
        "--batch-size", str(batch_size), "--seed", "0", "--quiet", "--out", str(out),
    ]  # fmt: skip


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")
def test_two_processes_match_one(tmp_path, tiny_model_dir, toy_data):
    """Global batch 10 = 2 processes x 5: the same prompt, losses and metrics as 1 process x 10.

    12 training examples: each epoch's second global batch has 2 rows, so process 1 scores none
    (its gradient counts as zero); the 4 validation examples are sharded 2 + 2 and gathered.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = subprocess.run([sys.executable, *_train_args(tiny_model_dir, toy_data, one, 10)], env=_env(),
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r1.returncode == 0, r1.stderr[-3000:]
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]  # fmt: skip
    r2 = subprocess.run([*launch, *_train_args(tiny_model_dir, toy_data, two, 5)], env=_env(),
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-3000:]

    p1, p2 = load_file(one / "prompt.safetensors"), load_file(two / "prompt.safetensors")
    assert p1.keys() == p2.keys()
    for k in p1:
        torch.testing.assert_close(p2[k], p1[k], rtol=1e-4, atol=1e-5)  # Adam steps amplify float-order noise
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in m2] == [m["step"] for m in m1] == [2, 4, 6]
    for a, b in zip(m1, m2, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert (b["accuracy"], b["n"]) == (a["accuracy"], a["n"])
    info1, info2 = (json.loads((d / "run.json").read_text()) for d in (one, two))
    assert info2["status"] == "complete" and info2["processes"] == 2 and info1["processes"] == 1
    assert "worker" not in info2 and not (two / "checkpoint.safetensors").exists()
    assert info2["final"]["n"] == info1["final"]["n"] == 4
    # one summary (main process only), and the run directory holds one run's files
    assert r2.stdout.count("run saved to") == 1


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")
def test_sigterm_to_accelerate_launch_checkpoints_and_resumes(tmp_path, tiny_model_dir, toy_data):
    """Preemption of a data-parallel run: SIGTERM to the launcher reaches every process, which stop like on
    Ctrl-C (run.json `interrupted`, a checkpoint); `accelerate launch ... --resume` ends with one process's prompt."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = _train_args(tiny_model_dir, toy_data, one, 10)
    args[args.index("--epochs") + 1] = "15"
    r1 = subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-3000:]
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29518"]  # fmt: skip
    args = _train_args(tiny_model_dir, toy_data, two, 5)
    args[args.index("--epochs") + 1] = "15"
    hold = tmp_path / "hold"  # one process waits before its 5th batch (epoch 3's first), the other in that step's collective
    env = dict(_env(), SOFTPROMPT_TEST_HOLD="train-batch:5", SOFTPROMPT_TEST_HOLD_FILE=str(hold))
    proc = subprocess.Popen([*launch, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not hold.exists():
        time.sleep(0.05)
    assert hold.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode != 0
    # both stop together where they next agree (the losses' read after step 5, every step on CPUs) and checkpoint it
    assert f"softprompt: interrupted (SIGTERM); progress was checkpointed at step 5 in {two}: rerun with --resume" in err
    assert "Traceback" not in err
    assert json.loads((two / "run.json").read_text())["status"] == "interrupted"
    r2 = subprocess.run([*launch, *args, "--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-3000:]
    p1, p2 = load_file(one / "prompt.safetensors"), load_file(two / "prompt.safetensors")
    torch.testing.assert_close(p2["prompt"], p1["prompt"], rtol=1e-4, atol=1e-5)
    assert json.loads((two / "run.json").read_text())["status"] == "complete"


def test_single_process_is_inert():
    """Without a launcher nothing joins a process group and every helper is the identity."""
    assert not launched_in_parallel() and not SINGLE.active and SINGLE.is_main
    items = list(range(7))
    assert SINGLE.shard(items) == items and SINGLE.sum([1.5, 2.0]) == [1.5, 2.0] and SINGLE.gather("x") == ["x"]
    p = torch.nn.Parameter(torch.ones(2))
    SINGLE.sum_gradients([p])
    assert p.grad is None


def test_shards_cover_every_example_once():
    items = list(range(11))
    shards = [DataParallel(rank=r, world=3).shard(items) for r in range(3)]
    assert sorted(sum(shards, [])) == items and [len(s) for s in shards] == [4, 4, 3]


def test_resume_with_another_process_count_is_refused(tmp_path, tiny_llama, toy_data, monkeypatch):
    from softprompt.config import TrainConfig
    from softprompt.errors import SoftPromptError
    from softprompt.training import train

    cfg = TrainConfig(task="rte", model="tiny", tokens=3, epochs=2, batch_size=4, lr=0.1, compute_dtype="float32",
                      data_dir=str(toy_data), max_length=128, checkpoint_every=1)  # fmt: skip
    out = tmp_path / "run"
    calls = {"n": 0}
    import softprompt.training.recipe as recipe_mod
    import softprompt.training.step as step_mod

    real = step_mod.LOSSES["choices"]

    def interrupt_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setitem(step_mod.LOSSES, "choices", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, backbone=tiny_llama, progress=False)
    monkeypatch.setitem(step_mod.LOSSES, "choices", real)

    class PretendTwo(DataParallel):  # rank 0 of 2, without a process group: the check comes first
        def barrier(self) -> None:
            pass

        def sum(self, values):  # the one other process contributes nothing (it claims no lock)
            return values

        def broadcast_(self, params) -> None:
            pass

    monkeypatch.setattr(recipe_mod, "setup_data_parallel", lambda device: PretendTwo(rank=0, world=2))
    with pytest.raises(SoftPromptError, match="written by 1 data-parallel process.*this is 2"):
        train(cfg, out, resume=True, backbone=tiny_llama, progress=False)
