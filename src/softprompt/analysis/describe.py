"""Self-description: the model says in words what its soft prompt asks for.

Two probes, both greedy (plus seeded samples for the first):

- `embed`: the prompt's rows are placed as input embeddings inside an instruction that asks what the
  quoted instruction asks for (inside the model's chat template when the tokenizer has one), and the
  model answers. This is the simplest "ask the model" readout; it reads the prompt where the model
  reads words, not where the trained prompt sits (at the very front of a row).
- `patch` (Patchscopes, Ghandeharioun et al. 2024; InSPEcT, Ramati et al. 2024, arXiv 2410.11660): a
  source forward over the prompt rows gives the hidden states of the n prompt positions at layer l (the
  output of decoder block l, HF `hidden_states[l + 1]`); they replace the states of n placeholder tokens in
  the same describing instruction at the same layer, during the prefill forward of generation only (a
  forward hook on block l; the cached decode steps are left alone). The source reads the rows after the
  describing input's own prefix (`context`, the default) or alone from position 0 (`front`, InSPEcT's
  setting: the states a trained prompt has in use; a context after the rows could not change them).

Measured on SmolLM2-135M with the identity probe (4 task-like sentences, greedy): with the `front` source
only blocks 0-2 read back faithfully (mean score 0.48-0.60, <= 0.42 from block 3 on; the first row then
plays the first position's attention-sink role, a likely cause); with `context`, blocks 0-9 do (0.54-0.79),
fading to 0 from block 23. Hence the default source and layers (`DEFAULT_LAYER_FRACTIONS`).

The identity probe (`describe_text`) runs both on the embeddings of a plain sentence: what comes back
for a prompt whose meaning is known says how far to trust what comes back for a trained one.
`description_score` measures how much a description says a task: recall of the task description's
content words and of its label words. Descriptions are readouts, not explanations: a small model may
paraphrase the instruction around the prompt or hallucinate a plausible task.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.analysis.common import as_runs, json_safe, run_labels, run_meta
from softprompt.errors import SoftPromptError
from softprompt.scoring.model import base_model

PROBES = ("embed", "patch")
# The describing instruction: the prompt (or n placeholders) goes between the two parts.
INSTRUCTION = ('Here is an instruction: "', '"\nWhat task does this instruction ask for? Answer in one sentence.')
PLAIN_CUE = "\nAnswer:"  # ends the instruction when the tokenizer has no chat template
PLACEHOLDER = " x"  # the target's placeholder token (Patchscopes' identity prompt uses such filler tokens)
# Default patch layers as fractions of the model's depth: on SmolLM2-135M (30 blocks) blocks 6 and 9. Measured on the
# identity probe (4 task-like sentences, greedy, context source): mean score 0.54-0.79 at blocks 0-9, at most 0.46 at
# 10-21, 0 from block 23 on; 6 is among the best and far enough from the input to differ from the embed probe, 9 is the
# deepest still faithful one.
DEFAULT_LAYER_FRACTIONS = (0.2, 0.3)
TEMPERATURE = 0.7
# Where the patch probe's source forward reads the prompt rows: after the describing input's own prefix (the chat
# head and the instruction's opening, so the same tokens precede them as precede the placeholders), or alone at
# position 0 (InSPEcT's setting: the states a trained prompt has in use). Measured on the identity probe (see the
# module docstring): from position 0 plain text reads back faithfully only at blocks 0-2, after the prefix up to block 9.
SOURCES = ("context", "front")
DEFAULT_SOURCE = "context"


# ----------------------------------------------------------------------------- the model's layers


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM: `model.model.layers` (llama, gemma, mistral, qwen), `transformer.h`
    (BLOOM, GPT-2), `model.decoder.layers` (OPT), `gpt_neox.layers`, `model.language_model.layers` (gemma 3)."""
    body = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    for owner in (body, getattr(body, "decoder", None), getattr(body, "language_model", None), model):
        for name in ("layers", "h", "blocks"):
            layers = getattr(owner, name, None) if owner is not None else None
            if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
                return layers
    raise SoftPromptError(
        f"cannot find the decoder layers of {type(model).__name__}: expected model.model.layers (llama, gemma) "
        "or transformer.h (BLOOM); the patch probe needs them (use only the embed probe for this model)"
    )


