"""Baselines on a tiny model: majority, no prompt, English prompt, full fine-tuning and LoRA."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import softprompt.training.baseline_runs as baseline_runs_mod
from softprompt.config import TrainConfig
from softprompt.errors import SoftPromptError
from softprompt.runs.baselines import METHODS
from softprompt.runs.directory import load_run
from softprompt.training.baseline_runs import run_baselines

# tiny llama (conftest): hidden 32, intermediate 64, 2 layers, 4 heads of 8, 2 kv heads.
# LoRA r=8 on every linear layer but the head: r * (in + out) per layer.
LORA_R8 = 2 * 8 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + 3 * (32 + 64))


def _run(backbone, data, out, *, lr=None, **kw):
    """run_baselines on the tiny model: TrainConfig fields in `kw` go to the shared config, the rest to the call."""
    settings = dict(
        task="rte", model="tiny", max_train=None, epochs=2, seed=0, data_dir=str(data), compute_dtype="float32", batch_size=4
    )
    settings.update({k: kw.pop(k) for k in list(kw) if k in TrainConfig.__dataclass_fields__})
    overrides = {m: {"lr": v} for m, v in (lr or {}).items()}
    return run_baselines(TrainConfig(**settings), out, backbone=backbone, overrides=overrides, **kw)


@pytest.fixture
def copies(tiny_llama):
    """A backbone factory that keeps the copies it hands out, to inspect them after training."""
    made = []

    def factory():
        made.append(copy.deepcopy(tiny_llama))
        return made[-1]

    factory.made = made
    return factory


def test_all_five_baselines(tiny_llama, toy_data, tmp_path, copies):
    before = {n: p.clone() for n, p in tiny_llama.model.named_parameters()}
    total = sum(p.numel() for p in tiny_llama.model.parameters())
    rows = _run(tiny_llama, toy_data, tmp_path / "b", backbone_factory=copies, lr={"finetune": 1e-2})
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == list(METHODS)
    assert {m: by[m]["trainable_parameters"] for m in METHODS} == {
        "majority": 0,
        "no_prompt": 0,
        "english_prompt": 0,
        "finetune": total,
        "lora": LORA_R8,
    }
    assert by["lora"]["total_parameters"] == total + LORA_R8
    assert all(r["n"] == 4 and 0 <= r["accuracy"] <= 1 and 0 <= r["f1_macro"] <= 1 for r in rows)
    # toy data: 6/6 train labels -> the lower label index wins the tie; half of validation
    assert by["majority"]["accuracy"] == 0.5 and by["majority"]["majority_label"] == "True"
    assert by["english_prompt"]["hard_prompt"] == "Does the hypothesis entail, or not entail the premise?"
    saved = json.loads((tmp_path / "b" / "baselines.json").read_text())
    assert saved["status"] == "complete" and saved["rows"] == rows and saved["task"] == "rte"
    # the shared backbone is untouched: no weight changed, no adapter injected
    assert {n for n, _ in tiny_llama.model.named_parameters()} == set(before)
    for n, p in tiny_llama.model.named_parameters():
        assert torch.equal(p, before[n]) and not p.requires_grad, n

    # finetune: a normal run dir whose saved weights differ from the original model
    ft_run = load_run(tmp_path / "b" / "finetune")
    assert ft_run.complete and ft_run.method == "finetune" and ft_run.record.parameters.trainable == total
    weights = load_file(str(tmp_path / "b" / "finetune" / "model.safetensors"))
    changed = [n for n, w in weights.items() if not torch.equal(w, before[n])]
    assert len(changed) == len(weights)

    # LoRA: only lora_ parameters trained, in its own copy; base weights of that copy unchanged
    lora_model = copies.made[1].model
    trained = {n for n, p in lora_model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert sum(p.numel() for n, p in lora_model.named_parameters() if n in trained) == LORA_R8
    for n, p in lora_model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, before[n.replace(".base_layer", "")]), n
    adapter = load_file(str(tmp_path / "b" / "lora" / "adapter.safetensors"))
    assert set(adapter) == trained and sum(t.numel() for t in adapter.values()) == LORA_R8
    assert any(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)  # B starts at zero
    assert load_run(tmp_path / "b" / "lora").complete


def test_untrained_baselines_match_evaluator(tiny_llama, toy_data, tmp_path):
    from softprompt.evaluate import Evaluator

    rows = _run(tiny_llama, toy_data, tmp_path / "b", methods=["no_prompt", "english_prompt"])
    ev = Evaluator(tiny_llama, data_dir=toy_data, compute_dtype=torch.float32)
    assert rows[0]["accuracy"] == ev.evaluate("rte", None).accuracy
    desc = "Does the hypothesis entail, or not entail the premise?"
    assert rows[1]["f1_macro"] == ev.evaluate("rte", None, hard_prompt=desc).f1_macro
    assert not (tmp_path / "b" / "finetune").exists()


def test_majority_needs_no_model(toy_data, tmp_path, monkeypatch):
    monkeypatch.setattr(baseline_runs_mod, "load_backbone", lambda *a, **k: pytest.fail("loaded a model"))
    cfg = TrainConfig(task="rte", model="no-such-model", data_dir=str(toy_data), max_train=3, seed=1)
    rows = run_baselines(cfg, tmp_path / "b", methods=["majority"])
    assert rows[0]["method"] == "majority" and rows[0]["train_examples"] == 3 and rows[0]["total_parameters"] is None


def test_completed_trained_run_is_reused_and_config_change_refused(tiny_llama, toy_data, tmp_path, monkeypatch):
    first = _run(tiny_llama, toy_data, tmp_path / "b", methods=["lora"], epochs=1)
    monkeypatch.setattr(baseline_runs_mod, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = _run(tiny_llama, toy_data, tmp_path / "b", methods=["lora"], epochs=1)
    assert again[0]["reused"] and again[0]["accuracy"] == first[0]["accuracy"]
    assert again[0]["trainable_parameters"] == LORA_R8
    with pytest.raises(SoftPromptError, match=r"different config \(changed: \['epochs'\]\)"):
        _run(tiny_llama, toy_data, tmp_path / "b", methods=["lora"], epochs=2)


def test_bad_arguments(tiny_llama, toy_data, tmp_path):
    with pytest.raises(SoftPromptError, match="unknown baseline 'zero_shot'"):
        _run(tiny_llama, toy_data, tmp_path / "b", methods=["majority", "zero_shot"])
    with pytest.raises(SoftPromptError, match="lr given for"):
        _run(tiny_llama, toy_data, tmp_path / "b", lr={"prompt": 0.1})
    with pytest.raises(SoftPromptError, match="epochs must be at least 1"):
        _run(tiny_llama, toy_data, tmp_path / "b", epochs=0)


def test_cli_prints_one_table_with_five_rows(tiny_llama, toy_data, tmp_path, monkeypatch, capsys):
    import softprompt.model.backbones as backbones_mod
    from softprompt.cli import build_parser, main

    assert build_parser().parse_args(["baselines", "--task", "rte"]).methods == list(METHODS)  # the CLI's default: all
    import softprompt.training.baseline_runs as baseline_runs_mod

    monkeypatch.setattr(backbones_mod, "load_backbone", lambda *a, **k: tiny_llama)
    monkeypatch.setattr(baseline_runs_mod, "load_backbone", lambda *a, **k: tiny_llama)  # loaded once --out is locked
    argv = ["baselines", "--task", "rte", "--model", "tiny", "--max-train", "8", "--epochs", "1", "--batch-size", "4"]
    argv += ["--data-dir", str(toy_data), "--compute-dtype", "float32", "--out", str(tmp_path / "b"), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    calibrated = ["calibrated", "accuracy", "calibrated", "f1_macro"]
    assert lines[header].split() == ["method", "accuracy", "f1_macro", *calibrated, "trainable", "parameters"]
    body = lines[header + 2 : header + 7]
    assert [line.split("  ")[0].strip() for line in body] == ["majority", "no prompt", "english prompt", "finetune", "lora"]
    assert body[0].split()[-1] == "0" and body[4].split()[-1] == f"{LORA_R8:,}"
    assert "baselines.json" in out


@pytest.mark.integration
def test_untrained_baselines_on_smollm(smollm, tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "custom_task" / "task.toml"
    rows = run_baselines(
        TrainConfig(task=str(example)), tmp_path / "b", backbone=smollm, methods=["majority", "no_prompt", "english_prompt"]
    )
    assert [r["n"] for r in rows] == [8, 8, 8]
    assert rows[1]["total_parameters"] == sum(p.numel() for p in smollm.model.parameters())
    # a 135M instruct model reads obvious product-review sentiment well above chance
    assert rows[1]["accuracy"] >= 0.75 and rows[2]["accuracy"] >= 0.75
