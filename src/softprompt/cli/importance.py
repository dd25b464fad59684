"""`softprompt importance`: which positions of a trained prompt matter (argument parsing and printing only)."""

from __future__ import annotations

import argparse

from softprompt.cli.analysis import _analysis_parser, _fmt, _load, _model_args, _runs
from softprompt.cli.common import locking, print_table
from softprompt.errors import SoftPromptError

MEAN = "mean"  # the replacement by the mean embedding (analysis.importance.REPLACEMENTS)


def cmd_importance(a: argparse.Namespace) -> int:
    from softprompt.analysis.importance import REPLACEMENTS, importance_report
    from softprompt.records.readouts import ImportanceResult

    if a.max_eval is not None and a.max_eval < 1:
        raise SoftPromptError(f"--max-eval {a.max_eval}: expected at least 1 example")
    replacements = tuple(r.strip() for r in a.replacements.split(",") if r.strip())
    bad = [r for r in replacements if r not in REPLACEMENTS]
    if bad or not replacements:
        got = repr(bad[0]) if bad else "nothing"
        raise SoftPromptError(f"--replacements {a.replacements!r}: {got} is not one of {', '.join(REPLACEMENTS)}")
    runs = _runs(a)
    _, evaluator = _load(a, runs)
    report = importance_report(
        evaluator, runs, a.out, which=a.which, limit=a.max_eval, seed=a.seed, task=a.task, replacements=replacements
    )
    for r in ImportanceResult.from_dict(report, "importance report").runs:
        base = r.base
        accuracy, loss = (base.accuracy, base.loss) if base else (None, None)
        print(f"\n{r.run} on {r.task} (n {r.n}): accuracy {_fmt(accuracy)}, loss {_fmt(loss)}")
        rows = []
        for p in r.positions:
            mean = p.by_replacement.get(MEAN)
            rows.append(
                {
                    "position": p.index,
                    "init token": p.initial_token if p.initial_token is not None else "-",
                    "accuracy drop": _fmt(p.accuracy_drop),
                    "loss increase": _fmt(p.loss_increase),
                    "loss increase (mean)": _fmt(mean.loss_increase) if mean else "-",
                }
            )
        print_table(rows)
        print(f"most important first: {' '.join(map(str, r.ranking))} ({r.wall_time_s or 0:.1f} s)")
        if r.warning:
            print(f"warning: {r.warning}")
    print(f"\nwritten to {a.out}: importance.json")
    return 0


def add_importance(sub) -> None:
    """Register `importance` on the CLI's subparsers."""
    p = _analysis_parser(
        sub,
        "importance",
        "which soft tokens matter: replace one position at a time and score again",
        "Replace each position of a run's prompt by its initial vector (and by the mean vocabulary embedding) and "
        "score the prompt again on the validation split: accuracy drop and loss increase per position.",
        which_help="the runs' last or best-epoch prompt",
    )
    p.add_argument("--task", default=None, help="task to score on (default: each run's own task)")
    p.add_argument("--max-eval", type=int, default=None, help="score on a seeded subsample of N validation examples")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation subsample (default 0)")
    p.add_argument(
        "--replacements",
        default="init,mean",
        help="comma-separated: init (the row's initial vector, the primary readout), mean (the mean vocabulary "
        "embedding); each costs one evaluation per position (default init,mean)",
    )
    _model_args(p)
    p.set_defaults(func=locking("out", "--out")(cmd_importance))
