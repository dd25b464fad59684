"""Runs are scored as they were trained: every command that reads a run takes its model, prompt format, row length and
dtypes from run.json (flags that disagree are refused or warned about), and an exported adapter carries them, so
export -> import -> eval gives the original run's scores (issue 37)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from softprompt.cli import main
from softprompt.errors import SoftPromptError
from softprompt.peft_interop import export_peft, import_peft
from softprompt.runs.directory import load_run
from softprompt.training import train
from tests.conftest import tiny_config

CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"
)


@pytest.fixture
def chat_model(tmp_path, tiny_llama) -> Path:
    """The tiny llama saved with a chat template (so `auto` resolves to chat)."""
    d = tmp_path / "chat-model"
    tiny_llama.model.save_pretrained(d)
    tiny_llama.tokenizer.chat_template = CHAT_TEMPLATE
    try:
        tiny_llama.tokenizer.save_pretrained(d)
    finally:
        tiny_llama.tokenizer.chat_template = None
    return d


@pytest.fixture
def runs(tmp_path, chat_model, tiny_model_dir, toy_data) -> dict[str, Path]:
    """A chat-format run with rows cut at 44 tokens (its inputs truncated), and a plain one, each naming its model."""
    from softprompt.model.backbones import load_backbone

    out = {}
    for name, model, extra in (("chat", chat_model, {"max_length": 44}), ("plain", tiny_model_dir, {})):
        cfg = tiny_config(toy_data, model=str(model), **extra)
        train(cfg, tmp_path / name, backbone=load_backbone(str(model)), progress=False)
        out[name] = tmp_path / name
    assert load_run(out["chat"]).prompt_format == "chat" and load_run(out["plain"]).prompt_format == "plain"
    return out


def _table(capsys) -> list[list[str]]:
    """The numbers of each row of the table a command printed (its label dropped)."""
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if re.search(r"\d\.\d{4}", line)]
    return [[v for v in row if re.fullmatch(r"\d\.\d{4}", v)] for row in rows]


def _logprobs(run: Path, backbone, toy_data) -> list[list[float]]:
    """The choice log-likelihoods of the run's prompt on the toy validation split, in the run's own settings."""
    from softprompt.evaluate import evaluator_for
    from softprompt.runs.settings import run_settings

    loaded = load_run(run)
    s = run_settings(loaded)
    cfg = tiny_config(toy_data, model=s["model"], max_length=s["max_length"], compute_dtype=s["compute_dtype"])
    evaluator = evaluator_for(cfg, backbone, prompt_format=s["prompt_format"])
    res = evaluator.evaluate("rte", loaded.prompt().weight.detach())
    return res.scores.logprobs


# ----------------------------------------------------------------------------- adapters keep their layout


def test_export_import_eval_gives_the_original_scores(runs, tmp_path, toy_data, capsys):
    """The imported run was scored in another layout (its prompt format, max length and dtypes were null in its
    run.json): now the adapter carries them and import takes them back, so eval gives the same numbers."""
    from softprompt.model.backbones import load_backbone

    original = runs["chat"]
    adapter = export_peft(original, tmp_path / "adapter")
    readme = (adapter / "README.md").read_text()
    assert "prompt format: chat" in readme and "rows of at most 44 tokens" in readme
    capsys.readouterr()
    imported = import_peft(adapter, tmp_path / "imported")  # no --task, no --model: the adapter says
    assert capsys.readouterr().err == ""  # nothing assumed
    record = json.loads((imported / "run.json").read_text())
    cfg, settings = record["config"], load_run(original).config
    assert {k: cfg[k] for k in ("task", "model", "prompt_format", "max_length", "dtype")} == {
        "task": "rte", "model": settings["model"], "prompt_format": "chat", "max_length": 44, "dtype": "float32",
    }  # fmt: skip
    resolved = {k: record["resolved"][k] for k in ("prompt_format", "compute_dtype")}
    assert cfg["compute_dtype"] == "float32" and resolved == {"prompt_format": "chat", "compute_dtype": "float32"}
    # the same numbers through the command line, the run's own settings taken from run.json (no --model)
    tables = []
    for run in (original, imported):
        assert main(["eval", "--run", str(run), "--no-prompt", "--data-dir", str(toy_data), "--quiet"]) == 0
        tables.append(_table(capsys))
    assert tables[0] == tables[1] and len(tables[0]) == 2
    # and to the last digit: the per-example choice log-likelihoods agree; the layout before (plain, 512) does not
    backbone = load_backbone(settings["model"])
    assert _logprobs(original, backbone, toy_data) == _logprobs(imported, backbone, toy_data)
    before = dict(cfg, prompt_format="plain", max_length=512)
    (imported / "run.json").write_text(json.dumps({**record, "config": before, "resolved": {}}))
    assert _logprobs(original, backbone, toy_data) != _logprobs(imported, backbone, toy_data)


def test_a_foreign_adapter_is_imported_with_what_is_given_or_assumed_and_said(runs, tmp_path, capsys):
    """An adapter without softprompt's settings (another exporter's): the import's flags set them; the rest is assumed
    (plain, 512, float32, auto) with a warning naming each. A flag against what an export carries wins, with a warning."""
    from safetensors.torch import save_file

    adapter = export_peft(runs["plain"], tmp_path / "adapter")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    weight = load_run(runs["plain"]).prompt().weight.detach()
    save_file({"prompt_embeddings": weight.contiguous()}, str(foreign / "adapter_model.safetensors"))  # no metadata
    capsys.readouterr()
    run = load_run(import_peft(foreign, tmp_path / "a", task="rte", settings={"max_length": 128}))
    err = capsys.readouterr().err.strip()
    assert err == (
        f"softprompt: warning: {foreign} carries no softprompt settings (an adapter from elsewhere): assumed prompt_format "
        "plain, dtype float32, compute_dtype auto; pass --prompt-format, --max-length, --dtype or --compute-dtype to "
        "import-peft to set them"
    )
    assert {k: run.config[k] for k in ("prompt_format", "max_length", "dtype", "compute_dtype")} == {
        "prompt_format": "plain", "max_length": 128, "dtype": "float32", "compute_dtype": "auto",
    }  # fmt: skip
    assert run.prompt_format == "plain" and run.record.resolved.compute_dtype is None  # auto: resolved when scored
    import_peft(adapter, tmp_path / "b", settings={"max_length": 64})
    assert "max_length 64 as asked, although the adapter was trained with 128" in capsys.readouterr().err
    with pytest.raises(SoftPromptError, match=r"setting 'max_length' is 0, expected a positive integer"):
        import_peft(adapter, tmp_path / "c", settings={"max_length": 0})
    # damaged settings in the metadata: one line naming the file
    save_file({"prompt_embeddings": weight.contiguous()}, str(foreign / "adapter_model.safetensors"),
              metadata={"softprompt_settings": '{"max_length": "long"}'})  # fmt: skip
    with pytest.raises(
        SoftPromptError, match=r"adapter_model\.safetensors: metadata 'softprompt_settings': setting 'max_length'"
    ):
        import_peft(foreign, tmp_path / "d")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- commands take the run's settings


def test_eval_and_generate_load_the_runs_own_model(runs, tiny_model_dir, toy_data, capsys, monkeypatch):
    """`eval --run` and `generate --run` loaded --model's default (smollm2-135m), not the run's model: a run of a
    gemma3-270m needs no --model now (here a run.json naming it, with the loader recording what it is asked for)."""
    import softprompt.model.backbones as backbones

    assert main(["eval", "--run", str(runs["plain"]), "--data-dir", str(toy_data), "--quiet"]) == 0
    assert main(["generate", "The cat", "--run", str(runs["chat"]), "--max-new-tokens", "2"]) == 0
    record = json.loads((runs["plain"] / "run.json").read_text())
    record["config"].update(model="gemma3-270m", dtype="bfloat16", compute_dtype="bfloat16")
    record["model"]["name"] = "gemma3-270m"
    record["resolved"]["compute_dtype"] = "bfloat16"
    (runs["plain"] / "run.json").write_text(json.dumps(record))
    asked = []
    real = backbones.load_backbone

    def loader(name, **kwargs):
        asked.append((name, str(kwargs.get("dtype"))))
        return real(str(tiny_model_dir), **kwargs)

    monkeypatch.setattr(backbones, "load_backbone", loader)
    assert main(["eval", "--run", str(runs["plain"]), "--data-dir", str(toy_data), "--quiet"]) == 0
    assert main(["generate", "The cat", "--run", str(runs["plain"]), "--max-new-tokens", "2"]) == 0
    assert asked == [("gemma3-270m", "bfloat16")] * 2


def test_a_flag_against_the_run_is_refused_or_said(runs, toy_data, tmp_path, capsys):
    """--prompt-format against the run's layout is refused (it was silently ignored); --max-length, --dtype,
    --compute-dtype and --model are used as asked with one warning line naming the run's value; runs that disagree
    among themselves need the flag."""
    chat, plain = str(runs["chat"]), str(runs["plain"])
    data = ["--data-dir", str(toy_data), "--quiet"]
    capsys.readouterr()
    assert main(["eval", "--run", chat, "--prompt-format", "plain", *data]) == 2
    assert capsys.readouterr().err.strip() == (
        f"softprompt: error: --prompt-format plain: run {chat} was trained in the chat prompt format, and its prompt is "
        "scored in that layout; leave --prompt-format out"
    )
    assert main(["eval", "--run", plain, "--prompt-format", "chat", *data]) == 2
    assert "was trained in the plain prompt format" in capsys.readouterr().err
    assert main(["eval", "--run", chat, "--prompt-format", "chat", "--max-length", "64", *data]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"softprompt: warning: --max-length 64: run {chat} was trained with max_length 44; scoring with 64, as asked"]
    other = load_run(chat).config["model"] + "/"  # the same folder named otherwise: another name than run.json's
    assert main(["eval", "--run", chat, "--model", other, *data]) == 0
    assert f"--model {other}: run {chat} was trained on model " in capsys.readouterr().err
    assert main(["neighbors", chat, plain, "--out", str(tmp_path / "n"), *data]) == 2  # the runs name two models
    assert "the runs were trained on different models (" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()  # refused before the folder was made
    model = load_run(chat).config["model"]
    assert main(["transfer", chat, plain, "--model", model, "--out", str(tmp_path / "t"), "--max-eval", "2", *data]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "softprompt: error: the runs were trained in different prompt formats (chat, plain): analyse them apart"
    assert main(["geometry", chat, plain, "--out", str(tmp_path / "g")]) == 0  # no model loaded: nothing to choose


def test_analysis_commands_score_in_the_runs_layout(runs, tmp_path, toy_data, monkeypatch):
    """importance (like neighbors --project, transfer, describe) built its Evaluator with max_length 512 and the
    default format: now with the run's own settings."""
    import softprompt.evaluate as evaluate

    seen = []
    real = evaluate.evaluator_for

    def spy(cfg, backbone, **kwargs):
        seen.append((cfg.model, cfg.max_length, cfg.prompt_format, cfg.compute_dtype))
        return real(cfg, backbone, **kwargs)

    monkeypatch.setattr(evaluate, "evaluator_for", spy)
    argv = ["importance", str(runs["chat"]), "--out", str(tmp_path / "i"), "--max-eval", "2", "--data-dir", str(toy_data)]
    assert main([*argv, "--replacements", "init", "--quiet"]) == 0
    assert seen == [(load_run(runs["chat"]).config["model"], 44, "chat", "float32")]


def test_an_imported_run_without_a_model_asks_for_one(tmp_path, toy_data, capsys):
    from safetensors.torch import save_file

    a = tmp_path / "adapter"
    a.mkdir()
    (a / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 32}))
    save_file({"prompt_embeddings": torch.zeros(2, 32)}, str(a / "adapter_model.safetensors"))
    import_peft(a, tmp_path / "run", task="rte")
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "run"), "--data-dir", str(toy_data)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"softprompt: error: run {tmp_path / 'run'} does not name its model (an adapter imported without one): pass --model"
    )


# ----------------------------------------------------------------------------- generation within the context


def test_generation_is_capped_at_the_models_context(runs, capsys):
    """`generate --max-new-tokens 100000` ran far past the model's context with nothing printed: capped, said."""
    capsys.readouterr()
    assert main(["generate", "The cat", "--run", str(runs["plain"]), "--max-new-tokens", "100000"]) == 0
    captured = capsys.readouterr()
    [note] = captured.err.strip().splitlines()
    match = re.fullmatch(
        r"softprompt: warning: max_new_tokens 100000 capped at (\d+): the model's context is 256 positions and the "
        r"prompt and input take (\d+)",
        note,
    )
    assert match and int(match[1]) + int(match[2]) == 256, note
