"""What the prompts say, per task: the readouts of every run joined position by position.

The neighbour table alone says little at affordable budgets (every top-1 is still the init token). Read
together, the readouts can test the seed study's claims: which positions carry the gain (importance: the
loss when a position is put back to its init vector), whether those are the positions that kept their init
word (survival, drift relative to the gap to the next token), what each position moved toward (the
displacement's nearest tokens), what the model says its prompt asks for (self-description, trained vs init),
and whether a discrete prompt found by projected gradients (PEZ) does what the soft prompt does.

Runs of one task started from the same init text share their init tokens position by position, so their
readouts are averaged per position over seeds (mean and standard error, n = seeds); runs with other inits
(random, vocab with other seeds) are not aligned and are summarised per run only.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from softprompt.analysis.common import correlation, json_safe
from softprompt.tasks import task_name

TOP_POSITIONS = 3  # the positions a finding names
# A loss change smaller than this is not read as an effect, whatever its standard error: re-scoring one SST-2 prompt
# on the same 60 examples moved the mean loss by 5e-4 between 1 and 2 torch threads (bf16 autocast) and by 2.5e-3
# between bf16 and fp32 (and flipped 2 of 60 predictions), on the Intel Xeon; docs/readouts.md.
LOSS_NOISE_FLOOR = 0.003


def mean_se(values: Sequence[float]) -> dict[str, Any]:
    """Mean, standard error (None below two values) and n, skipping missing values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return {"mean": None, "se": None, "n": 0}
    se = statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else None
    return {"mean": statistics.fmean(v), "se": se, "n": len(v)}


def _by_task(items: dict[str, dict] | list[dict], key: str = "run") -> dict[str, dict[str, dict]]:
    """Readout entries grouped by task name, keyed by run label."""
    entries = items.values() if isinstance(items, dict) else items
    labels = list(items) if isinstance(items, dict) else [e[key] for e in entries]
    out: dict[str, dict[str, dict]] = {}
    for label, e in zip(labels, entries, strict=True):
        out.setdefault(task_name(e["task"]), {})[label] = e
    return out


def _aligned(runs: dict[str, dict]) -> bool:
    """Whether every run of a task started from the same init token at every position."""
    ids = [tuple(p.get("initial_id") for p in r["positions"]) for r in runs.values()]
    return bool(ids) and None not in ids[0] and all(i == ids[0] for i in ids)


def _position_rows(neighbors: dict[str, dict], importance: dict[str, dict]) -> list[dict[str, Any]]:
    """Per position, over the seeds of one task: init token, importance, survival, drift, displacement."""
    labels = list(neighbors)
    first = neighbors[labels[0]]["positions"]
    rows = []
    for i, p0 in enumerate(first):
        pos = [neighbors[label]["positions"][i] for label in labels]
        imp = [importance[label]["positions"][i] for label in labels if label in importance]
        moved_to = Counter(p["displacement_tokens"][0]["token"] for p in pos if p.get("displacement_tokens")).most_common(2)
        rows.append(
            {
                "index": i,
                "initial_token": p0.get("initial_token"),
                "loss_increase": mean_se([x.get("loss_increase") for x in imp]),
                "accuracy_drop": mean_se([x.get("accuracy_drop") for x in imp]),
                "kept_top1": sum(p["tokens"][0]["id"] == p.get("initial_id") for p in pos),
                "survived": sum(bool(p.get("survived")) for p in pos),
                "runs": len(pos),
                "relative_drift": mean_se([(p.get("drift") or {}).get("relative_to_gap") for p in pos]),
                "moved_toward": [{"token": t, "runs": c} for t, c in moved_to],
            }
        )
    return rows


def _carriers(rows: list[dict]) -> dict[str, Any]:
    """The positions whose ablation raises the loss most, and whether the evidence holds (mean > 2 SE)."""
    scored = [r for r in rows if r["loss_increase"]["mean"] is not None]
    ranked = sorted(scored, key=lambda r: -r["loss_increase"]["mean"])
    total = sum(max(r["loss_increase"]["mean"], 0.0) for r in scored)
    top = ranked[:TOP_POSITIONS]
    clear = [
        r["index"]
        for r in top
        if r["loss_increase"]["se"] is not None
        and r["loss_increase"]["mean"] > max(2 * r["loss_increase"]["se"], LOSS_NOISE_FLOOR)
    ]
    share = sum(max(r["loss_increase"]["mean"], 0.0) for r in top) / total if total > 0 else None
    return {"top": [r["index"] for r in top], "clear": clear, "top_share": share}


