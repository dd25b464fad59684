"""Render results.json as one self-contained HTML page: tables, embedded PNG figures, findings.

Every number on the page comes from `results`; the findings are sentences computed from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from softprompt.analysis.learning import LEARNED_BELOW
from softprompt.config import PROMPT_LR_PER_STD, TrainConfig
from softprompt.io import write_figure, write_text
from softprompt.records.results import ExecutorFacts, RunsAndBaselines, StudyResults, StudySettings, StudyTiming
from softprompt.report.ablations import ablations_section
from softprompt.report.analysis_sections import analysis_sections
from softprompt.report.claims import claims_section, study_claims
from softprompt.report.findings import findings
from softprompt.report.phases import PHASES_MARK, WALL_MARK, phases_html, wall_text
from softprompt.report.primitives import esc, figure, section, table
from softprompt.report.readouts import readout_findings, readouts_section
from softprompt.report.tables import AccuracyRow, accuracy_table, method_label, write_csv
from softprompt.report.time_to_accuracy import approach_findings, time_figure, time_table
from softprompt.tasks import task_name

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.6em 1em}.muted{color:#777}
code{background:#f5f5f5;padding:0 .2em}ul.findings li{margin:.3em 0}
td.verdict{font-weight:bold;white-space:nowrap}td.supported{color:#276749}td.not-supported{color:#c53030}
td.inconclusive{color:#975a16}td.not-testable{color:#718096}table.claims td div.muted{font-size:.85em}
"""


def _task_setup_label(task: str) -> str:
    """A task as the setup table names it: a custom task by its declared name and the file it came from."""
    name = task_name(task)
    return task if name == task else f"{name} ({task})"


def training_curves(results: RunsAndBaselines | StudyResults, out: Path) -> Path | None:
    """Per task: validation accuracy (top) and training loss (bottom) against optimiser steps, one line per
    seed; the chance loss (label entropy) as a dotted line; runs that never left it drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results.runs if r.history]
    if not runs:
        return None
    tasks = sorted({r.task for r in runs})
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 5.6), squeeze=False, sharex="col")
    for col, task in enumerate(tasks):
        acc_ax, loss_ax = axes[0][col], axes[1][col]
        for r in (r for r in runs if r.task == task):
            h = r.history
            x = [p.x for p in h]
            plateau = r.learning is not None and r.learning.learned is False
            style = {"ls": "--" if plateau else "-", "marker": "o", "ms": 3}
            label = f"seed {r.seed}" + (" (plateau)" if plateau else "")
            (line,) = acc_ax.plot(x, [p.accuracy for p in h], label=label, **style)
            pts = [(xi, p.train_loss) for xi, p in zip(x, h, strict=True) if p.train_loss is not None]
            loss_ax.plot([a for a, _ in pts], [b for _, b in pts], color=line.get_color(), **style)
        nop = results.baseline(task, "no_prompt")
        if nop:
            acc_ax.axhline(nop.accuracy, color="grey", ls="--", lw=1, label="no prompt")
        chance = next((r.learning.chance_loss for r in runs if r.task == task and r.learning), None)
        if chance:
            loss_ax.axhline(chance, color="grey", ls=":", lw=1, label="chance (label entropy)")
            loss_ax.legend(fontsize=7)
        acc_ax.set_title(task_name(task))
        acc_ax.set_ylabel("validation accuracy")
        acc_ax.legend(fontsize=7)
        loss_ax.set_xlabel("optimiser step")
        loss_ax.set_ylabel("training loss")
    fig.tight_layout()
    try:
        return write_figure(out / "figures" / "training_curves.png", fig, dpi=110)
    finally:
        plt.close(fig)


def _setup_section(results: StudyResults) -> str:
    s, st = results.setup, results.study
    m, hw = s.model, s.hardware
    rows = [
        {"item": "model", "value": f"{m.name} ({m.source}, revision {m.revision})"},
        {
            "item": "model size",
            "value": f"{m.parameters:,} parameters, hidden size {m.hidden_size}, vocabulary {m.vocab_size:,}",
        },
        {"item": "tasks × seeds", "value": f"{', '.join(map(_task_setup_label, st.tasks))} × seeds {st.seeds}"},
        {"item": "training budget", "value": budget_text(training_budget(st.train))},
        *(
            {"item": f"training budget of {task_name(t)}", "value": budget_text(overrides)}
            for t, overrides in st.per_task.items()
        ),
        *_sweep_rows(st),
        {"item": "validation subsample", "value": st.max_eval or "full validation sets"},
        {
            "item": "compute",
            "value": f"{s.device}, {s.compute_dtype} autocast, {hw.cpus} CPUs, {hw.torch_threads} torch threads ({hw.processor})",
        },
        {"item": "executor", "value": _executor_text(s.executor)},
        {"item": "versions", "value": ", ".join(f"{k} {v}" for k, v in s.versions.items())},
        {"item": "wall time of this invocation", "value": WALL_MARK},
    ]
    return table(rows, ["item", "value"]) + PHASES_MARK


BUDGET = ("tokens", "epochs", "batch_size", "lr", "max_train", "max_length")  # always shown; other fields when not default
NOT_BUDGET = ("task", "seed", "model", "method", "data_dir", "max_eval")  # shown elsewhere on the page


def training_budget(train: dict) -> dict:  # (the [train] table: a TrainConfig's fields by name)
    """The study's [train] settings worth a line: the budget, and every other field that is not its default."""
    defaults = TrainConfig().to_dict()
    return {
        k: v
        for k, v in train.items()
        if k in BUDGET or (k not in NOT_BUDGET and k in defaults and v != defaults[k]) or k not in defaults
    }


