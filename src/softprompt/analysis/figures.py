"""PNG figures for the analyses (matplotlib, Agg backend: no display needed).

Token strings come from many scripts; fonts rarely cover them all. Installed fallback fonts (Noto
CJK, WenQuanYi, Droid Sans Fallback, ...) are used when present, missing-glyph warnings are
silenced, and `$` is escaped so a token like "$x$" never triggers mathtext parsing.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402

from softprompt.io import write_figure  # noqa: E402

FALLBACK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans CJK KR",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "Arial Unicode MS",
    "Noto Sans",
    "Noto Sans Devanagari",
    "Noto Sans Arabic",
    "Noto Sans Hebrew",
    "Noto Sans Thai",
    "Unifont",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "*", "<", ">", "h", "p", "8")


@functools.cache
def font_families() -> list[str]:
    """DejaVu Sans first, then every installed fallback font: matplotlib falls back glyph by glyph."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *(f for f in FALLBACK_FONTS if f in installed)]


@contextlib.contextmanager
def _style() -> Iterator[None]:
    with warnings.catch_warnings(), plt.rc_context({"font.family": font_families(), "figure.dpi": 100}):
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from")
        warnings.filterwarnings("ignore", message=r".*does not have a glyph.*")
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support .* natively")
        yield


def esc(text: Any) -> str:
    """Text safe for matplotlib: `$` escaped so it is never read as mathtext."""
    return str(text).replace("$", r"\$")


