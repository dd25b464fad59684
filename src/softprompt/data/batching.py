"""Tokenize examples into scoring rows: truncate the input (never the prompt or the answer), pad, bucket.

Layout of one row, left to right: [soft prompt (n vectors)] [BOS if the tokenizer adds one]
[hard prompt tokens] [context tokens] [choice tokens except the last]. In the chat format
(`softprompt.data.chat`) the chat template's head replaces the BOS and its tail (up to the assistant's
answer) follows the context. Rows are padded on the RIGHT, so no pad ever sits between the prompt
and the text and position ids stay 0..L-1.

Choices of a single token are scored together on one shared row (the context alone); a choice of
several tokens gets its own row. A target is (row position, token id, choice index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from softprompt.data.chat import ChatLayout, chat_choice, chat_context
from softprompt.errors import SoftPromptError
from softprompt.tasks.base import Example


@dataclass
class Row:
    ids: list[int]
    targets: list[tuple[int, int, int]]  # (position in ids, token id to predict, choice index)


@dataclass
class EncodedExample:
    rows: list[Row]
    num_choices: int
    label: int
    choice_chars: list[int]  # character length of each choice, for acc_norm
    truncated: int  # context tokens dropped to fit max_length

    @property
    def num_tokens(self) -> int:
        return sum(len(r.ids) for r in self.rows)


def _leading_specials(tokenizer) -> list[int]:
    """Special tokens the tokenizer puts before text (e.g. Gemma's <bos>; none for SmolLM2)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_special) > len(plain) and with_special[-len(plain) :] == plain:
        return list(with_special[: len(with_special) - len(plain)])
    return []


def encode_examples(
    examples: Sequence[Example],
    tokenizer,
    *,
    n_prompt: int = 0,
    hard_prompt: str | None = None,
    max_length: int = 512,
    prompt_format: str = "plain",
) -> list[EncodedExample]:
    """Tokenize examples for scoring; the context is cut from its start if the row would exceed max_length.

    `prompt_format` is `plain` or `chat` (resolve `auto` first with `chat.resolve_prompt_format`)."""
    chat = ChatLayout.of(tokenizer) if prompt_format == "chat" else None
    head = list(chat.head) if chat else _leading_specials(tokenizer)
    tail = list(chat.tail) if chat else []
    hard = tokenizer(hard_prompt + "\n", add_special_tokens=False)["input_ids"] if hard_prompt else []
    texts = [chat_context(ex.context) if chat else ex.context for ex in examples]
    contexts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    for ex, ctx in zip(examples, contexts, strict=True):
        answers = [chat_choice(c) for c in ex.choices] if chat else list(ex.choices)
        choices = tokenizer(answers, add_special_tokens=False)["input_ids"]
        if any(len(c) == 0 for c in choices):
            raise SoftPromptError(f"example {ex.idx}: a choice tokenizes to nothing ({ex.choices})")
        longest = max(len(c) for c in choices)
        budget = max_length - n_prompt - len(head) - len(tail) - len(hard) - (longest - 1)
        if budget < 1:
            raise SoftPromptError(
                f"max_length {max_length} leaves no room for the input after the soft prompt ({n_prompt}), "
                f"hard prompt ({len(hard)}), {'chat template' if chat else 'special'} ({len(head) + len(tail)}) "
                f"and answer ({longest}) tokens"
            )
        dropped = max(0, len(ctx) - budget)
        prefix = head + hard + ctx[dropped:] + tail
        rows: list[Row] = []
        single = [(k, c[0]) for k, c in enumerate(choices) if len(c) == 1]
        if single:
            rows.append(Row(prefix, [(len(prefix) - 1, tok, k) for k, tok in single]))
        for k, c in enumerate(choices):
            if len(c) > 1:
                ids = prefix + c[:-1]
                rows.append(Row(ids, [(len(prefix) - 1 + j, tok, k) for j, tok in enumerate(c)]))
        out.append(EncodedExample(rows, len(choices), ex.label, [len(s) for s in ex.choices], dropped))
    return out


@dataclass
class Batch:
    """Padded rows of several examples, with the targets flattened for one gather."""

    input_ids: torch.Tensor  # [R, L] right-padded
    attention_mask: torch.Tensor  # [R, L]
    target_row: torch.Tensor  # [T]
    target_pos: torch.Tensor  # [T] position within the row's text (soft prompt not counted)
    target_tok: torch.Tensor  # [T]
    target_slot: torch.Tensor  # [T] flat index example * max_choices + choice
    num_examples: int
    max_choices: int
    labels: torch.Tensor  # [E]
    choice_mask: torch.Tensor  # [E, max_choices] True where the example has that choice
    row_example: torch.Tensor | None = None  # [R] index of the example each row belongs to
    host: Batch | None = field(default=None, repr=False, compare=False)  # the batch on the CPU this one was copied from

    def on_host(self) -> Batch:
        """The batch's CPU tensors: what planning reads (`.tolist()`, sums) without a device round trip."""
        return self.host if self.host is not None else self

    def to(self, device: torch.device | str) -> Batch:
        """This batch on `device` in ONE host-to-device copy (all tensors packed into one buffer, pinned and
        asynchronous on CUDA: nothing waits for the device); itself if it is there already."""
        device = torch.device(device)
        if self.input_ids.device.type == device.type and (device.index is None or self.input_ids.device == device):
            return self
        return packed_copy(self.on_host(), device)


def packed_copy(host: Batch, device: torch.device) -> Batch:
    """`host`'s tensors packed into one int64 buffer, copied to `device` once, and unpacked there (views)."""
    flat = pack(host)
    if device.type == "cuda":
        flat = flat.pin_memory()
    return unpack(flat.to(device, non_blocking=True), host)


def pack(host: Batch) -> torch.Tensor:
    """The batch's tensors, flattened into one int64 CPU buffer (`unpack` inverts it)."""
    return torch.cat([t.reshape(-1).long() for _, t in _named_tensors(host)])


def unpack(flat: torch.Tensor, host: Batch) -> Batch:
    """The batch laid out like `host` whose tensors are read from `flat` (`pack`'s layout, on any device):
    views, except those of another dtype than int64 (the choice mask), which are converted."""
    named = _named_tensors(host)
    parts = flat.split([t.numel() for _, t in named])
    tensors = {name: part.view(t.shape).to(t.dtype) for (name, t), part in zip(named, parts, strict=True)}
    return replace(host, **tensors, host=host)


def shape_key(host: Batch) -> tuple:
    """What fixes the shapes of everything computed from the batch: its tensors' shapes and its counts."""
    return (host.num_examples, host.max_choices, *(tuple(t.shape) for _, t in _named_tensors(host)))


def _named_tensors(host: Batch) -> list[tuple[str, torch.Tensor]]:
    return [(name, getattr(host, name)) for name in _BATCH_TENSORS if getattr(host, name) is not None]


_BATCH_TENSORS = (
    "input_ids",
    "attention_mask",
    "target_row",
    "target_pos",
    "target_tok",
    "target_slot",
    "labels",
    "choice_mask",
    "row_example",
)


TARGET_MULTIPLE = 8  # a bucketed batch's target count is padded to a multiple of this
BUCKETS_PER_OCTAVE = 8  # bucketed lengths step by at most 1/8 of the length (<= 12.5% padding added)


def bucketed_length(length: int, bucket: int) -> int:
    """`length` rounded up to a multiple of `bucket`, or of an eighth of its power of two where that is larger.

    Geometric buckets: a fixed step (64 tokens) padded SST-2's 30-60-token rows to 64 (2.6x the real tokens
    at batch 32, `bench/README.md` "GPU results"); steps of 16 up to 255 tokens, 32 up to 511, ... add at most
    12.5% to a row and keep about 8 shapes per doubling of the length (a CUDA graph each)."""
    step = max(bucket, (1 << (length.bit_length() - 1)) // BUCKETS_PER_OCTAVE)
    return -(-length // step) * step


def collate(encoded: Sequence[EncodedExample], pad_id: int, *, bucket: int = 0) -> Batch:
    """Right-padded rows and flattened targets of `encoded`.

    `bucket` > 0: the rows are padded to a length bucket (`bucketed_length`) and the targets to a multiple of
    `TARGET_MULTIPLE`, so that batches of similar length have the same shapes (what a CUDA graph
    replays, `softprompt.training.cuda_graphs`). The extra positions are pads to the right of every real token
    (causal attention never shows them to a real position), the extra targets predict the pad at
    position 0 into slot `num_examples * max_choices`, which no choice reads
    (`scoring.summed_choice_scores`): scores are unchanged."""
    rows = [r for e in encoded for r in e.rows]
    length = max(len(r.ids) for r in rows)
    if bucket > 0:
        length = bucketed_length(length, bucket)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    max_choices = max(e.num_choices for e in encoded)
    t_row, t_pos, t_tok, t_slot, row_example = [], [], [], [], []
    r = 0
    for ei, e in enumerate(encoded):
        for row in e.rows:
            row_example.append(ei)
            input_ids[r, : len(row.ids)] = torch.tensor(row.ids, dtype=torch.long)
            mask[r, : len(row.ids)] = 1
            for pos, tok, k in row.targets:
                t_row.append(r)
                t_pos.append(pos)
                t_tok.append(tok)
                t_slot.append(ei * max_choices + k)
            r += 1
    if bucket > 0:
        extra = -len(t_row) % TARGET_MULTIPLE
        t_row, t_pos, t_tok = t_row + [0] * extra, t_pos + [0] * extra, t_tok + [pad_id] * extra
        t_slot += [len(encoded) * max_choices] * extra
    choice_mask = torch.zeros((len(encoded), max_choices), dtype=torch.bool)
    for ei, e in enumerate(encoded):
        choice_mask[ei, : e.num_choices] = True
    return Batch(
        input_ids,
        mask,
        torch.tensor(t_row),
        torch.tensor(t_pos),
        torch.tensor(t_tok),
        torch.tensor(t_slot),
        len(encoded),
        max_choices,
        torch.tensor([e.label for e in encoded]),
        choice_mask,
        torch.tensor(row_example, dtype=torch.long),
    )


def length_batches(encoded: Sequence[EncodedExample], max_tokens: int, max_examples: int) -> list[list[int]]:
    """Group example indices into batches of similar length (sorted), bounded by padded tokens."""
    order = sorted(range(len(encoded)), key=lambda i: max(len(r.ids) for r in encoded[i].rows))
    batches, current, cur_rows, cur_len = [], [], 0, 0
    for i in order:
        e = encoded[i]
        longest = max(len(r.ids) for r in e.rows)
        rows = cur_rows + len(e.rows)
        if current and (rows * max(cur_len, longest) > max_tokens or len(current) >= max_examples):
            batches.append(current)
            current, cur_rows, cur_len = [], 0, 0
            rows = len(e.rows)
        current.append(i)
        cur_rows, cur_len = rows, max(cur_len, longest)
    if current:
        batches.append(current)
    return batches


def length_grouped_order(order: Sequence[int], lengths: Sequence[int], batch_size: int, group: int = 16) -> list[int]:
    """Reorder a shuffled `order` so consecutive `batch_size` chunks hold examples of similar length.

    Like Hugging Face's group_by_length: `order` is cut into windows of `group` batches, each window
    is sorted by length (longest first) and cut into batches, and the batches are put back in an
    order that depends only on `order` itself (so it is as deterministic as `order`). The final
    partial batch, if any, stays last. Padding per batch drops; which examples share a batch changes.
    """
    if batch_size <= 1 or len(order) <= batch_size:
        return list(order)
    window = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    partial = [b for b in batches if len(b) < batch_size]
    # interleave deterministically: sort full batches by the position of their first element in `order`
    rank = {i: k for k, i in enumerate(order)}
    full.sort(key=lambda b: min(rank[i] for i in b))
    return [i for b in full + partial for i in b]