def default_layers(n_layers: int) -> list[int]:
    """An early and a lower-middle block (`DEFAULT_LAYER_FRACTIONS` of the depth), distinct and patchable."""
    top = max(n_layers - 2, 0)
    return sorted({min(int(round(f * n_layers)), top) for f in DEFAULT_LAYER_FRACTIONS})


def resolve_layers(model, layers: Iterable[int] | None) -> list[int]:
    """The patch layers, checked against the model's depth (None: the defaults).

    The last block is refused: its output at the placeholders is read by no later block, so patching it
    cannot change the generated text."""
    n = len(decoder_layers(model))
    if layers is None:
        return default_layers(n)
    out = sorted({int(x) for x in layers})
    bad = [x for x in out if not 0 <= x <= n - 2]
    if bad:
        raise SoftPromptError(
            f"patch layer(s) {bad} out of range: {type(model).__name__} has {n} decoder layers, expected 0..{max(n - 2, 0)} "
            "(the last layer's output is read by no later layer)"
        )
    return out


# ----------------------------------------------------------------------------- the describing input


@dataclass(frozen=True)
class DescribeInput:
    """The describing instruction's token ids with n placeholders at `start`, and its format."""

    ids: tuple[int, ...]
    start: int
    n: int
    format: str  # chat | plain

    @property
    def positions(self) -> slice:
        return slice(self.start, self.start + self.n)


