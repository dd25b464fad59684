"""Prompt reparameterisation: the (n, d) prompt computed from trainable parameters instead of being them.

- `none`: the prompt matrix is the parameter (Lester et al. 2021).
- `mlp`: P = MLP(E), E initialised like a plain prompt (P-tuning, Liu et al. 2021; PEFT's MLP prompt
  encoder): the MLP couples the rows, so one gradient step moves them together.
- `residual`: P = E + MLP(E) with the MLP's last layer starting at zero (Razdaibiedina et al. 2023,
  without their LayerNorm), so training starts from exactly the initial prompt and the text init is kept.

Only the materialised matrix leaves the run (prompt files, PEFT export, analyses); checkpoints hold the
parameters by name so a resumed run continues bit-identically.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.errors import SoftPromptError


class PromptEncoder(nn.Module):
    """Computes the prompt matrix from the base matrix `E` (a parameter) and, unless `none`, an MLP."""

    def __init__(self, base: nn.Parameter, kind: str, hidden: int, seed: int = 0):
        super().__init__()
        if kind not in ("none", "mlp", "residual"):
            raise SoftPromptError(f"unknown reparam {kind!r}: expected none, mlp or residual")
        if kind != "none" and hidden < 1:
            raise SoftPromptError(f"reparam {kind!r} needs a hidden width >= 1, got {hidden}")
        self.kind = kind
        self.base = base
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
        if self.mlp is None:
            return self.base
        if self.kind == "mlp":
            return self.mlp(self.base)
        return self.base + self.mlp(self.base)

    def named_trainables(self) -> dict[str, nn.Parameter]:
        """Every trained tensor by a stable name: `prompt` (E) and `reparam.<layer>` (the checkpoint's keys)."""
        params = {"prompt": self.base}
        if self.mlp is not None:
            params.update({f"reparam.{n}": p for n, p in self.mlp.named_parameters()})
        return params
