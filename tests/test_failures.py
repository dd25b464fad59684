"""Failures of the environment are one-line errors with nothing half-written: a full disk during training
and during a study's analyses and report, filesystem refusals named by path before any model is loaded,
and every setting that can be checked before training checked before training."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import softprompt.io as io_mod
import softprompt.runs.checkpoint as checkpoint_mod
import softprompt.training.data as train_data_mod
import softprompt.training.step as step_mod
from softprompt.cli import main
from softprompt.errors import SoftPromptError
from softprompt.training import train
from tests.conftest import tiny_config

DISK_FULL = "No space left on device (the disk is full: free some space)"


def _cfg(data, **kw):
    return tiny_config(data, **{"epochs": 3, "batch_size": 2, "checkpoint_every": 1, **kw})


def _no_temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


def test_disk_full_while_checkpointing_fails_the_run_in_one_line_and_resume_recovers(tiny_llama, toy_data, tmp_path, monkeypatch):
    cfg = _cfg(toy_data)
    train(cfg, tmp_path / "ref", backbone=tiny_llama, progress=False)
    out = tmp_path / "run"
    real = checkpoint_mod.save_file
    calls = {"n": 0}

    def disk_fills_up(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 5:  # safetensors reports a failed write like this (the OS error only in the message)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint_mod, "save_file", disk_fills_up)
    with pytest.raises(SoftPromptError) as e:
        train(cfg, out, backbone=tiny_llama, progress=False)
    assert str(e.value) == (
        f"{out / 'checkpoint.safetensors'}: {DISK_FULL}; the run stopped and {out} keeps its last checkpoint: "
        "fix this, then resume it (train --resume, or rerun the study)"
    )
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert load_file(str(out / "checkpoint.safetensors"))  # the previous checkpoint is intact
    assert not _no_temporaries(out)
    monkeypatch.setattr(checkpoint_mod, "save_file", real)
    train(cfg, out, backbone=tiny_llama, progress=False, resume=True)
    assert torch.equal(
        load_file(str(out / "prompt.safetensors"))["prompt"], load_file(str(tmp_path / "ref" / "prompt.safetensors"))["prompt"]
    )


def test_disk_full_for_every_file_still_leaves_a_resumable_run(tiny_llama, toy_data, tmp_path, monkeypatch):
    """When not even run.json can be written, the run stops in one line all the same and --resume recovers."""
    cfg = _cfg(toy_data, checkpoint_every=0)
    train(cfg, tmp_path / "ref", backbone=tiny_llama, progress=False)
    out = tmp_path / "run"
    real_replace = io_mod.os.replace
    writes = {"n": 0}

    def full_after_a_while(src, dst):
        writes["n"] += 1
        if writes["n"] > 6:  # the disk is full from here on: every atomic write fails at its rename
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", full_after_a_while)
    with pytest.raises(SoftPromptError, match=rf"{DISK_FULL.replace('(', '.').replace(')', '.')}; the run stopped"):
        train(cfg, out, backbone=tiny_llama, progress=False)
    assert not _no_temporaries(out)
    monkeypatch.setattr(io_mod.os, "replace", real_replace)
    train(cfg, out, backbone=tiny_llama, progress=False, resume=True)
    assert torch.equal(
        load_file(str(out / "prompt.safetensors"))["prompt"], load_file(str(tmp_path / "ref" / "prompt.safetensors"))["prompt"]
    )


def test_a_real_write_failure_of_safetensors_names_the_file(tmp_path):
    """A file-size limit makes the OS refuse the write (EFBIG) inside safetensors: an OSError naming the target."""
    code = f"""
import resource, signal, torch
from softprompt.model.prompt import PromptInit, SoftPrompt
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    SoftPrompt(torch.zeros(100, 64), PromptInit("random")).save({str(tmp_path / "p.safetensors")!r})
except OSError as e:
    print(e.errno, e.filename)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == [str(errno.EFBIG), str(tmp_path / "p.safetensors")], r.stderr
    assert not (tmp_path / "p.safetensors").exists() and not _no_temporaries(tmp_path)


