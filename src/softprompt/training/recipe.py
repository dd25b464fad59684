"""One run, top to bottom: `train()` hashes the inputs -> locks and claims the run directory -> prepares the
data -> builds the trainables -> sets up the loop (optimiser, schedule, resumed state; what is scored later
tokenized now) -> fits the epochs (`loop.TrainingLoop.fit`) -> finalizes (artifacts, reference evaluations,
run.json complete). The loop checkpoints at each epoch end, every `checkpoint_every` steps and on Ctrl-C or
SIGTERM; `resume` continues from the checkpoint to the same result an uninterrupted run gives, and refuses a
run whose inputs changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.config import PROMPT_METHODS, TrainConfig
from softprompt.data.inputs import task_inputs
from softprompt.distributed import setup_data_parallel
from softprompt.errors import SoftPromptError
from softprompt.evaluate import EVAL_SEED, EvalResult
from softprompt.io import write_json
from softprompt.model.backbones import Backbone, resolve_device
from softprompt.model.prompt import PROMPT_FILE, SoftPrompt
from softprompt.model.reparam import HardPromptEncoder, hard_prompt_facts
from softprompt.records.metrics import Best, EvalMetrics
from softprompt.records.run import FileFacts, HardPromptFacts, Selection, Stopped
from softprompt.runs.baselines import reference_results
from softprompt.runs.checkpoint import save_trainables
from softprompt.runs.directory import BEST_PROMPT_FILE, CHECKPOINT_FILE, HARD_PROMPT_FILE, WEIGHTS_FILES, artifact_facts
from softprompt.score_store import ScoreStore
from softprompt.scoring import ScoringOptions
from softprompt.training.data import prepare_data
from softprompt.training.lifecycle import claim_run_dir, owned_run_dir, refuse_changed_model
from softprompt.training.loop import TrainingLoop
from softprompt.training.trackers import FINISHED, require_trackers
from softprompt.training.trainables import build_trainables, trained_init_source


@dataclass
class TrainResult:
    out: Path
    final: EvalResult
    best: dict[str, Any]
    baselines: dict[str, EvalResult]
    history: list[dict[str, Any]]
    parameters: dict[str, int]
    hard_prompt: HardPromptFacts | None = None  # method hard: run.json's hard_prompt (the discrete prompt, its text's score)


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    backbone: Backbone | None = None,
    progress: bool = True,
    baselines: bool = True,
    scoring: ScoringOptions | None = None,
    trust_remote_code: bool = False,
    scores: ScoreStore | None = None,
) -> TrainResult:
    """Train one run into `out` and evaluate it; returns its final metrics.

    Under `accelerate launch` with N processes, `cfg.batch_size` is per process (global batch
    N x batch_size), each process scores its share of every batch and of every evaluation, and
    only the main process writes into `out` (see `softprompt.distributed`). `baselines` adds the
    no-prompt and English-prompt evaluations to a prompt run; `scoring` (the scorer's options, switches
    included) replaces `ScoringOptions(strategy=cfg.scoring_strategy)`, whose strategy it must match
    unless the config says `auto`. `trust_remote_code` lets a Hub model run its own code when it is loaded
    here (never on unless asked: `softprompt train --trust-remote-code`). `scores`: evaluation results shared with
    other processes (`score_store`; a study's), used by the prompt methods only (their backbone stays frozen).
    """
    out = Path(out)
    source = trained_init_source(cfg)
    require_trackers(cfg.report_to)  # a missing tracker package (--report-to) fails before anything loads
    dp = setup_data_parallel(cfg.device)
    if backbone is None:
        resolve_device(cfg.device)  # a device this machine lacks fails before anything is written
    inputs = task_inputs(cfg.task, cfg.data_dir)  # reads every data file the run needs: a missing one fails now
    with owned_run_dir(out, dp):
        claim_run_dir(out, cfg, dp, inputs, resume=resume, overwrite=overwrite)
        torch.manual_seed(cfg.seed)
        data = prepare_data(cfg, backbone, dp, trust_remote_code=trust_remote_code)
        if resume:  # the model is known now
            refuse_changed_model(out, cfg, inputs, data.backbone)
        trainables = build_trainables(cfg, data, dp, source)
        loop = TrainingLoop(cfg, out, data, trainables, dp, scoring=scoring, progress=progress, store=scores)
        references = baselines and cfg.method in PROMPT_METHODS
        loop.evals.preflight(references=references)
        if resume:
            loop.resume()
        loop.start(inputs, resumed=resume)
        loop.fit()
        with loop.run.outcome_recorded():
            return finalize(loop, references=references)


def finalize(loop: TrainingLoop, *, references: bool) -> TrainResult:
    """Final artifacts, the no-prompt/English-prompt reference evaluations, run.json complete, no checkpoint."""
    cfg, out, task, trainables = loop.cfg, loop.out, loop.data.task, loop.trainables
    # what loading the prompts checks them against (the state holds them as plain JSON)
    artifacts = {k: FileFacts.from_dict(v, f"artifacts.{k}") for k, v in (loop.state.get("artifacts") or {}).items()}
    prompt = trainables.prompt_to_save()
    if prompt is not None and loop.main:
        prompt.save(out / PROMPT_FILE)
        for name in (PROMPT_FILE, BEST_PROMPT_FILE):
            if name == PROMPT_FILE or name not in artifacts:  # (a checkpoint older than these records)
                artifacts[name] = artifact_facts(out / name, prompt)
    elif loop.main:
        save_trainables(out / WEIGHTS_FILES[cfg.method], trainables.params)
    final = EvalResult(**loop.state["last_eval"])  # the last epoch's evaluation scored exactly these parameters
    hard = hard_prompt_outcome(loop) if cfg.method == "hard" else None
    base: dict[str, EvalResult] = {}
    if references:
        hard_prompt = cfg.init_text or task.description
        base = reference_results(loop.evals.evaluator, task, limit=cfg.max_eval, seed=EVAL_SEED, hard_prompt=hard_prompt)
    encoded = loop.data.encoded
    record = replace(
        loop.run.record,
        status="complete",
        final=EvalMetrics.from_dict(final.metrics(), "final"),
        best=None if loop.state["best"] is None else Best.from_dict(loop.state["best"], "best"),
        selection=None if loop.state.get("selection") is None else Selection.from_dict(loop.state["selection"], "selection"),
        baselines={k: EvalMetrics.from_dict(v.metrics(), f"baselines.{k}") for k, v in base.items()},
        artifacts=artifacts or None,
        hard_prompt=hard,
        train_examples=len(encoded),
        train_truncated=sum(1 for e in encoded if e.truncated),
        wall_time_s=round(time.perf_counter() - loop.started, 2),
        stopped=Stopped.from_dict(loop.state["stopped"], "stopped") if loop.state.get("stopped") else None,
    )
    if loop.main:
        record.write(out)
        # A complete run needs no checkpoint (for full fine-tuning it holds the weights and two Adam moments).
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    loop.run.trackers.close(FINISHED)
    loop.dp.barrier()  # the run directory is complete before any process returns
    counts = loop.run.record.parameters
    parameters = counts.to_dict() if counts is not None else {}
    return TrainResult(out, final, loop.state["best"], base, loop.state["history"], parameters, hard)


def hard_prompt_outcome(loop: TrainingLoop) -> HardPromptFacts:
    """A hard run's discrete prompt, last and best (ids, tokens, text, whether the text tokenizes back to the ids),
    and the last one's text scored as a typed hard prompt on the validation subsample (`text_final`; `final` is
    its exact token rows, at the soft prompt's place). Written to hard_prompt.json (main process)."""
    cfg, tok, encoder = loop.cfg, loop.data.backbone.tokenizer, loop.trainables.encoder
    assert isinstance(encoder, HardPromptEncoder)
    last = hard_prompt_facts(encoder.ids(), tok)
    best_file = loop.out / BEST_PROMPT_FILE
    best = hard_prompt_facts(encoder.ids(SoftPrompt.load(best_file).weight), tok) if best_file.exists() else None
    out: dict[str, Any] = {"projection": "cosine", "last": last, "best": best}
    try:  # a text longer than --max-length allows is recorded, not a failed run: the exact rows were scored
        res = loop.evals.evaluator.evaluate(loop.data.task, None, hard_prompt=last["text"], limit=cfg.max_eval, seed=EVAL_SEED)
        out["text_final"] = res.metrics()
    except SoftPromptError as e:
        out["text_error"] = str(e)
    facts = HardPromptFacts.from_dict(out, "hard_prompt")
    if loop.main:
        write_json(loop.out / HARD_PROMPT_FILE, facts.to_dict())
    return facts
