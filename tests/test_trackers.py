"""--report-to: a run's loss, learning rate, evaluations and config in TensorBoard, MLflow and W&B (offline),
read back with each library's own reader; a missing package is one line naming the extra."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import time
from pathlib import Path

import pytest

import softprompt.training.checkpoints as checkpoints_mod
from softprompt.cli import main
from softprompt.config import TrainConfig, report_targets
from softprompt.errors import SoftPromptError
from softprompt.study import load_study_config
from softprompt.training import lr_lambda, train
from softprompt.training.trackers import IDS_FILE, LOG_DIR, Trackers, open_trackers, step_losses
from tests.conftest import tiny_config

NEEDS_TENSORBOARD = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")

# 12 toy examples, 4 held out as the dev split: 8 to train on, batches of 4, 2 epochs -> steps 1..4 (2 per epoch)
RUN = dict(epochs=2, dev_size=4, report_to="tensorboard")
STEPS = [1, 2, 3, 4]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag's (step, value) points as TensorBoard itself loads them (orphaned steps purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _agrees_with_history(losses: list[float], history: list[dict]) -> None:
    """Full batches of 4, 2 steps an epoch: an epoch's train_loss in metrics.jsonl is the mean of its two steps' losses."""
    assert len(history) == 2
    for epoch, record in enumerate(history):
        assert sum(losses[2 * epoch : 2 * epoch + 2]) / 2 == pytest.approx(record["train_loss"], rel=1e-5)


@NEEDS_TENSORBOARD
def test_tensorboard_holds_the_loss_curve_learning_rate_and_evaluations(tiny_llama, toy_data, tmp_path):
    cfg = tiny_config(toy_data, **RUN)
    out = tmp_path / "run"
    res = train(cfg, out, backbone=tiny_llama, progress=False)
    assert list((out / LOG_DIR).glob("events.out.tfevents.*"))
    scalars = _scalars(out / LOG_DIR)
    loss = scalars["train/loss"]
    assert [s for s, _ in loss] == STEPS  # one scalar per optimiser step
    history = _history(out)
    _agrees_with_history([v for _, v in loss], history)
    schedule = lr_lambda(cfg.schedule, int(cfg.warmup * 4), 4)
    assert [v for _, v in scalars["train/learning_rate"]] == pytest.approx([cfg.lr * schedule(s - 1) for s in STEPS])
    assert scalars["train/learning_rate"][0][1] > scalars["train/learning_rate"][-1][1]  # linear decay
    accuracy = scalars["eval/validation/accuracy"]
    assert accuracy == [(r["step"], pytest.approx(r["accuracy"])) for r in history] and [s for s, _ in accuracy] == [2, 4]
    assert [v for _, v in scalars["eval/dev/f1_macro"]] == pytest.approx([r["dev"]["f1_macro"] for r in history])
    assert scalars["eval/validation/accuracy"][-1][1] == pytest.approx(res.final.accuracy)
    if res.final.loss is not None:
        assert "eval/validation/loss" in scalars and "eval/dev/loss" in scalars
    assert [v for _, v in scalars["train/epoch"]] == [1.0, 2.0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / LOG_DIR), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| lr | 0.1 |" in text and "| report_to | tensorboard |" in text and "| resolved.lr |" in text
    assert json.loads((out / "run.json").read_text())["config"]["report_to"] == "tensorboard"


@NEEDS_TENSORBOARD
def test_a_resumed_run_continues_its_log_without_the_steps_it_repeats(tiny_llama, toy_data, tmp_path, monkeypatch):
    """Killed after steps 3-4 and their evaluation were logged but before their checkpoint: --resume repeats them
    from the step-2 checkpoint, and TensorBoard shows each step once, with the uninterrupted run's values."""
    cfg = tiny_config(toy_data, **RUN)
    train(cfg, tmp_path / "ref", backbone=tiny_llama, progress=False)
    real = checkpoints_mod.save_checkpoint

    def killed_at_step_4(*args, **kwargs):
        state = kwargs.get("state", args[4] if len(args) > 4 else None)
        if state["optimizer_step"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints_mod, "save_checkpoint", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False)
    assert [s for s, _ in _scalars(tmp_path / "cut" / LOG_DIR)["train/loss"]] == STEPS  # logged before the kill
    monkeypatch.setattr(checkpoints_mod, "save_checkpoint", real)
    train(cfg, tmp_path / "cut", backbone=tiny_llama, progress=False, resume=True)
    assert len(list((tmp_path / "cut" / LOG_DIR).glob("events.out.tfevents.*"))) == 2  # the same directory, appended
    ref, got = _scalars(tmp_path / "ref" / LOG_DIR), _scalars(tmp_path / "cut" / LOG_DIR)
    for tag in ("train/loss", "train/learning_rate", "eval/validation/accuracy", "eval/dev/accuracy"):
        assert [s for s, _ in got[tag]] == [s for s, _ in ref[tag]], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in ref[tag]], rel=1e-6), tag


