"""Text generation with a soft prompt in front of the input (greedy or sampled)."""

from __future__ import annotations

import torch

from softprompt.backbones import Backbone
from softprompt.scoring.model import prompt_embeds


@torch.no_grad()
def generate(
    backbone: Backbone,
    text: str,
    prompt: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """The continuation of `text` after [prompt; text] (new text only); greedy when temperature is 0."""
    tok, model = backbone.tokenizer, backbone.model
    ids = tok(text, return_tensors="pt")["input_ids"].to(backbone.device)
    embeds = prompt_embeds(model, ids, prompt)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=backbone.device)
    torch.manual_seed(seed)
    kwargs = {"do_sample": temperature > 0}
    if temperature > 0:
        kwargs["temperature"] = temperature
    out = model.generate(
        inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **kwargs
    )
    return tok.decode(out[0], skip_special_tokens=True)
