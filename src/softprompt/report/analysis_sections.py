"""Report sections for the analyses: nearest tokens, scripts, projected prompts, stochasticity, transfer, transfer
initialisation."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from softprompt.records.geometry import GeometryResult
from softprompt.records.neighbors import NeighborsResult
from softprompt.records.results import StudyResults
from softprompt.records.transfer import TransferInitResult, TransferResult
from softprompt.report.findings import similarity_verdict
from softprompt.report.primitives import esc, figure, section, table
from softprompt.report.tables import write_csv


def _neighbors(nb: NeighborsResult, out: Path) -> tuple[str, str, str]:
    summary = nb.summary
    figs = nb.figures
    body = [
        f"<p>Top-{nb.k} vocabulary tokens by {esc(nb.metric)} similarity for every soft-prompt "
        "position, against the input embeddings as the model sees them. ␣ marks a leading space; the initial token of "
        "each position is marked. A token “survives” when the position's initial token is still in its top-k.</p>",
        f'<p class="note">{esc(nb.note)}</p>',
    ]
    rows = []
    for task, s in summary.survival_by_task.items():
        rows.append(
            {
                "task": task,
                "runs": s.runs,
                "survival rate": s.rate,
                "surviving words (runs)": ", ".join(f"{w} ({s.word_runs[w]})" for w in s.words[:15]),
            }
        )
    write_csv(out / "tables" / "survival.csv", rows)
    body.append(table(rows))
    for label, path in figs.items():
        body.append(figure(path, f"Nearest tokens of {label}: positions (rows) by top-{nb.k} neighbours, shaded by similarity"))
    per_pos = []
    for label, a in nb.runs.items():
        for p in a.positions:
            per_pos.append(
                {
                    "run": label,
                    "position": p.position,
                    "initial": p.initial_token,
                    "survived": p.survived,
                    "cosine to initial": p.cos_to_initial,
                    **{f"top{i + 1}": f"{t.token} ({t.similarity:.2f})" for i, t in enumerate(p.tokens)},
                }
            )
    write_csv(out / "tables" / "neighbors.csv", per_pos)

    srows = []
    for task, e in nb.scripts.tasks.items():
        total = sum(e.top_k.values()) or 1
        for script, count in sorted(e.top_k.items(), key=lambda kv: -kv[1]):
            over = (e.top_k_over_vocabulary or {}).get(script)
            srows.append(
                {
                    "task": task,
                    "script": script,
                    "neighbour tokens": count,
                    "share": count / total,
                    "share ÷ vocabulary share": over,
                }
            )
    write_csv(out / "tables" / "scripts.csv", srows)
    scripts_html = (
        "<p>Unicode script of every top-k neighbour token, per task; the last column compares with the "
        "script's share of the whole vocabulary (above 1: over-represented among neighbours).</p>" + table(srows)
    )

    prows = [asdict(p) for p in summary.projection]
    write_csv(out / "tables" / "projection.csv", prows)
    proj_html = (
        "<p>Each soft token replaced by its nearest vocabulary token: <em>projected soft</em> feeds those tokens' "
        "embeddings (exact projection), <em>projected text</em> feeds the decoded text as a hard prompt, which is "
        "what a reader of the neighbour table would type.</p>"
        '<p class="note">Prompt waywardness (Khashabi et al. 2022): a continuous prompt can solve a task while its '
        "nearest-token projection reads as arbitrary text, even another task's instruction. Read the neighbour "
        "tables as a readout, not as the prompt's meaning, unless the projection scores like the soft prompt.</p>"
        + table(
            prows,
            [
                c
                for c in ("run", "task", "n", "soft", "projected_soft", "projected_text", "no_prompt", "text")
                if not prows or c in prows[0]
            ],
        )
    )
    return "".join(body), scripts_html, proj_html


def _geometry(geo: GeometryResult, out: Path) -> str:
    summary = geo.summary
    drift_rows = [{"run": r.id, "task": r.task, "seed": r.seed, **asdict(r.drift)} for r in geo.runs]
    write_csv(out / "tables" / "drift.csv", drift_rows)
    eq = [asdict(e) for e in summary.equidistance]
    write_csv(out / "tables" / "pairwise.csv", eq)
    diff = summary.drift_vs_difficulty
    body = [
        f"<p>{esc(geo.note)}</p>",
        figure(geo.figure("tsne"), "t-SNE of every soft-prompt token of every run with the initial prompts (X)"),
        figure(geo.figure("pca"), "PCA of the same points"),
        "<h3>Distance from the initial prompt</h3>",
        table(drift_rows),
        figure(geo.figure("drift"), "Frobenius distance of each run's prompt from its initial prompt"),
        "<h3>Between runs of the same task</h3>",
        "<p>Frobenius distances between the prompts of different seeds of one task: mean, spread and coefficient of "
        "variation (std / mean; small means the runs are about equidistant).</p>",
        table(eq, [c for c in ("task", "pairs", "mean", "std", "min", "max", "cv") if not eq or c in eq[0]]),
        figure(geo.figure("distances"), "Pairwise Frobenius distances between all prompts"),
        "<h3>Drift and task difficulty</h3>",
        table(
            [
                {
                    "relation": f"task mean drift vs {diff.against}",
                    "spearman r": diff.spearman_r,
                    "p": diff.spearman_p,
                    "tasks": diff.n,
                }
            ]
        ),
    ]
    return "".join(body)


def _transfer(tr: TransferResult, out: Path) -> str:
    figs = tr.figures
    m = tr.matrix
    rows = []
    for i, label in enumerate(m.runs):
        row = {"prompt (source)": label}
        for j, task in enumerate(m.tasks):
            row[task] = m.accuracy[i][j]
        rows.append(row)
    if m.no_prompt:
        rows.append({"prompt (source)": "no prompt", **m.no_prompt})
    write_csv(out / "tables" / "transfer.csv", rows)
    summary = tr.summary
    corr = [asdict(c) for c in summary.correlations]
    write_csv(out / "tables" / "transfer_correlations.csv", corr)
    share = summary.share_beat_no_prompt
    body = [
        "<p>Every trained prompt (rows) evaluated on every task's validation set (columns) with the target task's "
        "template; the last row is the target task without a prompt.</p>",
        table(rows),
        f"<p>Share of cross-task transfers that beat no prompt: <b>{'n/a' if share is None else f'{100 * share:.1f}%'}</b> "
        f"of {summary.n_transfers}" + (f" ({summary.n_ties} tie it exactly)" if summary.n_ties else "") + ".</p>",
        figure(tr.figure("accuracy"), "Transfer accuracy: prompt (row) on task (column); framed: own task"),
        figure(tr.figure("gain"), "Accuracy gain over no prompt"),
        "<h3>Prompt similarity and transfer</h3>",
        "<p>Similarity of prompts A and B: Frobenius norm of B − A (the original study; a distance), cosine of the "
        "average-pooled prompts and mean per-token cosine (SPoT, Vu et al. 2022). Correlation with the transfer gain over "
        "no prompt, over off-diagonal pairs.</p>",
        table(
            corr,
            [
                c
                for c in ("similarity", "direction", "pearson_r", "pearson_p", "spearman_r", "spearman_p", "n")
                if not corr or c in corr[0]
            ],
        ),
    ]
    if tr.similarity_note:
        body.append(f'<p class="note">{esc(tr.similarity_note)}</p>')
    for name, path in figs.items():
        if name.startswith(("similarity_", "scatter_")):
            body.append(figure(path, name.replace("_", " ")))
    return "".join(body)


def _transfer_init(tri: TransferInitResult, out: Path) -> str:
    rows = [
        {
            "source (A)": p.source,
            "target (B)": p.target,
            "seeds (n)": p.n,
            "B from A's prompt": p.transferred_mean,
            f"B from {tri.own_init}": p.own_mean,
            "gain": p.gain_mean,
            "gain standard error": p.gain_se,
            "zero-shot: A's prompt on B, vs no prompt": p.zero_shot_gain,
            **{f"similarity: {k}": v for k, v in p.similarity.items()},
        }
        for p in tri.pairs
    ]
    write_csv(out / "tables" / "transfer_init.csv", rows)
    corr = [asdict(c) for c in tri.correlations]
    write_csv(out / "tables" / "transfer_init_correlations.csv", corr)
    body = [
        "<p>For every ordered task pair (A, B), B's prompt was trained starting from A's trained prompt (the same seed, "
        f"the analysis cell; SPoT, Vu et al. 2022). Gain: B's accuracy from A's prompt minus B's accuracy from "
        f"{esc(tri.own_init)}, paired by seed (mean and standard error over n seeds). The zero-shot column is A's prompt "
        "evaluated on B without training, minus no prompt (the transfer matrix above). Similarity is between A's and B's "
        "own prompts of the same seed, averaged over seeds.</p>",
        table(rows),
        figure(tri.figure("gain"), "Gain of B (column) started from A's prompt (row) over B's own initialisation"),
        "<h3>Did prompt similarity predict the gain?</h3>",
        "<ul>" + "".join(f"<li>{esc(similarity_verdict(c))}</li>" for c in tri.correlations) + "</ul>",
        '<p class="note">Over task pairs each ordered pair is one point (its gain averaged over seeds); the similarity is '
        "symmetric, so A→B and B→A share their similarity. Over task pairs x seeds each pair contributes every seed, so "
        "those points are not independent: shown for reference, not as evidence.</p>",
    ]
    if tri.similarity_note:
        body.append(f'<p class="note">{esc(tri.similarity_note)}</p>')
    for name, path in tri.figures.items():
        if name.startswith("scatter_"):
            body.append(figure(path, f"{name.removeprefix('scatter_').replace('_', ' ')} of A's and B's prompts vs gain"))
    return "".join(body)


def analysis_sections(results: StudyResults, out: Path) -> list[str]:
    """The analyses' sections, from results.json's records."""
    parts = []
    if results.neighbors:
        n_html, s_html, p_html = _neighbors(results.neighbors, out)
        parts += [
            section("Nearest tokens and surviving words", n_html, "neighbors"),
            section("Scripts and languages", s_html, "scripts"),
            section("Projected prompts", p_html, "projection"),
        ]
    if results.geometry:
        parts.append(section("Stochasticity across seeds", _geometry(results.geometry, out), "stochasticity"))
    if results.transfer:
        parts.append(section("Transfer between tasks", _transfer(results.transfer, out), "transfer"))
    if results.transfer_init:
        parts.append(section("Transfer initialisation (SPoT)", _transfer_init(results.transfer_init, out), "transfer-init"))
    return parts
