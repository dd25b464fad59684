"""The `describe` command: the model says in words what each soft prompt asks for (argument parsing and printing only).

The work is `softprompt.analysis.describe`'s; the flags and the model loading are the analysis commands'.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from softprompt.cli.analysis import _analysis_parser, _fmt, _load, _model_args, _runs
from softprompt.cli.common import locking, print_table
from softprompt.errors import SoftPromptError

if TYPE_CHECKING:
    from softprompt.records.readouts import Description

_WIDTH = 72  # description characters shown in the table (describe.json has them whole)


def _layers(value: str | None) -> list[int] | None:
    """--layers: comma-separated block indices, `none` for no patch probe, absent for the defaults."""
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    expected = f"--layers {value!r}: expected comma-separated layer indices (e.g. 3,9) or none"
    items = [v.strip() for v in value.split(",")]
    if not all(items):  # '' or '3,,9' used to mean fewer layers (or none) without a word
        raise SoftPromptError(f"{expected} (an empty item is not a layer; 'none' runs no patch probe)")
    try:
        return [int(v) for v in items]
    except ValueError:
        raise SoftPromptError(expected) from None


def _check(a: argparse.Namespace) -> None:
    if not a.runs and a.text is None:
        raise SoftPromptError("nothing to describe: give run directories (RUN...) or --text")
    if a.samples < 0:
        raise SoftPromptError(f"--samples must be 0 or more, got {a.samples}")
    if a.max_new_tokens < 1:
        raise SoftPromptError(f"--max-new-tokens must be at least 1, got {a.max_new_tokens}")
    if a.text is not None and not a.text.strip():
        raise SoftPromptError("--text is empty: give a sentence to describe")
    from softprompt.analysis.describe_probes import MAX_TEXT_TOKENS, text_too_long

    words = len(a.text.split()) if a.text is not None else 0
    if words > MAX_TEXT_TOKENS:  # every word is at least one token: refused before the model loads
        raise SoftPromptError(text_too_long(f"{words:,} words"))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _rows(name: str, prompt: str, descriptions: list[Description]) -> list[dict]:
    """One table row per greedy description (the samples are in describe.json)."""
    return [
        {
            "run": name,
            "prompt": prompt,
            "probe": d.probe if d.layer is None else f"{d.probe}@{d.layer}",
            "score": _fmt(d.score_value),
            "description": _short(d.text),
        }
        for d in descriptions
        if d.decoding == "greedy"
    ]


def cmd_describe(a: argparse.Namespace) -> int:
    from softprompt.analysis.describe import describe_report
    from softprompt.locks import ensure_directory
    from softprompt.records.readouts import DescribeResult

    _check(a)
    layers = _layers(a.layers)
    runs = _runs(a) if a.runs else []
    ensure_directory(Path(a.out), "--out")
    backbone, _ = _load(a, runs)
    report = describe_report(
        backbone,
        runs,
        a.out,
        which=a.which,
        text=a.text,
        samples=a.samples,
        max_new_tokens=a.max_new_tokens,
        layers=layers,
        seed=a.seed,
        source=a.source,
    )
    rep = DescribeResult.from_dict(report, "describe report")
    rows = []
    for r in rep.runs:
        rows += _rows(r.run, "trained", r.descriptions) + _rows(r.run, "init", r.init.descriptions)
    if rep.identity:
        rows += _rows("--text", "text", rep.identity.descriptions)
    print_table(rows)
    for r in rep.runs:
        s = r.summary
        print(
            f"{r.run}: mean greedy score trained {_fmt(s.trained_score)}, init {_fmt(s.init_score)} ({r.wall_time_s or 0:.1f}s)"
        )
    if rep.identity:
        print(f"--text: mean greedy score {_fmt(rep.identity.summary.score)}")
    print(f"written to {a.out}: describe.json")
    return 0


def add_describe(sub) -> None:
    """Register `describe` on the CLI's subparsers."""
    p = _analysis_parser(
        sub,
        "describe",
        "self-description: the model says what each soft prompt asks for (embed and patch probes)",
        "Ask the model what each run's soft prompt (and its initial prompt) asks for: the prompt's rows placed "
        "inside a describing instruction (embed probe), and its hidden states patched into placeholders of that "
        "instruction at a few layers (patch probe, Patchscopes/InSPEcT). Each description is scored against the "
        "run's task description and label words. --text describes a plain sentence the same way (the identity "
        "probe: how far to trust the readout).",
        which_help="the runs' last or best-epoch prompt",
    )
    for action in p._actions:  # RUN... is optional here: --text alone runs the identity probe
        if action.dest == "runs":
            action.nargs = "*"
    p.add_argument("--text", default=None, help="also describe this sentence's token embeddings (identity probe)")
    p.add_argument("--samples", type=int, default=3, help="sampled embed-probe descriptions per prompt (default 3)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="length of each description in tokens (default 40)")
    p.add_argument(
        "--layers", default=None, help="patch-probe layers, e.g. 3,9, or none (default: blocks at 20%% and 30%% of the depth)"
    )
    p.add_argument(
        "--source", default="context", choices=["context", "front"], help="where the patch probe's source reads the prompt"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled descriptions")
    _model_args(p)
    p.set_defaults(func=locking("out", "--out")(cmd_describe))
