"""Training metrics where researchers already look: TensorBoard, MLflow, Weights & Biases (`report_to`).

metrics.jsonl stays a run's own record; a tracker gets a copy while training goes on: the training loss and
learning rate of every optimiser step (`train/loss`, `train/learning_rate`), every evaluation's metrics
(`eval/validation/accuracy`, `eval/dev/f1_macro`, ..., with `train/epoch`), and the run's config as
hyperparameters. Where each goes by default: TensorBoard event files in `OUT/logs`, an MLflow file store in
`OUT/mlruns` (or `$MLFLOW_TRACKING_URI`), a W&B run in `OUT/logs/wandb`, offline (unless `$WANDB_MODE`).

Each tracker is driven through its library's own API, not Accelerate's trackers: those ask Accelerate's
global process state on every call (a single-process run never starts it here) and MLflow's go through
mlflow's global active run (a study trains many runs in one process). Here every call names its run, only
the main process of a data-parallel launch opens any, and a resumed run continues its own logs: TensorBoard
hides the steps logged after the checkpoint (`purge_step`), MLflow and W&B reopen the same run by its id
(kept in `OUT/logs/trackers.json`). A tracker that fails while training is warned about and dropped: the
run itself goes on.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from softprompt.config import report_targets
from softprompt.errors import SoftPromptError, warn
from softprompt.io import read_json, resolve_path, write_json

if TYPE_CHECKING:
    from softprompt.evaluate import EvalResult
    from softprompt.records.run import RunRecord

LOG_DIR = "logs"  # OUT/logs: TensorBoard's event files, W&B's offline run, trackers.json
MLFLOW_DIR = "mlruns"  # OUT/mlruns: MLflow's file store unless $MLFLOW_TRACKING_URI names another
IDS_FILE = "trackers.json"  # the MLflow and W&B run ids a resumed run reopens
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # report_to name -> module to import
EVAL_METRICS = ("accuracy", "f1_macro", "acc_norm", "loss")  # an EvalResult's numbers a tracker gets
FINISHED, KILLED, FAILED = "FINISHED", "KILLED", "FAILED"  # how a run ended (MLflow's words)
MLFLOW_BATCH = 100  # MLflow takes at most 100 params per log_batch call
MLFLOW_PARAM_LENGTH = 6000  # and values of at most 6000 characters (a long init text is cut; run.json has it whole)
PROBE_TIMEOUT_S = 5.0  # how long a tracker's server may take to accept a connection before the run is refused
# MLflow retries a failing HTTP call 7 times with a growing backoff, 120 s each (minutes for one call): bounded here
MLFLOW_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def require_trackers(report_to: str) -> None:
    """Import the package of every tracker `report_to` names, so a missing one fails before anything loads
    or trains, in one line that names the extra to install; and a tracker's server that cannot be reached fails
    as soon, in one line naming its address (`check_reachable`)."""
    for name in report_targets(report_to):
        try:
            importlib.import_module(PACKAGES[name])
        except ImportError as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SoftPromptError(
                f"report_to {name} needs the {PACKAGES[name]} package ({reason}): pip install 'softprompt[{name}]'"
            ) from None
        check_reachable(name)


def tracker_server(name: str) -> tuple[str, str] | None:
    """(the setting that names it, its URL) of the server tracker `name` talks to, or None where it writes files:
    MLflow's $MLFLOW_TRACKING_URI when it is http(s), W&B's $WANDB_BASE_URL (or api.wandb.ai) when $WANDB_MODE is
    online."""
    if name == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI") or ""
        return ("MLFLOW_TRACKING_URI", uri) if urlsplit(uri).scheme in ("http", "https") else None
    if name == "wandb" and (os.environ.get("WANDB_MODE") or "offline") in ("online", "run"):
        return "WANDB_BASE_URL", os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    return None


def check_reachable(name: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, in one line naming the URL, a tracker server that does not answer an HTTP request within `timeout`
    seconds (name resolution included; any HTTP answer, an error status too, counts): MLflow's client would retry an unreachable server for minutes before
    training started. MLflow's own retries and request timeout are bounded for our calls as well (unless set), so
    a server lost mid-run costs a few seconds per call before the tracker is dropped with a warning."""
    server = tracker_server(name)
    if server is None:
        return
    if name == "mlflow":
        for key, value in MLFLOW_HTTP_LIMITS.items():
            os.environ.setdefault(key, value)
    setting, url = server
    outcome: list[BaseException | None] = []

    def ask() -> None:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(url, timeout=timeout).close()  # noqa: S310 (an http(s) URL: tracker_server)
            outcome.append(None)
        except urllib.error.HTTPError:  # the server answered (401, 404, ...): it is there
            outcome.append(None)
        except (OSError, ValueError) as e:  # refused, unknown host, timed out, not a URL
            outcome.append(getattr(e, "reason", None) if isinstance(getattr(e, "reason", None), BaseException) else e)

    probe = threading.Thread(target=ask, daemon=True)  # name resolution has no timeout of its own
    probe.start()
    probe.join(timeout)
    error = outcome[0] if outcome else TimeoutError(f"no answer within {timeout:g} s")
    if error is not None:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        instead = "unset it to log to OUT/mlruns" if name == "mlflow" else "set WANDB_MODE=offline"
        raise SoftPromptError(
            f"report_to {name}: {setting}={url} cannot be reached ({reason}); nothing was trained: start the server, "
            f"fix {setting}, or {instead}"
        )


