"""Ownership: one process writes a run (or study, or baselines) directory at a time, under an OS file lock that a
killed process releases; a run recorded `running` whose process is gone reads as interrupted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from softprompt.errors import SoftPromptError
from softprompt.locks import LOCK_FILE, directory_lock
from softprompt.records.run import RunRecord, Worker
from softprompt.runs.directory import load_run, observed_status
from softprompt.runs.state import run_state
from softprompt.training import train
from tests.conftest import tiny_config
from tests.test_reliability import _train_cmd, held_process

HOST = socket.gethostname()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    d = tmp_path / "run"
    holder = rf"run directory {d} is being written by another softprompt process \(pid {os.getpid()} on {HOST}\)"
    with directory_lock(d):
        assert (d / LOCK_FILE).exists()
        with pytest.raises(SoftPromptError, match=holder), directory_lock(d):
            pass
    with directory_lock(d):  # released at the end of the block
        pass


def test_a_killed_holder_releases_the_lock(tmp_path):
    d = tmp_path / "run"
    code = f"from softprompt.locks import directory_lock; l = directory_lock({str(d)!r}); l.__enter__(); print('held', flush=True); input()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(SoftPromptError, match=f"pid {proc.pid} on {HOST}"), directory_lock(d):
            pass
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with directory_lock(d):  # SIGKILL released it: no stale lock to clean up
        pass


def test_train_study_and_baselines_refuse_a_locked_directory_before_loading_a_model(tmp_path, toy_data, monkeypatch):
    import softprompt.model.backbones as backbones_mod
    import softprompt.training.baseline_runs as baseline_runs_mod
    import softprompt.training.data as train_data_mod
    from softprompt.study import run_study
    from tests.test_study import CONFIG

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded for a locked directory")

    for module in (backbones_mod, baseline_runs_mod, train_data_mod):
        monkeypatch.setattr(module, "load_backbone", no_model)
    with directory_lock(tmp_path / "run"), pytest.raises(SoftPromptError, match="is being written by another"):
        train(tiny_config(toy_data), tmp_path / "run", progress=False)
    cfg = tmp_path / "study.toml"
    cfg.write_text(CONFIG.format(model="tiny", data=toy_data, methods='["majority"]'))
    study_locked = pytest.raises(SoftPromptError, match=f"study directory {tmp_path / 'study'} is being written")
    with directory_lock(tmp_path / "study", "study directory"), study_locked:
        run_study(cfg, tmp_path / "study", progress=False)
    baselines_locked = pytest.raises(SoftPromptError, match="baselines directory .* is being written")
    with directory_lock(tmp_path / "b", "baselines directory"), baselines_locked:
        baseline_runs_mod.run_baselines(tiny_config(toy_data), tmp_path / "b", methods=["no_prompt"])


def test_every_command_writing_a_folder_refuses_a_locked_one_before_loading_a_model(
    tmp_path, tiny_llama, toy_data, monkeypatch, capsys
):
    """The analyses (`neighbors`, `geometry`, `transfer`, `importance`, `describe`), `export --peft` and `import-peft`
    hold their output folder's lock like train, study and baselines: two of them writing one folder at once used to both
    report success with one result lost; the second is now refused in one line naming the first, before any model."""
    import softprompt.model.backbones as backbones_mod
    from softprompt.cli import main
    from softprompt.peft_interop import export_peft

    run = tmp_path / "run"
    train(tiny_config(toy_data), run, backbone=tiny_llama, progress=False)
    export_peft(run, tmp_path / "adapter")

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded for a locked folder")

    monkeypatch.setattr(backbones_mod, "load_backbone", no_model)
    commands = {
        "neighbors": ["neighbors", str(run), "--out"],
        "geometry": ["geometry", str(run), "--out"],
        "transfer": ["transfer", str(run), "--out"],
        "importance": ["importance", str(run), "--out"],
        "describe": ["describe", str(run), "--out"],
        "export": ["export", str(run), "--peft"],
        "import-peft": ["import-peft", str(tmp_path / "adapter"), "--out"],
    }
    for name, argv in commands.items():
        folder = tmp_path / name
        what = "run directory" if name == "import-peft" else argv[-1]
        with directory_lock(folder, what):
            assert main([*argv, str(folder)]) == 2, name
        err = capsys.readouterr().err
        assert err == (
            f"softprompt: error: {what} {folder} is being written by another softprompt process (pid {os.getpid()} on "
            f"{HOST}): wait for it to finish or stop it, or use another directory\n"
        ), name
        assert [p.name for p in folder.iterdir()] == [LOCK_FILE]  # nothing written into it
    assert main(["geometry", str(run), "--out", str(tmp_path / "geometry")]) == 0  # unlocked: it writes (no model needed)
    assert main(["export", str(run), "--peft", str(tmp_path / "export"), "--overwrite"]) == 0  # (a fresh folder)
    assert main(["export", str(run), "--peft", str(tmp_path / "export"), "--overwrite"]) == 0  # its own lock is no foreign file


def test_two_concurrent_trains_into_one_out(tmp_path, tiny_model_dir, toy_data):
    """The second `softprompt train` with the same --out fails at once naming the first; the first finishes intact."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    cmd = _train_cmd(tiny_model_dir, toy_data, out)
    cmd[cmd.index("--epochs") + 1] = "3"
    hold = tmp_path / "hold"
    first = held_process(cmd, "train-batch:2", hold, stderr=subprocess.PIPE)  # mid-run, lock held (never already over)
    try:
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        hold.unlink()  # the first goes on
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"softprompt: error: run directory {out} is being written by another softprompt process (pid {first.pid} on "
        f"{HOST}): wait for it to finish or stop it, or use another directory"
    )
    run = load_run(out)
    assert run.complete and run.prompt().n_tokens == 3  # its prompt matches what its run.json recorded
    assert run.record.final is not None and json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 3


def _running_record(tmp_path, pid: int, host: str = HOST):
    record = RunRecord(status="running", config=tiny_config(tmp_path).to_dict(), worker=Worker(host=host, pid=pid))
    record.write(tmp_path / "run")
    return record


def test_a_running_run_whose_process_is_gone_is_interrupted(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = _running_record(tmp_path, gone.pid)
    assert observed_status(record) == "interrupted"
    assert run_state(tmp_path / "run", tiny_config(tmp_path)).status == "interrupted"
    with pytest.raises(SoftPromptError, match="is interrupted: finish it with `softprompt train --resume"):
        load_run(tmp_path / "run")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert observed_status(_running_record(tmp_path, alive.pid)) == "running"
        assert observed_status(_running_record(tmp_path, gone.pid, host="another-host")) == "running"  # taken at its word
    finally:
        alive.kill()
        alive.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not yet reaped: a zombie is gone too
    try:
        assert observed_status(_running_record(tmp_path, zombie.pid)) == "interrupted"
    finally:
        zombie.wait()
