"""The baselines at prompt speed (issue 28): bench/train_vs_peft.py's softprompt-lora / softprompt-finetune arms
(softprompt's own training loop for those methods) against peft-lora* (PEFT's LoRA recipe) and hf-finetune* (a plain
HF full-fine-tuning loop), end to end on CPU with a tiny model of SmolLM2's family and toy SST-2 data. No timing is
asserted: that the arms run, train what they should (the same parameters on both sides of a method, the adapters
only for LoRA), lower their loss, and that the results and the GPU suite's baselines cell carry what the tables read."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import BENCH, bench_importable
from tests.test_bench_gpu_dryrun import write_carry

LORA = ("softprompt-lora", "peft-lora", "peft-lora-bf16-grouped")
FINETUNE = ("softprompt-finetune", "hf-finetune", "hf-finetune-bf16")


@pytest.fixture(scope="module")
def tvp():
    with bench_importable():
        import train_vs_peft

        yield train_vs_peft


@pytest.fixture(scope="module")
def carry(tmp_path_factory, tiny_tokenizer) -> Path:
    """A bench/carry-shaped folder (tokenizer/, data/rte, data/sst2), as the GPU suite's dry run needs it."""
    return write_carry(tmp_path_factory.mktemp("carry"), tiny_tokenizer)


def _argv(carry: Path, *extra: str) -> list[str]:
    common = ["--cpu-dry-run", "--shape", "smollm2-135m", "--tokenizer", str(carry / "tokenizer")]
    return [*common, "--data-dir", str(carry / "data"), "--task", "sst2", *extra]


def test_baseline_arms_end_to_end(tvp, carry, tmp_path):
    out = tmp_path / "baselines.json"
    arms = [*LORA, *FINETUNE]
    tvp.main([*_argv(carry, "--warmup-steps", "1", "--val", "4", "--json", str(out)), "--arms", ",".join(arms)])
    info = json.loads(out.read_text())
    rows = {r["arm"]: r for r in info["results"]}
    assert list(rows) == arms and set(info["setup_s"]) == set(arms)
    n_model = info["model"]["parameters"]
    # both sides of a method train the same numbers: LoRA's adapters (r=8 on every linear layer but the head), or all
    assert len({rows[a]["trainable params"] for a in LORA}) == 1 and 0 < rows[LORA[0]]["trainable params"] < n_model / 2
    assert {rows[a]["trainable params"] for a in FINETUNE} == {n_model}
    for arm, r in rows.items():
        assert r["examples/s"] > 0 and r["model GFLOP/s"] > 0, arm
        assert r["total s (with warm-up)"] == pytest.approx(info["warmup_s"][arm] + sum(info["epoch_times"][arm]))
        assert r["total s (with warm-up)"] > r["epoch s (median)"] > 0, arm  # the warm-up step counts in the total
        assert len(info["train_loss"][arm]) == 1 and math.isfinite(info["train_loss"][arm][0]), arm
        assert 0 <= info["accuracy"][arm] <= 1, arm
    assert "untrained model (no prompt)" in info["accuracy"]  # no prompt arm ran: the reference is the bare model
    sb = info["speedup_baselines"]
    assert set(sb) == {"lora", "finetune"}
    lora = sb["lora"]["examples/s vs best recipe"]
    assert lora["vs"] == "peft-lora"  # the only plain LoRA recipe that ran (-grouped is a tuned variant)
    assert lora["ratio"] == pytest.approx(rows["softprompt-lora"]["examples/s"] / rows["peft-lora"]["examples/s"])
    best = max(("hf-finetune", "hf-finetune-bf16"), key=lambda a: rows[a]["examples/s"])
    assert sb["finetune"]["examples/s vs best recipe"]["vs"] == best
    fastest = min(LORA[1:], key=lambda a: rows[a]["total s (with warm-up)"])
    total = sb["lora"]["total time vs fastest any variant"]
    assert total["vs"] == fastest
    assert total["ratio"] == pytest.approx(
        rows[fastest]["total s (with warm-up)"] / rows["softprompt-lora"]["total s (with warm-up)"]
    )


