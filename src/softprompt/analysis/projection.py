"""Projected prompts: each soft token replaced by its nearest token, and measured (Khashabi et al. 2022).

A continuous prompt can solve a task while its nearest-token projection reads as unrelated text
(prompt waywardness), so the projection is evaluated as text (a hard prompt, re-tokenized) and as those
tokens' embedding rows (the exact projection), next to the soft prompt itself.
"""

from __future__ import annotations

from typing import Any

import torch

from softprompt.analysis.nearest import nearest_tokens
from softprompt.analysis.token_text import TokenReader


def project_prompt(prompt: torch.Tensor, embeddings: torch.Tensor, tokenizer, metric: str = "cosine") -> dict[str, Any]:
    """Replace every soft token by its nearest vocabulary token: ids, readable tokens and decoded text.

    `retokenizes_to_same_ids` says whether the text, tokenized again, gives the same ids: when it
    does not, the text and exact projections are different prompts and may score differently.
    """
    ids, sims = nearest_tokens(prompt, embeddings, 1, metric)
    token_ids = ids[:, 0].tolist()
    text = tokenizer.decode(token_ids)
    retok = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {
        "token_ids": token_ids,
        "tokens": [d["token"] for d in TokenReader(tokenizer).describe(token_ids)],
        "similarities": sims[:, 0].tolist(),
        "text": text,
        "retokenizes_to_same_ids": list(retok) == token_ids,
    }


def evaluate_projection(
    evaluator,
    task,
    prompt: torch.Tensor,
    embeddings: torch.Tensor,
    metric: str = "cosine",
    *,
    limit: int | None = None,
    no_prompt: bool = True,
) -> dict[str, Any]:
    """Accuracy of the soft prompt next to its projections (Khashabi et al. 2022's waywardness test).

    - `soft`: the trained prompt;
    - `projected_soft`: the embedding rows of the nearest tokens used as a soft prompt (exact projection);
    - `projected_text`: the decoded nearest tokens as a hard prompt (what a reader of the neighbour
      table would type);
    - `no_prompt`: the template alone, for reference.
    A large gap between `soft` and the projections means the neighbour readout does not explain the prompt.
    """
    from softprompt.tasks import get_task

    task = get_task(task) if isinstance(task, str) else task
    tokenizer = evaluator.backbone.tokenizer
    proj = project_prompt(prompt, embeddings, tokenizer, metric)
    rows = embeddings[torch.tensor(proj["token_ids"], device=embeddings.device)].detach().float().cpu()
    results = {
        "soft": evaluator.evaluate(task, prompt.detach().float(), limit=limit),
        "projected_soft": evaluator.evaluate(task, rows, limit=limit),
        "projected_text": evaluator.evaluate(task, None, hard_prompt=proj["text"], limit=limit),
    }
    if no_prompt:
        results["no_prompt"] = evaluator.evaluate(task, None, limit=limit)
    return {
        "task": task.name,
        "n": results["soft"].n,
        "projection": proj,
        "accuracy": {k: r.accuracy for k, r in results.items()},
        "f1_macro": {k: r.f1_macro for k, r in results.items()},
    }