def budget_text(settings: dict) -> str:
    """Settings as a line a reader takes in at a glance: `tokens 20 · epochs 2 · batch size 8 · lr 0.005`
    (an unset learning rate says what it defaults to; nested values are shown compactly)."""

    def value(k: str, v) -> str:
        if k == "lr" and v is None:
            return f"default (prompt: {PROMPT_LR_PER_STD:g} × embedding std)"
        if v is None:
            return "none"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, dict | list):
            return json.dumps(v) if v else "none"
        return f"{v:g}" if isinstance(v, float) else str(v)

    return " · ".join(f"{k.replace('_', ' ')} {value(k, v)}" for k, v in settings.items()) or "defaults"


def _sweep_rows(st: StudySettings) -> list[dict]:
    """The sweep and the analysis cell (the Accuracy table and the interpretation sections read its runs)."""
    rows = []
    if st.sweep:
        rows.append({"item": "sweep (every combination)", "value": json.dumps(st.sweep)})
        rows.append({"item": "analysis cell", "value": json.dumps(st.analysis.cell)})
    if st.transfer.init:
        rows.append({"item": "transfer initialisation", "value": "every ordered task pair, in the analysis cell"})
    return rows


def _executor_text(ex: ExecutorFacts) -> str:
    if ex.name != "ray":
        if ex.workers and ex.workers > 1:
            return (
                f"local, {ex.workers} worker processes of {ex.threads_per_worker} thread(s) each for the runs, baselines "
                "and analyses"
            )
        return "local (one process)"
    res = ex.resources or {}
    cpus, gpus = (res.get(k, 0) for k in ("CPU", "GPU"))  # Ray's resource names
    return (
        f"Ray, {ex.nodes} node(s) with {cpus:g} CPUs and {gpus:g} GPUs; "
        f"{ex.cpus_per_run or 0:g} CPU(s) and {ex.gpus_per_run or 0:g} GPU(s) per run"
    )


def _accuracy_cell(r: AccuracyRow) -> str:
    if r.accuracy is None:
        return ""
    return f"{r.accuracy:.3f} ± {r.accuracy_std:.3f}" if r.accuracy_std is not None else f"{r.accuracy:.3f}"


def _accuracy_section(results: StudyResults, out: Path) -> str:
    rows = accuracy_table(results)
    write_csv(out / "tables" / "accuracy.csv", [r.as_dict() for r in rows])
    shown = [dict(r.as_dict(), method=method_label(r), accuracy=_accuracy_cell(r)) for r in rows]
    per_run = [
        {
            "run": r.name,
            "task": task_name(r.task),
            "seed": r.seed,
            "accuracy": r.final.accuracy,
            "f1_macro": r.final.f1_macro,
            "learned": r.learning.text if r.learning else "n/a",
            "best epoch": r.best.epoch if r.best else None,
            "dev-selected validation": r.best.validation if r.best else None,
            "wall time (s)": r.wall_time_s,
        }
        for r in results.runs
    ]
    write_csv(out / "tables" / "runs.csv", per_run)
    curves = training_curves(results, out)
    return (
        table(
            shown,
            [
                "task",
                "method",
                "accuracy",
                "f1_macro",
                "calibrated_accuracy",
                "calibrated_f1_macro",
                "trainable_parameters",
                "n_runs",
            ],
            {
                "calibrated_accuracy": "calibrated accuracy",
                "calibrated_f1_macro": "calibrated f1_macro",
                "trainable_parameters": "trainable parameters",
                "n_runs": "runs",
            },
        )
        + "<p>Accuracy on the validation set (the same seeded subsample for every method). The soft prompt row is the "
        "last-epoch prompt, mean ± sample std over seeds; the dev-selected row (where runs carved a dev split from "
        "their training data) is each run's best prompt by the dev split's task metric, scored on the same validation "
        "examples, which played no part in choosing it. Majority predicts the most frequent training label. The calibrated "
        "columns divide each prompt's label probabilities by their mean on content-free inputs ('N/A', '', '[MASK]' in "
        "the template, the same prompt before them; Zhao et al. 2021), removing the model's prior over the label "
        "words; soft prompt: the mean over seeds of the last prompts' (empty where a run or task has none).</p>"
        + _cell_note(results)
        + "<h3>Per run</h3>"
        + table(per_run)
        + _time_section(results, out)
        + figure(
            curves,
            "Validation accuracy (top) and training loss (bottom) against optimiser steps, per task and seed. A run "
            f"whose final training loss is not below {LEARNED_BELOW:.0%} of the chance loss (the label entropy, dotted) "
            "never left the plateau: it is drawn dashed and its prompt did not learn the task.",
        )
    )


