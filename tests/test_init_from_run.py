"""Prompt-transfer initialisation (`--init run:PATH`): the new run starts exactly at the source's trained prompt,
a source of another length is refused before anything is written, run.json records the source, and a changed
source prompt makes the run a conflict (so a study retrains it)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

import softprompt.training.step as step_mod
from softprompt.config import TrainConfig
from softprompt.errors import SoftPromptError
from softprompt.io import read_json, write_json
from softprompt.runs.directory import load_run
from softprompt.runs.state import COMPLETE, CONFLICT, run_state
from softprompt.training import TrainingLoop, train


def _cfg(data, **kw) -> TrainConfig:
    base = dict(task="rte", model="tiny", tokens=3, epochs=1, batch_size=4, lr=0.1, data_dir=str(data), compute_dtype="float32")
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def source_run(tiny_llama, toy_data, tmp_path):
    out = tmp_path / "source"
    train(_cfg(toy_data, epochs=2, seed=3), out, backbone=tiny_llama, progress=False, baselines=False)
    return out


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("which", ["last", "best"])
def test_run_init_starts_exactly_at_the_source_prompt(tiny_llama, toy_data, tmp_path, source_run, monkeypatch, which):
    file = source_run / ("prompt.safetensors" if which == "last" else "best.safetensors")
    source = load_file(str(file))["prompt"]
    seen = []
    real = step_mod.batch_choice_scores

    def spy(model, prompt, batch, **kw):
        seen.append(prompt.detach().clone())  # the prompt matrix fed to the model, before any optimiser step at first
        return real(model, prompt, batch, **kw)

    monkeypatch.setattr(step_mod, "batch_choice_scores", spy)
    init = f"run:{source_run}" + ("@best" if which == "best" else "")
    out = tmp_path / "target"
    train(_cfg(toy_data, init=init), out, backbone=tiny_llama, progress=False, baselines=False)
    assert torch.equal(seen[0], source)  # bit-equal first-step input
    assert not torch.equal(seen[-1], source)  # and it trained away from it
    saved = load_file(str(out / "prompt.safetensors"))
    assert torch.equal(saved["initial_prompt"], source)
    record = load_run(out).record
    assert record.prompt.source.to_dict() == {
        "run": str(source_run),
        "file": file.name,
        "sha256": _sha(file),
        "task": "rte",
        "seed": 3,
        "model": "tiny",
    }
    assert record.prompt.init.method == "run" and record.config["init"] == init


def test_source_of_another_length_is_refused_before_training(tiny_llama, toy_data, tmp_path, source_run):
    out = tmp_path / "target"
    with pytest.raises(SoftPromptError, match=r"the source prompt has 3 tokens but --tokens is 5") as e:
        train(_cfg(toy_data, tokens=5, init=f"run:{source_run}"), out, backbone=tiny_llama, progress=False)
    assert "\n" not in str(e.value)
    assert not out.exists()  # nothing written, nothing loaded


def test_cli_init_run_and_its_errors(tmp_path, tiny_model_dir, toy_data, capsys):
    """`--init` takes run:PATH on the command line (no longer a fixed choice list); bad values are one line."""
    from softprompt.cli import main

    common = ["train", "--model", str(tiny_model_dir), "--task", "rte", "--data-dir", str(toy_data), "--epochs", "1"]
    common += ["--batch-size", "4", "--tokens", "3", "--compute-dtype", "float32", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--init", f"run:{tmp_path / 'a'}", "--out", str(tmp_path / "b")]) == 0
    assert load_run(tmp_path / "b").record.prompt.source.run == str(tmp_path / "a")
    capsys.readouterr()
    for init, message in [
        (f"run:{tmp_path / 'missing'}", f"init run:{tmp_path / 'missing'}: run directory {tmp_path / 'missing'} does not exist"),
        ("task:rte", "init 'task:rte' names a study's prompt"),
        ("run:", "unknown init 'run:'"),
    ]:
        assert main([*common, "--init", init, "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "c").exists()
    # a source trained on another model (here the same folder named otherwise) is said, not taken silently
    other = [*common[:2], str(tiny_model_dir) + "/", *common[3:]]
    assert main([*other, "--init", f"run:{tmp_path / 'a'}", "--out", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().err.strip() == (
        f"softprompt: warning: init run:{tmp_path / 'a'}: its prompt was trained on model '{tiny_model_dir}'; this run "
        f"trains it on '{tiny_model_dir}/'"
    )


def test_changed_source_prompt_makes_the_run_a_conflict(tiny_llama, toy_data, tmp_path, source_run):
    cfg = _cfg(toy_data, init=f"run:{source_run}")
    train(cfg, tmp_path / "target", backbone=tiny_llama, progress=False, baselines=False)
    assert run_state(tmp_path / "target", cfg).kind == COMPLETE
    train(_cfg(toy_data, epochs=1, seed=4), source_run, overwrite=True, backbone=tiny_llama, progress=False, baselines=False)
    state = run_state(tmp_path / "target", cfg)
    assert state.kind == CONFLICT and state.changed == ("init source",)
    with pytest.raises(SoftPromptError, match=r"--resume with a different config \(changed: \['init source'\]\)"):
        train(cfg, tmp_path / "target", resume=True, backbone=tiny_llama, progress=False)


def test_source_of_another_width_is_refused_before_training(tiny_llama, toy_data, tmp_path, source_run, monkeypatch):
    from softprompt.model.prompt import PromptInit, SoftPrompt

    SoftPrompt(torch.zeros(3, 16), PromptInit("random")).save(source_run / "prompt.safetensors")  # another model's width
    record = read_json(source_run / "run.json")  # made consistent with it: a run of a model 16 wide
    record["prompt"]["dim"] = 16
    record["artifacts"]["prompt.safetensors"] = {"sha256": _sha(source_run / "prompt.safetensors"), "shape": [3, 16]}
    write_json(source_run / "run.json", record)
    steps = []
    monkeypatch.setattr(TrainingLoop, "fit", lambda self: steps.append(1))
    with pytest.raises(
        SoftPromptError, match=r"^init run:.*: the source prompt has hidden size 16 but the model's hidden size is 32"
    ):
        train(_cfg(toy_data, init=f"run:{source_run}"), tmp_path / "target", backbone=tiny_llama, progress=False)
    assert not steps
