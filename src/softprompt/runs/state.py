"""What a run directory holds for a config: `run_state` (absent / complete / resumable / conflict).

`run_state` is the one rule for whether a directory may be reused (train, study and baselines all
ask it): it compares the config's identity (`TrainConfig.identity_dict`, not how the run is executed:
docs/reliability.md, "Which settings may change on resume") and the inputs' digests (`softprompt.data.inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.config import (
    DEEP_LR_PER_STD,
    HARD_LR_PER_STD,
    LEGACY_VALUES,
    PROMPT_LR_PER_STD,
    RUN_INIT,
    TrainConfig,
    canonical_dtype,
    class_balance_on,
)
from softprompt.data.inputs import MODEL_REVISION, file_sha256, input_changes
from softprompt.errors import warn
from softprompt.model.prompt import parse_run_init
from softprompt.records.run import RUN_FILE, RunRecord
from softprompt.runs.directory import observed_status, prompt_file_name


def _init_source_changed(cfg: TrainConfig, record: RunRecord) -> bool:
    """A `run:` init whose source prompt file now holds another prompt than the one the run started from."""
    if not cfg.init.startswith(RUN_INIT):
        return False
    facts = record.prompt
    recorded = facts.source.sha256 if facts and facts.source else None
    path, which = parse_run_init(cfg.init)
    file = path / prompt_file_name(which)
    return recorded is not None and file.exists() and file_sha256(file) != recorded


# The default prompt learning rate, relative to the embedding scale, of runs that did not record it (issue #14's
# first recipe); runs before that stored their learning rate in the config itself.
LEGACY_LR_PER_STD = 0.025


def _default_lr_changed(cfg: TrainConfig, record: RunRecord) -> bool:
    """A prompt (or hard prompt) run trained at the default learning rate (lr left out) is another run once the default
    changes: run.json records the factor it used (`resolved.lr_per_std`), so a study retrains it instead of reusing it."""
    factor = {"prompt": PROMPT_LR_PER_STD, "hard": HARD_LR_PER_STD, "deep": DEEP_LR_PER_STD}.get(
        cfg.method
    )  # (read now: tests patch them)
    if factor is None or cfg.lr is not None or record.config.get("lr") is not None or record.resolved is None:
        return False  # (a record with nothing resolved says nothing about its rate)
    resolved = record.resolved
    return (resolved.lr_per_std if resolved.present("lr_per_std") else LEGACY_LR_PER_STD) != factor


def _class_balance_changed(cfg: TrainConfig, record: RunRecord) -> bool:
    """Whether `class_balance` weights the loss in one run and not the other: `auto` is `on` for a two-class
    macro-F1 task and `off` otherwise, so `auto` vs `off` on any other task is the same run (a run from before the
    option counts as `off`). Unknown task metric or classes: the values themselves are compared."""
    metric = record.task.metric if record.task else None
    classes = len(record.task.label_words or []) if record.task else 0
    if metric is None or not classes:
        return True
    saved = record.config.get("class_balance", LEGACY_VALUES["class_balance"])
    return class_balance_on(saved, metric, classes) != class_balance_on(cfg.class_balance, metric, classes)


def identity_changes(
    cfg: TrainConfig, record: RunRecord, inputs: dict[str, Any] | None = None, compute_dtype: str | None = None
) -> list[str]:
    """What makes `cfg` another run than `record`'s, in words: its identity fields that differ
    (`TrainConfig.differences`; execution settings never count), except two rules for settings whose
    effect depends on how the run is executed:

    - the compute dtype is compared by what it computed in: `auto` resolves by device (bf16 on a GPU,
      maybe fp32 on a CPU), and run.json records the resolved one (`resolved.compute_dtype`). `auto` vs the
      dtype it resolved to is the same run; `auto` resolving to another dtype here (`compute_dtype`) is
      not: a run is never continued in another precision. Unknown here (no model loaded) is not a change.
    - a changed `data_dir` is the same run only when every data split's digest is known on both sides (the
      digests then prove the data is the same); an unpinned Hub split or a run older than the digests cannot.
    """
    changed = [k for k in cfg.differences(record.config) if k != "compute_dtype"]
    if "class_balance" in changed and not _class_balance_changed(cfg, record):
        changed.remove("class_balance")
    dtype = _compute_dtype_change(cfg, record, compute_dtype)
    if dtype:
        changed.append(dtype)
    if record.config.get("data_dir") != cfg.data_dir and not data_digests_known(record.inputs, inputs):
        changed.append("data_dir (the data's digests cannot show that the new folder holds the same data)")
    return sorted(changed)


def _compute_dtype_change(cfg: TrainConfig, record: RunRecord, here: str | None) -> str | None:
    """`compute_dtype` (how it differs) when `cfg` would compute in another dtype than the run did; None when the same or unknown."""
    saved_cfg = record.config.get("compute_dtype", "auto")
    saved = (record.resolved and record.resolved.compute_dtype) or (canonical_dtype(saved_cfg) if saved_cfg != "auto" else None)
    if saved is None:  # a run from before run.json recorded the resolved dtype: its config is all there is
        return "compute_dtype" if saved_cfg != cfg.compute_dtype else None
    mine = canonical_dtype(cfg.compute_dtype) if cfg.compute_dtype != "auto" else here
    if mine is None or mine == saved:
        return None
    if cfg.compute_dtype == "auto":
        return f"compute_dtype (auto is {mine} here; the run computed in {saved}: pass --compute-dtype {saved} to continue it)"
    return f"compute_dtype ({mine}; the run computed in {saved})"


def data_digests_known(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """Whether both sides know every data split's digest (so `input_changes` can tell whether the data changed)."""
    old, new = (saved or {}).get("data") or {}, (current or {}).get("data") or {}
    return bool(old) and bool(new) and all(old.get(s) and new.get(s) for s in set(old) | set(new))