def describe_input(tokenizer, n: int) -> DescribeInput:
    """[chat head] before, n placeholders, after [chat tail or PLAIN_CUE]: pieces tokenized apart, so the
    placeholders sit exactly at `start` whatever the tokenizer merges."""
    from softprompt.chat import ChatLayout

    def encode(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []

    if getattr(tokenizer, "chat_template", None):
        layout = ChatLayout.of(tokenizer)
        head, tail, fmt = list(layout.head), list(layout.tail), "chat"
    else:
        head, tail, fmt = [], encode(PLAIN_CUE), "plain"
    before, after = encode(INSTRUCTION[0]), encode(INSTRUCTION[1])
    placeholder = encode(PLACEHOLDER)[-1:] or encode("x")[-1:]
    ids = head + before + placeholder * n + after + tail
    return DescribeInput(tuple(ids), len(head) + len(before), n, fmt)


def _check_rows(backbone, rows: torch.Tensor, what: str) -> torch.Tensor:
    if rows.dim() != 2 or rows.shape[0] < 1:
        raise SoftPromptError(f"{what}: expected an (n, d) matrix with n >= 1, got shape {tuple(rows.shape)}")
    if rows.shape[1] != backbone.hidden_size:
        raise SoftPromptError(
            f"{what} has width {rows.shape[1]} but the model's hidden size is {backbone.hidden_size}: it belongs to another model"
        )
    if not torch.isfinite(rows).all():
        raise SoftPromptError(f"{what} holds NaN or inf values")
    return rows.detach()


def _embeds(backbone, inp: DescribeInput, rows: torch.Tensor | None) -> torch.Tensor:
    """The input embeddings of `inp`, with `rows` in place of the placeholders when given."""
    emb = backbone.model.get_input_embeddings()
    ids = torch.tensor([inp.ids], dtype=torch.long, device=backbone.device)
    embeds = emb(ids)
    if rows is not None:
        embeds = embeds.clone()
        embeds[0, inp.positions] = rows.to(device=embeds.device, dtype=embeds.dtype)
    return embeds


# ----------------------------------------------------------------------------- generation


def _eos_ids(backbone) -> list[int] | None:
    eos = getattr(backbone.model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = backbone.tokenizer.eos_token_id
    if eos is None:
        return None
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


@torch.no_grad()
def _generate(
    backbone, embeds: torch.Tensor, *, max_new_tokens: int, samples: int = 0, temperature: float = 0.0, seed: int = 0
) -> list[str]:
    """Greedy (samples=0: one text) or `samples` seeded temperature samples (no top-k/top-p), new text only.

    The caller's random state is left as it was (the seed is applied inside a forked RNG)."""
    from transformers import GenerationConfig

    tok = backbone.tokenizer
    eos = _eos_ids(backbone)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    sample = samples > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        num_return_sequences=max(samples, 1),
        eos_token_id=eos,
        pad_token_id=pad,
        **({"temperature": temperature, "top_k": 0, "top_p": 1.0} if sample else {}),
    )
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    cuda = [embeds.device.index or 0] if embeds.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        out = backbone.model.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
    return [tok.decode(row, skip_special_tokens=True).strip() for row in out]


# ----------------------------------------------------------------------------- patching


@dataclass
class PatchRecord:
    """What a patch hook did: forward calls seen, their sequence lengths, and how many it patched."""

    calls: int = 0
    patched: int = 0
    lengths: list[int] = field(default_factory=list)


@torch.no_grad()
def source_states(backbone, rows: torch.Tensor, layers: Sequence[int], prefix: Sequence[int] = ()) -> dict[int, torch.Tensor]:
    """The (n, d) hidden states of the rows' positions at the output of each decoder block in `layers`, from one
    forward over [prefix tokens; rows] (no prefix: the rows alone from position 0, where a trained prompt sits)."""
    blocks = decoder_layers(backbone.model)
    states: dict[int, torch.Tensor] = {}
    skip = len(prefix)

    def capture(layer: int):
        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            states[layer] = h[0, skip:].detach().clone()

        return hook

    emb = backbone.model.get_input_embeddings()
    head = emb(torch.tensor(list(prefix), dtype=torch.long, device=backbone.device))
    embeds = torch.cat([head, rows.to(device=head.device, dtype=head.dtype)])[None]
    handles = [blocks[layer].register_forward_hook(capture(layer)) for layer in layers]
    try:
        base_model(backbone.model)(inputs_embeds=embeds, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return states


@contextlib.contextmanager
def patch_layer(model, layer: int, positions: slice, states: torch.Tensor, length: int) -> Iterator[PatchRecord]:
    """Within the block, decoder block `layer`'s output at `positions` is replaced by `states` in the first
    forward (the prefill over the whole `length`-token input) and left alone afterwards (cached decode steps).

    A first forward over another length is an error, not a silent no-op. The hook is removed on exit."""
    record = PatchRecord()

    def hook(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        record.calls += 1
        record.lengths.append(int(h.shape[1]))
        if record.patched:
            return None
        if h.shape[1] != length:
            raise SoftPromptError(f"the patch expected a prefill over {length} positions, the first forward saw {h.shape[1]}")
        h = h.clone()
        h[:, positions] = states.to(device=h.device, dtype=h.dtype)
        record.patched += 1
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- probes


def _entry(probe: str, layer: int | None, decoding: str, sample: int | None, text: str) -> dict[str, Any]:
    return {"probe": probe, "layer": layer, "decoding": decoding, "sample": sample, "text": text}


def describe_prompt(
    backbone,
    prompt: torch.Tensor,
    *,
    samples: int = 3,
    max_new_tokens: int = 40,
    seed: int = 0,
    layers: Iterable[int] | None = None,
    temperature: float = TEMPERATURE,
    probes: Sequence[str] = PROBES,
    source: str = DEFAULT_SOURCE,
) -> list[dict[str, Any]]:
    """What the model says the (n, d) prompt asks for: the embed probe (greedy, then `samples` seeded samples)
    and the patch probe (greedy, one per layer; `layers` None: `default_layers`; `source`: see `SOURCES`).
    Each description is a dict with probe, layer (patch only), decoding (greedy | sample), sample (its index), text."""
    _check_settings(samples, max_new_tokens, temperature, probes, source)
    rows = _check_rows(backbone, prompt, "the prompt")
    inp = describe_input(backbone.tokenizer, rows.shape[0])
    out: list[dict[str, Any]] = []
    gen = {"max_new_tokens": max_new_tokens}
    if "embed" in probes:
        embeds = _embeds(backbone, inp, rows)
        out.append(_entry("embed", None, "greedy", None, _generate(backbone, embeds, **gen)[0]))
        if samples:
            texts = _generate(backbone, embeds, samples=samples, temperature=temperature, seed=seed, **gen)
            out += [_entry("embed", None, "sample", i, t) for i, t in enumerate(texts)]
    if "patch" in probes:
        chosen = resolve_layers(backbone.model, layers)
        states = source_states(backbone, rows, chosen, inp.ids[: inp.start] if source == "context" else ())
        target = _embeds(backbone, inp, None)
        for layer in chosen:
            with patch_layer(backbone.model, layer, inp.positions, states[layer], len(inp.ids)):
                out.append(_entry("patch", layer, "greedy", None, _generate(backbone, target, **gen)[0]))
    return out


def text_rows(backbone, text: str) -> torch.Tensor:
    """The input embeddings of a plain text's tokens (no special tokens): a "prompt" whose meaning is known."""
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SoftPromptError("--text is empty: give a sentence to describe")
    with torch.no_grad():
        return backbone.model.get_input_embeddings()(torch.tensor(ids, device=backbone.device)).float()


def describe_text(backbone, text: str, **kwargs) -> list[dict[str, Any]]:
    """The identity probe: `describe_prompt` on the embeddings of `text`'s tokens (same keyword arguments)."""
    return describe_prompt(backbone, text_rows(backbone, text), **kwargs)


def _check_settings(samples: int, max_new_tokens: int, temperature: float, probes: Sequence[str], source: str) -> None:
    if samples < 0:
        raise SoftPromptError(f"samples must be 0 or more, got {samples}")
    if max_new_tokens < 1:
        raise SoftPromptError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if samples and not temperature > 0:
        raise SoftPromptError(f"temperature must be above 0 to sample, got {temperature}")
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise SoftPromptError(f"unknown probe(s) {unknown or '(none given)'}: expected some of {', '.join(PROBES)}")
    if source not in SOURCES:
        raise SoftPromptError(f"unknown patch source {source!r}: expected one of {', '.join(SOURCES)}")


# ----------------------------------------------------------------------------- scoring

_STOPWORDS_TEXT = (
    "a an the is are was were be been being am of to in on at by for with from into onto about as this that these those "
    "it its it's or and nor but if then than so such there their them they you your yours i me my we our us he she his "
    "her him do does did doing done what which who whom whose whether when where why how can could will would shall "
    "should may might must has have had having any all each some both either other another more most very just also "
    "only own same too here please given following one sentence task instruction ask asks asked answer"
)
# Function words, plus the describing instruction's own words (a description that only echoes the instruction says nothing).
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def stem(word: str) -> str:
    """A light suffix stripper (plural, -ing, -ed, -ly, -ment, final e): enough to match "reviews" with
    "review" and "classifying" with "classify"; not a linguistic stemmer."""
    w = word.lower()
    if len(w) > 4 and w.endswith(("ies", "ied")):
        w = w[:-3] + "y"
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ment", "ed", "ly"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


_STOP_STEMS = frozenset(stem(w) for w in STOPWORDS)


def content_words(text: str) -> list[str]:
    """Lowercased words minus `STOPWORDS` (which include the describing instruction's own words), stemmed, unique."""
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        w = w.split("'")[0]
        s = stem(w)
        if w in STOPWORDS or s in _STOP_STEMS:
            continue
        if s not in out:
            out.append(s)
    return out


def text_score(text: str, reference: str, label_words: Sequence[str] = ()) -> dict[str, Any]:
    """How much `text` says `reference`: content recall (share of the reference's content words in the text),
    label recall (share of label words in it; None without label words) and their mean as `score` in [0, 1]."""
    said = set(content_words(text))
    wanted = content_words(reference)
    found = [w for w in wanted if w in said]
    labels = [lw for lw in label_words if content_words(lw)]
    labels_found = [lw for lw in labels if all(w in said for w in content_words(lw))]
    content = len(found) / len(wanted) if wanted else None
    label = len(labels_found) / len(labels) if labels else None
    parts = [p for p in (content, label) if p is not None]
    return {
        "score": sum(parts) / len(parts) if parts else 0.0,
        "content_recall": content,
        "label_recall": label,
        "content_found": found,
        "content_missing": [w for w in wanted if w not in said],
        "labels_found": labels_found,
    }


def description_score(text: str, task) -> dict[str, Any]:
    """`text_score` against a task's English description and label words. `task`: a Task, a task name or
    .toml path, or a run.json's task record (a mapping with description and label_words)."""
    if isinstance(task, str):
        from softprompt.tasks import get_task

        task = get_task(task)
    if isinstance(task, Mapping):
        return text_score(text, task.get("description") or "", list(task.get("label_words") or []))
    return text_score(text, task.description, list(task.label_words))


# ----------------------------------------------------------------------------- report


def _scored(descriptions: list[dict[str, Any]], score) -> list[dict[str, Any]]:
    return [{**d, "score": score(d["text"])} for d in descriptions]


def _greedy_mean(descriptions: list[dict[str, Any]]) -> float | None:
    scores = [d["score"]["score"] for d in descriptions if d["decoding"] == "greedy"]
    return sum(scores) / len(scores) if scores else None


def _best(descriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(descriptions, key=lambda d: d["score"]["score"], default=None)


def _run_task(run) -> Any:
    """The task a run trained on: its run.json record (what it saw), else the task by name or file."""
    recorded = run.record.task or {}
    if recorded.get("description"):
        return recorded
    from softprompt.tasks import get_task

    return get_task(run.task)


def _describe_run(backbone, run, label: str, which: str, options: dict[str, Any]) -> dict[str, Any]:
    """One run's trained and initial prompts described and scored against its task."""
    start = time.perf_counter()
    sp = run.prompt(which)
    sp.check_model(backbone.hidden_size, where=f"the prompt of {run.path}")
    task = _run_task(run)

    def score(text: str) -> dict[str, Any]:
        return description_score(text, task)

    trained = _scored(describe_prompt(backbone, sp.weight, **options), score)
    init = _scored(describe_prompt(backbone, sp.initial, **options), score)
    entry: dict[str, Any] = {"run": label, **run_meta(run, label)}
    trained_on = (run.record.model or {}).get("name") or run.config.get("model")
    if trained_on and trained_on != backbone.name:
        entry["warning"] = f"prompt trained on {trained_on!r}, described by {backbone.name!r}: descriptions may be meaningless"
    entry.update(
        descriptions=trained,
        init={"descriptions": init},
        summary={"trained_score": _greedy_mean(trained), "init_score": _greedy_mean(init), "best": _best(trained)},
        wall_time_s=time.perf_counter() - start,
    )
    return entry


def _describe_identity(backbone, text: str, options: dict[str, Any]) -> dict[str, Any]:
    """The identity probe on `text`, each description scored against the text itself (content words only)."""
    start = time.perf_counter()
    descriptions = _scored(describe_text(backbone, text, **options), lambda t: text_score(t, text))
    return {
        "text": text,
        "descriptions": descriptions,
        "summary": {"score": _greedy_mean(descriptions), "best": _best(descriptions)},
        "wall_time_s": time.perf_counter() - start,
    }


def describe_report(
    backbone,
    runs: Iterable,
    out_dir: str | Path | None = None,
    *,
    which: str = "last",
    text: str | None = None,
    samples: int = 3,
    max_new_tokens: int = 40,
    layers: Iterable[int] | None = None,
    seed: int = 0,
    source: str = DEFAULT_SOURCE,
) -> dict[str, Any]:
    """Self-descriptions of every run's trained and initial prompt (and of `text`, the identity probe), scored
    against each run's task; written to `out_dir/describe.json` when given. `runs` may be empty with `text`."""
    runs = list(runs)
    if not runs and text is None:
        raise SoftPromptError("nothing to describe: give run directories or a text")
    runs = as_runs(runs) if runs else []
    _check_settings(samples, max_new_tokens, TEMPERATURE, PROBES, source)
    chosen = resolve_layers(backbone.model, layers)
    options = {"samples": samples, "max_new_tokens": max_new_tokens, "seed": seed, "layers": chosen, "source": source}
    inp = describe_input(backbone.tokenizer, 1)
    settings = {
        "probes": ["embed", "patch"] if chosen else ["embed"],
        "layers": chosen,
        "source": source,
        "n_layers": len(decoder_layers(backbone.model)),
        "samples": samples,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "temperature": TEMPERATURE,
        "which": which,
        "format": inp.format,
        "instruction": f"{INSTRUCTION[0]}<prompt>{INSTRUCTION[1]}" + (PLAIN_CUE if inp.format == "plain" else ""),
        "placeholder": PLACEHOLDER,
    }
    report: dict[str, Any] = {"model": backbone.name, "settings": settings}
    report["runs"] = [_describe_run(backbone, r, lab, which, options) for r, lab in zip(runs, run_labels(runs), strict=True)]
    if text is not None:
        report["identity"] = _describe_identity(backbone, text, options)
    report = json_safe(report)
    if out_dir is not None:
        from softprompt.io import write_json

        write_json(Path(out_dir) / "describe.json", report)
    return report
