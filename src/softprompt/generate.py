"""Text generation with a soft prompt in front of the input (greedy or sampled).

Every argument is checked before anything runs (`check_generation_args`; the CLI calls it before the model loads).
"""

from __future__ import annotations

import math

import torch

from softprompt.errors import SoftPromptError
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


@torch.no_grad()
def generate(
    backbone: Backbone,
    text: str,
    prompt: torch.Tensor | KVPrompt | None = None,
    *,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """The continuation of `text` after [prompt; text] (new text only); greedy when temperature is 0. A deep prompt
    (`KVPrompt`) is the cache the text is read after, as PEFT's prefix tuning generates."""
    check_generation_args(max_new_tokens, temperature, seed)
    tok, model = backbone.tokenizer, backbone.model
    ids = tok(text, return_tensors="pt")["input_ids"].to(backbone.device)
    torch.manual_seed(seed)
    kwargs: dict = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id}
    if temperature > 0:
        kwargs["temperature"] = temperature
    if isinstance(prompt, KVPrompt):  # a deep prompt: its keys/values are the cache generation starts from
        if ids.shape[1] == 0:
            raise SoftPromptError("nothing to continue: the text is empty (it tokenizes to no tokens)")
        mask = torch.ones((1, prompt.length + ids.shape[1]), dtype=torch.long, device=backbone.device)
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=deep_prompt_cache(model, prompt, 1), **kwargs)
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    embeds = prompt_embeds(model, ids, prompt)
    if embeds.shape[1] == 0:
        raise SoftPromptError("nothing to continue: the text is empty (it tokenizes to no tokens) and there is no prompt")
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=backbone.device)
    out = model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
    return tok.decode(out[0], skip_special_tokens=True)
