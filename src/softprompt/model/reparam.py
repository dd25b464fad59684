"""Prompt reparameterisation: the (n, d) prompt computed from trainable parameters instead of being them.

- `none`: the prompt matrix is the parameter (Lester et al. 2021).
- `mlp`: P = MLP(E), E initialised like a plain prompt (P-tuning, Liu et al. 2021; PEFT's MLP prompt
  encoder): the MLP couples the rows, so one gradient step moves them together.
- `residual`: P = E + MLP(E) with the MLP's last layer starting at zero (Razdaibiedina et al. 2023,
  without their LayerNorm), so training starts from exactly the initial prompt and the text init is kept.

`HardPromptEncoder` is the discrete counterpart (method `hard`): the prompt projected onto its nearest
vocabulary tokens at every forward (PEZ), trained through that projection.

Only the materialised matrix leaves the run (prompt files, PEFT export, analyses); checkpoints hold the
parameters by name so a resumed run continues bit-identically.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.errors import SoftPromptError
from softprompt.model.prompt import SoftPrompt, input_embedding_matrix


class PromptEncoder(nn.Module):
    """Computes the prompt matrix from the base matrix `E` (the SoftPrompt's parameter) and, unless `none`, an MLP."""

    def __init__(self, prompt: SoftPrompt, kind: str, hidden: int, seed: int = 0):
        super().__init__()
        if kind not in ("none", "mlp", "residual"):
            raise SoftPromptError(f"unknown reparam {kind!r}: expected none, mlp or residual")
        if kind != "none" and hidden < 1:
            raise SoftPromptError(f"reparam {kind!r} needs a hidden width >= 1, got {hidden}")
        self.kind = kind
        self.prompt = prompt  # E is read at call time: a prompt moved to another device is followed
        base = prompt.weight
        d = base.shape[1]
        self.mlp: nn.Sequential | None = None
        if kind == "none":
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if kind == "mlp":
                self.mlp = nn.Sequential(
                    nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d)
                )
            else:
                self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
                nn.init.zeros_(self.mlp[-1].weight)
                nn.init.zeros_(self.mlp[-1].bias)
        self.mlp.to(device=base.device, dtype=base.dtype)

    def forward(self) -> torch.Tensor:
        base = self.prompt.weight
        if self.mlp is None:
            return base
        if self.kind == "mlp":
            return self.mlp(base)
        return base + self.mlp(base)

    def named_trainables(self) -> dict[str, nn.Parameter]:
        """Every trained tensor by a stable name: `prompt` (E) and `reparam.<layer>` (the checkpoint's keys)."""
        params = {"prompt": self.prompt.weight}
        if self.mlp is not None:
            params.update({f"reparam.{n}": p for n, p in self.mlp.named_parameters()})
        return params


class HardPromptEncoder(nn.Module):
    """A discrete prompt trained by projected gradients (PEZ: Wen et al. 2023, "Hard Prompts Made Easy").

    The trained parameter stays the continuous matrix P (the SoftPrompt's weight), but every forward
    returns the rows of P's nearest vocabulary tokens (cosine similarity, as PEZ's `nn_project`), so the
    model only ever sees real token embeddings. The gradient taken at those rows is applied to P
    (straight-through): `rows + (P - P.detach())` is exactly `rows` in value (x - x is exactly 0) and
    the identity in the backward pass. Special tokens are no candidates: a user could not type them.
    """

    kind = "hard"

    def __init__(self, prompt: SoftPrompt, token_ids: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        if rows.dim() != 2 or rows.shape[0] != token_ids.numel() or rows.shape[0] == 0:
            raise SoftPromptError(f"a hard prompt needs (V, d) candidate rows for V token ids, got {tuple(rows.shape)}")
        if rows.shape[1] != prompt.dim:
            raise SoftPromptError(f"the vocabulary's width {rows.shape[1]} differs from the prompt's {prompt.dim}")
        self.prompt = prompt
        device = prompt.weight.device
        self.register_buffer("token_ids", token_ids.detach().to(device=device, dtype=torch.long), persistent=False)
        self.register_buffer("rows", rows.detach().to(device=device, dtype=torch.float32), persistent=False)
        self.register_buffer("inv_norm", 1.0 / self.rows.norm(dim=1).clamp_min(1e-12), persistent=False)

    def nearest(self, matrix: torch.Tensor) -> torch.Tensor:
        """The index (into the candidates) of each row's nearest candidate by cosine similarity, in float32
        outside autocast, so training and evaluation project the same way."""
        with torch.no_grad(), torch.autocast(matrix.device.type, enabled=False):
            scores = (matrix.detach().float() @ self.rows.T) * self.inv_norm
            return scores.argmax(dim=1)

    def ids(self, matrix: torch.Tensor | None = None) -> list[int]:
        """The vocabulary ids of `matrix`'s projection (default: the current prompt's)."""
        matrix = self.prompt.weight if matrix is None else matrix.to(self.rows.device)
        return self.token_ids[self.nearest(matrix)].tolist()

    def forward(self) -> torch.Tensor:
        weight = self.prompt.weight
        projected = self.rows[self.nearest(weight)]
        return projected + (weight - weight.detach())

    def named_trainables(self) -> dict[str, nn.Parameter]:
        return {"prompt": self.prompt.weight}


def special_token_ids(tokenizer) -> set[int]:
    """The tokenizer's special and added-special ids (chat markers, end of text, padding)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def hard_prompt_encoder(prompt: SoftPrompt, model, tokenizer) -> HardPromptEncoder:
    """PEZ's projection over every ordinary token of `tokenizer` (the rows the model sees as input embeddings)."""
    rows = input_embedding_matrix(model, n_tokens=len(tokenizer))
    special = special_token_ids(tokenizer)
    keep = torch.tensor([i for i in range(rows.shape[0]) if i not in special], dtype=torch.long)
    return HardPromptEncoder(prompt, keep, rows[keep.to(rows.device)])


def hard_prompt_facts(token_ids: list[int], tokenizer) -> dict:
    """A discrete prompt as a reader sees it: ids, one decoded string per token, the decoded text, and
    whether that text tokenizes back to the same ids (if not, typing it gives another prompt)."""
    text = tokenizer.decode(token_ids)
    again = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {
        "token_ids": [int(i) for i in token_ids],
        "tokens": [tokenizer.decode([i]) for i in token_ids],
        "text": text,
        "retokenizes_to_same_ids": list(again) == list(token_ids),
    }
