"""Is there signal under the majority class? Threshold-free ranking quality of binary-task prompts.

A prompt that predicts the majority class for every example (macro-F1 0.405 on MRPC) may still rank the
examples well: the cross-entropy optimum with a 68/32 label prior and a weak signal puts every example on
the majority side of the argmax threshold. This scores each run's prompt (last and selected), the English
prompt and no prompt on the validation split through the library's Evaluator and reports: the share
predicted positive, the raw and content-free calibrated macro-F1, and the ROC AUC of the score margin
log p(choice 1) - log p(choice 0) (0.5: no signal; independent of any threshold or prior).

    .venv/bin/python bench/binary_signal.py runs/mrpc27/mrpc/default-s* runs/mrpc27/mrpc/balanced-s* \\
        --json bench/results/mrpc27_signal.json --threads 1
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import machine  # noqa: F401  (puts src/ on the path)
from sklearn.metrics import roc_auc_score

from softprompt.evaluate import EVAL_SEED, evaluator_for_run
from softprompt.io import write_json
from softprompt.model.backbones import load_backbone
from softprompt.runs.directory import load_run
from softprompt.tasks import get_task


def signal(res) -> dict:
    """Share predicted 1, raw/calibrated macro-F1 and the AUC of the margin, from an EvalResult with scores."""
    lp, labels = res.scores.logprobs, res.scores.labels
    margin = [x[1] - x[0] for x in lp]
    out = {
        "n": res.n,
        "f1_macro": res.f1_macro,
        "accuracy": res.accuracy,
        "predicted_1": sum(p == 1 for p in res.predictions) / res.n,
        "auc": roc_auc_score(labels, margin),
    }
    if res.calibrated and "f1_macro" in res.calibrated:
        out["calibrated_f1_macro"] = res.calibrated["f1_macro"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    first = load_run(args.runs[0])
    backbone = load_backbone(first.config["model"], dtype=first.config.get("dtype", "float32"))
    evaluator = evaluator_for_run(first, backbone)
    task = get_task(first.task)
    limit = first.config.get("max_eval")
    rows: dict[str, dict] = {}

    def score(name: str, **kw) -> None:
        res = evaluator.evaluate(task, limit=limit, seed=EVAL_SEED, calibrate=True, **kw)
        rows[name] = signal(res)
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[name].items()}, flush=True)

    score("no_prompt")
    score("english_prompt", hard_prompt=task.description)
    for path in args.runs:
        run = load_run(path)
        for which in ("last", "best"):
            score(f"{path.name}@{which}", prompt=run.prompt(which).weight.detach())
    groups: dict[str, list[float]] = {}
    for name, row in rows.items():
        if "@" in name:
            groups.setdefault(name.split("-s")[0] + "@" + name.split("@")[1], []).append(row["auc"])
    summary = {g: {"auc_mean": statistics.mean(v), "n_runs": len(v)} for g, v in groups.items()}
    print(summary)
    if args.json:
        write_json(args.json, {"machine": machine(), "runs": [str(p) for p in args.runs], "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
