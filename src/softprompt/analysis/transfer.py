"""Zero-shot transfer: every run's prompt on every task, and whether similar prompts transfer better.

The study evaluated each task's prompt on the other tasks' validation sets, found most transfers
(90%) beat no prompt, and related transfer to prompt similarity (Frobenius norm of B - A). SPoT
(Vu et al. 2022) measures similarity as the cosine of average-pooled prompts and the mean
per-token cosine, and finds the relation holds for some targets only; so all three similarities
are computed, and the correlation is reported with its p-value and number of pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softprompt.analysis.common import as_runs, correlation, json_safe, run_labels, run_meta
from softprompt.errors import SoftPromptError
from softprompt.records.transfer import TransferResult
from softprompt.runs.directory import scoring_prompt
from softprompt.tasks import task_name

SIMILARITIES = ("frobenius", "pooled_cosine", "token_cosine")
PER_TOKEN = ("frobenius", "token_cosine")
# Frobenius is a distance: more similar prompts have a *smaller* value, so a negative r supports
# "more similar prompts transfer better"; the cosines are similarities (positive r supports it).
DIRECTION = {"frobenius": "distance", "pooled_cosine": "similarity", "token_cosine": "similarity"}


# ----------------------------------------------------------------------------- similarity


def prompt_similarity(prompts: Sequence[torch.Tensor], metrics: Sequence[str] = SIMILARITIES) -> dict[str, list[list[float]]]:
    """Pairwise prompt (dis)similarity matrices.

    - `frobenius`: ||B - A||_F, the study's measure (a distance);
    - `pooled_cosine`: cosine of the position-averaged prompts (SPoT), works across prompt lengths;
    - `token_cosine`: mean over positions of cos(a_i, b_i) (SPoT's per-token variant).
    Per-token metrics need prompts of one length and raise a clear error otherwise.
    """
    for m in metrics:
        if m not in SIMILARITIES:
            raise SoftPromptError(f"unknown similarity {m!r}: expected one of {', '.join(SIMILARITIES)}")
    xs = [p.detach().double().cpu() for p in prompts]
    if len({x.shape[1] for x in xs}) > 1:
        raise SoftPromptError("prompts have different hidden sizes: they belong to different models and cannot be compared")
    lengths = sorted({x.shape[0] for x in xs})
    out: dict[str, list[list[float]]] = {}
    if any(m in PER_TOKEN for m in metrics) and len(lengths) > 1:
        bad = [m for m in metrics if m in PER_TOKEN]
        raise SoftPromptError(
            f"{', '.join(bad)} compare prompts position by position, but the prompts have {lengths} tokens: "
            "use only 'pooled_cosine' for prompts of different lengths"
        )
    if "frobenius" in metrics:
        flat = torch.stack([x.flatten() for x in xs])
        fro = torch.cdist(flat, flat)
        fro.fill_diagonal_(0.0)
        out["frobenius"] = fro.tolist()
    if "pooled_cosine" in metrics:
        pooled = torch.stack([x.mean(0) for x in xs])
        unit = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out["pooled_cosine"] = (unit @ unit.T).tolist()
    if "token_cosine" in metrics:
        x = torch.stack(xs)
        unit = x / x.norm(dim=2, keepdim=True).clamp_min(1e-12)
        out["token_cosine"] = torch.einsum("and,bnd->abn", unit, unit).mean(2).tolist()
    return out


def similarities_or_pooled(prompts: Sequence[torch.Tensor]) -> tuple[dict[str, list[list[float]]], str | None]:
    """Every similarity, or only the pooled cosine where the prompts differ in length (and a note saying so)."""
    try:
        return prompt_similarity(prompts), None
    except SoftPromptError as e:
        return prompt_similarity(prompts, metrics=("pooled_cosine",)), f"{e}; only the pooled cosine is reported"


# ----------------------------------------------------------------------------- transfer


def transfer_matrix(
    evaluator,
    runs: Iterable,
    tasks: Sequence[str],
    limit: int | None = None,
    *,
    which: str = "last",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Accuracy of every run's prompt (rows) on every task's validation set (columns); `progress` hears which
    prompt is scored (its label and count).

    Also evaluates the no-prompt reference per target task (gain = accuracy - no prompt) and each
    run's own-task accuracy (from the matrix when its task is a column, evaluated otherwise). One
    Evaluator serves every cell, so each task is loaded and tokenized once per prompt length. With
    `limit`, every cell uses the same seeded subsample (seed 0), so rows are comparable; a run's
    training log may have used its own seed's subsample.
    """
    from softprompt.tasks import get_task

    runs = as_runs(runs)
    if not tasks:
        raise SoftPromptError("no target tasks: pass --tasks a,b")
    labels = run_labels(runs)
    task_objs = [get_task(t) for t in tasks]
    names = [t.name for t in task_objs]
    # a run names its task as it was given (a custom task by its .toml path), a column by the task's name: compare
    # names, or a custom task's own prompts would count as cross-task transfers
    sources = [task_name(r.task) for r in runs]
    prompts = [scoring_prompt(r, r.prompt(which), evaluator.backbone, f"the prompt of {r.path}") for r in runs]
    no_prompt = {t.name: evaluator.evaluate(t, None, limit=limit) for t in task_objs}
    acc, f1 = [], []
    for i, p in enumerate(prompts):
        if progress is not None:
            progress(f"{labels[i]} ({i + 1}/{len(prompts)}) on {len(task_objs)} task(s)")
        results = [evaluator.evaluate(t, p, limit=limit) for t in task_objs]
        acc.append([r.accuracy for r in results])
        f1.append([r.f1_macro for r in results])
    own = {}
    for i, (run, p) in enumerate(zip(runs, prompts, strict=True)):
        if sources[i] in names:
            own[labels[i]] = acc[i][names.index(sources[i])]
        else:
            own[labels[i]] = evaluator.evaluate(run.task, p, limit=limit).accuracy
    gain = [[a - no_prompt[t].accuracy for a, t in zip(row, names, strict=True)] for row in acc]
    return {
        "runs": labels,
        "source_tasks": sources,
        "tasks": names,
        "n": {t: no_prompt[t].n for t in names},
        "limit": limit,
        "accuracy": acc,
        "f1_macro": f1,
        "no_prompt": {t: no_prompt[t].accuracy for t in names},
        "no_prompt_f1_macro": {t: no_prompt[t].f1_macro for t in names},
        "own_task": own,
        "gain": gain,
    }


def off_diagonal_cells(source_tasks: Sequence[str], tasks: Sequence[str]) -> list[tuple[int, int]]:
    """(row, column) pairs where a prompt is evaluated on a task it was not trained on."""
    return [(i, j) for i, s in enumerate(source_tasks) for j, t in enumerate(tasks) if s != t]


def share_beating_no_prompt(matrix: dict[str, Any]) -> dict[str, Any]:
    """Fraction of cross-task transfers (off-diagonal cells) strictly better than no prompt (study: 90%)."""
    cells = off_diagonal_cells(matrix["source_tasks"], matrix["tasks"])
    wins = sum(matrix["gain"][i][j] > 0 for i, j in cells)
    ties = sum(matrix["gain"][i][j] == 0 for i, j in cells)
    return {"transfers": len(cells), "beat_no_prompt": wins, "ties": ties, "share": wins / len(cells) if cells else None}


def similarity_vs_gain(matrix: dict[str, Any], similarities: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Correlate prompt similarity with transfer gain over no prompt, on off-diagonal pairs.

    For a source run and a target task, the similarity is the mean similarity between the source
    prompt and the prompts trained on the target task (targets without runs are skipped). Pearson
    and Spearman come with p-values; `direction` says whether low (distance) or high (similarity)
    values mean "more similar".
    """
    src, tasks = matrix["source_tasks"], matrix["tasks"]
    out: dict[str, Any] = {}
    for name, sim in similarities.items():
        xs, ys, pairs = [], [], []
        for i, j in off_diagonal_cells(src, tasks):
            members = [k for k, s in enumerate(src) if s == tasks[j]]
            if not members:
                continue
            x = float(np.mean([sim[i][k] for k in members]))
            xs.append(x)
            ys.append(matrix["gain"][i][j])
            pairs.append({"run": matrix["runs"][i], "target": tasks[j], "similarity": x, "gain": matrix["gain"][i][j]})
        out[name] = {"direction": DIRECTION[name], **correlation(xs, ys), "pairs": pairs}
    return out


def task_level(matrix: dict[str, Any]) -> dict[str, Any]:
    """The run x task matrices averaged over runs of the same source task (the study's task x task view)."""
    src = matrix["source_tasks"]
    sources = sorted(set(src))
    out: dict[str, Any] = {"source_tasks": sources, "tasks": matrix["tasks"]}
    for key in ("accuracy", "gain"):
        out[key] = [np.mean([matrix[key][i] for i, s in enumerate(src) if s == task], axis=0).tolist() for task in sources]
    return out


def transfer_report(
    evaluator,
    runs: Iterable,
    tasks: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    which: str = "last",
    figures: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Transfer matrix, prompt similarities, similarity-vs-gain correlations and the share of wins (`progress`:
    `transfer_matrix`'s).

    `tasks` defaults to the runs' own tasks. Prompts of different lengths get only the pooled cosine
    (noted in "similarity_note"). Writes `transfer.json` and heatmaps/scatters to `out_dir` when given.
    """
    runs = as_runs(runs)
    labels = run_labels(runs)
    tasks = list(tasks) if tasks else sorted({r.task for r in runs})
    matrix = transfer_matrix(evaluator, runs, tasks, limit, which=which, progress=progress)
    sims, note = similarities_or_pooled([r.prompt(which).weight for r in runs])
    share = share_beating_no_prompt(matrix)
    corr = similarity_vs_gain(matrix, sims)
    report: dict[str, Any] = json_safe(
        {
            "runs": [run_meta(r, lab) for r, lab in zip(runs, labels, strict=True)],
            "matrix": matrix,
            "task_level": task_level(matrix),
            "share_beating_no_prompt": share,
            "similarity": {"labels": labels, **sims},
            "similarity_note": note,
            "similarity_vs_gain": corr,
            "summary": _summary(share, corr),
            "figures": {},
        }
    )
    TransferResult.from_json(report, "transfer report")  # holds everything the study report reads
    if out_dir is not None:
        out_dir = Path(out_dir)
        if figures:
            _figures(report, out_dir, matrix, sims, labels)
    report = TransferResult.from_dict(report, "transfer report").to_dict()  # as its record writes it (schema version)
    if out_dir is not None:
        from softprompt.io import write_json

        write_json(out_dir / "transfer.json", report)
    return report


def _summary(share: dict[str, Any], corr: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers, flat, for reports: the share of transfers beating no prompt, each correlation."""
    return {
        "share_beat_no_prompt": share["share"],
        "n_transfers": share["transfers"],
        "n_beat": share["beat_no_prompt"],
        "n_ties": share["ties"],
        "correlations": [
            {
                "similarity": name,
                "direction": c["direction"],
                "pearson_r": c["pearson_r"],
                "pearson_p": c["pearson_p"],
                "spearman_r": c["spearman_rho"],
                "spearman_p": c["spearman_p"],
                "n": c["n"],
            }
            for name, c in corr.items()
        ],
    }


def _figures(report: dict[str, Any], out_dir: Path, matrix: dict[str, Any], sims: dict, labels: list[str]) -> None:
    """Accuracy and gain heatmaps, similarity heatmaps and similarity-vs-gain scatters; paths into report["figures"]."""
    from softprompt.analysis import figures as fig

    f = report["figures"]
    own = [(i, j) for i, src in enumerate(matrix["source_tasks"]) for j, t in enumerate(matrix["tasks"]) if src == t]
    cols = [f"{t}\n(none {matrix['no_prompt'][t]:.2f})" for t in matrix["tasks"]]
    f["accuracy"] = str(
        fig.heatmap(
            matrix["accuracy"],
            labels,
            cols,
            out_dir / "transfer_accuracy.png",
            title="accuracy: prompt (row) on task (column); framed: own task",
            fmt=".2f",
            frames=own,
        )
    )
    f["gain"] = str(
        fig.heatmap(
            matrix["gain"],
            labels,
            matrix["tasks"],
            out_dir / "transfer_gain.png",
            title="accuracy gain over no prompt; framed: own task",
            fmt="+.2f",
            center=0.0,
            frames=own,
        )
    )
    for name, sim in sims.items():
        f[f"similarity_{name}"] = str(
            fig.heatmap(
                sim, labels, labels, out_dir / f"similarity_{name}.png", title=f"prompt {name.replace('_', ' ')}", fmt=".2f"
            )
        )
        c = report["similarity_vs_gain"][name]
        if c["pairs"]:
            f[f"scatter_{name}"] = str(
                fig.similarity_scatter(
                    [p["similarity"] for p in c["pairs"]],
                    [p["gain"] for p in c["pairs"]],
                    out_dir / f"similarity_vs_gain_{name}.png",
                    xlabel=f"{name.replace('_', ' ')} ({DIRECTION[name]})",
                    r=c["pearson_r"],
                    p=c["pearson_p"],
                    rho=c["spearman_rho"],
                    labels=[f"{p['run']}→{p['target']}" for p in c["pairs"]],
                )
            )
