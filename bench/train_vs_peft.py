"""Training throughput, memory and accuracy: softprompt's training step vs PEFT's prompt-tuning recipe.

Both arms train a soft prompt of the same number of virtual tokens, initialised from the same task
description (the same text ids, so the same initial matrix), on the same training subset, with the
same batch size, epochs and batch order, on two separately loaded copies of the same frozen model.
Their steps run interleaved in one process (arm A step, arm B step, ...), so load from other
processes hits both alike; each epoch's time per arm is the sum of its step times, and examples/s,
tokens/s and model FLOP/s are medians over epochs.

- softprompt: the library's own training step, `softprompt.training.TrainStep` (collate with dynamic
  padding -> scorer under autocast (compute_dtype "auto" = bf16 on this CPU) with the `auto` scoring
  strategy (the KV prefix tree on a CPU, one padded forward on a GPU: softprompt.scoring.options.AUTO_STRATEGY)
  -> cross-entropy over the choices -> AdamW with the project's linear schedule; losses and the divergence
  check read back every step on a CPU, every 16 on a GPU). softprompt-fp32: the same with compute_dtype
  float32. softprompt-plain / softprompt-padded / softprompt-kv_tree: the same with that scoring strategy
  (`softprompt train --scoring-strategy S`; plain: the reference path, one padded forward with its mask on
  the float32 weights under autocast). softprompt-grouped: batches of similar length
  (batching.length_grouped_order; `softprompt train --group-by-length`, an opt-in). softprompt-lm:
  PEFT's objective and schedule on softprompt's step (`softprompt train --loss lm --warmup 0
  --weight-decay 0.01`: the correct answer's NLL, no warmup, AdamW's default weight decay).
  softprompt-graphs: each step replayed from a CUDA graph per padded-length bucket (softprompt.training.cuda_graphs; the
  default, `--cuda-graphs`, since it was measured; on a CPU the same as softprompt); softprompt-graphs-lowp: the same
  on the bf16 weight copy; softprompt-eager: `--no-cuda-graphs`, the step as it was before. The result records each graph arm's captures and replays, and how far every softprompt arm's
  learned prompt is from softprompt's (same init, batches and steps: float rounding only, if the replays are right).
- peft: the recipe of PEFT's prompt-tuning causal-LM example (bloomz-560m, twitter_complaints):
  `get_peft_model(PromptTuningConfig(task_type="CAUSAL_LM", prompt_tuning_init="TEXT", ...))`, inputs
  tokenized as text + answer + pad, LEFT-padded to a fixed max_length, labels -100 on the input, the
  model's own LM loss (full-vocabulary logits at every position), AdamW(lr), linear schedule with no
  warmup, float32. max_length is the longest example of the subset so nothing is cut (the recipe's
  truncation would cut answers). peft-bf16: the same under bf16 autocast. Not the recipe, PEFT tuned for speed:
  peft-bf16-grouped (each batch left-padded to its own longest row, batches of similar length), and
  peft-bf16-answer / peft-bf16-grouped-answer (the same loss, the answer's and EOS's NLL, but the LM head only at
  the last positions that predict them, `logits_to_keep`: what softprompt's scorer computes, instead of
  full-vocabulary logits at every position).

Baselines at prompt speed (issue 28): LoRA and full fine-tuning, softprompt's own training loop against the plain
recipes, on the same examples, batches, steps and learning rate (`--lora-lr`, `--finetune-lr`: softprompt train's
defaults), each arm on its own copy of the model.
- softprompt-lora / softprompt-finetune: `softprompt train --method lora|finetune`'s step (TrainStep: the scorer at
  the answer positions only, bf16 autocast where native, the `auto` strategy (the KV prefix tree on a CPU), the
  choices loss, AdamW with the project's schedule); LoRA r 8, alpha 16, every linear layer but the head, dropout 0.
  softprompt-lora-lm / softprompt-finetune-lm: the same with the recipes' objective and schedule (the answer's NLL, no
  warmup, weight decay 0.01: `softprompt train --loss lm --warmup 0 --weight-decay 0.01`).
- peft-lora: PEFT's LoRA recipe (`get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", ...))` with the same LoRA
  config and the same seeded adapter init) in the loop of PEFT's examples, as the peft arm: fixed-length left padding,
  the model's own full LM loss, AdamW, linear schedule without warmup, float32. hf-finetune: the same loop over a plain
  AutoModelForCausalLM with every weight trainable. `-bf16` (bf16 autocast), `-bf16-grouped`, `-bf16-answer`,
  `-bf16-grouped-answer` as the PEFT arms' (the last: the fairest recipe arm).
Each row also gives `total s (with warm-up)` (the untimed warm-up steps + every timed epoch), `trainable params`, and
the JSON `setup_s` (each arm's construction, its model load included), `train_loss` (mean per timed epoch) and
`speedup_baselines` (softprompt's loop / the best recipe arm by examples/s and by total time, named). Validation
accuracy of a baseline: its own trained model (no prompt) through the same Evaluator settings.

`--prompt-format` lays out every arm's text (default plain, as every recorded run: the PEFT arms tokenize the
task's template as plain text, and the bloomz-560m shape borrows SmolLM2's tokenizer, whose chat template a real
bloomz tokenizer does not have). `auto` is `softprompt train`'s default (chat when the tokenizer has a chat
template: SmolLM2-135M-Instruct's has); both tools then see the same chat-formatted text (softprompt.data.chat's layout).

Model FLOPs per step = 4 x non-embedding parameters per token computed + 4 x d x vocab per LM-head
row (bench/common.py: step_flops); softprompt counts the tokens its scorer computed (the prompt once
per batch, no padding), PEFT its non-pad tokens (its padding is waste, not work). MFU divides by the
best 2048^3 matmul rate measured in the same run (bf16 and fp32).

Peak memory (VmHWM) is measured in separate subprocesses, one per arm, running the same steps.
Validation accuracy of all learned prompts comes from softprompt's Evaluator on the same subset
(for PEFT the learned `prompt_encoder` embedding weight is the soft prompt).

On a GPU (`--device cuda`, issue #13): every arm runs on the device, each block of `--sync-every`
steps (default 1) between two `torch.cuda.synchronize()` (the suite uses blocks of 8, so the host
queues work ahead as a real run does), MFU against the card's bf16/fp32 matmul rate measured at startup (8192^3,
CUDA events), peak memory per arm in-process (common.PeakMemory: its resident bytes + the largest
rise of `torch.cuda.max_memory_allocated` within one of its steps). `--shape` builds a random-weight
model of a real shape (no download there); `--warmup-steps` untimed steps first; `--max-steps` and
`--time-budget` cap the timed epoch; `--val 0` skips the accuracy pass; an arm that runs out of GPU
memory is dropped (`dropped_arms`) and the others go on. `--cpu-dry-run` runs all of it
on CPU with a tiny model of the shape's family in seconds (bench/gpu_suite.sh runs the GPU cells).

    .venv/bin/python bench/train_vs_peft.py                       # ~5 min on 2 quiet cores
    .venv/bin/python bench/train_vs_peft.py --train 64 --epochs 4 --val 277 --mem-steps 0 --arms softprompt,peft
    python3 bench/train_vs_peft.py --device cuda --shape bloomz-560m --train 256 --epochs 1 --warmup-steps 3 --val 0 \
        --arms softprompt,softprompt-kv_tree,peft,peft-bf16 --sync-every 8 --mem-steps 0
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path and offline env)

from softprompt import scoring  # noqa: E402
from softprompt.config import DEFAULT_LR, TrainConfig  # noqa: E402
from softprompt.data.batching import encode_examples, length_grouped_order  # noqa: E402
from softprompt.data.chat import ChatLayout, chat_choice, chat_context, resolve_prompt_format  # noqa: E402
from softprompt.distributed import SINGLE  # noqa: E402
from softprompt.evaluate import Evaluator  # noqa: E402
from softprompt.host_memory import keep_freed_host_memory  # noqa: E402
from softprompt.model.backbones import resolve_compute_dtype  # noqa: E402
from softprompt.model.prompt import init_prompt  # noqa: E402
from softprompt.model.reparam import PromptEncoder  # noqa: E402
from softprompt.tasks import get_task  # noqa: E402
from softprompt.training import Trainables, TrainData, TrainStep, build_trainables, epoch_order, lr_lambda  # noqa: E402
from softprompt.training.step import raise_if_diverged  # noqa: E402
from softprompt.training.trainables import fused_where_available  # noqa: E402

PEFT_ARMS = ("peft", "peft-bf16")  # the reference: PEFT's documented recipe, float32 and bf16 autocast
PEFT_TUNED = "peft-bf16-grouped"  # PEFT with dynamic padding and grouped batches (PeftArm's `grouped`): not the recipe
# PEFT with the LM head only where the loss reads it (PeftArm's `answer_only`), ungrouped and grouped: not the recipe
PEFT_ANSWER = ("peft-bf16-answer", "peft-bf16-grouped-answer")
PROMPT_FORMATS = ("plain", "auto", "chat")


class Arm:
    """What every arm counts: per-epoch work and time, and (on a GPU) its peak memory.

    An arm runs blocks of steps (`run`): each block's host-side preparation first (untimed), then its
    steps between two device syncs. A block of one step is the CPU methodology (interleaved per step);
    on a GPU larger blocks (`--sync-every`) let the host queue work ahead as a real run does."""

    def __init__(self, device: torch.device):
        self.dev = device
        self.mem = common.PeakMemory(device)
        self.stats = new_stats()

    def run(self, batches: list[list[int]], last: bool = False) -> float:
        """The steps of `batches` (lists of example indices) between two device syncs; their seconds (host clock).
        `last`: the timed epoch ends with this block (the softprompt arm reads its losses there, as training.train does)."""
        ready = [self.prepare(idx) for idx in batches]
        before = self.counters()
        common.sync(self.dev)
        t = time.perf_counter()
        with self.mem:
            for r in ready:
                self.work(r)
            if last:
                self.finish()
            common.sync(self.dev)
        dt = time.perf_counter() - t
        self.count(batches, before)
        self.stats["time"] += dt
        self.stats["steps"] += len(batches)
        self.stats["examples"] += sum(len(idx) for idx in batches)
        return dt

    def prepare(self, idx: list[int]):
        """Untimed host-side work of one step (default: none)."""
        return idx

    def work(self, ready) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Timed work at the end of the timed epoch (default: none)."""

    def counters(self):
        """Counters `count` compares after a block (default: none)."""
        return None

    def count(self, batches: list[list[int]], before) -> None:
        raise NotImplementedError


