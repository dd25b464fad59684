"""Did a prompt learn? Its training loss against the loss of knowing only the label frequencies.

With the choices' cross-entropy, a prompt that learned nothing but the class prior sits at the entropy
of the training labels (ln 2 for a balanced binary task): the plateau failing runs never leave. A run
whose final training loss is not clearly below it (`LEARNED_BELOW` of it) is reported as such, so no
reader interprets the neighbours, drift or transfer of a prompt that never learned the task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

LEARNED_BELOW = 0.9  # a run learned if its final training loss is < 90% of the chance loss


def chance_loss(label_counts: Sequence[int]) -> float | None:
    """The entropy (nats) of the label distribution: the cross-entropy of predicting the label frequencies."""
    total = sum(label_counts)
    if total <= 0:
        return None
    return -sum(c / total * math.log(c / total) for c in label_counts if c > 0)


def learning_verdict(history: Sequence[dict[str, Any]], label_counts: Sequence[int] | None, loss: str) -> dict[str, Any]:
    """{"learned": True/False/None, "final_loss", "chance_loss", "text"} for a run's metrics history."""
    losses = [h["train_loss"] for h in history if h.get("train_loss") is not None]
    chance = chance_loss(label_counts) if label_counts else None
    if not losses or chance is None or loss != "choices" or chance == 0:
        return {"learned": None, "final_loss": losses[-1] if losses else None, "chance_loss": chance, "text": "n/a"}
    final = losses[-1]
    learned = final < LEARNED_BELOW * chance
    text = (
        f"yes (training loss {final:.3f} vs {chance:.3f} at chance)"
        if learned
        else f"no: never left the plateau (training loss {final:.3f}, chance {chance:.3f})"
    )
    return {"learned": learned, "final_loss": final, "chance_loss": chance, "text": text}
