"""The analysis commands (`neighbors`, `geometry`, `transfer`): argument parsing and printing only.

Each loads the model at most once; the work is `softprompt.analysis`'s.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from softprompt.cli.common import add_model_args, load_model, locking, print_table, resolve_settings
from softprompt.errors import SoftPromptError


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _load(a: argparse.Namespace, runs):
    """The model and Evaluator, with the runs' own model, prompt format, max length and dtypes where a flag was left
    out (`common.resolve_settings`)."""
    return load_model(a, runs)


def _runs(a: argparse.Namespace, check: Callable[[list], None] | None = None):
    """The runs, their prompts checked against their run.json, the model flags resolved against them
    (`common.resolve_settings`) and `check`ed, then --out created: a refusal before any model loads leaves no folder."""
    from softprompt.analysis.common import as_runs
    from softprompt.locks import ensure_directory

    runs = as_runs(a.runs)
    for run in runs:
        run.prompt(a.which)
    resolve_settings(a, runs)
    if check is not None:
        check(runs)
    ensure_directory(Path(a.out), "--out")
    return runs


def cmd_neighbors(a: argparse.Namespace) -> int:
    from softprompt.analysis.neighbors import neighbors_report
    from softprompt.records.neighbors import NeighborsResult

    if a.task and not a.project:
        raise SoftPromptError("--task only applies with --project (the task the projected prompt is evaluated on)")
    runs = _runs(a, check=lambda runs: _check_k(a.k, runs))
    backbone, evaluator = _load(a, runs)
    report = neighbors_report(
        backbone,
        runs,
        a.k,
        a.out,
        metric=a.metric,
        which=a.which,
        project=a.project,
        evaluator=evaluator,
        task=a.task,
        limit=a.max_eval,
    )
    rep = NeighborsResult.from_dict(report, "neighbors report")
    rows = []
    for label, r in rep.runs.items():
        s = r.summary
        row = {
            "run": label,
            f"survival@{a.k}": _fmt(s.survival_rate if s else None),
            "cos_to_init": _fmt(s.mean_cos_to_initial if s else None),
            "drift/gap": _fmt(s.mean_relative_to_gap if s else None),
            "top1 changed": _fmt(s.top1_changed_rate if s else None),
            "surviving words": " ".join(s.surviving_words[:8] if s else []),
        }
        if r.projection:
            acc = r.projection.accuracy
            row.update({k: _fmt(acc.get(k)) for k in ("soft", "projected_soft", "projected_text", "no_prompt")})
        rows.append(row)
    print_table(rows)
    for label, r in rep.runs.items():
        if r.projection:
            print(f"{label} projected text: {r.projection.projection.text!r}")
    print(f"written to {a.out}: neighbors.json and {len(rep.figures)} figure(s)")
    return 0


def _check_k(k: int, runs) -> None:
    """--k from 1 to the vocabulary size the runs' run.json records (checked again once the model loads), before
    --out is made: --k 100000 used to fail in matplotlib ("Image size too large") leaving an empty folder."""
    from softprompt.analysis.neighbors import check_k

    sizes = [r.record.model.vocab_size for r in runs if r.record.model and r.record.model.vocab_size]
    check_k(k, min(sizes) if sizes else None, "--k")


def cmd_geometry(a: argparse.Namespace) -> int:
    from softprompt.analysis.geometry import geometry_report
    from softprompt.records.geometry import GeometryResult

    report = geometry_report(_runs(a), a.out, level=a.level, seed=a.seed, perplexity=a.perplexity, which=a.which)
    rep = GeometryResult.from_dict(report, "geometry report")
    print_table(
        [
            {
                "run": r.id,
                "task": r.task,
                "||P-P0||": _fmt(r.drift.frobenius),
                "relative": _fmt(r.drift.relative),
                "cos(P,P0)": _fmt(r.drift.mean_token_cosine),
            }
            for r in rep.runs
        ]
    )
    rows = []
    for task, w in (rep.within_task or {}).items():
        st = w.frobenius_stats
        if st:
            rows.append(
                {"task": task, "runs": len(w.runs), "pair mean": _fmt(st.mean), "pair std": _fmt(st.std), "cv": _fmt(st.cv)}
            )
    if rows:
        print("\ndistances between runs of the same task (||B-A||_F): a small cv means equidistant")
        print_table(rows)
    if rep.drift_vs_difficulty:
        c = rep.drift_vs_difficulty.no_prompt_accuracy
        print(f"\ndrift vs no-prompt accuracy: Spearman rho {_fmt(c.spearman_rho)} (p {_fmt(c.spearman_p)}, n {c.n})")
    print(f"written to {a.out}: geometry.json and {len(rep.figures)} figure(s)")
    return 0


def cmd_transfer(a: argparse.Namespace) -> int:
    from softprompt.analysis.transfer import transfer_report
    from softprompt.records.transfer import TransferResult

    runs = _runs(a)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()] if a.tasks else None
    _, evaluator = _load(a, runs)
    report = transfer_report(evaluator, runs, tasks, a.out, limit=a.max_eval, which=a.which)
    rep = TransferResult.from_dict(report, "transfer report")
    m = rep.matrix
    rows = [{"prompt": "no prompt", **{t: _fmt(m.no_prompt[t]) for t in m.tasks}}]
    rows += [
        {"prompt": lab, **{t: _fmt(v) for t, v in zip(m.tasks, row, strict=True)}}
        for lab, row in zip(m.runs, m.accuracy, strict=True)
    ]
    print_table(rows)
    share = rep.share_beating_no_prompt
    if share and share.transfers:
        print(f"\ncross-task transfers beating no prompt: {share.beat_no_prompt}/{share.transfers} ({share.share:.0%})")
    for name, c in (rep.similarity_vs_gain or {}).items():
        print(
            f"{name} ({c.direction}) vs gain: Pearson r {_fmt(c.pearson_r)} (p {_fmt(c.pearson_p)}), "
            f"Spearman rho {_fmt(c.spearman_rho)} (p {_fmt(c.spearman_p)}), n {c.n}"
        )
    if rep.similarity_note:
        print(rep.similarity_note)
    print(f"written to {a.out}: transfer.json and {len(rep.figures)} figure(s)")
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    """The model flags, with the runs' own model and layout as their defaults."""
    add_model_args(p, from_runs=True)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _analysis_parser(sub, name: str, summary: str, description: str, *, which_help: str | None = None) -> argparse.ArgumentParser:
    """A subcommand over run directories: RUN..., --which, --out (NAME.json and figures go there)."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--which", default="last", choices=["last", "best"], help=which_help)
    p.add_argument("--out", required=True, help=f"output folder for {name}.json and figures")
    return p


def add_analysis(sub) -> None:
    """Register `neighbors`, `geometry` and `transfer` on the CLI's subparsers."""
    p = _analysis_parser(
        sub,
        "neighbors",
        "nearest vocabulary tokens of each soft token, surviving init words, scripts, projected prompts",
        "Read soft prompts through their nearest vocabulary tokens (cosine by default). With --project, "
        "also evaluate the nearest-token projection as text and as exact embeddings (prompt waywardness).",
        which_help="the runs' last or best-epoch prompt",
    )
    p.add_argument("--k", type=int, default=3, help="neighbours per soft token (default 3)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "dot"])
    p.add_argument("--project", action="store_true", help="evaluate the projected prompts next to the soft prompt")
    p.add_argument("--task", default=None, help="task for --project (default: each run's own task)")
    p.add_argument("--max-eval", type=int, default=None, help="evaluate on a seeded subsample of N validation examples")
    _model_args(p)
    p.set_defaults(func=locking("out", "--out")(cmd_neighbors))

    p = _analysis_parser(
        sub,
        "geometry",
        "stochasticity: drift from init, distances between seeds, t-SNE/PCA, drift vs difficulty",
        "Compare soft prompts geometrically (no model needed): distance from the initial prompt, "
        "pairwise distances between runs of a task, t-SNE and PCA of all soft tokens.",
    )
    p.add_argument("--level", default="token", choices=["token", "prompt"], help="t-SNE/PCA points: soft tokens or whole prompts")
    p.add_argument("--seed", type=int, default=0, help="t-SNE random state")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (clamped for few points)")
    p.set_defaults(func=locking("out", "--out")(cmd_geometry))

    p = _analysis_parser(
        sub,
        "transfer",
        "zero-shot transfer: every run's prompt on every task, similarity vs transfer gain",
        "Evaluate every run's soft prompt on every task's validation set, next to no prompt, and "
        "correlate prompt similarity (Frobenius, pooled cosine, per-token cosine) with the gain.",
    )
    p.add_argument("--tasks", default=None, help="comma-separated target tasks (default: the runs' tasks)")
    p.add_argument("--max-eval", type=int, default=None, help="evaluate on a seeded subsample of N validation examples")
    _model_args(p)
    p.set_defaults(func=locking("out", "--out")(cmd_transfer))