def new_stats() -> dict:
    return {"flops": 0.0, "tokens_real": 0, "tokens_naive": 0, "tokens_padded": 0, "examples": 0, "steps": 0, "time": 0.0}


# softprompt arm -> the TrainConfig fields in which it differs from `softprompt train`'s defaults
SOFTPROMPT_ARMS = {
    "softprompt": {},
    "softprompt-fp32": {"compute_dtype": "float32"},
    "softprompt-plain": {"scoring_strategy": "plain"},
    "softprompt-padded": {"scoring_strategy": "padded"},
    "softprompt-kv_tree": {"scoring_strategy": "kv_tree"},
    "softprompt-grouped": {"group_by_length": True},
    "softprompt-lm": {"loss": "lm", "warmup": 0.0, "weight_decay": 0.01},  # PEFT's objective and schedule
    "softprompt-cudnn": {},  # `auto` with cuDNN's attention allowed on CUDA (what it was before scoring.attention left it out)
    "softprompt-lowp": {},  # `auto` with the bf16 weight copy on CUDA too (no per-forward weight casts)
    "softprompt-graphs": {"cuda_graphs": True},  # steps replayed from CUDA graphs (the default since they were measured)
    "softprompt-graphs-lowp": {"cuda_graphs": True},  # the same with the bf16 weight copy on CUDA
    "softprompt-eager": {"cuda_graphs": False},  # `softprompt train --no-cuda-graphs`: every kernel launched by the host
    "softprompt-alibi-eager": {},  # BLOOM's own eager ALiBi attention on CUDA too (scoring.bloom replaces it there)
    "softprompt-bloom-gelu": {},  # BLOOM's own GELU on CUDA too (scoring.bloom replaces it there by one kernel)
    "softprompt-bucket64": {},  # graphs with the fixed 64-token length buckets of before (batching.bucketed_length)
    "softprompt-nosplit": {},  # graphs, one forward per batch (no split into length groups: TrainStep.length_groups)
}
ARMS = (*SOFTPROMPT_ARMS, *PEFT_ARMS, PEFT_TUNED, *PEFT_ANSWER)


