"""Stochasticity: how far prompts move from their init, how far seeds land from each other, in 2-D.

The study trained each task 4 times and found (a) harder tasks move further from the English init
and (b) the 4 runs of a task are roughly equidistant from each other: many different prompts reach
the same accuracy. This module measures both in the full (n x d) space, where distances are
meaningful, and also projects all soft tokens (or whole prompts) to 2-D with t-SNE and PCA for the
picture. t-SNE keeps neighbourhoods, not distances: read numbers from the full-space fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softprompt.analysis.common import as_runs, correlation, json_safe, run_labels, run_meta
from softprompt.errors import SoftPromptError
from softprompt.records.geometry import GeometryResult
from softprompt.tasks import task_name

LEVELS = ("token", "prompt")
_TITLES = {"tsne": "t-SNE", "pca": "PCA"}
METHODS_2D = ("tsne", "pca")


# ----------------------------------------------------------------------------- distances


def drift(prompt: torch.Tensor, initial: torch.Tensor) -> dict[str, float]:
    """How far a trained prompt moved from its initial prompt.

    `frobenius` = ||P - P0||_F (the study's distance), `relative` = that over ||P0||_F,
    `rms_token` = frobenius / sqrt(n) (comparable across prompt lengths), `mean_token_cosine` =
    mean over positions of cos(p_i, p0_i) (1.0 = no direction change).
    """
    p, p0 = prompt.detach().double().cpu(), initial.detach().double().cpu()
    if p.shape != p0.shape:
        raise SoftPromptError(f"prompt {tuple(p.shape)} and initial prompt {tuple(p0.shape)} differ in shape")
    fro = float((p - p0).norm())
    return {
        "frobenius": fro,
        "relative": fro / max(float(p0.norm()), 1e-12),
        "rms_token": fro / math.sqrt(p.shape[0]),
        "mean_token_cosine": float(torch.nn.functional.cosine_similarity(p, p0, dim=1).mean()),
    }


def _same_shape(prompts: Sequence[torch.Tensor], what: str) -> None:
    shapes = {tuple(p.shape) for p in prompts}
    if len(shapes) > 1:
        raise SoftPromptError(
            f"{what} needs prompts of one shape, got {sorted(shapes)}: compare prompts of the same length "
            "(or use the average-pooled cosine, which works across lengths)"
        )


def pairwise_distances(prompts: Sequence[torch.Tensor]) -> dict[str, list[list[float]]]:
    """All-pairs `frobenius` ||B - A||_F and `mean_token_cosine` (mean of cos(a_i, b_i) over positions).

    Per-position comparison assumes position i means the same thing in both prompts, so the
    prompts must have one shape (a clear error otherwise).
    """
    _same_shape(prompts, "pairwise distances")
    x = torch.stack([p.detach().double().cpu() for p in prompts])  # (R, n, d)
    flat = x.flatten(1)
    fro = torch.cdist(flat, flat).clamp_min(0)
    fro.fill_diagonal_(0.0)
    unit = x / x.norm(dim=2, keepdim=True).clamp_min(1e-12)
    cos = torch.einsum("and,bnd->abn", unit, unit).mean(2)
    return {"frobenius": fro.tolist(), "mean_token_cosine": cos.tolist()}


def off_diagonal_stats(matrix: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Mean, std, min, max and coefficient of variation of the upper triangle: "are the runs equidistant?"

    A small `cv` (std / mean) means every pair of runs is about equally far apart.
    """
    m = np.asarray(matrix, dtype=float)
    vals = m[np.triu_indices(m.shape[0], k=1)] if m.ndim == 2 and m.shape[0] > 1 else np.array([])
    if vals.size == 0:
        return {"pairs": 0, "mean": None, "std": None, "min": None, "max": None, "cv": None}
    mean, std = float(vals.mean()), float(vals.std())
    return {
        "pairs": int(vals.size),
        "mean": mean,
        "std": std,
        "min": float(vals.min()),
        "max": float(vals.max()),
        "cv": std / mean if mean else None,
    }


# ----------------------------------------------------------------------------- 2-D embeddings


def clamp_perplexity(perplexity: float, n_samples: int) -> float:
    """t-SNE needs perplexity < n_samples; with few points use (n - 1) / 3 (at least 1)."""
    return float(min(perplexity, max(1.0, (n_samples - 1) / 3.0)))


def embed_2d(points: np.ndarray | torch.Tensor, method: str = "tsne", *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Project (N, D) points to (N, 2) with t-SNE or PCA, deterministically for a given seed.

    t-SNE uses PCA initialisation and a fixed random_state, with perplexity clamped to what N allows;
    PCA uses the full SVD (deterministic signs). Fewer points than needed give zeros in the missing axes.
    """
    if method not in METHODS_2D:
        raise SoftPromptError(f"unknown projection {method!r}: expected one of {', '.join(METHODS_2D)}")
    x = points.detach().double().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points, dtype=float)
    n = x.shape[0]
    out = np.zeros((n, 2))
    if n < 2:
        return out
    if method == "pca":
        from sklearn.decomposition import PCA

        comps = min(2, n, x.shape[1])
        out[:, :comps] = PCA(n_components=comps, svd_solver="full").fit_transform(x)
        return out
    from sklearn.manifold import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=clamp_perplexity(perplexity, n),
        init="pca",
        random_state=seed,
        learning_rate="auto",
        method="exact" if n <= 200 else "barnes_hut",
    )
    return tsne.fit_transform(x)


def prompt_points(
    prompts: Sequence[torch.Tensor], initials: Sequence[torch.Tensor], level: str = "token"
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Stack prompts and their (deduplicated) initial prompts into points for `embed_2d`.

    `level="token"` gives one point per soft token, as in the study; `"prompt"` one per flattened
    prompt (needs equal shapes). Returns (points, meta) where meta[i] = {"source": index, "kind":
    "soft" | "initial", "position": int | None}; for initial points `source` indexes the distinct
    initial prompts and `initial_of` lists the prompts that started there.
    """
    if level not in LEVELS:
        raise SoftPromptError(f"unknown level {level!r}: expected one of {', '.join(LEVELS)}")
    if level == "prompt":
        _same_shape(list(prompts) + list(initials), "a per-prompt projection")
    distinct: list[torch.Tensor] = []
    owners: list[list[int]] = []
    for i, p0 in enumerate(initials):
        for j, q in enumerate(distinct):
            if q.shape == p0.shape and torch.equal(q, p0):
                owners[j].append(i)
                break
        else:
            distinct.append(p0)
            owners.append([i])
    rows: list[np.ndarray] = []
    meta: list[dict[str, Any]] = []
    for kind, group in (("soft", list(prompts)), ("initial", distinct)):
        for s, p in enumerate(group):
            arr = p.detach().double().cpu().numpy()
            if level == "prompt":
                rows.append(arr.reshape(1, -1))
                meta.append({"source": s, "kind": kind, "position": None})
            else:
                rows.append(arr)
                meta += [{"source": s, "kind": kind, "position": t} for t in range(arr.shape[0])]
            if kind == "initial":
                for m in meta[-(1 if level == "prompt" else arr.shape[0]) :]:
                    m["initial_of"] = owners[s]
    return np.concatenate(rows, axis=0), meta


def _centroid_distances(coords: np.ndarray, meta: list[dict], labels: Sequence[str], tasks: Sequence[str]) -> dict:
    """Per task, 2-D distances between run centroids and from each run to its initial centroid."""
    soft = {
        i: coords[[k for k, m in enumerate(meta) if m["kind"] == "soft" and m["source"] == i]].mean(0) for i in range(len(labels))
    }
    init_of: dict[int, np.ndarray] = {}
    for s in {m["source"] for m in meta if m["kind"] == "initial"}:
        idx = [k for k, m in enumerate(meta) if m["kind"] == "initial" and m["source"] == s]
        for owner in meta[idx[0]]["initial_of"]:
            init_of[owner] = coords[idx].mean(0)
    out = {}
    for task in sorted(set(tasks)):
        members = [i for i, t in enumerate(tasks) if t == task]
        mat = [[float(np.linalg.norm(soft[a] - soft[b])) for b in members] for a in members]
        out[task] = {
            "runs": [labels[i] for i in members],
            "between_runs": off_diagonal_stats(mat),
            "from_initial": {labels[i]: float(np.linalg.norm(soft[i] - init_of[i])) for i in members if i in init_of},
        }
    return out


# ----------------------------------------------------------------------------- report


def drift_vs_difficulty(rows: Sequence[dict[str, Any]], key: str = "frobenius") -> dict[str, Any]:
    """Correlate each run's drift with its task's difficulty (Spearman and Pearson, scipy).

    Difficulty is read two ways: the task's no-prompt accuracy (how well the model does unaided) and
    the soft prompt's final accuracy. The study's claim "harder tasks drift further" predicts a
    negative correlation with either accuracy. Runs missing a number are left out (see `n`).
    """
    out: dict[str, Any] = {"drift": key}
    for acc_key in ("no_prompt_accuracy", "final_accuracy"):
        pairs = [(r["drift"][key], r[acc_key]) for r in rows if r.get(acc_key) is not None]
        out[acc_key] = correlation([p[0] for p in pairs], [p[1] for p in pairs])
    # task level: mean drift per task against the task's accuracy (fewer points, no seed noise)
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    task_rows = []
    for task, rs in sorted(by_task.items()):
        npa = [r["no_prompt_accuracy"] for r in rs if r.get("no_prompt_accuracy") is not None]
        fa = [r["final_accuracy"] for r in rs if r.get("final_accuracy") is not None]
        task_rows.append(
            {
                "task": task,
                "runs": len(rs),
                "mean_drift": float(np.mean([r["drift"][key] for r in rs])),
                "std_drift": float(np.std([r["drift"][key] for r in rs])),
                "no_prompt_accuracy": float(np.mean(npa)) if npa else None,
                "final_accuracy": float(np.mean(fa)) if fa else None,
            }
        )
    out["tasks"] = task_rows
    pairs = [(t["mean_drift"], t["no_prompt_accuracy"]) for t in task_rows if t["no_prompt_accuracy"] is not None]
    out["task_level_no_prompt_accuracy"] = correlation([p[0] for p in pairs], [p[1] for p in pairs])
    return out


def _summary(difficulty: dict[str, Any], within: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers, flat, for reports: drift per task, equidistance per task, drift vs difficulty."""
    task_corr = difficulty["task_level_no_prompt_accuracy"]
    return {
        "task_drift": [
            {"task": t["task"], "runs": t["runs"], "mean_frobenius": t["mean_drift"], "std_frobenius": t["std_drift"]}
            for t in difficulty["tasks"]
        ],
        "equidistance": [{"task": task, **w["frobenius_stats"]} for task, w in within.items() if "frobenius_stats" in w],
        "drift_vs_difficulty": {
            "against": "no-prompt accuracy, task means",
            "spearman_r": task_corr["spearman_rho"],
            "spearman_p": task_corr["spearman_p"],
            "n": task_corr["n"],
        },
    }


def geometry_report(
    runs: Iterable,
    out_dir: str | Path | None = None,
    *,
    level: str = "token",
    seed: int = 0,
    perplexity: float = 30.0,
    which: str = "last",
    figures: bool = True,
) -> dict[str, Any]:
    """Drift from init, within-task pairwise distances, t-SNE/PCA of all prompts, drift vs difficulty.

    Needs no model: only the runs' prompt files. Writes `geometry.json` plus `tsne.png`, `pca.png`,
    `drift.png` and `distances.png` to `out_dir` when given; returns the same dict.
    """
    runs = as_runs(runs)
    labels = run_labels(runs)
    prompts = [r.prompt(which) for r in runs]
    weights = [p.weight.detach() for p in prompts]
    initials = [p.initial.detach() for p in prompts]
    tasks = [task_name(r.task) for r in runs]
    rows = []
    for run, label, sp in zip(runs, labels, prompts, strict=True):
        rows.append({**run_meta(run, label), "n_tokens": sp.n_tokens, "drift": drift(sp.weight, sp.initial)})
    within = _within_task(tasks, labels, weights, rows)
    all_pairs: dict[str, Any] = {"labels": labels}
    try:
        all_pairs.update(pairwise_distances(weights))
    except SoftPromptError as e:
        all_pairs["error"] = str(e)
    projections = _projections(weights, initials, rows, labels, tasks, level=level, seed=seed, perplexity=perplexity)
    difficulty = drift_vs_difficulty(rows)
    report: dict[str, Any] = json_safe(
        {
            "level": level,
            "seed": seed,
            "which": which,
            "runs": rows,
            "within_task": within,
            "all_pairs": all_pairs,
            "projections": projections,
            "drift_vs_difficulty": difficulty,
            "summary": _summary(difficulty, within),
            "note": "Distances are computed in the full prompt space; t-SNE preserves neighbourhoods, not "
            "distances, so its picture illustrates and the numbers above decide.",
            "figures": {},
        }
    )
    GeometryResult.from_json(report, "geometry report")  # holds everything the study report reads
    if out_dir is not None:
        out_dir = Path(out_dir)
        if figures:
            _figures(report["figures"], out_dir, projections, rows, all_pairs, labels, level)
    report = GeometryResult.from_dict(report, "geometry report").to_dict()  # as its record writes it (schema version)
    if out_dir is not None:
        from softprompt.io import write_json

        write_json(out_dir / "geometry.json", report)
    return report


def _within_task(tasks: list[str], labels: list[str], weights: list[torch.Tensor], rows: list[dict]) -> dict[str, Any]:
    """Per task: pairwise distances between its runs, their spread, and that spread against the runs' drift."""
    within: dict[str, Any] = {}
    for task in sorted(set(tasks)):
        members = [i for i, t in enumerate(tasks) if t == task]
        entry: dict[str, Any] = {"runs": [labels[i] for i in members]}
        if len(members) > 1:
            try:
                d = pairwise_distances([weights[i] for i in members])
            except SoftPromptError as e:
                entry["error"] = str(e)
            else:
                entry.update(d)
                entry["frobenius_stats"] = off_diagonal_stats(d["frobenius"])
                entry["mean_token_cosine_stats"] = off_diagonal_stats(d["mean_token_cosine"])
                mean_drift = float(np.mean([rows[i]["drift"]["frobenius"] for i in members]))
                entry["mean_drift"] = mean_drift
                pair_mean = entry["frobenius_stats"]["mean"]
                entry["between_runs_over_drift"] = pair_mean / mean_drift if mean_drift else None
        within[task] = entry
    return within


def _projections(weights, initials, rows, labels, tasks, *, level: str, seed: int, perplexity: float) -> dict[str, Any]:
    """Every soft token (or prompt) and the initial prompts in 2-D by t-SNE and PCA, with centroid distances."""
    points, meta = prompt_points(weights, initials, level)
    projections: dict[str, Any] = {}
    for method in METHODS_2D:
        coords = embed_2d(points, method, seed=seed, perplexity=perplexity)
        projections[method] = {
            "points": [
                {
                    "x": float(c[0]),
                    "y": float(c[1]),
                    "kind": m["kind"],
                    "run": labels[m["source"]] if m["kind"] == "soft" else None,
                    "seed": rows[m["source"]]["seed"] if m["kind"] == "soft" else None,
                    "initial_of": [labels[i] for i in m.get("initial_of", [])],
                    "task": tasks[m["source"]] if m["kind"] == "soft" else tasks[m["initial_of"][0]],
                    "position": m["position"],
                }
                for c, m in zip(coords, meta, strict=True)
            ],
            "centroids": _centroid_distances(coords, meta, labels, tasks),
        }
    if len(points) > 1:
        projections["tsne"]["perplexity"] = clamp_perplexity(perplexity, len(points))
    return projections


def _figures(f: dict[str, str], out_dir: Path, projections, rows, all_pairs, labels, level: str) -> None:
    """tsne.png, pca.png, drift.png and distances.png; their paths go into `f`."""
    from softprompt.analysis import figures as fig

    for method in METHODS_2D:
        f[method] = str(
            fig.scatter_2d(
                projections[method]["points"],
                out_dir / f"{method}.png",
                title=f"{_TITLES[method]} of soft prompts ({level} level); X = initial",
            )
        )
    f["drift"] = str(fig.drift_bars(rows, out_dir / "drift.png"))
    if "frobenius" in all_pairs:
        f["distances"] = str(
            fig.heatmap(
                all_pairs["frobenius"],
                labels,
                labels,
                out_dir / "distances.png",
                title="||B - A||_F between prompts",
                fmt=".2f",
            )
        )
