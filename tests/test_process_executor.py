"""`softprompt study --workers 2` (`[execution] workers`): the runs and baselines in two spawned worker processes of
one thread each give the same prompts and numbers as one process on one thread; a transfer-initialised run waits for
its source; a unit's own error is one line naming it; SIGTERM to the study checkpoints the running units and exits 143;
bad [execution] values are refused naming the key."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from softprompt.errors import SoftPromptError
from softprompt.study import load_study_config, run_study
from tests import executor_helpers as helpers


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_tokenizer) -> Path:
    root = helpers.write_study_inputs(tmp_path_factory.mktemp("workers-study"), tiny_tokenizer)
    study = root / "study.toml"  # 8 epochs (24 steps) a run: enough for a SIGTERM at step 10, short for the suite
    study.write_text(study.read_text().replace(f"epochs = {helpers.EPOCHS}", "epochs = 8"))
    return root


@pytest.fixture(scope="module")
def local_study(inputs) -> dict:
    before = helpers.one_thread()
    try:
        return run_study(inputs / "study.toml", inputs / "local", progress=False)
    finally:
        torch.set_num_threads(before)


def test_two_workers_give_the_local_study(inputs, local_study):
    out = inputs / "workers"
    before = helpers.one_thread()  # this process assembles the results: the same thread count as the reference
    try:
        res = run_study(inputs / "study.toml", out, progress=False, workers=2, threads_per_worker=1)
    finally:
        torch.set_num_threads(before)
    helpers.assert_same_prompts(inputs / "local", out)
    got, setup = helpers.comparable(json.loads((out / "results.json").read_text()), out)
    want, local_setup = helpers.comparable(local_study, inputs / "local")
    assert got == want  # every number: runs, histories, baselines, neighbours, geometry, transfer
    assert setup["executor"] == {"name": "local", "workers": 2, "threads_per_worker": 1}
    assert local_setup["executor"] == {"name": "local"}
    timing = setup["timing"]
    assert timing["concurrent"] and not local_setup["timing"]["concurrent"]
    assert sum(u["phase"] == "prompt runs" for u in timing["units"]) == 2
    analyses = [u["unit"] for u in timing["units"] if u["phase"].startswith("analysis")]
    assert analyses == [u["unit"] for u in local_setup["timing"]["units"] if u["phase"].startswith("analysis")]
    assert len(analyses) >= 3 and len(set(analyses)) == len(analyses)  # each analysis once, done in a worker
    assert list(res["baselines"]["rte"]) == json.loads(helpers.METHODS)
    assert (
        "local, 2 worker processes of 1 thread(s) each for the runs, baselines and analyses" in (out / "report.html").read_text()
    )
    # a rerun finds everything done: nothing is handed to a worker twice
    again = run_study(inputs / "study.toml", out, progress=False, workers=2, threads_per_worker=1)
    assert set(again["setup"]["actions"].values()) == {"skipped"}


def test_a_transfer_initialised_run_waits_for_its_source(inputs, tmp_path):
    """[transfer] init: B's run starts from A's trained prompt. With two workers both tasks' own runs could start at
    once and the transferred runs next to them; only the dependency keeps one from starting before its source is
    complete (it would fail: no prompt to start from)."""
    config = helpers.write_transfer_study(
        inputs, tmp_path / "transfer.toml", "\n[execution]\nworkers = 2\nthreads_per_worker = 1\n"
    )
    out = tmp_path / "study"
    res = run_study(config, out, progress=False)
    assert res["setup"]["executor"]["workers"] == 2
    helpers.assert_transferred_from_their_sources(res, out)


def test_a_units_error_is_one_line_naming_it(inputs, tmp_path):
    """A unit that fails in a worker (here its model folder is missing: only a worker loads the model) stops the
    study with one line naming the unit, not a traceback from the pool."""
    text = (inputs / "study.toml").read_text().replace(str(inputs / "tiny-model"), str(tmp_path / "no-such-model"))
    config = tmp_path / "study.toml"
    config.write_text(text)
    with pytest.raises(SoftPromptError, match=r"^run rte-s\d failed in a worker process: .*no-such-model"):
        run_study(config, tmp_path / "out", progress=False, workers=2, threads_per_worker=1)


def test_sigterm_stops_the_workers_runs_at_a_checkpoint_with_143(inputs, tmp_path):
    """SIGTERM to the study process (a scheduler's preemption) is forwarded to its workers: the running units
    checkpoint and record themselves interrupted, and the command exits 143 with its one-line message."""
    import subprocess

    from tests.test_reliability import _signalled, held_process

    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "softprompt.cli", "study", str(inputs / "study.toml"), "--quiet", "--workers", "2",
           "--threads", "1", "--out", str(out)]  # fmt: skip
    proc = held_process(cmd, "train-batch:10", tmp_path / "hold", stderr=subprocess.PIPE, timeout=600)
    code, err = _signalled(proc, signal.SIGTERM)
    assert code == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"softprompt: interrupted (SIGTERM); progress was kept in {out} ("), err
    assert "Traceback" not in err
    held = [json.loads(p.read_text()) for p in out.glob("runs/*/run.json")]
    assert any(r["status"] == "interrupted" for r in held), [r["status"] for r in held]
    assert not (out / "results.json").exists()


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ("workers = 0", r"\[execution\]: workers and threads_per_worker must be at least 1, got 0 and None"),
        ('workers = "2"', r"\[execution\]: workers must be an integer, got '2'"),
        ("threads_per_worker = 0", r"\[execution\]: workers and threads_per_worker must be at least 1, got 1 and 0"),
        ("worker = 2", r"\[execution\]: unknown key"),
    ],
)
def test_bad_execution_values_are_refused(inputs, tmp_path, table, match):
    config = tmp_path / "study.toml"
    config.write_text((inputs / "study.toml").read_text() + f"\n[execution]\n{table}\n")
    with pytest.raises(SoftPromptError, match=match):
        load_study_config(config)


def test_execution_is_not_part_of_what_the_study_is(inputs, tmp_path):
    config = tmp_path / "study.toml"
    config.write_text((inputs / "study.toml").read_text() + "\n[execution]\nworkers = 3\n")
    cfg = load_study_config(config)
    assert cfg.execution.workers == 3
    assert cfg.to_json() == load_study_config(inputs / "study.toml").to_json()  # study_config.json, results' "study"


def test_workers_need_the_local_executor(inputs, capsys):
    from softprompt.cli import main

    code = main(["study", str(inputs / "study.toml"), "--out", "unused", "--executor", "ray", "--workers", "2"])
    assert code == 2
    assert "--workers applies to --executor local" in capsys.readouterr().err


def test_the_schedule_starts_the_per_run_readouts_beside_the_other_runs(inputs, tmp_path):
    """The dearest analyses (importance, describe) read only [analysis] readout_seeds' runs: those runs go first and
    the readouts may start as soon as they are done, while the other runs still train; the analyses of every run wait
    for all of them; the scoring-only baselines come last."""
    from softprompt.study.plan import Unit
    from softprompt.study.process_executor import _ready, _schedule
    from softprompt.study.units import Study

    config = tmp_path / "study.toml"
    config.write_text((inputs / "study.toml").read_text().replace("[analysis]\n", "[analysis]\nreadout_seeds = [1]\n"))
    study = Study(load_study_config(config), tmp_path / "out", progress=False)
    units = study.units()
    order = [str(x) for x in _schedule(study, units)]
    s0, s1, lora = str(Unit("rte", seed=0)), str(Unit("rte", seed=1)), str(Unit("rte", method="lora"))
    assert order[:3] == [s1, "importance", "describe"]
    assert order.index(s0) < order.index(lora) < order.index("neighbors")
    assert order[-3:] == [str(Unit("rte", method=m)) for m in ("majority", "no_prompt", "english_prompt")]
    done = {Unit("rte", seed=1): {}}
    assert _ready(study, "importance", units, done) and _ready(study, "describe", units, done)
    assert not _ready(study, "neighbors", units, done) and not _ready(study, "transfer", units, done)
    done[Unit("rte", seed=0)] = {}
    assert _ready(study, "neighbors", units, done)


def test_a_per_run_readout_reads_only_its_runs_while_others_train(inputs, local_study, tmp_path):
    """The worker processes start importance and describe once the readout seeds' runs are done, beside the other
    runs: those readouts must not touch a run that is still training (load_run refuses a running one)."""
    import shutil

    from softprompt.study.analysis_units import analysis_unit
    from softprompt.study.model_cache import ModelCache
    from softprompt.study.units import Study

    out = tmp_path / "study"
    shutil.copytree(inputs / "local" / "runs", out / "runs")
    record = out / "runs" / "rte-s0" / "run.json"  # seed 0 still training
    record.write_text(json.dumps(dict(json.loads(record.read_text()), status="running")))
    config = tmp_path / "study.toml"
    config.write_text((inputs / "study.toml").read_text().replace("[analysis]\n", "[analysis]\nreadout_seeds = [1]\n"))
    study = Study(load_study_config(config), out, progress=False)
    models = ModelCache(study.cfg.train)
    for kind in ("importance", "describe"):
        runs = analysis_unit(study, models, kind)["value"]["runs"]
        assert [r["run"] for r in runs] == ["rte-s1"], kind
    with pytest.raises(SoftPromptError, match="rte-s0 is running"):
        analysis_unit(study, models, "neighbors")  # an analysis of every run is handed out only once all are done


def test_more_workers_than_cores_is_said(inputs, tmp_path, monkeypatch, capsys):
    import softprompt.study.run as study_run

    monkeypatch.setattr(study_run, "usable_cores", lambda: 1)
    out = inputs / "workers"  # the two-worker study above, if it ran: every unit is found done
    study_run.run_study(inputs / "study.toml", out, progress=False, workers=2, threads_per_worker=1)
    assert "2 worker processes on 1 usable core(s)" in capsys.readouterr().err
