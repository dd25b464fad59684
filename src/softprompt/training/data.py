"""What a run trains on: the task's examples, the model, the rows tokenized for the prompt length, and the
order of each epoch's examples (a function of the seed and the epoch alone, so a resumed run repeats it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.config import PROMPT_METHODS, TrainConfig, class_balance_on
from softprompt.data.batching import EncodedExample, encode_examples, length_grouped_order
from softprompt.data.chat import resolve_prompt_format
from softprompt.distributed import DataParallel
from softprompt.errors import warn
from softprompt.model.backbones import Backbone, load_backbone
from softprompt.scoring import class_weights
from softprompt.tasks import Task, get_task
from softprompt.tasks.base import Example


@dataclass
class TrainData:
    """The task, the model, the training examples tokenized for the prompt length, and the development
    split (held-out training examples for model selection; empty without `dev_size`)."""

    task: Task
    backbone: Backbone
    examples: list[Example]
    encoded: list[EncodedExample]
    dev: list[Example]
    prompt_format: str  # plain or chat (resolved from the config's `auto`)

    def label_counts(self) -> list[int]:
        """How many training examples each class has (run.json's `train_label_counts`, --class-balance's weights)."""
        return [sum(1 for e in self.examples if e.label == k) for k in range(self.task.num_classes)]

    def class_weights(self, mode: str) -> torch.Tensor | None:
        """--class-balance's per-class loss weights from `label_counts` (None: the plain mean): the one place the
        training step and run.json's `resolved.class_weights` get them from."""
        return class_weights(self.label_counts(), self.task.metric, mode)


def prepare_data(cfg: TrainConfig, backbone: Backbone | None, dp: DataParallel, *, trust_remote_code: bool = False) -> TrainData:
    """The task's examples (training subsample and dev split), the backbone (loaded unless given; a Hub
    model's own code only with `trust_remote_code`), the resolved prompt format and the tokenized rows."""
    task = get_task(cfg.task)
    examples, dev = task.load_train(cfg.data_dir, limit=cfg.max_train, seed=cfg.seed, dev_size=cfg.dev_size)
    device = str(dp.device) if dp.active else cfg.device
    backbone = backbone or load_backbone(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=trust_remote_code)
    prompt_format = resolve_prompt_format(cfg.prompt_format, backbone.tokenizer)
    n_prompt = cfg.tokens if cfg.method in PROMPT_METHODS else 0
    encoded = encode_examples(
        examples, backbone.tokenizer, n_prompt=n_prompt, max_length=cfg.max_length, prompt_format=prompt_format
    )
    data = TrainData(task, backbone, examples, encoded, dev, prompt_format)
    if dp.is_main:
        warn_nothing_to_balance(cfg, data)
    return data


def warn_nothing_to_balance(cfg: TrainConfig, data: TrainData) -> None:
    """--class-balance asked for (on, or auto on a two-class macro-F1 task) with one class alone in the training
    examples: said once, as the loss is then the plain mean (it used to take weights [1, 1] without a word)."""
    counts = data.label_counts()
    present = [(data.task.label_words[k], n) for k, n in enumerate(counts) if n]
    if class_balance_on(cfg.class_balance, data.task.metric, len(counts)) and len(present) < 2:
        only = ", ".join(f"{word!r}: {n} examples" for word, n in present) or "none"
        warn(
            f"class_balance {cfg.class_balance}: the training examples hold one class only ({only}), so there is "
            "nothing to balance: the loss is the plain mean (a larger --max-train, or other data, gives both classes)"
        )


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a function of (seed, epoch) alone, so a resumed run repeats it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def batch_order(cfg: TrainConfig, data: TrainData, epoch: int, global_batch: int) -> list[int]:
    """The examples of one epoch in the order their global batches take them: `epoch_order`, and with
    --group-by-length global batches of similar length (each process still takes its share)."""
    order = epoch_order(len(data.encoded), cfg.seed, epoch)
    if cfg.group_by_length:
        order = length_grouped_order(order, [e.num_tokens for e in data.encoded], global_batch)
    return order