@NEEDS_TENSORBOARD
def test_report_to_may_change_on_resume(tiny_llama, toy_data, tmp_path, interrupt_at):
    """An execution setting, not the run's identity: a run started without a tracker is resumed into one, which
    then gets the steps from the checkpoint on."""
    out = tmp_path / "run"
    interrupt_at(3)  # Ctrl-C in the second epoch: checkpoint at step 2
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(toy_data, **{**RUN, "report_to": "none"}), out, backbone=tiny_llama, progress=False)
    assert not (out / LOG_DIR).exists()
    interrupt_at(None)
    train(tiny_config(toy_data, **RUN), out, backbone=tiny_llama, progress=False, resume=True)
    scalars = _scalars(out / LOG_DIR)
    assert [s for s, _ in scalars["train/loss"]] == [3, 4] and [s for s, _ in scalars["eval/validation/accuracy"]] == [4]


@NEEDS_TENSORBOARD
def test_mlflow_file_store_holds_the_run(tiny_llama, toy_data, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    cfg = tiny_config(toy_data, **{**RUN, "report_to": "tensorboard,mlflow"})
    train(cfg, out, backbone=tiny_llama, progress=False)
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("softprompt").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert json.loads((out / LOG_DIR / IDS_FILE).read_text())["mlflow"] == run.info.run_id
    params = run.data.params
    assert (params["lr"], params["epochs"], params["report_to"], params["model.name"]) == (
        "0.1",
        "2",
        "tensorboard,mlflow",
        "tiny-llama",
    )
    assert float(params["resolved.lr"]) == pytest.approx(0.1)
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in loss) == STEPS
    tb = dict(_scalars(out / LOG_DIR)["train/loss"])
    assert {m.step: m.value for m in loss} == pytest.approx(tb, rel=1e-6)  # the same numbers in both trackers
    accuracy = client.get_metric_history(run.info.run_id, "eval/validation/accuracy")
    assert sorted((m.step, m.value) for m in accuracy) == [(r["step"], pytest.approx(r["accuracy"])) for r in _history(out)]


