"""What a run trains and how fast: the soft prompt through its encoder (or LoRA adapters / every weight for the
baselines), its learning rate, and the optimiser with its schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from softprompt.config import INIT_METHODS, LR_PER_STD, PROMPT_METHODS, TASK_INIT, TrainConfig
from softprompt.distributed import DataParallel
from softprompt.errors import SoftPromptError, warn
from softprompt.model.backbones import Backbone
from softprompt.model.deep_prompt import DeepPromptEncoder, KVPrompt, init_deep_prompt, prefix_shape
from softprompt.model.prompt import SoftPrompt, check_source_length, embedding_scale, init_prompt, prompt_from_source
from softprompt.model.reparam import HardPromptEncoder, PromptEncoder, hard_prompt_encoder
from softprompt.runs.directory import InitSource, init_source
from softprompt.training.data import TrainData


def trained_init_source(cfg: TrainConfig) -> InitSource | None:
    """The trained prompt a `run:PATH` init starts from, checked against --tokens before anything is loaded or written."""
    if cfg.method not in PROMPT_METHODS or cfg.init in INIT_METHODS:
        return None
    if cfg.init.startswith(TASK_INIT):
        raise SoftPromptError(
            f"init {cfg.init!r} names a study's prompt: it works inside a study config; outside one use run:PATH"
        )
    source = init_source(cfg.init)
    check_source_length(source.prompt, cfg.tokens, cfg.init)
    trained_on = source.facts.get("model")
    if trained_on and trained_on != cfg.model:  # same width or not (checked when the model loads): said, not silent
        warn(f"init {cfg.init}: its prompt was trained on model {trained_on!r}; this run trains it on {cfg.model!r}")
    return source


@dataclass
class Trainables:
    """What the method trains, by stable name (the checkpoint's tensor names), the prompt fed to the scorer,
    and the learning rate (a prompt's default follows the model's embedding scale)."""

    prompt: SoftPrompt | None
    params: dict[str, torch.nn.Parameter]
    lr: float
    encoder: PromptEncoder | HardPromptEncoder | DeepPromptEncoder | None = None
    source: dict[str, Any] | None = None  # a run: init's source run, file and content hash (run.json records it)

    def scoring_prompt(self) -> torch.Tensor | KVPrompt | None:
        """What the scorer places before every row: the (n, d) matrix before the input embeddings (computed through
        the reparameterisation), or a deep prompt's keys/values at every layer."""
        return self.encoder() if self.encoder is not None else None

    def prompt_to_save(self) -> SoftPrompt | None:
        """The materialised prompt with its init facts: what prompt files, exports and analyses see."""
        if self.prompt is None or self.encoder is None:
            return None
        if self.encoder.kind == "none":
            return self.prompt
        with torch.no_grad():
            matrix = self.encoder.matrix() if isinstance(self.encoder, DeepPromptEncoder) else self.encoder()
            return SoftPrompt(matrix.detach(), self.prompt.init, self.prompt.initial)

    def counts(self, backbone: Backbone) -> dict[str, int]:
        total = sum(p.numel() for p in backbone.model.parameters())
        n_train = sum(p.numel() for p in self.params.values())
        if self.prompt is not None:
            total += n_train
        return {"trainable": int(n_train), "total": int(total)}


def build_trainables(cfg: TrainConfig, data: TrainData, dp: DataParallel, source: InitSource | None = None) -> Trainables:
    backbone = data.backbone
    if cfg.method not in PROMPT_METHODS:
        params = _method_parameters(cfg, backbone)
        dp.broadcast_(params.values())
        return Trainables(None, params, float(cfg.lr))
    if cfg.method == "deep":
        return _deep_trainables(cfg, data, dp, source)
    if source is not None:
        prompt = prompt_from_source(source.prompt, cfg.tokens, cfg.init, cfg.seed)
    else:
        prompt = init_prompt(
            backbone.model,
            backbone.tokenizer,
            cfg.tokens,
            cfg.init,
            text=cfg.init_text or data.task.description,
            label_words=list(data.task.label_words),
            seed=cfg.seed,
        )
    prompt.check_model(backbone.hidden_size, where=f"init {cfg.init}: the source prompt" if source else "the prompt")
    prompt.to(backbone.device)
    encoder: PromptEncoder | HardPromptEncoder
    if cfg.method == "hard":
        encoder = hard_prompt_encoder(prompt, backbone.model, backbone.tokenizer)
    else:
        encoder = PromptEncoder(prompt, cfg.reparam, cfg.reparam_hidden, seed=cfg.seed)
    if cfg.reparam == "mlp" or cfg.method == "hard":  # training starts from MLP(E) or E's tokens: drift is measured from there
        with torch.no_grad():
            prompt.initial.copy_(encoder().detach())
    params = encoder.named_trainables()
    dp.broadcast_(params.values())
    lr = cfg.lr if cfg.lr is not None else LR_PER_STD[cfg.method] * embedding_scale(backbone.model)
    return Trainables(prompt, params, float(lr), encoder, source.facts if source is not None else None)


def _deep_trainables(cfg: TrainConfig, data: TrainData, dp: DataParallel, source: InitSource | None) -> Trainables:
    """A deep prompt (`model.deep_prompt`): from another deep run's prompt, or the model's keys/values for the init's
    tokens; trained in units of each layer's key/value scale, so its learning rate is a share of that scale per step."""
    backbone = data.backbone
    if source is not None:
        prompt = prompt_from_source(source.prompt, cfg.tokens, cfg.init, cfg.seed)
    else:
        prompt = init_deep_prompt(
            backbone.model,
            backbone.tokenizer,
            cfg.tokens,
            cfg.init,
            text=cfg.init_text or data.task.description,
            label_words=list(data.task.label_words),
            seed=cfg.seed,
        )
    prompt.to(backbone.device)
    encoder = DeepPromptEncoder(prompt, prefix_shape(backbone.model)).to(backbone.device)
    params = encoder.named_trainables()
    dp.broadcast_(params.values())
    lr = cfg.lr if cfg.lr is not None else LR_PER_STD["deep"]
    return Trainables(prompt, params, float(lr), encoder, source.facts if source is not None else None)


def _method_parameters(cfg: TrainConfig, backbone: Backbone) -> dict[str, torch.nn.Parameter]:
    """The weights fine-tuning or LoRA trains (LoRA's adapters are injected into the model here)."""
    model = backbone.model
    if cfg.method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lcfg = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=True
        )
        torch.manual_seed(cfg.seed)
        inject_adapter_in_model(lcfg, model)
        params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    else:
        params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    return params


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier per optimiser step: linear warmup, then linear, cosine or constant."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)

    return f


def optimizer_and_schedule(
    cfg: TrainConfig, trainables: Trainables, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam or AdamW over the trainables at their learning rate, and its schedule over the run's `total_steps`."""
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = list(trainables.params.values())
    optimizer = opt_cls(params, lr=trainables.lr, weight_decay=cfg.weight_decay, **fused_where_available(params))
    schedule = lr_lambda(cfg.schedule, int(cfg.warmup * total_steps), total_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


FUSED_DEVICES = ("cpu", "cuda")  # device types with torch's one-kernel (fused) Adam/AdamW


def fused_where_available(params: list[torch.Tensor]) -> dict[str, bool]:
    """`fused=True` for Adam(W) where every parameter is a floating-point tensor on a device with the fused kernel:
    the same update (to float rounding) in one pass over the weights instead of a dozen: over full fine-tuning's
    135M parameters 0.08 s per step against 0.46 s on an idle 2-core AMD EPYC (bench/optimizer_step.py,
    bench/docs/cpu.md); {} elsewhere."""
    if params and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params):
        return {"fused": True}
    return {}
