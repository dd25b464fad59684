"""Read a soft prompt through the vocabulary: nearest tokens, surviving words, projected prompts.

A soft token is a point in the model's input-embedding space. Its nearest vocabulary tokens (by
cosine, as in the study) are the usual way to "read" it, and an initial word that is still among
them after training has "survived" (the study's "entailed", "accurate").

Such readouts are not faithful explanations: Khashabi et al. (2022, prompt waywardness) show a
continuous prompt can solve a task while its nearest-token projection reads as unrelated text. So
the projection is also *measured*: each soft token is replaced by its nearest token and the result
is evaluated both as text (a hard prompt, re-tokenized) and as those tokens' embedding rows (the
exact projection), next to the soft prompt itself.

The embedding matrix is the output of `model.get_input_embeddings()` over all ids, not the raw
weight: Gemma scales embeddings by sqrt(d) inside that module, and prompts live on that scale.

This module assembles the per-run analysis and the report; the parts live next to it: `nearest` (the
search), `token_text` (readable tokens), `displacement` (drift from the init), `projection` (waywardness).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from softprompt.analysis.common import as_runs, json_safe, run_labels, run_meta
from softprompt.analysis.displacement import drift_by_task, drift_fields, no_drift
from softprompt.analysis.nearest import nearest_tokens, token_ranks
from softprompt.analysis.projection import evaluate_projection
from softprompt.analysis.results import NeighborsResult
from softprompt.analysis.scripts import summarize_scripts
from softprompt.analysis.token_text import TokenReader, vocabulary_scripts
from softprompt.errors import SoftPromptError
from softprompt.model.prompt import input_embedding_matrix
from softprompt.runs.directory import input_prompt_run


def analyze_neighbors(
    prompt: torch.Tensor,
    initial: torch.Tensor | None,
    init_token_ids: Sequence[int] | None,
    embeddings: torch.Tensor,
    tokenizer,
    k: int = 3,
    metric: str = "cosine",
) -> dict[str, Any]:
    """Per position: the top-k tokens with similarities and scripts, the initial token, whether it
    survived (still in the top k), its rank now, and the cosine between the trained and initial vectors.

    The summary holds the survival rate and the surviving words: the study's evidence that some
    words of the English init ("entailed") matter enough for training to keep them.
    Positions without an initial token (random init) get None for the token-based fields.
    With the initial matrix, each position also gets `drift`, `top1_changed` and `displacement_tokens`
    (`displacement.drift_fields`; None without it), and the summary their means and the common displacement tokens.
    """
    prompt = prompt.detach().float().cpu()
    ids, sims = nearest_tokens(prompt, embeddings, k, metric)
    reader = TokenReader(tokenizer)
    init_ids = list(init_token_ids or [])
    have_init = len(init_ids) == prompt.shape[0] and all(0 <= i < embeddings.shape[0] for i in init_ids)
    ranks = token_ranks(prompt, embeddings, init_ids, metric) if have_init else [None] * prompt.shape[0]
    init_desc = reader.describe(init_ids) if have_init else [None] * prompt.shape[0]
    cos0 = l2_0 = None
    if initial is not None:
        initial = initial.detach().float().cpu()
        if initial.shape != prompt.shape:
            raise SoftPromptError(f"initial prompt {tuple(initial.shape)} and prompt {tuple(prompt.shape)} differ in shape")
        cos0 = torch.nn.functional.cosine_similarity(prompt, initial, dim=1).tolist()
        l2_0 = (prompt - initial).norm(dim=1).tolist()
    top_desc = reader.describe(ids.flatten().tolist())
    drift_rows, drift_summary = no_drift(prompt.shape[0])
    if initial is not None:
        drift_rows, drift_summary = drift_fields(prompt, initial, init_ids if have_init else None, embeddings, reader, k)
    positions = []
    for i in range(prompt.shape[0]):
        row_ids = ids[i].tolist()
        tokens = [
            {"id": t, "token": d["token"], "similarity": float(s), "script": d["script"]}
            for t, s, d in zip(row_ids, sims[i].tolist(), top_desc[i * ids.shape[1] : (i + 1) * ids.shape[1]], strict=True)
        ]
        pos: dict[str, Any] = {"position": i, "tokens": tokens}
        if have_init:
            pos.update(
                initial_id=init_ids[i],
                initial_token=init_desc[i]["token"],
                initial_rank=ranks[i],
                survived=init_ids[i] in row_ids,
            )
        else:
            pos.update(initial_id=None, initial_token=None, initial_rank=None, survived=None)
        pos["cos_to_initial"] = None if cos0 is None else float(cos0[i])
        pos["l2_to_initial"] = None if l2_0 is None else float(l2_0[i])
        pos.update(drift_rows[i])
        positions.append(pos)
    survived = [p for p in positions if p["survived"]]
    words: list[str] = []
    for p in survived:
        if p["initial_token"] not in words:
            words.append(p["initial_token"])
    summary = {
        "n_tokens": prompt.shape[0],
        "survival_rate": len(survived) / len(positions) if have_init else None,
        "top1_is_initial_rate": (sum(p["tokens"][0]["id"] == p["initial_id"] for p in positions) / len(positions))
        if have_init
        else None,
        "surviving_positions": [p["position"] for p in survived],
        "surviving_words": words,
        "median_initial_rank": float(torch.tensor(ranks, dtype=torch.float).median()) if have_init else None,
        "mean_cos_to_initial": None if cos0 is None else float(sum(cos0) / len(cos0)),
        "mean_top1_similarity": float(sims[:, 0].mean()),
        **drift_summary,
    }
    return {"k": int(ids.shape[1]), "metric": metric, "positions": positions, "summary": summary}


def check_k(k: object, vocabulary: int | None, name: str = "k") -> None:
    """k neighbours per soft token: a whole number from 1 to the vocabulary size (None: not known yet)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (vocabulary is not None and k > vocabulary):
        most = f"the vocabulary size, {vocabulary:,}" if vocabulary is not None else "the vocabulary size"
        raise SoftPromptError(f"{name} {k!r}: expected a whole number from 1 to {most} (neighbours per soft token)")