def _arms(tvp, carry, names, **lrs):
    from softprompt.tasks import get_task

    extra = [x for k, v in lrs.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    args = tvp.parse_args(_argv(carry, *extra))
    task = get_task("sst2")
    examples = task.load("train", args.data_dir, limit=args.train, seed=args.seed)
    return [tvp.build_arm(n, None, task, examples, args, None, torch.device("cpu")) for n in names], examples


def _adapters(arm) -> dict[str, torch.Tensor]:
    """LoRA's tensors by the module path inside the causal LM (PEFT's wrapper prefix removed)."""
    return {n.removeprefix("base_model.model."): t for n, t in arm.learned().items()}


def test_lora_arms_start_from_the_same_adapters(tvp, carry):
    """The same LoRA config on both sides: the same adapter tensors (names, shapes) and, seeded alike, the same init."""
    (own, peft, lm), _ = _arms(tvp, carry, ["softprompt-lora", "peft-lora", "softprompt-lora-lm"])
    a, b = _adapters(own), _adapters(peft)
    # -lm: the recipe's objective and schedule on softprompt's loop, the same adapters
    assert (lm.step.cfg.loss, lm.step.cfg.warmup, lm.step.cfg.weight_decay) == ("lm", 0.0, 0.01)
    assert (own.step.cfg.loss, own.step.cfg.warmup) == ("choices", 0.06)
    assert all(torch.equal(t, a[n]) for n, t in _adapters(lm).items())
    assert a.keys() == b.keys() and len(a) > 0
    assert not any("lm_head" in n for n in a)  # every linear layer but the head
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in a} >= {"q_proj", "o_proj", "gate_proj", "down_proj"}
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert all(float(t.abs().max()) == 0 for n, t in a.items() if "lora_B" in n)  # the adapters start as no change


@pytest.mark.parametrize(
    ("names", "lrs"),
    [(("softprompt-lora", "peft-lora"), {"lora_lr": 3e-2}), (("softprompt-finetune", "hf-finetune"), {"finetune_lr": 3e-3})],
)
def test_baseline_arms_lower_their_loss_and_train_only_their_weights(tvp, carry, names, lrs):
    """Five steps on one batch: every arm's loss falls; LoRA leaves the model's own weights as they were, fine-tuning
    changes them."""
    arms, examples = _arms(tvp, carry, names, **lrs)
    idx = list(range(4))
    for arm in arms:
        model = arm.bb.model
        base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
        for _ in range(5):
            arm.run([idx])
        losses = tvp.train_losses(arm)
        assert len(losses) == 5 and losses[-1] < losses[0], (arm.name, losses)
        after = {n: p for n, p in model.named_parameters() if "lora_" not in n}
        changed = [n for n in base if not torch.equal(base[n], after[n])]
        if arm.method == "lora":
            assert changed == [], arm.name
        else:
            assert len(changed) == len(base), arm.name


def test_gpu_suite_baselines_cell_dry_run(carry, tmp_path):
    """The suite's baselines cell on CPU: its arms ran, and the merged tables compare each method with its recipes."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), CARRY=str(carry), PYTHON=sys.executable)
    cell = "train-smollm2-135m-sst2-b8-baselines"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_suite.sh"), "--cpu-dry-run", cell],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    merged = json.loads((out / "gpu_suite.json").read_text())
    res = merged["cells"][cell]["result"]
    assert merged["cells"][cell]["status"]["state"] == "ok"
    arms = [r["arm"] for r in res["results"]]
    assert arms[:2] == ["softprompt-lora", "softprompt-finetune"] and {"peft-lora", "hf-finetune"} <= set(arms)
    assert set(res["speedup_baselines"]) == {"lora", "finetune"}
    summary = (out / "summary.md").read_text()
    assert "Baselines" in summary and "| smollm2-135m | sst2 | 4 (dry run of b8) | lora | softprompt-lora |" in summary