class SoftpromptArm(Arm):
    """The library's own training step: `softprompt.training.TrainStep`'s micro-batch (collate, the
    scorer's `auto` strategy for the device, loss, backward) and optimiser step, with its deferred loss
    reads and divergence checks (every step on a CPU, every 16 on a GPU, and at the epoch's end) and
    collate inside the timed steps: what `softprompt train` runs. Only the learning-rate schedule is
    the benchmark's (its total counts the warm-up steps)."""

    def __init__(self, backbone, task, examples, args, name: str):
        super().__init__(backbone.device)
        # results name the fp32 arm by its dtype, as every result on record does
        self.bb, self.name = backbone, "softprompt-float32" if name == "softprompt-fp32" else name
        fields = dict(task=task.name, model=backbone.name, tokens=args.tokens, lr=args.lr, batch_size=args.batch_size)
        cfg = TrainConfig(**fields, epochs=args.epochs, seed=args.seed, max_length=512, **SOFTPROMPT_ARMS[name])
        self.prompt = init_prompt(backbone.model, backbone.tokenizer, args.tokens, "text", text=task.description)
        self.prompt.to(backbone.device)
        fmt = resolve_prompt_format(args.prompt_format, backbone.tokenizer)
        self.encoded = encode_examples(
            examples, backbone.tokenizer, n_prompt=args.tokens, max_length=cfg.max_length, prompt_format=fmt
        )
        # the --prompt-format layout (PEFT's arm sees the same text), no dev split; the prompt trained directly
        data = TrainData(task, backbone, examples, self.encoded, dev=[], prompt_format=fmt)
        encoder = PromptEncoder(self.prompt, "none", 0)
        trainables = Trainables(self.prompt, encoder.named_trainables(), lr=args.lr, encoder=encoder)
        self.step = TrainStep(cfg, data, trainables, SINGLE, scoring=common.arm_scoring(name))
        self.compute_dtype = self.step.compute_dtype
        steps = math.ceil(len(examples) / args.batch_size) * args.epochs + args.warmup_steps
        schedule = lr_lambda("linear", int(cfg.warmup * steps), steps)
        self.step.scheduler = torch.optim.lr_scheduler.LambdaLR(self.step.optimizer, schedule)
        self.losses: list[float] = []  # every training loss read so far
        self.grouped, self.bs = cfg.group_by_length, args.batch_size
        if name == "softprompt-bucket64" and self.step.graphs is not None:
            self.step.bucket = 64  # below 1024 tokens: fixed steps of 64, what LENGTH_BUCKET was
        if name == "softprompt-nosplit":
            self.step.split_overhead = 0

    def order(self, n: int, seed: int, epoch: int) -> list[int]:
        order = epoch_order(n, seed, epoch)
        if self.grouped:  # batches of similar length (batching.length_grouped_order)
            order = length_grouped_order(order, [e.num_tokens for e in self.encoded], self.bs)
        return order

    def work(self, idx: list[int]) -> None:
        own_step(self, idx)

    def finish(self) -> None:
        read_own_losses(self)

    def counters(self):
        return dict(self.step.stats)

    def count(self, batches: list[list[int]], before) -> None:
        st = {k: v - before.get(k, 0) for k, v in self.step.stats.items()}
        self.stats["flops"] += common.step_flops(self.bb.model, st.get("real", 0), st.get("head", 0))
        self.stats["tokens_real"] += st.get("real", 0)
        self.stats["tokens_padded"] += st.get("padded", 0)
        rows = [r for idx in batches for i in idx for r in self.encoded[i].rows]
        self.stats["tokens_naive"] += sum(len(r.ids) for r in rows) + self.prompt.n_tokens * len(rows)

    def resident_bytes(self) -> int:
        """The frozen model it uses (shared by the softprompt arms) + its prompt and AdamW moments."""
        opt = [v for s in self.step.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return common.model_bytes(self.bb.model) + common.tensor_bytes([*self.prompt.parameters(), *self.prompt.buffers(), *opt])

    def learned(self) -> torch.Tensor:
        return self.prompt.weight.detach().cpu().clone()

    def graph_counts(self) -> dict | None:
        """Captures, replays, eager steps and why capturing stopped, where the arm replays CUDA graphs."""
        g = self.step.graphs
        return None if g is None else {"captures": g.captures, "replays": g.replays, "eager": g.eager, "failed": g.failed}


class PeftArm(Arm):
    """PEFT's documented prompt-tuning recipe for causal LMs (fixed-length left padding, LM loss).

    `grouped` (arm peft-bf16-grouped, not the recipe: what a PEFT user tuning for speed would do): each batch
    left-padded only to its own longest row (a dynamic-padding collator) and batches of similar length in the
    order softprompt-grouped uses (`length_grouped_order`, like HF Trainer's group_by_length).
    `answer_only` (arms ...-answer): the same loss over the same tokens, but the model's LM head runs only at the
    last positions, those that predict the answer and EOS (left padding puts them at every row's end), instead of
    full-vocabulary logits at every position: the work softprompt's scorer does."""

    def __init__(
        self,
        task,
        examples,
        args,
        bf16: bool,
        max_length: int | None,
        device: torch.device,
        grouped: bool = False,
        answer_only: bool = False,
    ):
        from peft import PromptTuningConfig, get_peft_model
        from transformers import get_linear_schedule_with_warmup

        super().__init__(device)
        self.bb = common.make_backbone(args, device)  # a separately loaded (or built) copy, wrapped by PEFT
        tok = self.bb.tokenizer
        self.name = ("peft-bf16" if bf16 else "peft") + ("-grouped" if grouped else "") + ("-answer" if answer_only else "")
        self.bf16, self.grouped, self.answer_only, self.bs = bf16, grouped, answer_only, args.batch_size
        self.fmt = resolve_prompt_format(args.prompt_format, tok)
        cfg = PromptTuningConfig(
            task_type="CAUSAL_LM",
            prompt_tuning_init="TEXT",
            num_virtual_tokens=args.tokens,
            prompt_tuning_init_text=task.description,
            tokenizer_name_or_path=str(tok.name_or_path),
        )
        self.model = get_peft_model(self.bb.model, cfg)
        self.n = args.tokens
        self.max_length = max_length or peft_max_length(tok, examples, self.fmt)
        self.data = [self._encode(tok, ex) for ex in examples]
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr)
        steps = math.ceil(len(examples) / args.batch_size) * args.epochs + args.warmup_steps
        self.sched = get_linear_schedule_with_warmup(self.opt, num_warmup_steps=0, num_training_steps=steps)

    def _encode(self, tok, ex):
        inp, answer = peft_text_ids(tok, ex, self.fmt)
        lab = answer + [tok.pad_token_id]
        ids, labels = inp + lab, [-100] * len(inp) + lab
        pad = self.max_length - len(ids)
        ids = ([tok.pad_token_id] * pad + ids)[: self.max_length]
        mask = ([0] * pad + [1] * (len(inp) + len(lab)))[: self.max_length]
        labels = ([-100] * pad + labels)[: self.max_length]
        return ids, mask, labels

    def order(self, n: int, seed: int, epoch: int) -> list[int]:
        order = epoch_order(n, seed, epoch)
        if self.grouped:
            order = length_grouped_order(order, [sum(self.data[i][1]) for i in range(n)], self.bs)
        return order

    def _width(self, idx: list[int]) -> int:
        """Columns a batch keeps: all (the recipe's fixed length) or, grouped, its longest row's (left padding)."""
        return max(sum(self.data[i][1]) for i in idx) if self.grouped else self.max_length

    def prepare(self, idx: list[int]):
        """The step's tensors, on the device before the timing starts (as in the recipe's data loader)."""
        w = self._width(idx)
        mask = torch.tensor([self.data[i][1][-w:] for i in idx])
        ids = torch.tensor([self.data[i][0][-w:] for i in idx]).to(self.dev)
        labels = torch.tensor([self.data[i][2][-w:] for i in idx])
        return mask, ids, labels.to(self.dev), mask.to(self.dev), self._kept(idx)

    def _kept(self, idx: list[int]) -> int:
        """Positions whose logits the answer-only loss reads: the batch's most labelled tokens (answer + EOS, in
        the last columns of every left-padded row), plus the position before them, which predicts the first."""
        return 1 + max(sum(1 for y in self.data[i][2] if y != -100) for i in idx)

    def work(self, ready) -> None:
        self.loss(ready).backward()
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()

    def loss(self, ready) -> torch.Tensor:
        """The step's loss: PEFT's LM loss over the answer and EOS tokens (with the head everywhere, or answer-only)."""
        _, ids, labels, dev_mask, keep = ready
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.answer_only:  # logits at the last `keep` positions: those predicting the answer and EOS, and one more
                logits = self.model(input_ids=ids, attention_mask=dev_mask, logits_to_keep=keep).logits
                target = labels[:, labels.shape[1] - keep + 1 :]
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100
                )
            else:
                loss = self.model(input_ids=ids, attention_mask=dev_mask, labels=labels).loss
        return loss

    def count(self, batches: list[list[int]], before) -> None:
        for idx in batches:
            w = self._width(idx)
            mask = torch.tensor([self.data[i][1][-w:] for i in idx])
            real = int(mask.sum()) + self.n * len(idx)
            # the LM head's rows: every real position, or (answer-only) the kept last positions of every row
            head = len(idx) * self._kept(idx) if self.answer_only else int(mask.sum())
            self.stats["flops"] += common.step_flops(self.bb.model, real, head)
            self.stats["tokens_real"] += real
            self.stats["tokens_naive"] += real
            self.stats["tokens_padded"] += mask.numel() + self.n * len(idx)

    def resident_bytes(self) -> int:
        """Its own copy of the frozen model + the virtual-token embedding and AdamW moments."""
        opt = [v for s in self.opt.state.values() for v in s.values() if torch.is_tensor(v)]
        return common.model_bytes(self.model) + common.tensor_bytes(opt)

    def learned(self) -> torch.Tensor:
        return self.model.prompt_encoder["default"].embedding.weight.detach().float().cpu().clone()

    def initial(self) -> torch.Tensor:
        return self.learned()