def neighbors_report(
    backbone,
    runs: Iterable,
    k: int = 3,
    out_dir: str | Path | None = None,
    *,
    metric: str = "cosine",
    which: str = "last",
    project: bool = False,
    evaluator=None,
    task: str | None = None,
    limit: int | None = None,
    figures: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Nearest tokens, survival and scripts for every run (plus projections with `project=True`); `progress` hears
    which run it reads (its label and count).

    Writes `neighbors.json` and one `neighbors_<run>.png` per run (the study's top-3 figure) to
    `out_dir` when given; returns the same dict, with figure paths under "figures". Projections are
    evaluated on `task` (default: each run's own task) with `evaluator` (when omitted, one is built on
    `backbone` with the first run's settings, `evaluate.evaluator_for_run`).
    """
    runs = as_runs(runs)
    labels = run_labels(runs)
    tok = backbone.tokenizer
    embeddings = input_embedding_matrix(backbone.model, n_tokens=len(tok))
    check_k(k, int(embeddings.shape[0]))
    if project and evaluator is None:
        from softprompt.evaluate import evaluator_for_run

        evaluator = evaluator_for_run(runs[0], backbone)
    out_dir = Path(out_dir) if out_dir is not None else None
    per_run: dict[str, dict] = {}
    fig_paths: dict[str, str] = {}
    for i, (run, label) in enumerate(zip(runs, labels, strict=True), 1):
        if progress is not None:
            progress(f"{label} ({i}/{len(runs)}){', projecting it' if project else ''}")
        sp = input_prompt_run(run, "nearest tokens").prompt(which)
        sp.check_model(embeddings.shape[1], where=f"the prompt of {run.path}")
        analysis = analyze_neighbors(sp.weight, sp.initial, sp.init.token_ids, embeddings, tok, k, metric)
        analysis = {**run_meta(run, label), **analysis}
        trained_on = (run.record.model and run.record.model.name) or run.config.get("model")
        if trained_on and trained_on != backbone.name:
            analysis["warning"] = f"prompt trained on {trained_on!r}, read with {backbone.name!r}: neighbours may be meaningless"
        if project:
            analysis["projection"] = evaluate_projection(evaluator, task or run.task, sp.weight, embeddings, metric, limit=limit)
        per_run[label] = analysis
        if figures and out_dir is not None:
            from softprompt.analysis.figures import nearest_token_figure

            fig_paths[label] = str(nearest_token_figure(analysis, out_dir / f"neighbors_{_slug(label)}.png", title=label))
    report = json_safe(
        {
            "model": backbone.name,
            "k": k,
            "metric": metric,
            "which": which,
            "vocabulary_size": int(embeddings.shape[0]),
            "runs": per_run,
            "scripts": summarize_scripts(per_run, vocabulary_scripts(tok, embeddings.shape[0])),
            "summary": _summary(per_run, k),
            "note": "Nearest tokens are a readout, not an explanation (Khashabi et al. 2022): compare the "
            "projected prompts' accuracy with the soft prompt's before reading meaning into them.",
            "figures": fig_paths,
        }
    )
    report = NeighborsResult.from_dict(report, "neighbors report").to_dict()  # checked by its record, versioned
    if out_dir is not None:
        from softprompt.io import write_json

        write_json(out_dir / "neighbors.json", report)
    return report


def _summary(per_run: dict[str, dict], k: int) -> dict[str, Any]:
    """Headline numbers for reports: survival rate and surviving words per task, projection accuracies per run."""
    by_task: dict[str, list[dict]] = {}
    for a in per_run.values():
        by_task.setdefault(a["task"], []).append(a)
    survival = {}
    for task, analyses in sorted(by_task.items()):
        rates = [a["summary"]["survival_rate"] for a in analyses if a["summary"]["survival_rate"] is not None]
        counts: dict[str, int] = {}
        for a in analyses:
            for w in a["summary"]["surviving_words"]:
                counts[w] = counts.get(w, 0) + 1
        survival[task] = {
            "runs": len(analyses),
            "rate": sum(rates) / len(rates) if rates else None,
            "words": sorted(counts, key=lambda w: (-counts[w], list(counts).index(w))),
            "word_runs": counts,
        }
    projection = [
        {"run": label, "task": a["projection"]["task"], "n": a["projection"]["n"], "text": a["projection"]["projection"]["text"]}
        | a["projection"]["accuracy"]
        for label, a in per_run.items()
        if "projection" in a
    ]
    return {"k": k, "survival_by_task": survival, "projection": projection, "drift_by_task": drift_by_task(by_task)}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
