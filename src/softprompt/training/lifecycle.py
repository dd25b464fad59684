"""A run directory's life: claimed under its lock (a second `train` into it fails at once), refused when it
holds another run or --resume would mix changed inputs, then run.json says `running` (with who runs it and the
inputs' digests), and finally `interrupted`, `failed` with the reason, or complete (`recipe.finalize`).
Also the progress bar, which lives as long as the epochs do."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.config import LR_PER_STD, TrainConfig
from softprompt.data.inputs import MODEL_REVISION
from softprompt.distributed import DataParallel
from softprompt.errors import SoftPromptError, os_error_line
from softprompt.io import remove_stale_temporaries
from softprompt.locks import directory_lock
from softprompt.model.backbones import Backbone, resolve_compute_dtype
from softprompt.model.deep_prompt import DeepPromptEncoder
from softprompt.records.metrics import Parameters
from softprompt.records.run import (
    RUN_FILE,
    FileFacts,
    InitFacts,
    ModelFacts,
    PromptFacts,
    Resolved,
    RunRecord,
    SourceFacts,
    TaskFacts,
    TokenizerFacts,
    Worker,
)
from softprompt.runs.checkpoint import verify_checkpoint
from softprompt.runs.directory import BEST_PROMPT_FILE, CHECKPOINT_FILE, execution_history, package_versions
from softprompt.runs.state import ABSENT, COMPLETE, CONFLICT, RunState, run_state, warn_unknown_inputs
from softprompt.training.data import TrainData
from softprompt.training.trackers import FAILED, KILLED, Trackers, open_trackers
from softprompt.training.trainables import Trainables

if TYPE_CHECKING:
    from softprompt.evaluate import EvalResult
    from softprompt.training.step import Reading, TrainStep


@contextlib.contextmanager
def owned_run_dir(out: Path, dp: DataParallel) -> Iterator[None]:
    """The run directory is this run's until it returns: the main process holds its lock
    (`softprompt.locks`), so a second `train` into the same --out fails at once, naming this one;
    the other processes of a data-parallel launch learn whether the main one got it."""
    with contextlib.ExitStack() as stack:
        error: SoftPromptError | None = None
        if dp.is_main:
            try:
                stack.enter_context(directory_lock(out, "run directory"))
            except SoftPromptError as e:
                error = e
        if dp.sum([1.0 if error else 0.0])[0] > 0:
            raise error or SoftPromptError(f"run directory {out}: the main process could not claim it")
        yield


def compute_dtype_name(cfg: TrainConfig, backbone: Backbone) -> str:
    """What the config's compute dtype resolves to on the model's device (`bfloat16`, `float32`): run.json records it."""
    return str(resolve_compute_dtype(cfg.compute_dtype, backbone.device)).removeprefix("torch.")


def refuse_changed_run(out: Path, state: RunState) -> None:
    """--resume of a run whose config or inputs changed would mix two runs: refuse, saying what to do."""
    if state.kind != CONFLICT:
        return
    if state.changed:
        raise SoftPromptError(f"{out}: --resume with a different config (changed: {list(state.changed)}); use another --out")
    raise SoftPromptError(
        f"{out}: the {', '.join(state.inputs_changed)} changed since this run started, so --resume would mix old and "
        "new inputs: pass --overwrite (without --resume) to retrain it from scratch, or restore the original files"
    )


class RunComplete(Exception):
    """`resume` of a run that is already complete: nothing to do, nothing is touched (not an error)."""

    def __init__(self, out: Path):
        super().__init__(
            f"{out}: the run is already complete, so there is nothing to resume; nothing was changed (its results are "
            f"in {out / RUN_FILE}; --overwrite without --resume trains it again)"
        )


def claim_run_dir(out: Path, cfg: TrainConfig, dp: DataParallel, inputs: dict, *, resume: bool, overwrite: bool) -> None:
    """Refuse a directory holding another run (unless `overwrite`), or another config or changed inputs
    (on `resume`), or no run at all (on `resume`: a mistyped path); a complete run is `RunComplete` (on `resume`);
    then drop the half-written files of a killed earlier attempt."""
    if resume or not overwrite:
        state = run_state(out, cfg, inputs)
        if not resume and state.kind != ABSENT:
            raise SoftPromptError(
                f"{out} already holds {'an' if str(state.status)[:1] in 'aeiou' else 'a'} {state.status} run: "
                "pass --resume to continue it or choose another --out"
            )
        if resume and state.kind == ABSENT:
            raise SoftPromptError(
                f"--resume {out}: there is no run to resume there (no {RUN_FILE}): check the path, or leave out "
                "--resume to start a new run"
            )
        if resume:
            refuse_changed_run(out, state)
            if state.kind == COMPLETE:
                raise RunComplete(out)
            if state.inputs_unknown and dp.is_main:
                warn_unknown_inputs(out)
            verify_checkpoint(out, warn_unverified=dp.is_main)  # before the model loads
    dp.barrier()  # every process has read what was there before the main process writes
    out.mkdir(parents=True, exist_ok=True)
    if dp.is_main:
        remove_stale_temporaries(out)
        if not resume:  # an overwritten run's checkpoint is not this run's to resume from
            (out / CHECKPOINT_FILE).unlink(missing_ok=True)


def refuse_changed_model(out: Path, cfg: TrainConfig, inputs: dict, backbone: Backbone) -> None:
    """On --resume, once the model is loaded: a run trained on other weights is not continued, nor in another
    precision than it was (`auto`: by device)."""
    here = compute_dtype_name(cfg, backbone)
    refuse_changed_run(out, run_state(out, cfg, {**inputs, MODEL_REVISION: backbone.revision}, compute_dtype=here))


def run_record(cfg: TrainConfig, data: TrainData, trainables: Trainables, *, processes: int) -> RunRecord:
    """run.json of a run being trained: its config, model, tokenizer, task, parameter counts and prompt facts."""
    backbone, task, prompt = data.backbone, data.task, trainables.prompt
    tok = backbone.tokenizer
    counts = data.label_counts()
    weights = data.class_weights(cfg.class_balance)
    record = RunRecord(
        status="running",
        config=cfg.to_dict(),
        model=ModelFacts(
            name=backbone.name,
            source=backbone.source,
            revision=backbone.revision,
            class_name=type(backbone.model).__name__,
            hidden_size=backbone.hidden_size,
            vocab_size=backbone.vocab_size,
        ),
        tokenizer=TokenizerFacts(class_name=type(tok).__name__, name_or_path=str(tok.name_or_path), vocab_size=len(tok)),
        task=TaskFacts(
            name=task.name,
            description=task.description,
            template=task.template,
            label_words=list(task.label_words),
            metric=task.metric,
        ),
        parameters=Parameters.from_dict(trainables.counts(backbone), "parameters"),
        versions=package_versions(),
        processes=processes,
        resolved=Resolved(
            lr=trainables.lr,
            lr_per_std=LR_PER_STD.get(cfg.method) if cfg.lr is None else None,
            prompt_format=data.prompt_format,
            compute_dtype=compute_dtype_name(cfg, backbone),
            class_weights=None if weights is None else [round(w, 6) for w in weights.tolist()],  # --class-balance
        ),
        train_label_counts=counts,
        dev_examples=len(data.dev),
    )
    if prompt is not None:
        source, encoder = trainables.source, trainables.encoder
        is_deep = isinstance(encoder, DeepPromptEncoder)
        record.prompt = PromptFacts(
            n_tokens=prompt.n_tokens,
            dim=prompt.dim,
            init=InitFacts.from_dict(asdict(prompt.init), "prompt.init"),
            init_tokens=[tok.decode([i]) for i in prompt.init.token_ids],
            source=None if source is None else SourceFacts.from_dict(source, "prompt.source"),
            prefix_shape=[encoder.shape.layers, encoder.shape.kv_heads, encoder.shape.head_dim] if is_deep else None,
        )
    return record


class Progress:
    """The progress bar of the micro-batches (tqdm on the main process when asked; otherwise it does nothing)."""

    def __init__(self, bar: Any = None):
        self.bar = bar

    @classmethod
    def open(cls, enabled: bool, *, total: int, initial: int, desc: str) -> Progress:
        if not enabled:
            return cls()
        from tqdm.auto import tqdm

        return cls(tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True))

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show_loss(self, losses: list[float], lr: float) -> None:
        """The mean of the last 20 read losses of this epoch and the learning rate, beside the bar; with no loss read
        yet the bar keeps the last one it showed (never a loss made up from no losses)."""
        if self.bar is not None and losses:
            recent = losses[-20:]
            self.bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr:.2e}")

    def epoch_done(self, epoch: int, record: dict, res: EvalResult, dev: EvalResult | None, metric: str) -> None:
        """One line above the bar per epoch: its training loss and validation (and dev) metric."""
        if self.bar is not None:
            dev_text = f"  dev {dev.metric(metric):.4f}" if dev is not None else ""
            self.bar.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  val {metric} {res.metric(metric):.4f}{dev_text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunLifecycle:
    """run.json while the run trains (`record`: running, then interrupted or failed), --report-to's trackers,
    the digest of the checkpoint on disk, and the progress bar. Only the main process writes."""

    def __init__(self, cfg: TrainConfig, out: Path, data: TrainData, trainables: Trainables, dp: DataParallel):
        self.cfg, self.out, self.data, self.trainables, self.dp = cfg, out, data, trainables, dp
        self.main = dp.is_main
        self.record = RunRecord()
        self.checkpoint_sha256: str | None = None  # of the checkpoint on disk, resumed from or written (run.json records it)
        self.trackers = Trackers()  # --report-to's, opened by start() on the main process
        self.bar = Progress()

    def start(self, state: dict[str, Any], inputs: dict[str, Any] | None = None, *, resumed: bool = False) -> None:
        """run.json says running (and who runs it: a cluster's worker, a launcher's main process), with
        the digests of the inputs (`softprompt.data.inputs`) that --resume and a study compare, and how each
        session ran (`executions`: a resume may change the execution settings)."""
        self.record = run_record(self.cfg, self.data, self.trainables, processes=self.dp.world)
        self.record.inputs = inputs
        if self.checkpoint_sha256 is not None:  # the resumed checkpoint stays verifiable
            self.record.artifacts = {CHECKPOINT_FILE: FileFacts(sha256=self.checkpoint_sha256)}
        # --report-to's trackers, before run.json says running (one that cannot start fails the run first); a run
        # resumed from a checkpoint continues their runs after its step
        step = state["optimizer_step"]
        resumed_step = step if step or state["history"] else None
        self.trackers = open_trackers(self.cfg.report_to, self.out, self.record, resumed_step=resumed_step, main=self.main)
        if self.main:
            self.record.executions = execution_history(self.out, self.cfg, resumed=resumed)
        if self.main:
            self.write_running()
            prompt = self.trainables.prompt_to_save()
            if prompt is not None and not (self.out / BEST_PROMPT_FILE).exists():
                prompt.save(self.out / BEST_PROMPT_FILE)

    def open_progress(self, enabled: bool, *, micro_per_epoch: int, state: dict[str, Any]) -> None:
        """The bar over every micro-batch of the run, from where the state says."""
        self.bar = Progress.open(
            enabled and self.main,
            total=micro_per_epoch * self.cfg.epochs,
            initial=state["epoch"] * micro_per_epoch + state["micro_step"],
            desc=f"train {self.data.task.name} seed {self.cfg.seed}",
        )

    @contextlib.contextmanager
    def outcome_recorded(self) -> Iterator[None]:
        """If the block stops the run, run.json says so: `interrupted` (Ctrl-C, SIGTERM) or `failed` with
        the reason (divergence, a full disk, out of memory), as far as run.json can still be written.
        A filesystem failure becomes one line naming the path; the last checkpoint is kept for --resume."""
        try:
            yield
        except KeyboardInterrupt:
            self.mark("interrupted")
            raise
        except OSError as e:
            reason = os_error_line(e)
            self.mark("failed", reason)
            raise SoftPromptError(
                f"{reason}; the run stopped and {self.out} keeps its last checkpoint: fix this, then resume it "
                "(train --resume, or rerun the study)"
            ) from None
        except Exception as e:
            self.mark("failed", str(e) if isinstance(e, SoftPromptError) else f"{type(e).__name__}: {e}")
            raise
        finally:
            self.bar.close()

    def mark(self, status: str, error: str | None = None) -> None:
        self.trackers.close(KILLED if status == "interrupted" else FAILED)
        if self.main:
            with contextlib.suppress(OSError):  # the disk may be full: the checkpoint still resumes
                replace(self.record, status=status, error=error).write(self.out)

    def log_losses(self, reading: Reading, step: TrainStep) -> None:
        """Each read optimiser step's loss and learning rate, to --report-to's trackers."""
        per_epoch, accum = step.micro_per_epoch, self.cfg.grad_accum
        self.trackers.log_losses(
            reading.where, reading.values, grad_accum=accum, micro_per_epoch=per_epoch, scheduler=step.scheduler
        )

    def record_checkpoint(self, digest: str, *, replaced: bool = False) -> None:
        """run.json's digest of the checkpoint, which --resume verifies: the new one beside the old while the file
        is replaced (a kill in between leaves either file), then the new one alone."""
        recorded = self.record.file_facts(CHECKPOINT_FILE)
        old = recorded.sha256 if recorded else None
        facts = FileFacts(sha256=digest, previous_sha256=None if replaced or old in (None, digest) else old)
        self.record.artifacts = {**(self.record.artifacts or {}), CHECKPOINT_FILE: facts}
        self.checkpoint_sha256 = digest
        self.write_running()

    def write_running(self) -> None:
        replace(self.record, worker=Worker(host=socket.gethostname(), pid=os.getpid())).write(self.out)