def _save(fig, path: str | Path) -> Path:
    try:
        return write_figure(path, fig, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- nearest tokens


FIGURE_K = 10  # neighbours a figure shows per soft token (neighbors.json holds all k)
FIGURE_ROWS = 200  # and soft tokens: a figure stays under matplotlib's 2^16-pixel side whatever k and the prompt's length


def nearest_token_figure(analysis: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """The study's figure: one row per soft token, its top-k nearest tokens in cells shaded by
    similarity; the row label shows the initial token and a red frame marks a surviving initial token."""
    everything = analysis["positions"]
    positions = [dict(p, tokens=p["tokens"][:FIGURE_K]) for p in everything[:FIGURE_ROWS]]
    n = len(positions)
    k = max((len(p["tokens"]) for p in positions), default=1)
    shown = max((len(p["tokens"]) for p in everything), default=1) > k or len(everything) > n
    sims = np.full((n, k), np.nan)
    for i, p in enumerate(positions):
        for j, t in enumerate(p["tokens"]):
            sims[i, j] = t["similarity"]
    with _style():
        fig, ax = plt.subplots(figsize=(2.3 * k + 2.5, 0.42 * n + 1.4))
        finite_vals = sims[np.isfinite(sims)]
        vmin = float(finite_vals.min()) if finite_vals.size else 0.0
        vmax = float(finite_vals.max()) if finite_vals.size else 1.0
        im = ax.imshow(sims, cmap="Blues", aspect="auto", vmin=min(vmin, vmax - 1e-6), vmax=vmax)
        for i, p in enumerate(positions):
            for j, t in enumerate(p["tokens"]):
                is_init = p.get("initial_id") is not None and t["id"] == p["initial_id"]
                shade = (t["similarity"] - vmin) / max(vmax - vmin, 1e-12)
                ax.text(
                    j,
                    i,
                    f"{esc(t['token'])}  {t['similarity']:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shade > 0.6 else "black",
                    fontweight="bold" if is_init else "normal",
                )
                if is_init:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ylabels = [
            f"{p['position']}: {esc(p['initial_token'])}" if p.get("initial_token") else str(p["position"]) for p in positions
        ]
        ax.set_yticks(range(n), labels=ylabels, fontsize=8)
        ax.set_xticks(range(k), labels=[f"top-{j + 1}" for j in range(k)])
        ax.xaxis.tick_top()
        ax.set_ylabel("soft token: initial token")
        s = analysis.get("summary", {})
        sub = f"{analysis.get('metric', 'cosine')} similarity"
        if s.get("survival_rate") is not None:
            sub += f"; initial token in top-{analysis.get('k', k)}: {s['survival_rate']:.0%} (red frame)"
        if shown:
            sub += f"\nshown: the top {k} of {n} of {len(everything)} positions (the JSON file has every one)"
        ax.set_title(esc(f"{title}\n{sub}" if title else sub), fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        return _save(fig, path)


# ----------------------------------------------------------------------------- 2-D scatter


def scatter_2d(points: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Soft tokens (or prompts) in 2-D: colour by task, marker by seed, initial prompts as black-edged X."""
    tasks = sorted({p["task"] for p in points})
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tasks)}
    seeds = sorted({p.get("seed") for p in points if p["kind"] == "soft"}, key=lambda s: (s is None, s))
    markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(seeds)}
    with _style():
        fig, ax = plt.subplots(figsize=(7.5, 6))
        for task in tasks:
            for seed in seeds:
                pts = [p for p in points if p["kind"] == "soft" and p["task"] == task and p.get("seed") == seed]
                if pts:
                    ax.scatter(
                        [p["x"] for p in pts], [p["y"] for p in pts], s=22, alpha=0.75, color=colours[task], marker=markers[seed]
                    )
            init = [p for p in points if p["kind"] == "initial" and p["task"] == task]
            if init:
                ax.scatter(
                    [p["x"] for p in init],
                    [p["y"] for p in init],
                    s=70,
                    color=colours[task],
                    marker="X",
                    edgecolors="black",
                    linewidths=1.0,
                )
        handles = [plt.Line2D([], [], color=colours[t], marker="o", linestyle="", label=esc(t)) for t in tasks]
        handles += [plt.Line2D([], [], color="grey", marker=markers[s], linestyle="", label=f"seed {s}") for s in seeds]
        handles.append(
            plt.Line2D([], [], color="grey", marker="X", markeredgecolor="black", linestyle="", markersize=9, label="initial")
        )
        ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.8)
        ax.set_title(esc(title))
        ax.set_xticks([])
        ax.set_yticks([])
        return _save(fig, path)


# ----------------------------------------------------------------------------- matrices and bars


def heatmap(
    matrix: Sequence[Sequence[float | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    title: str = "",
    fmt: str = ".2f",
    center: float | None = None,
    frames: Sequence[tuple[int, int]] = (),
) -> Path:
    """A labelled matrix with its values written in the cells; `center` gives a diverging map around it,
    `frames` lists (row, column) cells to outline (e.g. a prompt on its own task)."""
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    with _style():
        fig, ax = plt.subplots(figsize=(0.9 * m.shape[1] + 3, 0.45 * m.shape[0] + 1.8))
        vals = m[np.isfinite(m)]
        if center is not None:
            span = float(np.abs(vals - center).max()) if vals.size else 1.0
            span = span or 1.0
            im = ax.imshow(m, cmap="RdBu", vmin=center - span, vmax=center + span, aspect="auto")
        else:
            im = ax.imshow(m, cmap="viridis", aspect="auto")
        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    if center is None:
                        light = (m[i, j] - lo) / max(hi - lo, 1e-12) < 0.5
                    else:
                        light = abs(m[i, j] - center) / span > 0.6
                    ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=7, color="white" if light else "black")
        for i, j in frames:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
        ax.set_xticks(range(m.shape[1]), labels=[esc(c) for c in col_labels], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(m.shape[0]), labels=[esc(r) for r in row_labels], fontsize=8)
        ax.set_title(esc(title), fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        return _save(fig, path)


def similarity_scatter(
    x: Sequence[float],
    y: Sequence[float],
    path: str | Path,
    xlabel: str = "similarity",
    ylabel: str = "transfer gain over no prompt",
    r: float | None = None,
    p: float | None = None,
    rho: float | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Prompt similarity against transfer gain, Pearson r and p (and Spearman rho) in the title."""

    def num(v: float | None, f: str) -> str:
        return "n/a" if v is None else format(v, f)

    with _style():
        fig, ax = plt.subplots(figsize=(6.5, 5))
        ax.scatter(x, y, s=28, alpha=0.8)
        if labels and len(labels) <= 30:
            for xi, yi, lab in zip(x, y, labels, strict=True):
                ax.annotate(esc(lab), (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel(esc(xlabel))
        ax.set_ylabel(esc(ylabel))
        title = f"Pearson r = {num(r, '.2f')} (p = {num(p, '.3g')})"
        if rho is not None:
            title += f", Spearman rho = {rho:.2f}"
        ax.set_title(f"{title}, n = {len(x)}", fontsize=10)
        return _save(fig, path)


def drift_bars(rows: Sequence[dict[str, Any]], path: str | Path, key: str = "frobenius") -> Path:
    """One bar per run: distance from its initial prompt, coloured by task (do harder tasks move further?)."""
    tasks = sorted({r["task"] for r in rows})
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tasks)}
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["task"], rows[i]["id"]))
    with _style():
        fig, ax = plt.subplots(figsize=(0.5 * len(rows) + 3, 4.5))
        vals = [rows[i]["drift"][key] for i in order]
        ax.bar(range(len(order)), vals, color=[colours[rows[i]["task"]] for i in order])
        ax.set_xticks(range(len(order)), labels=[esc(rows[i]["id"]) for i in order], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(f"||P - P0|| ({key})" if key == "frobenius" else key)
        ax.set_title("distance of each trained prompt from its initial prompt", fontsize=10)
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[t], label=esc(t)) for t in tasks]
        ax.legend(handles=handles, fontsize=8)
        return _save(fig, path)