def _time_section(results: StudyResults, out: Path) -> str:
    """Accuracy per second of training (`report.time_to_accuracy`), where a trained baseline gives LoRA's curve."""
    rows = time_table(results)
    if not rows:
        return ""
    write_csv(out / "tables" / "time_to_accuracy.csv", rows)
    return (
        "<h3 id='per-second'>Per second of training</h3>"
        + table(rows)
        + "<p>The wall time (s) each method's runs took to first score at least 90 / 95 / 100% of LoRA's final "
        "validation accuracy (median over the runs that got there; how many did, of how many), from each run's "
        "evaluation points: its wall time when evaluated, its earlier evaluations included, model loading not. "
        "Times are this machine's, with whatever else ran beside the study.</p>"
        + figure(time_figure(results, out), "Validation accuracy against each run's wall time, per task and method.")
    )


def _cell_note(results: StudyResults) -> str:
    cell = results.sweep.analysis_cell if results.sweep else None
    if not cell:
        return ""
    text = ", ".join(f"{k}={v}" for k, v in cell.items())
    return f"<p class='note'>A sweep: the soft prompt rows here are the analysis cell's ({esc(text)}); every cell is in Ablations.</p>"


def render(results: StudyResults, out: Path) -> str:
    """The page, with the setup section's timing marks left in (`write_report` fills them)."""
    readouts = results.readouts if results.readouts and results.readouts.tasks else None
    claims = results.claims if results.claims is not None else study_claims(results)  # (older results.json: none)
    parts = [
        section("The seed study's claims", claims_section(claims), "claims"),
        section("Setup", _setup_section(results), "setup"),
        section("Accuracy", _accuracy_section(results, out), "accuracy"),
        *([section("Ablations", ablations_section(results.ablations, out), "ablations")] if results.ablations else []),
        *analysis_sections(results, out),
        *([section("What the prompts say", readouts_section(readouts, out), "readouts")] if readouts else []),
    ]
    facts = findings(results) + approach_findings(results) + readout_findings(results.readouts)
    parts.insert(
        1,
        section(
            "Findings",
            "<ul class='findings'>"
            + "".join(f"<li>{esc(f)}</li>" for f in facts)
            + "</ul><p class='muted'>Each finding is computed from this study's numbers.</p>",
            "findings",
        ),
    )
    title = f"softprompt study: {results.study.name}"
    toc = "".join(
        f'<a href="#{a}">{t}</a> · '
        for t, a in [
            ("Claims", "claims"),
            ("Findings", "findings"),
            ("Setup", "setup"),
            ("Accuracy", "accuracy"),
            *([("Ablations", "ablations")] if results.ablations else []),
            ("Nearest tokens", "neighbors"),
            ("Scripts", "scripts"),
            ("Projected prompts", "projection"),
            *([("What the prompts say", "readouts")] if readouts else []),
            ("Stochasticity", "stochasticity"),
            ("Transfer", "transfer"),
            *([("Transfer init", "transfer-init")] if results.transfer_init else []),
        ]
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1><p>{toc}</p>{''.join(parts)}"
        "<p class='muted'>Generated by softprompt. Tables as CSV in <code>tables/</code>, all numbers in "
        "<code>results.json</code>.</p></body></html>"
    )


def write_report(results: StudyResults, out: str | Path, *, clock: Callable[[], StudyTiming] | None = None) -> Path:
    """report.html (and tables/, figures/) in `out`, from the study's results. `clock`, when given, is called once
    the page is rendered and returns the invocation's timing with the report's own time (`study.timing.StepClock`),
    which the setup section shows; without it, the timing in `results` (if any)."""
    out = Path(out)
    page = render(results, out)
    timing = clock() if clock is not None else results.setup.timing
    page = page.replace(WALL_MARK, esc(wall_text(timing, results.setup.wall_time_s)), 1)
    page = page.replace(PHASES_MARK, phases_html(timing), 1)
    write_text(out / "report.html", page)
    return out / "report.html"