@pytest.mark.parametrize("target", ["report.html", "neighbors.json"])
def test_disk_full_in_a_studys_analyses_or_report_is_one_line(tmp_path, tiny_model_dir, toy_data, monkeypatch, capsys, target):
    from tests.test_study import CONFIG

    cfg = tmp_path / "study.toml"
    cfg.write_text(
        CONFIG.format(model=tiny_model_dir, data=toy_data, methods='["majority"]').replace("seeds = [0, 1, 2]", "seeds = [0]")
    )
    out = tmp_path / "study"
    real_replace = io_mod.os.replace

    def full_for(src, dst):
        if Path(dst).name == target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", full_for)
    assert main(["study", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    where = next(out.rglob(target), None) or (
        out / "report.html" if target == "report.html" else out / "analysis" / "neighbors" / target
    )
    assert err == f"softprompt: error: {where}: {DISK_FULL}"
    assert not where.exists() and not _no_temporaries(out)
    monkeypatch.setattr(io_mod.os, "replace", real_replace)
    assert main(["study", str(cfg), "--out", str(out), "--quiet"]) == 0  # the same command finishes the study
    assert (out / "report.html").exists() and where.exists()
    assert json.loads((out / "results.json").read_text())["setup"]["actions"] == {"rte-s0": "skipped"}


# ----------------------------------------------------------------------------- refusals before any model loads


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a model fails the test: these faults must be caught before."""
    import softprompt.model.backbones as backbones_mod
    import softprompt.training.baseline_runs as baseline_runs_mod

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the fault was reported")

    for module in (backbones_mod, baseline_runs_mod, train_data_mod):
        monkeypatch.setattr(module, "load_backbone", refuse)


def test_out_that_is_a_file_or_not_creatable_is_refused_before_the_model(tmp_path, toy_data, no_model):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(
        SoftPromptError, match=rf"run directory {tmp_path / 'file'}: {tmp_path / 'file'} exists and is not a directory"
    ):
        train(_cfg(toy_data), tmp_path / "file", progress=False)
    with pytest.raises(SoftPromptError, match=rf"{tmp_path / 'file'} exists and is not a directory"):
        train(_cfg(toy_data), tmp_path / "file" / "run", progress=False)
    if not os.path.exists("/sys/kernel"):
        pytest.skip("no sysfs here")
    unwritable = Path("/sys/softprompt-test/run")
    with pytest.raises(
        SoftPromptError, match=r"run directory /sys/softprompt-test/run: cannot create it: /sys/softprompt-test: "
    ):
        train(_cfg(toy_data), unwritable, progress=False)


def test_an_unreadable_data_file_is_one_line_naming_it(tmp_path, toy_data, no_model, monkeypatch):
    """As root no mode bit refuses anything, so the OS's refusal is simulated where the run reads its files."""
    import softprompt.data.inputs as inputs_mod

    data_file = toy_data / "rte" / "train.jsonl"
    real_open = open

    def denied(path, *a, **k):
        if Path(path) == data_file:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(inputs_mod, "open", denied, raising=False)
    with pytest.raises(SoftPromptError, match=rf"cannot read {data_file}: Permission denied \(no permission: check"):
        train(_cfg(toy_data), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_read_only_out_is_one_line_naming_it(tmp_path, toy_data, no_model, monkeypatch):
    import softprompt.locks as locks_mod

    real_os_open = os.open

    def read_only(path, *a, **k):
        if Path(path).name == locks_mod.LOCK_FILE:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(locks_mod.os, "open", read_only)
    with pytest.raises(SoftPromptError, match=rf"run directory {tmp_path / 'run'} is not writable: .*Read-only file system"):
        train(_cfg(toy_data), tmp_path / "run", progress=False)


def test_data_problems_fail_before_the_model_loads(tmp_path, toy_data, no_model):
    (toy_data / "rte" / "val.jsonl").unlink()
    with pytest.raises(SoftPromptError, match=r"data file .*rte/val.jsonl not found"):
        train(_cfg(toy_data), tmp_path / "run", progress=False)
    (toy_data / "rte" / "val.jsonl").mkdir()
    with pytest.raises(SoftPromptError, match=r"data file .*rte/val.jsonl is not a file"):
        train(_cfg(toy_data), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "run.json").exists()


def test_settings_that_would_fail_after_training_fail_before_it(tiny_llama, toy_data, tmp_path, monkeypatch):
    """A --max-length with room for the training rows but not for the English prompt of the reference
    evaluation (or for the validation answers) used to fail after the last epoch; now before the first."""
    scored = {"n": 0}
    real = step_mod.LOSSES["choices"]

    def counting(scores, labels, weights=None):
        scored["n"] += 1
        return real(scores, labels, weights)

    monkeypatch.setitem(step_mod.LOSSES, "choices", counting)
    with pytest.raises(
        SoftPromptError, match=r"max_length 12 leaves no room for the input after the soft prompt \(0\), hard prompt \(12\)"
    ):
        train(_cfg(toy_data, max_length=12), tmp_path / "run", backbone=tiny_llama, progress=False)
    assert scored["n"] == 0 and not (tmp_path / "run" / "checkpoint.safetensors").exists()
    # a bad validation record used to surface at the end of the first epoch
    with open(toy_data / "rte" / "val.jsonl", "a") as f:
        f.write(json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe"}) + "\n")
    with pytest.raises(SoftPromptError, match="val.jsonl:5 field 'label': label 'maybe' is not one of"):
        train(_cfg(toy_data), tmp_path / "run2", backbone=tiny_llama, progress=False)
    assert scored["n"] == 0


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(tokens="20"), "tokens must be an integer, got '20'"),
        (dict(lr=True), "lr must be a number"),
        (dict(max_eval=0), "max_eval must be at least 1"),
        (dict(checkpoint_every=-1), "checkpoint_every must be 0 or more"),
        (dict(init_text=5), "init_text must be a string"),
    ],
)
def test_config_values_of_the_wrong_type_or_range_are_refused_at_once(toy_data, bad, match):
    with pytest.raises(SoftPromptError, match=match):
        _cfg(toy_data, **bad)


@pytest.mark.parametrize(
    "text, match",
    [
        ("[analysis]\nmetric = 'euclid'\n", r"\[analysis\] metric: unknown 'euclid'"),
        ("[analysis]\nk = 0\n", "k and .* must be at least 1"),
        ("[analysis]\ntsne_perplexity = -1.0\n", "tsne_perplexity: must be a positive number"),
        ("[analysis]\nproject = 'yes'\n", r"\[analysis\]: project must be true or false"),
        ("[train]\nepochs = '3'\n", "epochs must be an integer"),
    ],
)
def test_study_settings_used_only_at_the_end_are_checked_at_the_start(tmp_path, text, match):
    from softprompt.study import load_study_config

    p = tmp_path / "s.toml"
    p.write_text("[study]\ntasks = ['rte']\n" + text)
    with pytest.raises(SoftPromptError, match=match):
        load_study_config(p)
    p.write_text("[study]\ntasks = ['rte']\nseeds = ['0']\n")
    with pytest.raises(SoftPromptError, match="seeds a list of integers"):
        load_study_config(p)


def test_a_device_this_machine_lacks_is_refused_before_the_weights_load(tmp_path):
    from softprompt.model.backbones import load_backbone

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SoftPromptError, match="device 'cuda': no CUDA GPU is available here"):
        load_backbone(str(tmp_path / "no-such-model"), device="cuda")
    with pytest.raises(SoftPromptError, match="unknown device 'gpu'"):
        load_backbone(str(tmp_path / "no-such-model"), device="gpu")