ABSENT, COMPLETE, RESUMABLE, CONFLICT = "absent", "complete", "resumable", "conflict"


@dataclass(frozen=True)
class RunState:
    """What a run directory holds for a config and its inputs: nothing (absent), its finished run
    (complete), its unfinished run (resumable: running, interrupted or failed), or a run of another
    config (conflict, `changed` fields) or of changed inputs (conflict, `inputs_changed`: "train
    data", "task definition", "model revision"). `inputs_unknown`: the run predates input digests."""

    kind: str
    status: str | None = None
    changed: tuple[str, ...] = ()
    inputs_changed: tuple[str, ...] = ()
    inputs_unknown: bool = False

    def conflict(self) -> str:
        """The conflict in words: `a different config (changed: [...])` or `changed inputs (train data)`."""
        if self.changed:
            return f"a different config (changed: {list(self.changed)})"
        return f"changed inputs ({', '.join(self.inputs_changed)} changed since it was trained)"


def run_state(
    out: str | Path, cfg: TrainConfig, inputs: dict[str, Any] | None = None, *, compute_dtype: str | None = None
) -> RunState:
    """The state of `out` for `cfg`; with `inputs` (`softprompt.data.inputs.task_inputs`, plus the model
    revision where known) a run computed from other data or another task definition is a conflict.
    Only the config's identity is compared (`identity_changes`); `compute_dtype` is what the config's
    compute dtype resolves to here (known once the model is loaded: `auto` depends on the device)."""
    if not (Path(out) / RUN_FILE).exists():
        return RunState(ABSENT)
    record = RunRecord.read(out)
    status = observed_status(record)
    saved = {**(record.inputs or {}), MODEL_REVISION: record.model.revision if record.model else None}
    inputs_changed = tuple(input_changes(saved, inputs)) if inputs is not None else ()
    unknown = inputs is not None and record.inputs is None
    changed = tuple(identity_changes(cfg, record, inputs, compute_dtype))
    if not changed and _init_source_changed(cfg, record):
        changed = ("init source",)
    if not changed and _default_lr_changed(cfg, record):
        changed = ("lr (the default learning rate changed since this run)",)
    if changed or inputs_changed:
        return RunState(CONFLICT, status, changed, inputs_changed, unknown)
    return RunState(COMPLETE if status == "complete" else RESUMABLE, status, inputs_unknown=unknown)


def warn_unknown_inputs(out: str | Path) -> None:
    """A run made before run.json recorded input digests is trusted, with this note."""
    warn(
        f"{Path(out) / RUN_FILE} predates input digests: its data and task definition are assumed unchanged "
        "(retrain it, e.g. with --overwrite, to have them checked)"
    )
