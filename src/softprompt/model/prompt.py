"""SoftPrompt: the (n, d) trainable matrix placed before the input embeddings, its init and its files.

Initial vectors are taken from the model's input-embedding *module* output (not raw weight rows),
so models that scale (Gemma) or normalise embeddings get prompts on the scale they expect.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from softprompt.config import INIT_METHODS, RUN_INIT
from softprompt.errors import SoftPromptError
from softprompt.io import atomic_path

PROMPT_FILE = "prompt.safetensors"


@dataclass
class PromptInit:
    """How the prompt was initialised: enough to rebuild the initial matrix and explain it."""

    method: str
    text: str | None = None
    token_ids: list[int] = field(default_factory=list)
    seed: int = 0


class SoftPrompt(nn.Module):
    """An (n, d) float32 parameter plus the initial matrix it started from."""

    def __init__(self, weight: torch.Tensor, init: PromptInit, initial: torch.Tensor | None = None):
        super().__init__()
        if weight.dim() != 2:
            raise SoftPromptError(f"a soft prompt is an (n, d) matrix, got shape {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.register_buffer("initial", (weight if initial is None else initial).detach().clone().float())
        self.init = init

    @property
    def n_tokens(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def check_model(self, hidden_size: int, where: str = "the prompt") -> None:
        if self.dim != hidden_size:
            raise SoftPromptError(
                f"{where} has hidden size {self.dim} but the model's hidden size is {hidden_size}: "
                "a soft prompt only fits a model with the same embedding width"
            )

    # ----- files -----
    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        meta = {"format": "softprompt-prompt/1", "init": json.dumps(asdict(self.init))}
        meta.update({k: str(v) for k, v in (metadata or {}).items()})
        tensors = {"prompt": self.weight.detach().cpu().contiguous(), "initial_prompt": self.initial.cpu().contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> SoftPrompt:
        path = Path(path)
        if not path.exists():
            raise SoftPromptError(f"prompt file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                meta = f.metadata() or {}
                if "prompt" not in keys:
                    raise SoftPromptError(f"{path}: no tensor named 'prompt' (found {sorted(keys)})")
                weight = f.get_tensor("prompt")
                initial = f.get_tensor("initial_prompt") if "initial_prompt" in keys else weight
        except SoftPromptError:
            raise
        except Exception as e:  # safetensors raises several types for truncated/corrupted headers
            raise SoftPromptError(f"{path}: not a readable safetensors file ({e})") from None
        if weight.shape != initial.shape:
            raise SoftPromptError(
                f"{path}: 'prompt' {tuple(weight.shape)} and 'initial_prompt' {tuple(initial.shape)} differ in shape"
            )
        if not torch.isfinite(weight).all():
            raise SoftPromptError(f"{path}: the prompt holds NaN or inf values")
        init = _init_from_metadata(meta["init"], path) if "init" in meta else PromptInit(method="unknown")
        return cls(weight, init, initial)


def _init_from_metadata(text: str, path: Path) -> PromptInit:
    """A prompt file's `init` metadata, checked: a JSON object of PromptInit's fields and types."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SoftPromptError(f"{path}: metadata 'init' is not valid JSON ({e.msg})") from None
    ok = (
        isinstance(data, dict)
        and set(data) <= {"method", "text", "token_ids", "seed"}
        and isinstance(data.get("method"), str)
        and isinstance(data.get("text"), str | None)
        and isinstance(data.get("token_ids", []), list)
        and all(isinstance(i, int) for i in data.get("token_ids", []))
        and isinstance(data.get("seed", 0), int)
    )
    if not ok:
        raise SoftPromptError(f"{path}: metadata 'init' is {text[:80]!r}, expected an object with a string 'method'")
    return PromptInit(**data)


def parse_run_init(init: str) -> tuple[Path, str]:
    """`run:PATH`, `run:PATH@last` or `run:PATH@best` -> (the run directory, "last" or "best")."""
    if not init.startswith(RUN_INIT):
        raise SoftPromptError(f"init {init!r} does not name a run: expected run:PATH[@best]")
    spec = init[len(RUN_INIT) :]
    which = "last"
    head, sep, tail = spec.rpartition("@")
    if sep and tail in ("best", "last"):
        spec, which = head, tail
    if not spec.strip():
        raise SoftPromptError(f"init {init!r}: no run directory after 'run:'")
    return Path(spec), which


def check_source_length(source: SoftPrompt, n_tokens: int, spec: str) -> None:
    if source.n_tokens != n_tokens:
        raise SoftPromptError(
            f"init {spec}: the source prompt has {source.n_tokens} tokens but --tokens is {n_tokens}; "
            f"train with --tokens {source.n_tokens} or pick a source of {n_tokens} tokens"
        )


def prompt_from_source(source: SoftPrompt, n_tokens: int, spec: str, seed: int = 0) -> SoftPrompt:
    """A new prompt that starts exactly at another run's trained prompt (SPoT's prompt transfer, Vu et al. 2022).

    Its length must be `n_tokens`: a transferred prompt is not cut or repeated, since either would make it
    another prompt than the one that was trained."""
    check_source_length(source, n_tokens, spec)
    return SoftPrompt(source.weight.detach(), PromptInit("run", spec, [], seed))


def _embed(model, ids: list[int]) -> torch.Tensor:
    emb = model.get_input_embeddings()
    idx = torch.tensor(ids, dtype=torch.long, device=emb.weight.device)
    with torch.no_grad():
        return emb(idx).float().cpu()