# The baselines at prompt speed (issue 28): softprompt's own training loop for LoRA and full fine-tuning against the
# plain recipes a user would write. Each recipe: fp32 (the docs' loop), -bf16 (under bf16 autocast), and tuned for
# speed as PeftArm's -grouped (dynamic padding, grouped batches) and -answer (the LM head only at the answer's positions).
METHOD_ARMS = {"softprompt-lora": "lora", "softprompt-finetune": "finetune"}  # arm -> `softprompt train --method`
# -lm: the same with the recipes' objective and schedule (`--loss lm --warmup 0 --weight-decay 0.01`, as softprompt-lm)
METHOD_ARMS |= {f"{arm}-lm": method for arm, method in METHOD_ARMS.items()}
PEFT_OBJECTIVE = {"loss": "lm", "warmup": 0.0, "weight_decay": 0.01}
RECIPE_METHODS = {"peft-lora": "lora", "hf-finetune": "finetune"}  # recipe -> the method it is the plain recipe of
RECIPE_VARIANTS = ("", "-bf16", "-bf16-grouped", "-bf16-answer", "-bf16-grouped-answer")
RECIPE_ARMS = tuple(f"{base}{v}" for base in RECIPE_METHODS for v in RECIPE_VARIANTS)
BASELINE_ARMS = (*METHOD_ARMS, *RECIPE_ARMS)
ARMS = (*ARMS, *BASELINE_ARMS)


def method_lr(args, method: str) -> float:
    """The learning rate both sides of a method use (--lora-lr, --finetune-lr; default softprompt train's)."""
    return args.lora_lr if method == "lora" else args.finetune_lr


def recipe_parts(name: str) -> tuple[str, bool, bool, bool]:
    """(recipe, bf16, grouped, answer_only) of a recipe arm's name, e.g. peft-lora-bf16-grouped."""
    base = next(b for b in RECIPE_METHODS if name.startswith(b))
    rest = name.removeprefix(base)
    return base, rest.startswith("-bf16"), "-grouped" in rest, rest.endswith("-answer")


