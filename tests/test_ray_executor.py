"""`softprompt study --executor ray` on a local two-CPU Ray cluster: the same prompts and numbers as the
local executor, a killed worker's run retried and resumed, a unit's own error reported once, in one line."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

# Before Ray is imported: its node address is then the loopback one, so the test cluster talks only over 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from softprompt.errors import SoftPromptError  # noqa: E402
from softprompt.study import run_study  # noqa: E402
from softprompt.study.ray_executor import RayOptions  # noqa: E402
from tests.executor_helpers import (  # noqa: E402
    EPOCHS,
    METHODS,
    assert_same_prompts,
    assert_transferred_from_their_sources,
    comparable,
    one_thread,
    write_study_inputs,
    write_transfer_study,
)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module: 2 CPUs, no dashboard, loopback only; shut down (all its processes) after."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_tokenizer) -> Path:
    return write_study_inputs(tmp_path_factory.mktemp("ray-study"), tiny_tokenizer)


@pytest.fixture(scope="module")
def local_study(inputs) -> dict:
    before = one_thread()
    try:
        return run_study(inputs / "study.toml", inputs / "local", progress=False)
    finally:
        torch.set_num_threads(before)


def test_ray_study_equals_local_study(ray_cluster, inputs, local_study):
    out = inputs / "ray"
    res = run_study(inputs / "study.toml", out, progress=False, executor="ray", ray_options=RayOptions(cpus_per_run=1))
    assert_same_prompts(inputs / "local", out)
    lora = "baselines/rte/lora/lora/adapter.safetensors"
    assert all(torch.equal(v, load_file(str(out / lora))[k]) for k, v in load_file(str(inputs / "local" / lora)).items())

    got, setup = comparable(json.loads((out / "results.json").read_text()), out)
    want, local_setup = comparable(local_study, inputs / "local")
    assert got == want  # every number: runs, histories, baselines, neighbours, geometry, transfer
    for key in ("model", "compute_dtype", "device", "versions", "actions"):
        assert setup[key] == local_setup[key], key
    assert local_setup["executor"] == {"name": "local"}
    ex = setup["executor"]
    assert ex["name"] == "ray" and ex["nodes"] == 1 and ex["resources"]["CPU"] == 2 and ex["cpus_per_run"] == 1
    assert setup["model"]["parameters"] > 0  # from the analyses task: the driver never loads the model
    # each worker's units timed there and sent back: model loads on the workers, units side by side
    timing = setup["timing"]
    assert timing["concurrent"] and {"model load", "prompt runs", "analysis geometry", "report"} <= {
        u["phase"] for u in timing["units"]
    }
    assert res["baselines"].keys() == {"rte"} and list(res["baselines"]["rte"]) == json.loads(METHODS)
    assert "Ray, 1 node(s) with 2 CPUs" in (out / "report.html").read_text()


def _running_run(out: Path) -> tuple[Path, int] | None:
    """A prompt run that a worker is in the middle of: status running, a checkpoint, several epochs to go."""
    for run_json in sorted(out.glob("runs/*/run.json")):
        try:
            info = json.loads(run_json.read_text())
            with safe_open(str(run_json.parent / "checkpoint.safetensors"), framework="pt") as f:
                epoch = json.loads(f.metadata()["state"])["epoch"]
        except (OSError, ValueError, KeyError):  # not written yet, or replaced while read
            continue
        if info.get("status") == "running" and "worker" in info and epoch < EPOCHS - 20:
            return run_json.parent, int(info["worker"]["pid"])
    return None


def test_killed_worker_is_retried_and_its_run_resumed(ray_cluster, inputs, local_study):
    out = inputs / "ray-killed"
    outcome: dict = {}

    def study() -> None:
        try:
            outcome["results"] = run_study(
                inputs / "study.toml", out, progress=False, executor="ray", ray_options=RayOptions(max_retries=2)
            )
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=study)
    thread.start()
    victim = None
    deadline = time.time() + 240
    while victim is None and thread.is_alive() and time.time() < deadline:
        victim = _running_run(out)
        time.sleep(0.01)
    assert victim is not None, "no run was seen in the middle of training"
    run_dir, pid = victim
    assert pid != os.getpid()  # a Ray worker, not this driver
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=900)  # a bound, not a timing: a retried run resumes slowly on a loaded 2-core machine
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    res = outcome["results"]
    assert res["setup"]["actions"][run_dir.name] == "resumed"  # retried, and continued from its checkpoint
    assert_same_prompts(inputs / "local", out)
    got, _ = comparable(res, out)
    want, _ = comparable(local_study, inputs / "local")
    assert got["runs"] == want["runs"] and got["geometry"] == want["geometry"]


def test_unit_error_is_one_line_and_not_retried(ray_cluster, inputs, tmp_path):
    from softprompt.study import Study, StudyProgress, Unit, load_study_config
    from softprompt.study.ray_executor import run_on_ray

    class FailingStudy(Study):  # defined here, so Ray ships it to the worker by value
        def ensure_run(self, cfg, out, models):
            with open(self.out / "attempts", "a") as f:  # one line per attempt
                f.write("attempt\n")
            raise SoftPromptError(f"{out.name}: parameters diverged (a stand-in for any error of the run itself)")

    study = FailingStudy(load_study_config(inputs / "study.toml"), tmp_path, progress=False)
    units = [Unit("rte", seed=0)]
    with pytest.raises(SoftPromptError) as err:
        run_on_ray(study, units, StudyProgress(2, "failing", enabled=False), RayOptions(max_retries=3))
    assert (
        str(err.value)
        == "run rte-s0 failed on a Ray worker: rte-s0: parameters diverged (a stand-in for any error of the run itself)"
    )
    assert (tmp_path / "attempts").read_text() == "attempt\n"  # raised once, not retried (worker deaths are)


def test_ray_runs_a_transfer_initialised_unit_after_its_source(ray_cluster, inputs, tmp_path):
    """[transfer] init: B's run from A's prompt needs A's finished run. With half a CPU per unit all four runs could
    start at once on the two-CPU cluster, so only the dependency keeps a transferred run from starting too early
    (it would fail: its source run would not be complete)."""
    config = write_transfer_study(inputs, tmp_path / "transfer.toml")
    out = tmp_path / "study"
    res = run_study(config, out, progress=False, executor="ray", ray_options=RayOptions(cpus_per_run=0.5))
    assert_transferred_from_their_sources(res, out)
    assert len(res["transfer_init"]["pairs"]) == 2


def test_sigterm_to_a_ray_study_stops_it_with_143_and_its_running_unit_checkpoints(inputs, tmp_path):
    """`ray.init` replaces the driver's SIGTERM handlers (a SIGTERM aborted it: exit 134, its units left `running`), and
    a driver blocked in `ray.wait` would see no flag: the driver keeps softprompt's handler, looks for the flag while it
    waits, cancels the units (the held one checkpoints) and exits 143. Its own local cluster, in a `softprompt` process."""
    import subprocess
    import sys

    from tests.test_reliability import _signalled, held_process

    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "softprompt.cli", "study", str(inputs / "study.toml"), "--quiet", "--executor", "ray",
           "--out", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own, not the module's
    # a worker waits before its 10th training step (the other unit may go on), then the driver gets SIGTERM
    proc = held_process(cmd, "train-batch:10", tmp_path / "hold", stderr=subprocess.PIPE, env=env, timeout=600)
    code, err = _signalled(proc, signal.SIGTERM)
    assert code == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"softprompt: interrupted (SIGTERM); progress was kept in {out} ("), err
    assert "Traceback" not in err
    held = [json.loads(p.read_text()) for p in out.glob("runs/*/run.json")]
    assert any(r["status"] == "interrupted" for r in held), [r["status"] for r in held]  # cancelled, and recorded so