@torch.no_grad()
def input_embedding_matrix(model, n_tokens: int | None = None, chunk: int = 32768) -> torch.Tensor:
    """All rows the model actually sees as input embeddings, float32, shape (V, d), on the model's device.

    Goes through the embedding module (chunked) so scaled or normalised embeddings come out on the
    scale a soft prompt is trained on. `n_tokens` limits it to the first ids (e.g. the tokenizer's
    length when the matrix has padding rows that no token maps to).
    """
    emb = model.get_input_embeddings()
    vocab = int(emb.weight.shape[0]) if n_tokens is None else min(int(n_tokens), int(emb.weight.shape[0]))
    device = emb.weight.device
    parts = [emb(torch.arange(s, min(s + chunk, vocab), device=device)).float() for s in range(0, vocab, chunk)]
    return torch.cat(parts, dim=0)


def embedding_scale(model, n: int = 5000) -> float:
    """The std of the input-embedding module's outputs over the first `n` token ids: the scale a prompt
    lives on (0.12 for SmolLM2, ~1.0 for Gemma, which multiplies embeddings by sqrt(d)). Random init and
    the default prompt learning rate are set relative to it, so they carry across models."""
    vocab = model.get_input_embeddings().weight.shape[0]
    return float(_embed(model, list(range(min(vocab, n)))).std())


def _fill(ids: list[int], n: int) -> list[int]:
    """Repeat or truncate token ids to exactly n, as PEFT's TEXT init does."""
    if not ids:
        raise SoftPromptError("prompt init text tokenizes to zero tokens")
    reps = -(-n // len(ids))
    return (ids * reps)[:n]


def _text_ids(tokenizer, text: str | None, method: str) -> list[int]:
    """The init text's token ids; an init that starts from text needs one."""
    if not text:
        raise SoftPromptError(f"init {method!r} needs an init text (the task description or --init-text)")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _label_ids(tokenizer, label_words: list[str] | None, method: str) -> list[int]:
    """Every label word's token ids, in order, each as it follows a space."""
    if not label_words:
        raise SoftPromptError(f"init {method!r} needs a task with label words")
    return [i for w in label_words for i in tokenizer(" " + w, add_special_tokens=False)["input_ids"]]


def prompt_token_ids(
    model,
    tokenizer,
    n_tokens: int,
    method: str,
    *,
    text: str | None = None,
    label_words: list[str] | None = None,
    seed: int = 0,
    vocab_top: int = 5000,
) -> tuple[list[int], str | None]:
    """The `n_tokens` token ids a words-based init starts from, and the text it records: the init text's tokens
    (text), the label words' (labels), the text's then the label words' (text+labels), or tokens sampled from the
    most frequent (vocab; Lester et al.: BPE ids are roughly frequency-ordered); repeated or cut to `n_tokens`, as
    PEFT's TEXT init does."""
    if method == "text":
        return _fill(_text_ids(tokenizer, text, method), n_tokens), text
    if method == "labels":
        return _fill(_label_ids(tokenizer, label_words, method), n_tokens), " ".join(label_words)
    if method == "text+labels":  # the description's tokens fill what the label words leave; the labels last, by the input
        ids = _label_ids(tokenizer, label_words, method)
        text_ids = _text_ids(tokenizer, text, method)
        if len(ids) >= n_tokens:
            raise SoftPromptError(
                f"init 'text+labels': the label words take {len(ids)} tokens, leaving none of the {n_tokens} for the "
                "text; use more --tokens or init 'labels'"
            )
        return _fill(text_ids, n_tokens - len(ids)) + ids, f"{text} {' '.join(label_words)}"
    if method == "vocab":
        top = min(vocab_top, model.get_input_embeddings().weight.shape[0])
        return torch.randint(0, top, (n_tokens,), generator=torch.Generator().manual_seed(seed)).tolist(), None
    raise SoftPromptError(f"init {method!r} starts from no tokens")


def init_prompt(
    model,
    tokenizer,
    n_tokens: int,
    method: str = "text",
    *,
    text: str | None = None,
    label_words: list[str] | None = None,
    seed: int = 0,
    vocab_top: int = 5000,
) -> SoftPrompt:
    """Build a SoftPrompt of n_tokens rows initialised by `method` (text, random, vocab, labels, text+labels)."""
    if n_tokens < 1:
        raise SoftPromptError(f"--tokens must be at least 1, got {n_tokens}")
    if method not in INIT_METHODS:
        raise SoftPromptError(f"unknown init {method!r}: expected one of {', '.join(INIT_METHODS)}")
    if method != "random":
        ids, init_text = prompt_token_ids(
            model, tokenizer, n_tokens, method, text=text, label_words=label_words, seed=seed, vocab_top=vocab_top
        )
        return SoftPrompt(_embed(model, ids), PromptInit(method, init_text, ids, seed))
    # random: uniform in [-s, s] with s matched to the embedding matrix's std, so it starts on its scale
    gen = torch.Generator().manual_seed(seed)
    scale = embedding_scale(model)
    dim = model.get_input_embeddings().weight.shape[1]
    weight = (torch.rand(n_tokens, dim, generator=gen) * 2 - 1) * scale * 3**0.5
    return SoftPrompt(weight, PromptInit("random", None, [], seed))