def hyperparameters(record: RunRecord) -> dict[str, str | int | float | bool]:
    """The run's config (every TrainConfig field) and what was resolved from it (the learning rate, the prompt
    format), the model and the parameter counts, as flat name -> scalar pairs; nested tables' keys are joined
    with "." ("resolved.lr", "model.name" beside the config's "model")."""
    model = record.model.to_dict() if record.model else {}
    facts = {
        name: part.to_dict() if part else {} for name, part in (("resolved", record.resolved), ("parameters", record.parameters))
    }
    facts["model"] = {k: model[k] for k in ("name", "revision") if k in model}
    flat: dict[str, str | int | float | bool] = {}
    _flatten(record.config or {}, "", flat)
    _flatten(facts, "", flat)
    return flat


def _flatten(table: dict[str, Any], prefix: str, into: dict[str, str | int | float | bool]) -> None:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _flatten(value, f"{name}.", into)
        elif isinstance(value, bool | int | float | str):
            into[name] = value
        else:  # None, an empty table, a list: as text
            into[name] = json.dumps(value)


def step_losses(where: list[tuple[int, int]], sums: list[float], *, grad_accum: int, micro_per_epoch: int) -> dict[int, float]:
    """The loss of each optimiser step (numbered from 1 over the whole run) that the read micro-batches `where`
    ((epoch, micro-batch) each, [loss x rows, rows] at sums[2k], sums[2k+1]) belong to: their rows pooled, the
    mean over the step's global batch. A step's micro-batches are read together (reads follow optimiser steps)."""
    per_epoch = -(-micro_per_epoch // grad_accum)
    totals: dict[int, list[float]] = {}
    for k, (epoch, micro) in enumerate(where):
        total = totals.setdefault(epoch * per_epoch + micro // grad_accum + 1, [0.0, 0.0])
        total[0] += sums[2 * k]
        total[1] += sums[2 * k + 1]
    return {step: loss / rows for step, (loss, rows) in totals.items() if rows}


class Trackers:
    """The trackers of one run (none: every call does nothing). Closed once, with how the run ended."""

    def __init__(self, trackers: dict[str, Any] | None = None) -> None:
        self.trackers = dict(trackers or {})

    @property
    def active(self) -> bool:
        return bool(self.trackers)

    def log(self, values: dict[str, float | None], step: int) -> None:
        """Scalars at an optimiser step (None and non-finite values are left out)."""
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
        if values:
            self._each("log", values, step)

    def log_losses(
        self, where: list[tuple[int, int]], sums: list[float], *, grad_accum: int, micro_per_epoch: int, scheduler: Any
    ) -> None:
        """Each read step's loss and the learning rate it was taken with (LambdaLR: base lr x the schedule's factor
        at step - 1, as the optimiser used it), in step order."""
        if not self.trackers:
            return
        losses = step_losses(where, sums, grad_accum=grad_accum, micro_per_epoch=micro_per_epoch)
        for step, loss in sorted(losses.items()):
            lr = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step - 1)
            self.log({"train/loss": loss, "train/learning_rate": lr}, step)

    def log_evaluation(self, step: int, epoch: float, validation: EvalResult, dev: EvalResult | None) -> None:
        """One evaluation point: the validation subsample's metrics, the dev split's if any, and the epoch."""
        if not self.trackers:
            return
        values: dict[str, float | None] = {"train/epoch": float(epoch)}
        for split, res in (("validation", validation), ("dev", dev)):
            if res is not None:
                values.update({f"eval/{split}/{m}": getattr(res, m, None) for m in EVAL_METRICS})
        self.log(values, step)
        self._each("flush")

    def close(self, status: str = FINISHED) -> None:
        """End every tracker's run with `status` (FINISHED, KILLED, FAILED); later calls do nothing."""
        trackers, self.trackers = self.trackers, {}
        for name, tracker in trackers.items():
            try:
                tracker.close(status)
            except Exception as e:  # the run's own outcome stands: a tracker's close never replaces it
                warn(f"report_to {name}: closing its run failed ({_one_line(e)})")

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:
                warn(f"report_to {name}: logging failed ({_one_line(e)}); it gets nothing more from this run")
                self.trackers.pop(name, None)
                with contextlib.suppress(Exception):
                    tracker.close(FAILED)


def open_trackers(report_to: str, out: Path, record: RunRecord, *, resumed_step: int | None, main: bool = True) -> Trackers:
    """The trackers `report_to` names for the run in `out` (none on a process other than the main one). A
    resumed run (`resumed_step`: the checkpoint's optimiser step) continues its MLflow and W&B runs and its
    TensorBoard log; a fresh one starts new runs. Fails in one line naming the tracker if one cannot start."""
    names = report_targets(report_to)
    if not main or not names:
        return Trackers()
    log_dir = out / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    ids_path = log_dir / IDS_FILE
    ids = _saved_ids(ids_path) if resumed_step is not None else {}
    params, opened = hyperparameters(record), Trackers()
    for name in names:
        try:
            opened.trackers[name] = OPENERS[name](out, params, ids.get(name), resumed_step)
        except Exception as e:
            opened.close(FAILED)
            raise SoftPromptError(f"report_to {name}: could not start logging for {out} ({_one_line(e)})") from None
        if getattr(opened.trackers[name], "run_id", None):
            ids[name] = opened.trackers[name].run_id
    if ids:
        write_json(ids_path, ids)
    return opened


def _one_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _saved_ids(path: Path) -> dict[str, str]:
    """The run ids trackers.json holds (none if it is missing or unreadable: the trackers then start new runs)."""
    try:
        ids = read_json(path) if path.exists() else {}
    except (OSError, ValueError, SoftPromptError):
        return {}
    return {k: v for k, v in ids.items() if isinstance(v, str)} if isinstance(ids, dict) else {}


class TensorBoardTracker:
    """Event files in OUT/logs (torch's SummaryWriter). A fresh run hides whatever an earlier run in the same
    directory logged (purge from step 0); a resumed one the steps after its checkpoint, which it repeats."""

    def __init__(self, out: Path, params: dict[str, Any], run_id: str | None, resumed_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        purge = 0 if resumed_step is None else resumed_step + 1
        self.writer = SummaryWriter(str(out / LOG_DIR), purge_step=purge, flush_secs=30)
        if resumed_step is None:
            rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
            self.writer.add_text("config", f"| setting | value |\n|---|---|\n{rows}", 0)
            metrics = {f"eval/{split}/{m}": 0.0 for split in ("validation", "dev") for m in EVAL_METRICS}
            for summary in hparams(params, {"train/loss": 0.0, **metrics}):  # the HPARAMS tab: settings and last values
                self.writer.file_writer.add_summary(summary)

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowTracker:
    """A run in MLflow, through an explicit client (no global active run): the file store OUT/mlruns unless
    $MLFLOW_TRACKING_URI names another store or server; experiment $MLFLOW_EXPERIMENT_NAME or `softprompt`."""

    def __init__(self, out: Path, params: dict[str, Any], run_id: str | None, resumed_step: int | None) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or resolve_path(out / MLFLOW_DIR).as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store behind this switch; a run directory's own store is asked for
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is not None and self._reopen(run_id):
            return
        experiment = self._experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "softprompt")
        tags = {"softprompt.run_dir": str(resolve_path(out))}
        self.run_id = self.client.create_run(experiment, run_name=out.name, tags=tags).info.run_id
        self._log_params(params)

    def _reopen(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception:  # gone from the store: a new run
            return False
        self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        return True

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another process created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MLFLOW_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MLFLOW_BATCH])

    def log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def flush(self) -> None:
        pass  # every log_batch is written at once

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbTracker:
    """A W&B run in OUT/logs/wandb, offline unless $WANDB_MODE says otherwise (`wandb sync` uploads it later);
    project $WANDB_PROJECT or `softprompt`. Steps go as the `train/global_step` metric, so a resumed run's
    repeated steps are not dropped by W&B's own ever-increasing step."""

    def __init__(self, out: Path, params: dict[str, Any], run_id: str | None, resumed_step: int | None) -> None:
        import wandb

        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "softprompt",
            name=out.name,
            id=self.run_id,
            resume="allow",
            dir=str(out / LOG_DIR),
            config=params,
            mode=os.environ.get("WANDB_MODE") or "offline",
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", disable_git=True, x_disable_stats=True),
        )
        self.run.define_metric("*", step_metric="train/global_step")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "train/global_step": step})

    def flush(self) -> None:
        pass  # W&B streams to its own process

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == FINISHED else 1)


OPENERS = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}
