"""The training configuration and every list of choices, in one torch-free module.

`TrainConfig` is the only training schema. Each field carries its command-line help and choices in
its metadata: `softprompt train` makes one flag per field (`softprompt.cli.train`), a study config's
`[train]` table is parsed into it, a baseline's config is a `dataclasses.replace` of it, and a run
saves it whole in run.json. Each field is either the run's identity (what determines its result:
resume checks and study cache keys compare `identity_dict()`) or how it is executed (`option(...,
execution=True)`: device, strategies, cadences, data location; recorded, never compared). Adding a
training option is adding a field here, choosing which it is, plus the code that uses it.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from softprompt.errors import SoftPromptError

METHODS = ("prompt", "hard", "deep", "finetune", "lora")  # what a run trains
# a trained prompt matrix, saved as prompt files: soft or projected on tokens (PEZ, model.reparam) before the input, or
# deep (keys/values at every layer, model.deep_prompt)
PROMPT_METHODS = ("prompt", "hard", "deep")
INPUT_PROMPT_METHODS = ("prompt", "hard")  # the matrix is input embeddings: what the token readouts read
TRAINED_BASELINES = ("finetune", "lora", "hard", "deep")
DEFAULT_BASELINES = ("majority", "no_prompt", "english_prompt", "finetune", "lora")  # what runs unless methods are named
BASELINE_METHODS = (*DEFAULT_BASELINES, "hard", "deep")
INIT_METHODS = ("text", "random", "vocab", "labels", "text+labels")
PROMPT_FORMATS = ("auto", "plain", "chat")  # softprompt.data.chat implements them
RUN_INIT, TASK_INIT = "run:", "task:"  # init from a trained prompt: run:PATH[@best|@last], task:NAME (a study's own run)
CLASS_BALANCE = ("off", "on", "auto")  # softprompt.scoring.class_weights implements them
LOSSES = ("choices", "lm")  # softprompt.scoring.LOSSES implements them
SCHEDULES = ("linear", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
EXECUTORS = ("local", "ray")
# softprompt.training.select_prompt implements them. dev_loss is the default: on SST-2, CB and topics (5 seeds each, dev 40)
# its prompt scored -0.15 +- 0.15 points vs the last prompt (14 of 15 runs kept the last), dev_accuracy's -1.6 +- 1.8
# (issue 27; bench/convergence.py --recipes dev-loss)
SELECTIONS = ("dev_loss", "dev_accuracy", "last")
REPARAMS = ("none", "mlp", "residual")  # softprompt.model.reparam implements them
DEFAULT_LR = {"finetune": 2e-5, "lora": 1e-3}  # a prompt's default is relative to the embedding scale:
# lr = this x the std of the input-embedding outputs: SmolLM2 5.0e-3, gemma3-270m 0.042; chosen on dev over both
# shapes, 5 seeds each (bench/docs/convergence.md; 0.082 before, 0.025 before that)
PROMPT_LR_PER_STD = 0.041
# A hard (PEZ) prompt's default lr, also x the embedding std: its steps must cross between tokens. Issue 26, SmolLM2,
# SST-2, 20 tokens from the text, 60 steps, dev split of 40 carved from training, 1 seed: at 0.041 no token changed;
# 0.3 / 0.8 / 1.5 / 5.0 changed 4 / 12 / 18 / 20 of 20, last-prompt dev loss 0.683 / 0.683 / 0.661 / 0.679 (0.776 at start)
HARD_LR_PER_STD = 1.0
# A deep prompt's default lr, in units of each layer's initial key/value std (it trains the prefix divided by them:
# model.deep_prompt.DeepPromptEncoder). Issue 38's dev screen, SmolLM2, SST-2, 256 examples x 1 epoch (32 steps of 8),
# dev split of 100 carved from training, seed 0: lr 0.01 / 0.03 / 0.1 -> dev 0.91 / 0.85 / 0.46 (0.03 dipped to loss
# 0.90 at step 8; 0.1 never learned). One seed, one task: lower rates (0.003) not screened.
DEEP_LR_PER_STD = 0.01
LR_PER_STD = {"prompt": PROMPT_LR_PER_STD, "hard": HARD_LR_PER_STD, "deep": DEEP_LR_PER_STD}
# Values of fields that runs saved before the field existed actually used (when they differ from today's default).
LEGACY_VALUES: dict[str, Any] = {"selection": "dev_accuracy", "prompt_format": "plain", "class_balance": "off"}
SCORING_STRATEGIES = ("auto", "plain", "padded", "kv_tree")  # softprompt.scoring.options implements them
REPORT_TO = ("none", "tensorboard", "mlflow", "wandb")  # softprompt.training.trackers implements them
DEFAULT_MODEL = "smollm2-135m"
# The TrainConfig fields that change a run's scores besides its weights: the model, the examples' layout (prompt format,
# row length) and the precision (weight dtype, compute dtype). Every command that reads a run takes them from its
# run.json, and an exported adapter carries them (softprompt.runs.settings).
SCORE_SETTINGS = ("model", "prompt_format", "max_length", "dtype", "compute_dtype")


def class_balance_on(mode: str, metric: str, num_classes: int) -> bool:
    """Whether `class_balance` `mode` weights the loss of a `num_classes`-class task scored by `metric`. auto: on for a
    two-class macro-F1 task, where the dev split showed it moving the prompt off the majority class (MRPC); off
    elsewhere, as on CB (three classes, one with 6% of the examples) the dev split showed it costing accuracy
    (bench/docs/convergence.md, issue #27)."""
    return mode == "on" or (mode == "auto" and metric == "f1_macro" and num_classes == 2)


def canonical_dtype(name: str) -> str:
    """`float32`, `bfloat16` or `float16` for a dtype name or its short alias (fp32, bf16, fp16)."""
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise SoftPromptError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return name


def option(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    cli: bool = True,
    execution: bool = False,
    **extra: Any,
):
    """A TrainConfig field with its command-line facts: `help`, `choices`, `cli=False` for no flag,
    `required=True` for a flag that must be given (its default still serves configs built in code).

    `execution=True` marks how a run is executed (device, strategies, cadences, data location), which may
    change on resume and in a study re-run; every other field is the run's identity (`identity_dict`), which
    decides "same run" (docs/reliability.md, "Which settings may change on resume")."""
    metadata = {"help": help, "choices": choices, "cli": cli, "execution": execution, **extra}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """A run's settings: its identity (what determines the result) and how it is executed (`execution=True`)."""

    task: str = option("rte", "built-in task name (see `softprompt tasks`) or a task .toml file", required=True)
    model: str = option(DEFAULT_MODEL, f"offline alias, local folder or Hub id (default: {DEFAULT_MODEL})")
    method: str = option(
        "prompt",
        "what to train: a soft prompt, a hard prompt (discrete tokens, PEZ projected gradients), a deep prompt (keys and "
        "values at every layer: prefix tuning / P-Tuning v2), or the fine-tuning/LoRA baseline",
        choices=METHODS,
    )
    tokens: int = option(20, "prompt length n (soft, hard or deep: virtual tokens)")
    init: str = option(
        "text",
        "how the prompt starts: text (the init text's tokens), random, vocab (frequent tokens), labels (label words), "
        "text+labels (the init text's tokens, then the label words'), run:PATH (the trained prompt of the run in PATH; "
        "run:PATH@best for its best epoch's), or in a study task:NAME (the study's trained prompt of task NAME)",
    )
    init_text: str | None = option(None, "text for --init text (default: the task's description)")
    prompt_format: str = option(
        "auto",
        "plain: the task template as text; chat: inside the model's chat template (instruction-tuned models); "
        "auto: chat when the tokenizer has a chat template",
        choices=PROMPT_FORMATS,
    )
    reparam: str = option(
        "none",
        "train the prompt directly (none), through an MLP (P-tuning), or as prompt + MLP(prompt) (residual); "
        "saved and exported as the resulting matrix",
        choices=REPARAMS,
    )
    reparam_hidden: int = option(256, "hidden width of the reparameterisation MLP")
    lr: float | None = option(
        None,
        f"learning rate (default: prompt {PROMPT_LR_PER_STD}, hard {HARD_LR_PER_STD} x the std of the model's embedding outputs, "
        f"deep {DEEP_LR_PER_STD} in units of each layer's initial key/value std, finetune 2e-5, lora 1e-3)",
    )
    optimizer: str = option("adamw", choices=OPTIMIZERS)
    loss: str = option(
        "choices",
        "choices: cross-entropy over the choices' log-likelihoods; lm: NLL of the correct answer (PEFT's recipe)",
        choices=LOSSES,
    )
    class_balance: str = option(
        "auto",
        "weight each example's loss by 1 / (classes x its class's share of the training examples), so every class "
        "counts equally (what a macro-averaged metric rewards); auto: on for a two-class task scored by macro-F1",
        choices=CLASS_BALANCE,
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
    dev_size: int = option(
        0,
        "hold out N training-split examples (never trained on) to pick the best prompt; 0: no selection, the last "
        "prompt is the result",
    )
    selection: str = option(
        "dev_loss",
        "which prompt best.safetensors holds, chosen on the dev split: dev_loss (the lowest mean choice cross-entropy, "
        "kept only if it beats the last prompt by one paired standard error), dev_accuracy (the highest dev metric, "
        "accuracy or macro-F1: the rule before issue 27), last (no selection: the dev split is held out but not "
        "scored); a dev split under 30 examples always keeps the last",
        choices=SELECTIONS,
    )
    eval_every: int = option(0, "also evaluate every N optimiser steps (learning curves); 0: at epoch ends only")
    max_steps: int | None = option(None, "stop after N optimiser steps (the schedule spans them; epochs still bound the run)")
    max_time: float | None = option(
        None,
        "a training-time budget in seconds: training stops after the optimiser step at which the run's wall time "
        "(its evaluations included; model loading not) reaches it, then the final evaluation runs; run.json records the "
        "steps done and why it stopped (`stopped`); --resume continues with what is left. The learning-rate schedule "
        "still spans --epochs: give enough epochs, and a stopped run has not finished its decay",
    )
    max_grad_norm: float = option(0.0, "clip the gradient norm to this (0: no clipping)")
    max_length: int = option(512, "max tokens per row, prompt included (inputs are cut, answers never)")
    dtype: str = option("float32", "weight dtype", choices=DTYPES)
    compute_dtype: str = option(
        "auto",
        "autocast dtype for matmuls; auto = bfloat16 where the CPU/GPU runs it natively, else float32",
        choices=COMPUTE_DTYPES,
    )
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(16, "LoRA alpha: the adapter's update is scaled by alpha / r")
    data_dir: str | None = option(
        None, "local data folder (default: $SOFTPROMPT_DATA or ../shared/data); 'hub' for the Hub", execution=True
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps", execution=True)
    checkpoint_every: int = option(0, "also checkpoint every N optimiser steps", execution=True)
    scoring_strategy: str = option(
        "auto",
        "how the scorer computes: auto = the fastest for the device (CPU: kv_tree, GPU: padded; see bench/README.md)",
        choices=SCORING_STRATEGIES,
        execution=True,
    )
    cuda_graphs: bool = option(
        True,
        "replay each training step from a CUDA graph, one per padded-length bucket (a soft prompt on CUDA with the padded "
        "or plain scoring strategy; no effect elsewhere): on an H100 0.95-8.8x the speed of eager steps (bench/README.md)",
        execution=True,
    )
    log_every: int = option(
        0,
        "read the loss back from the device (progress, NaN/divergence check) every N optimiser steps and before every "
        "checkpoint; 0 = auto: every step on CPU, every 16 on a GPU",
        execution=True,
    )
    report_to: str = option(  # execution setting
        "none",
        "also log the loss, learning rate, evaluations and config to: none, or a comma-separated list of tensorboard "
        "(event files in OUT/logs), mlflow (file store OUT/mlruns, or $MLFLOW_TRACKING_URI), wandb (offline unless "
        "$WANDB_MODE); each needs its extra: pip install 'softprompt[tensorboard]'",
        execution=True,
    )
    extra: dict[str, Any] = option({}, "free-form settings recorded with the run (part of its identity)", cli=False)

    def __post_init__(self) -> None:
        check_types(self)
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and f.name not in ("dtype", "compute_dtype") and getattr(self, f.name) not in choices:
                raise SoftPromptError(f"unknown {f.name} {getattr(self, f.name)!r}: expected one of {', '.join(choices)}")
        check_init(self.init)
        self.report_to = ",".join(report_targets(self.report_to)) or "none"
        for name in ("group_by_length", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise SoftPromptError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("tokens", "epochs", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise SoftPromptError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("dev_size", "eval_every", "reparam_hidden"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise SoftPromptError(f"{name} must be a whole number >= 0, got {getattr(self, name)!r}")
        if self.max_time is not None and not (self.max_time > 0 and math.isfinite(self.max_time)):
            raise SoftPromptError(f"max_time must be a positive number of seconds, got {self.max_time}")
        if not (self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm)):
            raise SoftPromptError(f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        if self.reparam != "none" and self.method != "prompt":
            raise SoftPromptError(f"reparam {self.reparam!r} applies to method 'prompt' only, not {self.method!r}")
        if self.log_every < 0:
            raise SoftPromptError(f"log_every must be 0 (auto) or a number of steps, got {self.log_every}")
        if self.lr is None and self.method in DEFAULT_LR:
            self.lr = DEFAULT_LR[self.method]
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise SoftPromptError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise SoftPromptError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        for name in (
            "max_train",
            "max_eval",
            "lora_r",
            "lora_alpha",
            "max_steps",
        ):  # a subsample or rank of 0 fails late otherwise
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SoftPromptError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "weight_decay"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise SoftPromptError(f"{name} must be 0 or more, got {getattr(self, name)}")
        canonical_dtype(self.dtype)
        if self.compute_dtype != "auto":
            canonical_dtype(self.compute_dtype)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TrainConfig:
        check_keys(cls, d, where)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Every field: what run.json records (the identity and the execution settings it last ran with)."""
        return asdict(self)

    def identity_dict(self) -> dict[str, Any]:
        """The fields that determine the result: what resume checks and study cache keys compare."""
        return {k: v for k, v in asdict(self).items() if k not in EXECUTION_FIELDS}

    def execution_dict(self) -> dict[str, Any]:
        """How the run is executed (device, strategies, cadences, data location): recorded, never compared."""
        return {k: v for k, v in asdict(self).items() if k in EXECUTION_FIELDS}

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """The identity fields whose value in a saved run's config differs from this one's (a field the saved
        config predates counts as its default, so adding an option does not invalidate old runs; the
        execution settings are not compared)."""
        mine = self.identity_dict()
        absent = {k: LEGACY_VALUES.get(k, v) for k, v in asdict(TrainConfig()).items() if k not in saved}
        full = {k: v for k, v in {**absent, **saved}.items() if k not in EXECUTION_FIELDS}
        return sorted(k for k in set(full) | set(mine) if full.get(k) != mine.get(k))


# How a run is executed (`option(..., execution=True)`); every other field is its identity.
EXECUTION_FIELDS = frozenset(f.name for f in fields(TrainConfig) if f.metadata.get("execution"))
IDENTITY_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in EXECUTION_FIELDS)


def _allowed_types(hint: Any) -> tuple[type, ...]:
    """The Python types a field annotated `hint` accepts (`int | None` gives int and NoneType)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else (hint,)
    out: list[type] = []
    for a in args:
        a = typing.get_origin(a) or a
        out += [int, float] if a is float else [a] if isinstance(a, type) else [object]
    return tuple(out)


def check_types(obj: Any) -> None:
    """Refuse a dataclass field of the wrong type (from a TOML file: `tokens = "20"`) in one line,
    before a comparison deep inside training would fail on it. A bool is not an int here."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, allowed = getattr(obj, f.name), _allowed_types(hints[f.name])
        if object in allowed:
            continue
        if isinstance(value, bool) and bool not in allowed:
            raise SoftPromptError(f"{f.name} must be {_names(allowed)}, got the boolean {value!r}")
        if not isinstance(value, allowed):
            raise SoftPromptError(f"{f.name} must be {_names(allowed)}, got {value!r}")


def _names(allowed: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}
    words = [names.get(t, t.__name__) for t in allowed if t is not type(None) and not (t is int and float in allowed)]
    return " or ".join(words) + (" (or left out)" if type(None) in allowed else "")


def report_targets(report_to: str) -> tuple[str, ...]:
    """The trackers a `report_to` value names ("tensorboard,mlflow"; "none" or "" for none), each once, in order."""
    names = tuple(dict.fromkeys(n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"))
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown or ("none" in report_to.replace(" ", "").split(",") and names):
        raise SoftPromptError(
            f"unknown report_to {report_to!r}: expected none or a comma-separated list of {', '.join(REPORT_TO[1:])}"
        )
    return names


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
