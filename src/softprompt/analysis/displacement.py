"""Drift and displacement: how far each trained position moved from its init, and toward which tokens.

Distance alone says little in an anisotropic embedding space, so drift is also measured against the
init vector's norm and the gap to its nearest other token (past the gap: another word now sits closer),
and the direction (final - init) is read through its own nearest tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from softprompt.analysis.nearest import nearest_other_distance, nearest_tokens
from softprompt.analysis.token_text import TokenReader

_EPS = 1e-12


def _ratio(a: float, b: float | None) -> float | None:
    return None if b is None or b <= _EPS else a / b


def _mean(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def drift_fields(
    prompt: torch.Tensor,
    initial: torch.Tensor,
    init_ids: Sequence[int] | None,
    embeddings: torch.Tensor,
    reader: TokenReader,
    k: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Where each position went: how far (absolute, relative to the init vector, relative to the gap to the
    nearest other token) and in which direction (the tokens nearest by cosine to final - init).

    Also the positions whose top-1 neighbour changed (the final's nearest token is not the initial vector's).
    """
    n = prompt.shape[0]
    delta = prompt - initial
    norms = delta.norm(dim=1).tolist()
    init_norms = initial.norm(dim=1).tolist()
    gaps = nearest_other_distance(initial, embeddings, list(init_ids) if init_ids else None)
    moved = [i for i in range(n) if not torch.equal(prompt[i], initial[i])]
    disp: list[list[dict[str, Any]] | None] = [None] * n
    if moved:
        d_ids, d_sims = nearest_tokens(delta[moved], embeddings, k, "cosine")
        desc = reader.describe(d_ids.flatten().tolist())
        kk = d_ids.shape[1]
        for j, i in enumerate(moved):
            disp[i] = [
                {"id": t, "token": d["token"], "similarity": float(s)}
                for t, s, d in zip(d_ids[j].tolist(), d_sims[j].tolist(), desc[j * kk : (j + 1) * kk], strict=True)
            ]
    top_final = nearest_tokens(prompt, embeddings, 1, "cosine")[0][:, 0].tolist()
    top_init = nearest_tokens(initial, embeddings, 1, "cosine")[0][:, 0].tolist()
    fields = [
        {
            "drift": {
                "norm": norms[i],
                "relative_to_init": _ratio(norms[i], init_norms[i]),
                "relative_to_gap": _ratio(norms[i], gaps[i]),
                "gap": gaps[i],
            },
            "top1_changed": top_final[i] != top_init[i],
            "displacement_tokens": disp[i],
        }
        for i in range(n)
    ]
    counts: dict[str, int] = {}
    for tokens in disp:
        for t in tokens or []:
            counts[t["token"]] = counts.get(t["token"], 0) + 1
    common = sorted(counts, key=lambda w: (-counts[w], list(counts).index(w)))[:10]
    to_gap = [f["drift"]["relative_to_gap"] for f in fields]
    summary = {
        "mean_relative_drift": _mean(f["drift"]["relative_to_init"] for f in fields),
        "mean_relative_to_gap": _mean(to_gap),
        "past_gap_rate": _mean(float(g >= 1.0) for g in to_gap if g is not None),
        "top1_changed_positions": [i for i in range(n) if fields[i]["top1_changed"]],
        "top1_changed_rate": sum(f["top1_changed"] for f in fields) / n,
        "common_displacement_tokens": [{"token": w, "positions": counts[w]} for w in common],
    }
    return fields, summary


def no_drift(n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The drift fields of a prompt without an initial matrix: all None."""
    rows = [{"drift": None, "top1_changed": None, "displacement_tokens": None} for _ in range(n)]
    summary = dict.fromkeys(("mean_relative_drift", "mean_relative_to_gap", "past_gap_rate", "top1_changed_rate"))
    return rows, {**summary, "top1_changed_positions": [], "common_displacement_tokens": []}


def drift_by_task(by_task: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Per task, over its runs: mean drift relative to the init and to the gap, the share of positions whose top-1
    neighbour changed, and the displacement tokens shared by most positions."""
    out = {}
    for task, analyses in sorted(by_task.items()):
        sums = [a["summary"] for a in analyses]
        counts: dict[str, int] = {}
        for s in sums:
            for t in s.get("common_displacement_tokens") or []:
                counts[t["token"]] = counts.get(t["token"], 0) + t["positions"]
        out[task] = {
            "runs": len(analyses),
            "mean_relative_drift": _mean(s.get("mean_relative_drift") for s in sums),
            "mean_relative_to_gap": _mean(s.get("mean_relative_to_gap") for s in sums),
            "top1_changed_rate": _mean(s.get("top1_changed_rate") for s in sums),
            "displacement_tokens": sorted(counts, key=lambda w: (-counts[w], list(counts).index(w)))[:10],
        }
    return out
