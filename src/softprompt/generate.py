"""Text generation with a soft prompt in front of the input (greedy or sampled).

Every argument is checked before anything runs (`check_generation_args`; the CLI calls it before the model loads).
"""

from __future__ import annotations

import math

import torch

from softprompt.errors import SoftPromptError, warn
from softprompt.model.backbones import Backbone
from softprompt.model.deep_prompt import KVPrompt
from softprompt.scoring.model import deep_prompt_cache, prompt_embeds

MAX_SEED = 2**64 - 1  # what torch.manual_seed accepts


def check_generation_args(max_new_tokens: object, temperature: object, seed: object, *, cli: bool = False) -> None:
    """max_new_tokens a positive integer, temperature a finite number >= 0 (0: greedy), seed an integer in
    [0, 2**64 - 1]; `cli` names them as the command's flags (--max-new-tokens)."""

    def name(arg: str) -> str:
        return "--" + arg.replace("_", "-") if cli else arg

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SoftPromptError(f"{name('max_new_tokens')} must be a positive integer, got {max_new_tokens!r}")
    number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
    if not number or not math.isfinite(temperature) or temperature < 0:
        raise SoftPromptError(f"{name('temperature')} must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SoftPromptError(f"{name('seed')} must be an integer from 0 to 2**64 - 1, got {seed!r}")


def input_ids(tokenizer, text: str, prompt_format: str = "plain") -> list[int]:
    """The ids after the soft prompt, laid out as a run's examples are: the text as it comes (`plain`, with the
    tokenizer's special tokens), or inside the chat template's user turn with the assistant's turn opened (`chat`,
    a trailing "Answer:" dropped as for a task's input: `data.chat`)."""
    if prompt_format == "chat":
        from softprompt.data.chat import ChatLayout, chat_context

        layout = ChatLayout.of(tokenizer)
        return [*layout.head, *tokenizer(chat_context(text), add_special_tokens=False)["input_ids"], *layout.tail]
    return list(tokenizer(text)["input_ids"])


def capped_new_tokens(backbone: Backbone, used: int, max_new_tokens: int) -> int:
    """`max_new_tokens`, capped (with a one-line warning) at the model's context less the `used` positions (prompt
    and input): generation past the context ran on for minutes without a word. Where the model's config names no
    context (BLOOM's ALiBi) nothing is capped."""
    context = backbone.context_length
    if context is None or used + max_new_tokens <= context:
        return max_new_tokens
    if used >= context:
        raise SoftPromptError(
            f"the prompt and the input take {used} positions, the model's whole context of {context}: shorten the text"
        )
    warn(
        f"max_new_tokens {max_new_tokens} capped at {context - used}: the model's context is {context} positions and "
        f"the prompt and input take {used}"
    )
    return context - used


@torch.no_grad()
def generate(
    backbone: Backbone,
    text: str,
    prompt: torch.Tensor | KVPrompt | None = None,
    *,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
    prompt_format: str = "plain",
) -> str:
    """The continuation of `text` after [prompt; text] (new text only); greedy when temperature is 0. `prompt_format`
    (plain or chat) lays the text out as a run's examples are (`input_ids`); new tokens stop at the model's context.
    A deep prompt (`KVPrompt`) is the cache the text is read after, as PEFT's prefix tuning generates."""
    check_generation_args(max_new_tokens, temperature, seed)
    tok, model = backbone.tokenizer, backbone.model
    ids = torch.tensor([input_ids(tok, text, prompt_format)], dtype=torch.long, device=backbone.device)
    torch.manual_seed(seed)
    kwargs: dict = {"do_sample": temperature > 0, "pad_token_id": tok.pad_token_id}
    if temperature > 0:
        kwargs["temperature"] = temperature
    if isinstance(prompt, KVPrompt):  # a deep prompt: its keys/values are the cache generation starts from
        if ids.shape[1] == 0:
            raise SoftPromptError("nothing to continue: the text is empty (it tokenizes to no tokens)")
        used = prompt.length + ids.shape[1]
        mask = torch.ones((1, used), dtype=torch.long, device=backbone.device)
        kwargs["max_new_tokens"] = capped_new_tokens(backbone, used, max_new_tokens)
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=deep_prompt_cache(model, prompt, 1), **kwargs)
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    embeds = prompt_embeds(model, ids, prompt)
    if embeds.shape[1] == 0:
        raise SoftPromptError("nothing to continue: the text is empty (it tokenizes to no tokens) and there is no prompt")
    kwargs["max_new_tokens"] = capped_new_tokens(backbone, int(embeds.shape[1]), max_new_tokens)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=backbone.device)
    out = model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
    return tok.decode(out[0], skip_special_tokens=True)
