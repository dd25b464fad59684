"""The training configuration and every list of choices, in one torch-free module.

`TrainConfig` is the only training schema. Each field carries its command-line help and choices in
its metadata: `softprompt train` makes one flag per field (`softprompt.cli.train`), a study config's
`[train]` table is parsed into it, a baseline's config is a `dataclasses.replace` of it, and a run
saves it whole in run.json (resume checks and study cache keys compare it). Adding a training option
is adding a field here plus the code that uses it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from softprompt.errors import SoftPromptError

METHODS = ("prompt", "finetune", "lora")  # what a run trains
TRAINED_BASELINES = ("finetune", "lora")
BASELINE_METHODS = ("majority", "no_prompt", "english_prompt", *TRAINED_BASELINES)
INIT_METHODS = ("text", "random", "vocab", "labels")
RUN_INIT, TASK_INIT = "run:", "task:"  # init from a trained prompt: run:PATH[@best|@last], task:NAME (a study's own run)
LOSSES = ("choices", "lm")  # softprompt.scoring.LOSSES implements them
SCHEDULES = ("linear", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
EXECUTORS = ("local", "ray")
DEFAULT_LR = {"prompt": 3e-2, "finetune": 2e-5, "lora": 1e-3}
DEFAULT_MODEL = "smollm2-135m"


def canonical_dtype(name: str) -> str:
    """`float32`, `bfloat16` or `float16` for a dtype name or its short alias (fp32, bf16, fp16)."""
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise SoftPromptError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return name


def option(default: Any = None, help: str = "", *, choices: tuple[str, ...] | None = None, cli: bool = True, **extra: Any):
    """A TrainConfig field with its command-line facts: `help`, `choices`, `cli=False` for no flag,
    `required=True` for a flag that must be given (its default still serves configs built in code)."""
    metadata = {"help": help, "choices": choices, "cli": cli, **extra}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that determines a run's result (and nothing that does not)."""

    task: str = option("rte", "built-in task name (see `softprompt tasks`) or a task .toml file", required=True)
    model: str = option(DEFAULT_MODEL, f"offline alias, local folder or Hub id (default: {DEFAULT_MODEL})")
    method: str = option("prompt", "what to train: a soft prompt, or the fine-tuning/LoRA baseline", choices=METHODS)
    tokens: int = option(20, "soft prompt length n")
    init: str = option(
        "text",
        "how the prompt starts: text (the init text's tokens), random, vocab (frequent tokens), labels (label words), "
        "run:PATH (the trained prompt of the run in PATH; run:PATH@best for its best epoch's), or in a study "
        "task:NAME (the study's trained prompt of task NAME)",
    )
    init_text: str | None = option(None, "text for --init text (default: the task's description)")
    lr: float | None = option(None, "learning rate (default: 3e-2 prompt, 2e-5 finetune, 1e-3 lora)")
    optimizer: str = option("adamw", choices=OPTIMIZERS)
    loss: str = option(
        "choices",
        "choices: cross-entropy over the choices' log-likelihoods; lm: NLL of the correct answer (PEFT's recipe)",
        choices=LOSSES,
    )
    weight_decay: float = option(0.0)
    epochs: int = option(3)
    batch_size: int = option(8, "examples per batch (per process under a data-parallel launch)")
    group_by_length: bool = option(
        False, "batches of similar length (less padding, faster; other batches than the default random ones)"
    )
    grad_accum: int = option(1, "micro-batches per optimiser step")
    schedule: str = option("linear", choices=SCHEDULES)
    warmup: float = option(0.06, "warmup as a fraction of all steps")
    seed: int = option(0)
    max_train: int | None = option(None, "few-shot: a seeded subsample of N training examples")
    max_eval: int | None = option(None, "evaluate on a seeded subsample of N validation examples")
    max_length: int = option(512, "max tokens per row, prompt included (inputs are cut, answers never)")
    dtype: str = option("float32", "weight dtype", choices=DTYPES)
    compute_dtype: str = option(
        "auto",
        "autocast dtype for matmuls; auto = bfloat16 where the CPU/GPU runs it natively, else float32",
        choices=COMPUTE_DTYPES,
    )
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(16, "LoRA alpha: the adapter's update is scaled by alpha / r")
    data_dir: str | None = option(None, "local data folder (default: $SOFTPROMPT_DATA or ../shared/data); 'hub' for the Hub")
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps")
    checkpoint_every: int = option(0, "also checkpoint every N optimiser steps")
    extra: dict[str, Any] = option({}, "free-form settings recorded with the run (part of its identity)", cli=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and f.name not in ("dtype", "compute_dtype") and getattr(self, f.name) not in choices:
                raise SoftPromptError(f"unknown {f.name} {getattr(self, f.name)!r}: expected one of {', '.join(choices)}")
        check_init(self.init)
        if not isinstance(self.group_by_length, bool):
            raise SoftPromptError(f"group_by_length must be true or false, got {self.group_by_length!r}")
        for name in ("tokens", "epochs", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise SoftPromptError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SoftPromptError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise SoftPromptError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        canonical_dtype(self.dtype)
        if self.compute_dtype != "auto":
            canonical_dtype(self.compute_dtype)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TrainConfig:
        check_keys(cls, d, where)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """The fields whose value in a saved run's config differs from this one's (a field the saved
        config predates counts as its default, so adding an option does not invalidate old runs)."""
        mine = asdict(self)
        full = {**{k: v for k, v in asdict(TrainConfig()).items() if k not in saved}, **saved}
        return sorted(k for k in set(full) | set(mine) if full.get(k) != mine.get(k))


def check_init(init: object) -> None:
    """An init method, `run:PATH` with an optional `@best`/`@last`, or `task:NAME`; anything else is refused."""
    ok = init in INIT_METHODS
    if isinstance(init, str) and init.startswith((RUN_INIT, TASK_INIT)):
        ok = bool(init.split(":", 1)[1].strip())
    if not ok:
        raise SoftPromptError(
            f"unknown init {init!r}: expected one of {', '.join(INIT_METHODS)}, run:PATH[@best] or task:NAME (in a study)"
        )


def check_keys(cls, data: dict[str, Any], where: str) -> None:
    """Refuse keys that are not fields of the dataclass `cls` (typos), naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SoftPromptError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