def _importance_vs_drift(rows: list[dict]) -> dict[str, Any]:
    """Do the positions that matter move less (the seed's "important tokens don't change")? Spearman over positions."""
    pairs = [
        (r["loss_increase"]["mean"], r["relative_drift"]["mean"])
        for r in rows
        if r["loss_increase"]["mean"] is not None and r["relative_drift"]["mean"] is not None
    ]
    return correlation([a for a, _ in pairs], [b for _, b in pairs])


def _descriptions(describe: dict[str, dict]) -> dict[str, Any]:
    """Trained vs init self-description scores, paired by run, and the best trained description."""
    trained = [(d.get("summary") or {}).get("trained_score") for d in describe.values()]
    init = [(d.get("summary") or {}).get("init_score") for d in describe.values()]
    pairs = [(a, b) for a, b in zip(trained, init, strict=True) if a is not None and b is not None]
    best = max(
        ((label, (d.get("summary") or {}).get("best") or {}) for label, d in describe.items()),
        key=lambda kv: _score(kv[1]) if _score(kv[1]) is not None else -1.0,
        default=(None, {}),
    )
    return {
        "trained": mean_se(trained),
        "init": mean_se(init),
        "difference": mean_se([a - b for a, b in pairs]),
        "best": {"run": best[0], **best[1]} if best[0] else None,
        "per_run": {
            label: {
                "greedy": _greedy(d.get("descriptions") or []),
                "init_greedy": _greedy((d.get("init") or {}).get("descriptions") or []),
                "trained_score": (d.get("summary") or {}).get("trained_score"),
                "init_score": (d.get("summary") or {}).get("init_score"),
            }
            for label, d in describe.items()
        },
    }


def _score(description: dict) -> float | None:
    """A description's overall score (its `score` is the scorer's dict, or the number itself)."""
    s = description.get("score")
    return s.get("score") if isinstance(s, dict) else s


def _greedy(descriptions: list[dict]) -> list[dict]:
    """The greedy descriptions, one per probe (and layer), with their scores."""
    return [
        {
            "probe": d.get("probe"),
            "layer": d.get("layer"),
            "text": d.get("text"),
            "score": _score(d),
        }
        for d in descriptions
        if d.get("decoding") == "greedy"
    ]


def _hard(task: str, baselines: dict[str, dict], soft: list[float]) -> dict[str, Any] | None:
    """The PEZ discrete prompt next to the soft prompt and the English prompt (from the study's baselines)."""
    base = next((b for key, b in baselines.items() if task_name(key) == task), {})
    hard = base.get("hard")
    if not hard:
        return None
    english = base.get("english_prompt") or {}
    return {
        "text": hard.get("hard_prompt"),
        "accuracy": hard.get("accuracy"),
        "text_accuracy": hard.get("text_accuracy"),
        "english_accuracy": english.get("accuracy"),
        "soft_accuracy": mean_se(soft),
    }


def readouts_summary(
    neighbors: dict[str, Any] | None,
    importance: dict[str, Any] | None = None,
    describe: dict[str, Any] | None = None,
    baselines: dict[str, dict] | None = None,
    soft_accuracy: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """Per task: the position table over seeds (when aligned), the carrying positions, importance vs drift, the
    self-descriptions (trained vs init) and the hard prompt. Every input may be missing (a study without it)."""
    nb = _by_task((neighbors or {}).get("runs") or {})
    imp = _by_task((importance or {}).get("runs") or [])
    desc = _by_task((describe or {}).get("runs") or [])
    tasks = sorted(set(nb) | set(imp) | set(desc))
    out: dict[str, Any] = {}
    for task in tasks:
        runs_nb, runs_imp = nb.get(task, {}), imp.get(task, {})
        entry: dict[str, Any] = {"runs": sorted(set(runs_nb) | set(runs_imp) | set(desc.get(task, {})))}
        entry["read_runs"] = sorted(set(runs_imp) | set(desc.get(task, {})))  # [analysis] readout_seeds' runs
        entry["aligned"] = bool(runs_nb) and _aligned(runs_nb)
        if entry["aligned"]:
            rows = _position_rows(runs_nb, runs_imp)
            entry["positions"] = rows
            entry["carriers"] = _carriers(rows) if runs_imp else None
            entry["importance_vs_drift"] = _importance_vs_drift(rows) if runs_imp else None
        entry["n_examples"] = sorted({r.get("n") for r in runs_imp.values()}) if runs_imp else []
        entry["describe"] = _descriptions(desc[task]) if task in desc else None
        entry["hard"] = _hard(task, baselines or {}, (soft_accuracy or {}).get(task, []))
        out[task] = entry
    return json_safe({"tasks": out})