class SoftpromptMethodArm(Arm):
    """softprompt's own training loop for a baseline method (`softprompt train --method lora|finetune`): the same
    `TrainStep` micro-batch as SoftpromptArm's (collate, the scorer at the answer positions only under autocast,
    bf16 on this CPU, with the `auto` strategy, the choices loss, backward, AdamW with the project's linear schedule
    and warmup), no prompt, on its OWN copy of the model (LoRA's adapters are injected into it, fine-tuning changes it).
    LoRA: r, alpha from TrainConfig's defaults (8, 16), every linear layer but the head, dropout 0, seeded init."""

    def __init__(self, task, examples, args, name: str, device: torch.device):
        super().__init__(device)
        self.name, self.method, self.bb = name, METHOD_ARMS[name], common.make_backbone(args, device)
        fields = dict(task=task.name, model=self.bb.name, method=self.method, lr=method_lr(args, self.method))
        fields |= PEFT_OBJECTIVE if name.endswith("-lm") else {}
        cfg = TrainConfig(**fields, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, max_length=512)
        fmt = resolve_prompt_format(args.prompt_format, self.bb.tokenizer)
        self.encoded = encode_examples(examples, self.bb.tokenizer, n_prompt=0, max_length=cfg.max_length, prompt_format=fmt)
        data = TrainData(task, self.bb, examples, self.encoded, dev=[], prompt_format=fmt)
        trainables = build_trainables(cfg, data, SINGLE)
        self.step = TrainStep(cfg, data, trainables, SINGLE, scoring=None)
        self.compute_dtype = self.step.compute_dtype
        steps = math.ceil(len(examples) / args.batch_size) * args.epochs + args.warmup_steps
        self.step.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.step.optimizer, lr_lambda("linear", int(cfg.warmup * steps), steps)
        )
        self.losses: list[float] = []  # every training loss read so far

    def order(self, n: int, seed: int, epoch: int) -> list[int]:
        return epoch_order(n, seed, epoch)

    def work(self, idx: list[int]) -> None:
        own_step(self, idx)

    def finish(self) -> None:
        read_own_losses(self)

    def counters(self):
        return dict(self.step.stats)

    def count(self, batches: list[list[int]], before) -> None:
        st = {k: v - before.get(k, 0) for k, v in self.step.stats.items()}
        flops = common.step_flops(self.bb.model, st.get("real", 0), st.get("head", 0))
        self.stats["flops"] += flops * (WEIGHT_GRAD_FLOPS if self.method == "finetune" else 1.0)
        self.stats["tokens_real"] += st.get("real", 0)
        self.stats["tokens_padded"] += st.get("padded", 0)
        self.stats["tokens_naive"] += sum(len(r.ids) for idx in batches for i in idx for r in self.encoded[i].rows)

    def resident_bytes(self) -> int:
        opt = [v for s in self.step.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return common.model_bytes(self.bb.model) + common.tensor_bytes(opt)

    def learned(self) -> dict[str, torch.Tensor] | None:
        """LoRA's adapters (what --save-prompts saves); None for fine-tuning (every weight: too large to save per epoch)."""
        if self.method != "lora":
            return None
        return {n: p.detach().cpu().clone() for n, p in self.step.trainables.params.items()}


# full fine-tuning also computes every weight's gradient: 6 instead of 4 FLOPs per parameter and token (and per head row)
WEIGHT_GRAD_FLOPS = 1.5


class RecipeArm(PeftArm):
    """A baseline method's plain recipe, as its docs show it. `peft-lora*`: PEFT's LoRA recipe, `get_peft_model` with
    `LoraConfig(task_type="CAUSAL_LM", r, lora_alpha, target_modules="all-linear", lora_dropout=0)` (the config
    softprompt's lora method injects: every linear layer but the head; adapters seeded alike). `hf-finetune*`: a plain
    Hugging Face full-fine-tuning loop, every weight of the AutoModelForCausalLM trainable. Both then run the loop of
    PEFT's causal-LM examples, as PeftArm: text + answer + EOS left-padded to a fixed max_length, labels -100 on the
    input, `model(**batch).loss` (the full LM loss: full-vocabulary logits at every position), AdamW(model.parameters(),
    lr) with torch's default weight decay, a linear schedule without warmup, `model.train()`; -bf16 under bf16 autocast,
    -grouped and -answer as PeftArm's, those two also with fused AdamW (as softprompt's loop and HF Trainer's default)."""

    def __init__(self, name: str, task, examples, args, max_length: int | None, device: torch.device):
        from transformers import get_linear_schedule_with_warmup

        Arm.__init__(self, device)
        base, self.bf16, self.grouped, self.answer_only = recipe_parts(name)
        self.name, self.method, self.bs, self.n = name, RECIPE_METHODS[base], args.batch_size, 0
        self.bb = common.make_backbone(args, device)  # its own copy: the adapters go into it / its weights change
        tok = self.bb.tokenizer
        self.fmt = resolve_prompt_format(args.prompt_format, tok)
        self.model = self._trainable_model(args.seed)
        self.model.train()
        self.max_length = max_length or peft_max_length(tok, examples, self.fmt)
        self.data = [self._encode(tok, ex) for ex in examples]
        # the arms tuned for speed (-grouped, -answer) also get the fused AdamW softprompt's loop uses (as HF Trainer's
        # default `adamw_torch_fused` does); the plain recipes keep the docs' AdamW(model.parameters(), lr)
        params = list(self.model.parameters())
        fused = fused_where_available(params) if (self.grouped or self.answer_only) else {}
        self.opt = torch.optim.AdamW(params, lr=method_lr(args, self.method), **fused)
        steps = math.ceil(len(examples) / args.batch_size) * args.epochs + args.warmup_steps
        self.sched = get_linear_schedule_with_warmup(self.opt, num_warmup_steps=0, num_training_steps=steps)
        self.step_losses: list[torch.Tensor] = []  # on the device; read after the timed epochs

    def _trainable_model(self, seed: int):
        if self.method == "finetune":
            return self.bb.model.requires_grad_(True)
        from peft import LoraConfig, get_peft_model

        d = TrainConfig()
        cfg = LoraConfig(
            task_type="CAUSAL_LM", r=d.lora_r, lora_alpha=d.lora_alpha, target_modules="all-linear", lora_dropout=0.0
        )
        torch.manual_seed(seed)  # the adapters' random init, seeded as softprompt's lora method seeds it
        return get_peft_model(self.bb.model, cfg)

    def work(self, ready) -> None:
        loss = self.loss(ready)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        self.step_losses.append(loss.detach())

    def count(self, batches: list[list[int]], before) -> None:
        flops = self.stats["flops"]
        super().count(batches, before)
        if self.method == "finetune":
            self.stats["flops"] = flops + (self.stats["flops"] - flops) * WEIGHT_GRAD_FLOPS

    def learned(self) -> dict[str, torch.Tensor] | None:
        if self.method != "lora":
            return None
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def initial(self) -> torch.Tensor:
        raise TypeError(f"{self.name} trains no prompt")


def own_step(arm: SoftpromptArm | SoftpromptMethodArm, idx: list[int]) -> None:
    """One micro-batch = one optimiser step (grad_accum 1) of softprompt's `TrainStep`, the losses read at the
    loop's cadence (`TrainingLoop._optimizer_step`: every `read_every` steps, every step on a CPU)."""
    arm.step.forward_backward(0, 0, idx)
    arm.step.optimizer_step()
    if arm.step.scheduler.last_epoch % arm.step.read_every == 0:
        read_own_losses(arm)


def read_own_losses(arm: SoftpromptArm | SoftpromptMethodArm) -> None:
    """The loop's read (`TrainingLoop.read_losses`): the queued losses and the divergence check in one wait."""
    reading = arm.step.read()
    if reading is not None:
        step, every, lr = arm.step.scheduler.last_epoch, arm.step.read_every, arm.step.trainables.lr
        raise_if_diverged(reading, step=step, read_every=every, lr=lr, advice=lambda: "a benchmark arm keeps nothing")
        arm.losses += reading.losses


def trainable_params(arm: Arm) -> int:
    """How many numbers an arm trains (the LoRA arms must agree, and so must the fine-tuning arms)."""
    if hasattr(arm, "step"):
        return sum(p.numel() for p in arm.step.trainables.params.values())
    return sum(p.numel() for p in arm.model.parameters() if p.requires_grad)


def train_losses(arm: Arm) -> list[float] | None:
    """Every training loss an arm computed so far (warm-up steps included), read outside the timed steps."""
    if hasattr(arm, "step"):
        read_own_losses(arm)
        return list(arm.losses)
    if isinstance(arm, RecipeArm):
        return [float(x) for x in arm.step_losses]
    return None


def validation(arm: Arm, evaluator: Evaluator, task, args):
    """An arm's validation result: its learned prompt on the shared frozen model, or for a baseline (no prompt) its
    own trained model, scored by an Evaluator of the same settings (answer-position scoring, the same subsample)."""
    if not isinstance(arm, (SoftpromptMethodArm, RecipeArm)):
        return evaluator.evaluate(task, arm.learned(), limit=args.val, seed=args.seed)
    arm.bb.model.eval()
    own = Evaluator(arm.bb, data_dir=args.data_dir, compute_dtype=evaluator.compute_dtype, prompt_format=evaluator.prompt_format)
    with torch.no_grad():
        return own.evaluate(task, None, limit=args.val, seed=args.seed)


def baseline_speedups(rows: list[dict]) -> dict:
    """softprompt's loop for each method against that method's recipe arms: by steady-state examples/s (the median
    epoch) and by total wall time (warm-up + timed epochs), each against the recipe arm best by that measure (named),
    over the plain recipe (fp32, -bf16: the target) and over every variant the cell ran (the tuned ones too)."""
    by_arm = {r["arm"]: r for r in rows}
    out = {}
    for own, method in METHOD_ARMS.items():
        if own.endswith("-lm"):  # the objective's variant: its rate is in its row, the ratios are the default's
            continue
        rivals = [a for a in by_arm if a in RECIPE_ARMS and RECIPE_METHODS[recipe_parts(a)[0]] == method]
        if own not in by_arm or not rivals:
            continue
        plain = [a for a in rivals if not recipe_parts(a)[2] and not recipe_parts(a)[3]]
        entry = {"arm": own}
        for label, pool in (("recipe", plain), ("any variant", rivals)):
            if not pool:
                continue
            best = max(pool, key=lambda a: by_arm[a]["examples/s"])
            fastest = min(pool, key=lambda a: by_arm[a]["total s (with warm-up)"])
            entry[f"examples/s vs best {label}"] = {"vs": best, "ratio": by_arm[own]["examples/s"] / by_arm[best]["examples/s"]}
            ratio = by_arm[fastest]["total s (with warm-up)"] / by_arm[own]["total s (with warm-up)"]
            entry[f"total time vs fastest {label}"] = {"vs": fastest, "ratio": ratio}
        out[method] = entry
    return out


def build_arm(name, backbone, task, examples, args, max_length, device):
    if name in SOFTPROMPT_ARMS:
        return SoftpromptArm(backbone, task, examples, args, name)
    if name in (*PEFT_ARMS, PEFT_TUNED, *PEFT_ANSWER):
        grouped, answer_only = "-grouped" in name, name.endswith("-answer")
        return PeftArm(task, examples, args, name != "peft", max_length, device, grouped=grouped, answer_only=answer_only)
    if name in METHOD_ARMS:
        return SoftpromptMethodArm(task, examples, args, name, device)
    if name in RECIPE_ARMS:
        return RecipeArm(name, task, examples, args, max_length, device)
    raise SystemExit(f"unknown arm {name!r}: expected some of {', '.join(ARMS)}")


def peft_text_ids(tok, ex, fmt: str) -> tuple[list[int], list[int]]:
    """The PEFT arms' input and answer token ids: the task's text as plain text (the recipe), or in the chat layout
    softprompt uses with `--prompt-format chat` (softprompt.data.chat: the template's head, the context without its answer
    cue, the template's tail; the answer without its leading space)."""
    if fmt != "chat":
        return tok(ex.context)["input_ids"], tok(ex.choices[ex.label])["input_ids"]
    layout = ChatLayout.of(tok)
    inp = [*layout.head, *tok(chat_context(ex.context), add_special_tokens=False)["input_ids"], *layout.tail]
    return inp, tok(chat_choice(ex.choices[ex.label]), add_special_tokens=False)["input_ids"]


def peft_max_length(tok, examples, fmt: str = "plain") -> int:
    return max(sum(len(x) for x in peft_text_ids(tok, ex, fmt)) + 1 for ex in examples)


# the options a memory subprocess needs to rebuild the same arm
WORKER_OPTIONS = ("model", "task", "train", "tokens", "batch_size", "epochs", "lr", "seed", "mem_steps", "warmup_steps")
WORKER_OPTIONS += ("host_malloc",)
WORKER_OPTIONS += ("prompt_format",)
WORKER_OPTIONS += ("lora_lr", "finetune_lr")
WORKER_OPTIONS += ("device", "shape", "tokenizer", "data_dir")


def worker(args) -> None:
    """Subprocess: load one arm alone, run --mem-steps steps, print the memory high-water mark."""
    device = common.resolve_device_args(args)
    task = get_task(args.task)
    examples = task.load("train", args.data_dir, limit=args.train, seed=args.seed)
    if args.worker == "model-only":  # the frozen model with all its weights paged in, nothing else
        bb = common.make_backbone(args, device)
        sum(float(p.sum()) for p in bb.model.parameters())
        print(json.dumps({"arm": "model-only", **common.memory_high_water_mb()}))
        return
    own_model = args.worker.startswith("peft") or args.worker in BASELINE_ARMS  # the arm loads its own copy
    backbone = None if own_model else common.make_backbone(args, device)
    arm = build_arm(args.worker, backbone, task, examples, args, None, device)
    order = arm.order(len(examples), args.seed, 0)
    for s in range(args.mem_steps):
        idx = order[s * args.batch_size : (s + 1) * args.batch_size]
        if idx:
            arm.run([idx])
    print(json.dumps({"arm": args.worker, **common.memory_high_water_mb()}))


def worker_args(args, arm: str) -> list[str]:
    out = []
    for k in WORKER_OPTIONS:
        v = getattr(args, k)
        if v is not None:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return [*out, *(["--cpu-dry-run"] if args.cpu_dry_run else []), "--worker", arm]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--train", type=int, default=64, help="training examples (seeded subset)")
    ap.add_argument("--val", type=int, default=120, help="validation examples (seeded subset; 0: no accuracy pass)")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-2)
    lrs = "softprompt train's default; both sides of the comparison"
    ap.add_argument("--lora-lr", type=float, default=DEFAULT_LR["lora"], help=f"the LoRA arms' learning rate ({lrs})")
    ap.add_argument("--finetune-lr", type=float, default=DEFAULT_LR["finetune"], help=f"the fine-tuning arms' ({lrs})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="softprompt,softprompt-fp32,peft", help=f"comma-separated, from {', '.join(ARMS)}")
    ap.add_argument("--mem-steps", type=int, default=3, help="steps run by each memory subprocess (0: skip; CPU only)")
    ap.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default="plain",
        help="every arm's text layout: plain (every recorded run), auto (softprompt train's default: chat where the "
        "tokenizer has a chat template) or chat",
    )
    ap.add_argument("--warmup-steps", type=int, default=0, help="untimed steps of every arm before the first epoch")
    ap.add_argument("--max-steps", type=int, default=0, help="timed steps per epoch at most (0: the whole epoch)")
    ap.add_argument(
        "--sync-every",
        type=int,
        default=1,
        help="timed steps per block between two device syncs, arms interleaved block by block (1: every step is timed "
        "alone; on a GPU a larger block lets the host queue work ahead, as a real run does)",
    )
    ap.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds for one timed epoch of all arms: fewer steps if the warm-up's last step says it would not fit (0: no cap)",
    )
    ap.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="after all else, profile this many steps of softprompt and peft (torch.profiler)",
    )
    common.add_device_args(ap, "the same steps")
    ap.add_argument(
        "--host-malloc",
        choices=("retain", "default"),
        default="retain",
        help="retain: glibc keeps freed memory, as every softprompt command sets it (softprompt.host_memory; the whole "
        "process, so every arm, competitors included); default: glibc as it comes",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--save-prompts", type=Path, help="save every arm's prompt after each epoch (torch.save) here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sync_every < 1:
        ap.error(f"--sync-every must be at least 1, got {args.sync_every}")
    if args.cpu_dry_run and not args.worker:  # a few steps of everything, on a tiny model
        args.train = min(args.train, 8)
        args.batch_size = min(args.batch_size, 4)
        args.val = min(args.val, 4)
        args.epochs = 1
        args.warmup_steps = min(args.warmup_steps, 1)
        args.mem_steps = 0
    return args


def epoch_steps(args, arms, n: int, warm_dts: dict[str, float]) -> int:
    """Timed steps per epoch: the whole epoch unless --max-steps or --time-budget say fewer."""
    steps = math.ceil(n / args.batch_size)
    if args.max_steps:
        steps = min(steps, args.max_steps)
    cost = sum(warm_dts[a.name] for a in arms if a.name in warm_dts)
    if args.time_budget and cost:  # the last warm-up step of every arm as the cost of one interleaved step
        steps = max(1, min(steps, int(args.time_budget / cost)))
    return steps


def step_all(
    arms: list, order: dict[str, list[int]], s: int, bs: int, dropped: dict[str, str], *, block: int = 1, last: bool = False
) -> dict[str, float]:
    """Steps s .. s + block - 1 of every arm, interleaved (arm A's block, arm B's, ...); an arm that runs out
    of GPU memory is dropped and recorded (the others' numbers stand) rather than losing the whole run."""
    dts, oom = {}, False
    for a in list(arms):
        try:
            dts[a.name] = a.run([order[a.name][j * bs : (j + 1) * bs] for j in range(s, s + block)], last=last)
        except torch.OutOfMemoryError:
            arms.remove(a)
            dropped[a.name] = f"out of GPU memory at batch {s + 1}"
            print(f"{a.name}: dropped, {dropped[a.name]}", flush=True)
            oom = True
    if oom:  # outside the handler, where the failed step's activations are no longer referenced
        gc.collect()
        torch.cuda.empty_cache()
    return dts


def profile_arm(arm: Arm, examples, args) -> str:
    """torch.profiler's op table (top 20 by own device time on a GPU, own CPU time on a CPU) of
    --profile-steps steps of `arm`, one block: where a step's time goes, kernels and host alike."""
    from torch.profiler import ProfilerActivity, profile

    order = arm.order(len(examples), args.seed, 0)
    batches = [order[j * args.batch_size : (j + 1) * args.batch_size] for j in range(args.profile_steps)]
    cuda = arm.dev.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    try:
        with profile(activities=activities) as prof:
            arm.run([b for b in batches if b], last=True)
        table = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=20)
    except Exception as e:  # a profiler problem must not cost the cell its measured numbers
        table = f"profile failed: {type(e).__name__}: {e}"
    print(f"profile of {args.profile_steps} steps of {arm.name}:\n{table}", flush=True)
    return table


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    retained = args.host_malloc == "retain" and keep_freed_host_memory()
    if args.worker:
        worker(args)
        return
    device = common.resolve_device_args(args)
    if device.type == "cuda":
        args.mem_steps = 0  # per-arm GPU memory is measured in-process (common.PeakMemory)

    info = {
        "machine": common.machine(device),
        "load_before": common.load_average(),
        "host_malloc_retained": retained,
        "args": vars(args) | {"json": None, "save_prompts": None, "tokenizer": str(args.tokenizer) if args.tokenizer else None},
    }
    print(json.dumps(info["machine"]))
    pk = common.device_peaks(device)
    task = get_task(args.task)
    examples = task.load("train", args.data_dir, limit=args.train, seed=args.seed)
    backbone = common.make_backbone(args, device)
    info["model"] = common.describe_model(backbone)
    info["prompt_format"] = resolve_prompt_format(args.prompt_format, backbone.tokenizer)  # what `auto` resolved to
    max_length = peft_max_length(backbone.tokenizer, examples, info["prompt_format"])
    names = [a.strip() for a in args.arms.split(",") if a.strip()]
    arms, info["setup_s"] = [], {}
    for n in names:  # each arm's construction, untimed (a baseline arm loads its own copy of the model here)
        t = time.perf_counter()
        arms.append(build_arm(n, backbone, task, examples, args, max_length, device))
        info["setup_s"][arms[-1].name] = time.perf_counter() - t
    sp = [a for a in arms if isinstance(a, SoftpromptArm)]
    for a in arms:
        if type(a) is PeftArm and sp:  # the prompt-tuning recipe (RecipeArm trains no prompt)
            diff = float((a.initial() - sp[0].prompt.weight.detach().cpu()).abs().max())
            info.setdefault("peft_init_max_abs_diff_vs_softprompt", diff)

    # one-time cost outside the timed steps: the scorer's low-precision weight copy (made on first use)
    t = time.perf_counter()
    for a in sp:
        scoring.compute_model(backbone.model, a.compute_dtype)
    info["lowp_copy_s"] = time.perf_counter() - t
    # untimed warm-up (CUDA context, cuBLAS handles, allocator): the first batches of epoch 0
    warm_dts: dict[str, float] = {}
    dropped: dict[str, str] = {}
    warm_order = {a.name: a.order(len(examples), args.seed, 0) for a in arms}
    warm_total: dict[str, float] = {}
    for s in range(args.warmup_steps):
        warm_dts.update(step_all(arms, warm_order, s % math.ceil(len(examples) / args.batch_size), args.batch_size, dropped))
        for k, dt in warm_dts.items():
            warm_total[k] = warm_total.get(k, 0.0) + dt
    info["warmup_s"] = warm_total  # a graph arm's captures happen here when the warm-up covers every batch shape
    for a in arms:
        a.stats = new_stats()
    info["warmup_last_step_s"] = warm_dts
    steps = epoch_steps(args, arms, len(examples), warm_dts)
    info["timed_steps_per_epoch"] = steps
    epoch_times = {a.name: [] for a in arms}
    epoch_stats = {a.name: [] for a in arms}
    peak_runs = [pk]
    step_ratio = []
    losses_seen = {a.name: len(train_losses(a) or []) for a in arms}  # the warm-up's losses are not an epoch's
    info["train_loss"] = {a.name: [] for a in arms if train_losses(a) is not None}  # mean per timed epoch
    for epoch in range(args.epochs):
        orders = {a.name: a.order(len(examples), args.seed, epoch) for a in arms}
        per_arm = {a.name: 0.0 for a in arms}
        for s in range(0, steps, args.sync_every):
            block = min(args.sync_every, steps - s)
            dts = step_all(arms, orders, s, args.batch_size, dropped, block=block, last=s + block == steps)
            for k, dt in dts.items():
                per_arm[k] += dt
            if "softprompt" in dts and "peft" in dts:
                step_ratio.append(dts["peft"] / dts["softprompt"])
        for a in arms:
            epoch_times[a.name].append(per_arm[a.name])
        for a in arms:  # per-epoch counters: rates are medians over epochs, like examples/s
            epoch_stats[a.name].append(dict(a.stats))
            a.stats = new_stats()
            if a.name in info["train_loss"]:
                losses = train_losses(a)
                info["train_loss"][a.name].append(sum(losses[losses_seen[a.name] :]) / max(1, len(losses) - losses_seen[a.name]))
                losses_seen[a.name] = len(losses)
        peak_runs.append(common.device_peaks(device, reps=3))
        print(f"epoch {epoch + 1}: " + "  ".join(f"{a.name} {per_arm[a.name]:.1f}s" for a in arms), flush=True)
        if args.save_prompts:  # the learned prompts, to evaluate later if the run is cut short
            args.save_prompts.mkdir(parents=True, exist_ok=True)
            for a in arms:
                torch.save(a.learned(), args.save_prompts / f"{a.name}-epoch{epoch + 1}.pt")
        if args.json:  # partial results, in case the run is cut short
            args.json.write_text(json.dumps(dict(info, epoch_times=epoch_times, partial=True), indent=1))
    peak_runs.append(common.device_peaks(device))
    # MFU against the best matmul rate seen in this run (start, after every epoch, end): the machine's
    # attainable peak, so contention from other processes lowers MFU rather than hiding in the peak
    peak = {k: max(r[k] for r in peak_runs) for k in pk}

    # accuracy of every learned prompt on the same validation subset, one evaluator (--val 0: none)
    acc = {}
    if args.val:
        dtype = resolve_compute_dtype("auto", backbone.device)
        evaluator = Evaluator(backbone, data_dir=args.data_dir, compute_dtype=dtype, prompt_format=info["prompt_format"])
        sp = [a for a in arms if isinstance(a, SoftpromptArm)]
        initial = sp[0].prompt.initial if sp else None
        label = "initial (text init)" if sp else "untrained model (no prompt)"
        acc = {label: evaluator.evaluate(task, initial, limit=args.val, seed=args.seed)}
        for a in arms:
            acc[a.name] = validation(a, evaluator, task, args)

    rows = []
    for a in arms:
        t_epoch = common.med(epoch_times[a.name])
        es = epoch_stats[a.name]
        is_bf16 = getattr(a, "bf16", False) or getattr(a, "compute_dtype", None) == torch.bfloat16
        rate = common.med([e["flops"] / e["time"] for e in es])
        rows.append(
            {
                "arm": a.name,
                "examples/s": common.med([e["examples"] for e in es]) / t_epoch,
                "real tokens/s": common.med([e["tokens_naive"] / e["time"] for e in es]),
                "padded tokens/s": common.med([e["tokens_padded"] / e["time"] for e in es]),
                "model GFLOP/s": rate / 1e9,
                "MFU bf16 peak": rate / peak["bf16"],
                "MFU fp32 peak": rate / peak["fp32"],
                "MFU own dtype": rate / (peak["bf16"] if is_bf16 else peak["fp32"]),
                "val acc": acc[a.name].accuracy if acc else None,
                "epoch s (median)": t_epoch,
                "total s (with warm-up)": info["warmup_s"].get(a.name, 0.0) + sum(epoch_times[a.name]),
                "trainable params": trainable_params(a),
                "ms/step": 1e3 * common.med([e["time"] / e["steps"] for e in es]),
                "peak GiB": a.mem.gib(a.resident_bytes()),
            }
        )
    base = {r["arm"]: r for r in rows}
    if "softprompt" in base and "peft" in base:
        info["speedup_examples_per_s"] = base["softprompt"]["examples/s"] / base["peft"]["examples/s"]
        info["speedup_median_step_ratio"] = common.med(step_ratio)
    peft_rates = [base[k]["examples/s"] for k in PEFT_ARMS if k in base]
    if peft_rates:  # issue #13's target: >= 3x the better of PEFT fp32 and bf16
        by_arm = {r["arm"]: r["examples/s"] / max(peft_rates) for r in rows if r["arm"].startswith("softprompt")}
        info["speedup_vs_best_peft_by_arm"] = by_arm
        if "softprompt" in by_arm:
            info["speedup_vs_best_peft"] = by_arm["softprompt"]
    if PEFT_TUNED in base:  # against PEFT tuned the same way (dynamic padding, grouped batches): not the target
        tuned = base[PEFT_TUNED]["examples/s"]
        info["speedup_vs_peft_grouped_by_arm"] = {
            r["arm"]: r["examples/s"] / tuned for r in rows if r["arm"].startswith("softprompt")
        }
    info["speedup_baselines"] = baseline_speedups(rows)  # softprompt-lora / -finetune against their recipes
    sp = {a.name: a for a in arms if isinstance(a, SoftpromptArm)}
    counts = {name: a.graph_counts() for name, a in sp.items()}
    info["graphs"] = {name: c for name, c in counts.items() if c is not None}
    if "softprompt" in sp:  # same init, batches and steps: the other softprompt arms must learn the same prompt
        ref, init = sp["softprompt"].learned(), sp["softprompt"].prompt.initial.detach().cpu()
        moved = float((ref - init).norm())
        info["prompt_diff_vs_softprompt"] = {  # ||P_arm - P_softprompt|| / ||P_softprompt - P_init||: rounding << 1
            name: float((a.learned() - ref).norm()) / max(moved, 1e-12)
            for name, a in sp.items()
            if name != "softprompt" and not a.grouped  # a grouped arm sees other batches
        }
    if args.profile_steps:  # after everything measured above: these steps train the prompts further
        info["profile"] = {a.name: profile_arm(a, examples, args) for a in arms if a.name in ("softprompt", "peft")}
    mem = []
    if args.mem_steps:
        for n in ["model-only", *names]:
            mem.append(common.run_worker(Path(__file__), worker_args(args, n)))
    info.update(
        dropped_arms=dropped,
        peaks_gflops={k: v / 1e9 for k, v in peak.items()},
        peak_runs_gflops=[{k: v / 1e9 for k, v in r.items()} for r in peak_runs],
        epoch_stats=epoch_stats,
        peft_max_length=max_length,
        results=rows,
        accuracy={k: v.accuracy for k, v in acc.items()},
        memory=mem,
        epoch_times=epoch_times,
        load_after=common.load_average(),
    )
    print()
    print(f"matmul peaks (best of the run): bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s")
    print(f"PEFT max_length {max_length} (+{args.tokens} virtual tokens); load {info['load_before']} -> {info['load_after']}")
    cols = ["arm", "examples/s", "real tokens/s", "padded tokens/s", "model GFLOP/s", "MFU own dtype", "MFU bf16 peak"]
    cols += ["val acc", "epoch s (median)", "total s (with warm-up)", "ms/step"] + (["peak GiB"] if device.type == "cuda" else [])
    print(common.fmt_table(rows, cols))
    for k, v in acc.items():
        print(f"  val acc {k}: {v.accuracy:.3f} (n={v.n})")
    if "speedup_examples_per_s" in info:
        print(
            f"speedup softprompt / peft: {info['speedup_examples_per_s']:.2f}x examples/s "
            f"(median per-step ratio {info['speedup_median_step_ratio']:.2f}x)"
        )
    for name, x in info.get("speedup_vs_best_peft_by_arm", {}).items():
        print(f"speedup {name} / best PEFT arm: {x:.2f}x examples/s")
    for method, entry in info["speedup_baselines"].items():
        for k, v in entry.items():
            if k != "arm":
                print(f"{method}: {entry['arm']} {k} ({v['vs']}): {v['ratio']:.2f}x")
    for name, x in info.get("prompt_diff_vs_softprompt", {}).items():
        print(f"{name}: learned prompt differs from softprompt's by {x:.3g} of softprompt's distance travelled")
    for name, g in info["graphs"].items():
        print(f"{name}: CUDA graphs {g}")
    if mem:
        print(common.fmt_table(mem, ["arm", "vmhwm_mb"]))
    if args.json:
        args.json.write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
