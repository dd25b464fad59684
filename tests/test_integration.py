"""Integration on the real offline model (smollm2-135m), a handful of examples each."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from softprompt.config import TrainConfig
from softprompt.peft_interop import export_peft, import_peft
from softprompt.runs.directory import load_run
from softprompt.scoring import full_logits
from softprompt.training import train

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smol_run(smollm, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rte"
    cfg = TrainConfig(
        task="rte",
        model="smollm2-135m",
        tokens=8,
        epochs=3,
        batch_size=4,
        lr=0.05,
        max_train=8,
        max_eval=8,
        max_length=160,
        seed=0,
        data_dir=str(data_dir),
    )
    res = train(cfg, out, backbone=smollm, progress=False)
    return out, res


def test_loss_falls_on_real_model(smol_run):
    _, res = smol_run
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0], losses


def test_artifacts_round_trip(smol_run, smollm):
    out, res = smol_run
    run = load_run(out)
    assert run.record.model.hidden_size == 576 and run.record.prompt.dim == 576
    assert run.record.prompt.init.text == "Does the hypothesis entail, or not entail the premise?"
    assert len(run.record.prompt.init_tokens) == 8
    assert run.record.versions["torch"].startswith("2.")
    prompt = run.prompt()
    prompt.check_model(smollm.hidden_size)
    assert prompt.weight.shape == (8, 576)


def test_peft_export_gives_identical_logits(smol_run, smollm, tmp_path):
    from peft import PeftModel

    out, _ = smol_run
    adapter = export_peft(out, tmp_path / "adapter")
    prompt = load_run(out).prompt().weight.detach()
    ids = smollm.tokenizer("The cat sat on the mat.\nQuestion: True or False?\nAnswer:", return_tensors="pt")["input_ids"]
    ours = full_logits(smollm.model, prompt, ids)
    peft_model = PeftModel.from_pretrained(smollm.model, str(adapter))
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    # and back: importing the adapter gives a run every command accepts, with the same prompt
    back = import_peft(adapter, tmp_path / "imported", task="rte")
    assert torch.equal(load_run(back).prompt().weight, prompt)
    # and scored as the original: the adapter carried its layout (chat, 160 tokens a row), so the same 8 examples
    # give the same choice log-likelihoods (issue 37: 0.25 -> 0.625 before, in another layout)
    from softprompt.evaluate import evaluator_for_run

    imported = load_run(back)
    assert imported.prompt_format == load_run(out).prompt_format == "chat" and imported.config["max_length"] == 160
    scores = [
        evaluator_for_run(run, smollm).evaluate("rte", run.prompt().weight.detach(), limit=8) for run in (load_run(out), imported)
    ]
    assert scores[0].scores.logprobs == scores[1].scores.logprobs and scores[0].accuracy == scores[1].accuracy
    # the adapter alone names a base PEFT can load (the dequantized copy in softprompt's cache), same logits
    from peft import AutoPeftModelForCausalLM

    auto = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    with torch.no_grad():
        again = auto(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(again, ours, atol=1e-4, rtol=1e-4)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprompt.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_bad_task_is_one_line_error():
    r = _cli("train", "--task", "nope", "--out", "/tmp/never")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown task 'nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_data_file_is_one_line_error(tmp_path):
    (tmp_path / "rte").mkdir()
    r = _cli("train", "--task", "rte", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "rte/train.jsonl not found" in r.stderr


def test_cli_eval_and_generate(smol_run):
    out, _ = smol_run
    r = _cli("eval", "--run", str(out), "--no-prompt", "--max-eval", "4", "--max-length", "160", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "soft" in r.stdout and "no prompt" in r.stdout
    r = _cli("generate", "The capital of France is", "--run", str(out), "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is") and len(r.stdout.strip()) > len("The capital of France is")