@NEEDS_TENSORBOARD
def test_a_tracker_that_cannot_start_fails_the_run_in_one_line(tiny_llama, toy_data, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://tracking")
    out = tmp_path / "run"
    with pytest.raises(SoftPromptError, match=r"^report_to mlflow: could not start logging for .*run") as e:
        train(tiny_config(toy_data, **{**RUN, "report_to": "tensorboard,mlflow"}), out, backbone=tiny_llama, progress=False)
    assert "\n" not in str(e.value)
    assert not (out / "run.json").exists()  # nothing says a run started: training it again needs no --resume


def test_mlflow_resume_reopens_the_same_run(tiny_llama, toy_data, tmp_path, monkeypatch, interrupt_at):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out, cfg = tmp_path / "run", tiny_config(toy_data, **{**RUN, "report_to": "mlflow"})
    interrupt_at(3)  # Ctrl-C in the second epoch: checkpoint at step 2
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, backbone=tiny_llama, progress=False)
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("softprompt").experiment_id])
    assert run.info.status == "KILLED"
    interrupt_at(None)
    train(cfg, out, backbone=tiny_llama, progress=False, resume=True)
    [again] = client.search_runs([client.get_experiment_by_name("softprompt").experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == STEPS


def _wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (a LevelDB-style log of protobuf records after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, records, partial = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        partial = chunk if kind in (1, 2) else partial + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(partial)
            records.append(record)
    return records


def test_wandb_offline_run_holds_the_metrics(tiny_llama, toy_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    train(tiny_config(toy_data, **{**RUN, "report_to": "wandb"}), out, backbone=tiny_llama, progress=False)
    run_id = json.loads((out / LOG_DIR / IDS_FILE).read_text())["wandb"]
    [file] = (out / LOG_DIR / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    for _ in range(300):  # W&B's own process finishes writing the file after run.finish() returns
        records = [r.history for r in _wandb_records(file) if r.WhichOneof("record_type") == "history"]
        if len(records) >= len(STEPS) + 2:  # a row per step and per evaluation
            break
        time.sleep(0.1)
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in h.item} for h in records]
    losses = {r["train/global_step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert sorted(losses) == STEPS
    _agrees_with_history([losses[s] for s in STEPS], _history(out))
    evaluations = [(r["train/global_step"], r["eval/validation/accuracy"]) for r in rows if "eval/validation/accuracy" in r]
    assert evaluations == [(r["step"], pytest.approx(r["accuracy"])) for r in _history(out)]


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tiny_llama, toy_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: importing it fails
    with pytest.raises(SoftPromptError) as e:
        train(tiny_config(toy_data, **RUN), tmp_path / "run", backbone=tiny_llama, progress=False)
    message = str(e.value)
    assert "pip install 'softprompt[tensorboard]'" in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # refused before anything was written


@NEEDS_TENSORBOARD
def test_the_cli_flag(tiny_model_dir, toy_data, tmp_path, monkeypatch, capsys):
    common = ["train", "--task", "rte", "--model", str(tiny_model_dir), "--data-dir", str(toy_data), "--tokens", "3",
              "--epochs", "1", "--max-length", "128", "--compute-dtype", "float32", "--quiet"]  # fmt: skip
    assert main([*common, "--report-to", "tensorboard", "--out", str(tmp_path / "a")]) == 0
    assert [s for s, _ in _scalars(tmp_path / "a" / LOG_DIR)["train/loss"]] == [1, 2]  # 12 examples, batches of 8: 2 steps
    capsys.readouterr()
    assert main([*common, "--report-to", "tensorbord", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "softprompt: error: unknown report_to 'tensorbord': expected none or a comma-separated list of tensorboard, mlflow, wandb"
    ]
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert main([*common, "--report-to", "tensorboard,mlflow", "--out", str(tmp_path / "c")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("softprompt: error: report_to mlflow needs the mlflow package") and line.endswith(
        "pip install 'softprompt[mlflow]'"
    )


def test_a_study_config_takes_report_to(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[study]\ntasks = ["rte"]\nseeds = [0]\n[train]\nepochs = 1\nreport_to = "tensorboard, mlflow"\n')
    cfg = load_study_config(p)
    assert cfg.train.report_to == "tensorboard,mlflow" and cfg.run_config("rte", 0).report_to == "tensorboard,mlflow"
    p.write_text('[study]\ntasks = ["rte"]\n[train]\nreport_to = "neptune"\n')
    with pytest.raises(SoftPromptError, match="unknown report_to 'neptune'"):
        load_study_config(p)


@pytest.mark.parametrize(
    "value, names",
    [("none", ()), ("", ()), ("tensorboard", ("tensorboard",)), (" mlflow ,tensorboard,mlflow", ("mlflow", "tensorboard"))],
)
def test_report_to_values(value, names):
    assert report_targets(value) == names
    assert TrainConfig(report_to=value).report_to == (",".join(names) or "none")


@pytest.mark.parametrize("value", ["tb", "none,wandb", "tensorboard;mlflow"])
def test_bad_report_to_values(value):
    with pytest.raises(SoftPromptError, match="report_to"):
        TrainConfig(report_to=value)


def test_step_losses_pool_each_steps_micro_batches():
    """grad_accum 2 over 3 micro-batches an epoch: steps (0,1) and (2) in epoch 0, the same in epoch 1 (steps 3, 4)."""
    where = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    sums = [4.0, 4, 2.0, 2, 3.0, 1, 8.0, 4, 0.0, 4]  # [loss x rows, rows] each
    assert step_losses(where, sums, grad_accum=2, micro_per_epoch=3) == {1: 1.0, 2: 3.0, 3: 1.0}


def test_only_the_main_process_opens_trackers(tmp_path):
    trackers = open_trackers("tensorboard", tmp_path, object(), resumed_step=None, main=False)
    assert not trackers.active and not (tmp_path / LOG_DIR).exists()


def test_a_failing_tracker_is_dropped_with_a_warning_and_the_others_go_on(capsys):
    seen = []

    class Broken:
        def log(self, values, step):
            raise ConnectionError("server went away")

        def close(self, status):
            seen.append(("broken closed", status))

    class Good:
        def log(self, values, step):
            seen.append((step, values))

        def close(self, status):
            seen.append(("good closed", status))

    trackers = Trackers({"mlflow": Broken(), "tensorboard": Good()})
    trackers.log({"train/loss": 1.5, "train/epoch": None, "x": float("nan")}, 3)
    trackers.log({"train/loss": 1.25}, 4)
    trackers.close()
    trackers.close()  # once only
    assert seen == [("broken closed", "FAILED"), (3, {"train/loss": 1.5}), (4, {"train/loss": 1.25}), ("good closed", "FINISHED")]
    assert "report_to mlflow: logging failed (ConnectionError: server went away)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("report_to", "env", "named"),
    [
        ("mlflow", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}, "MLFLOW_TRACKING_URI=http://127.0.0.1:1"),
        ("wandb", {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:1"}, "WANDB_BASE_URL=http://127.0.0.1:1"),
    ],
)
def test_an_unreachable_tracker_server_fails_in_seconds_naming_it(report_to, env, named, tiny_model_dir, toy_data, tmp_path):
    """An unreachable MLFLOW_TRACKING_URI hung `--report-to mlflow` for minutes (MLflow's HTTP retries): now the
    server is asked once, with a short timeout, before anything loads, and refused in one line naming it."""
    import os
    import subprocess

    if importlib.util.find_spec(report_to) is None:
        pytest.skip(f"{report_to} not installed")
    argv = [sys.executable, "-m", "softprompt.cli", "train", "--task", "rte", "--model", str(tiny_model_dir), "--data-dir",
            str(toy_data), "--epochs", "1", "--quiet", "--report-to", report_to, "--out", str(tmp_path / "run")]  # fmt: skip
    started = time.monotonic()
    r = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert r.returncode == 2 and elapsed < 20, (r.returncode, elapsed, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert (
        line.startswith(f"softprompt: error: report_to {report_to}: {named} cannot be reached (")
        and "nothing was trained" in line
    )
    assert not (tmp_path / "run").exists()


def test_a_reachable_tracker_server_passes_and_mlflow_retries_are_bounded(monkeypatch):
    """Any HTTP answer (an error status too) counts as reachable; MLflow's retries and timeout get bounds unless set."""
    import http.server
    import os
    import threading

    from softprompt.training.trackers import MLFLOW_HTTP_LIMITS, check_reachable

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for key in MLFLOW_HTTP_LIMITS:
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own setting is kept
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}")
        check_reachable("mlflow")
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", str(Path("/tmp/mlruns").as_uri()))  # a file store: nothing to ask
        check_reachable("mlflow")
        monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default: nothing to ask
        monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")
        check_reachable("wandb")
    finally:
        server.shutdown()
