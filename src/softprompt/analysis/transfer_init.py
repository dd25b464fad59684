"""Prompt-transfer initialisation (SPoT, Vu et al. 2022): does starting task B's prompt from task A's help B?

For every ordered task pair (A, B) the study trained B's prompt starting from A's trained prompt (same
seed). Its gain is B's accuracy from A's prompt minus B's accuracy from its own initialisation (the
study's ordinary run of B), paired by seed: mean, standard error and n. SPoT found that the similarity
of the two tasks' prompts predicts which source helps; that is measured here as the correlation
between prompt similarity (A's and B's own prompts, the same seed, averaged over seeds; symmetric, so A -> B and
B -> A share it) and the gain, over ordered task pairs and over (pair, seed) points (not independent: shown,
not relied on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softprompt.analysis.common import correlation, json_safe, paired_difference
from softprompt.analysis.transfer import DIRECTION, similarities_or_pooled
from softprompt.errors import SoftPromptError
from softprompt.records.transfer import TransferInitResult
from softprompt.runs.directory import Run


@dataclass(frozen=True)
class TransferredRun:
    """B's run started from A's prompt (`source` A, `target` B); B's own run and A's (the source) of the same seed."""

    source: str
    target: str
    seed: int
    run: Run
    own: Run
    source_run: Run


def _accuracy(run: Run) -> float:
    final = run.record.final
    if final is None or final.accuracy is None:
        raise SoftPromptError(f"run {run.path} has no final accuracy")
    return float(final.accuracy)


def _similarities(own: dict[tuple[str, int], Run]) -> tuple[dict[str, np.ndarray], list[tuple[str, int]], str | None]:
    keys = sorted(own)
    sims, note = similarities_or_pooled([own[k].prompt().weight for k in keys])
    return {k: np.array(v) for k, v in sims.items()}, keys, note


def _pair_rows(runs: Sequence[TransferredRun], sims, keys, zero_shot: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for a, b in sorted({(r.source, r.target) for r in runs}):
        group = sorted((r for r in runs if (r.source, r.target) == (a, b)), key=lambda r: r.seed)
        transferred = [_accuracy(r.run) for r in group]
        own = [_accuracy(r.own) for r in group]
        diff = paired_difference(transferred, own)
        per_seed = {name: [float(m[keys.index((a, r.seed)), keys.index((b, r.seed))]) for r in group] for name, m in sims.items()}
        row = {
            "source": a,
            "target": b,
            "seeds": [r.seed for r in group],
            "transferred": transferred,
            "own": own,
            "transferred_mean": float(np.mean(transferred)),
            "own_mean": float(np.mean(own)),
            "gain_mean": diff["mean"],
            "gain_se": diff["se"],
            "n": diff["n"],
            "similarity": {name: float(np.mean(v)) for name, v in per_seed.items()},
            "seed_similarity": per_seed,
            "zero_shot_gain": _zero_shot(zero_shot, a, b),
        }
        rows.append(row)
    return rows


def _zero_shot(zero_shot: dict[str, Any] | None, source: str, target: str) -> float | None:
    """A's prompt evaluated on B without training, minus no prompt (the transfer analysis' task-level gain)."""
    from softprompt.tasks import task_name

    source, target = task_name(source), task_name(target)  # the matrix names tasks by name, rows and columns
    if not zero_shot or source not in zero_shot["source_tasks"] or target not in zero_shot["tasks"]:
        return None
    return zero_shot["gain"][zero_shot["source_tasks"].index(source)][zero_shot["tasks"].index(target)]


def _correlations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in rows[0]["similarity"] if rows else []:
        by_pair = correlation([r["similarity"][name] for r in rows], [r["gain_mean"] for r in rows])
        xs = [s for r in rows for s in r["seed_similarity"][name]]
        ys = [t - o for r in rows for t, o in zip(r["transferred"], r["own"], strict=True)]
        by_seed = correlation(xs, ys)
        for level, c in (("task pairs", by_pair), ("task pairs x seeds", by_seed)):
            out.append(
                {
                    "similarity": name,
                    "direction": DIRECTION[name],
                    "level": level,
                    "pearson_r": c["pearson_r"],
                    "pearson_p": c["pearson_p"],
                    "spearman_r": c["spearman_rho"],
                    "spearman_p": c["spearman_p"],
                    "n": c["n"],
                }
            )
    return out


def transfer_init_report(
    runs: Sequence[TransferredRun], own_init: str, out_dir: str | Path | None = None, *, zero_shot: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Gain of every A -> B initialisation over B's own, paired by seed, and whether prompt similarity predicted it.

    `own_init` names how B's own prompts started (e.g. "text"); `zero_shot` is the transfer analysis'
    "task_level" (A's prompt on B untrained), shown next to each pair. Writes transfer_init.json and figures
    to `out_dir` when given."""
    if not runs:
        raise SoftPromptError("no transfer-initialised runs to report")
    own = {(r.target, r.seed): r.own for r in runs} | {(r.source, r.seed): r.source_run for r in runs}
    sims, keys, note = _similarities(own)
    rows = _pair_rows(runs, sims, keys, zero_shot)
    report: dict[str, Any] = json_safe(
        {"own_init": own_init, "pairs": rows, "correlations": _correlations(rows), "similarity_note": note, "figures": {}}
    )
    TransferInitResult.from_json(report, "transfer-init report")
    if out_dir is not None:
        _figures(report, Path(out_dir))
    report = TransferInitResult.from_dict(report, "transfer-init report").to_dict()  # as its record writes it
    if out_dir is not None:
        from softprompt.io import write_json

        write_json(Path(out_dir) / "transfer_init.json", report)
    return report


def _figures(report: dict[str, Any], out_dir: Path) -> None:
    from softprompt.analysis import figures as fig

    rows = report["pairs"]
    tasks = sorted({r["source"] for r in rows} | {r["target"] for r in rows})
    gain = [[next((r["gain_mean"] for r in rows if (r["source"], r["target"]) == (a, b)), None) for b in tasks] for a in tasks]
    f = report["figures"]
    f["gain"] = str(
        fig.heatmap(
            gain,
            tasks,
            tasks,
            out_dir / "transfer_init_gain.png",
            title=f"accuracy gain of B (column) started from A's prompt (row) over B from {report['own_init']}",
            fmt="+.3f",
            center=0.0,
        )
    )
    for c in report["correlations"]:
        if c["level"] == "task pairs" and len(rows) >= 1:
            name = c["similarity"]
            f[f"scatter_{name}"] = str(
                fig.similarity_scatter(
                    [r["similarity"][name] for r in rows],
                    [r["gain_mean"] for r in rows],
                    out_dir / f"transfer_init_similarity_{name}.png",
                    xlabel=f"{name.replace('_', ' ')} of A's and B's prompts ({DIRECTION[name]})",
                    ylabel=f"gain of A -> B init over B from {report['own_init']}",
                    r=c["pearson_r"],
                    p=c["pearson_p"],
                    rho=c["spearman_r"],
                    labels=[f"{r['source']}→{r['target']}" for r in rows],
                )
            )
