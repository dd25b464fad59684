"""`softprompt importance`: which positions of a trained prompt matter (argument parsing and printing only)."""

from __future__ import annotations

import argparse

from softprompt.cli.analysis import _analysis_parser, _fmt, _load, _model_args, _runs
from softprompt.cli.common import print_table
from softprompt.errors import SoftPromptError

MEAN = "mean"  # the replacement by the mean embedding (analysis.importance.REPLACEMENTS)
# The default validation subsample: the largest standard error an accuracy can have over n examples is
# 0.5 / sqrt(n), and n = 200 keeps it at 0.035 (3.5 points) while the (2 x tokens + 1) scorings stay a few times one
# evaluation of the whole SST-2 split (872 examples); the printed SEs are the run's own. `--max-eval all`: every example.
DEFAULT_MAX_EVAL = 200


def max_eval(value: str) -> int | None:
    """--max-eval's value: a positive count, or `all` (None: the whole split)."""
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise SoftPromptError(f"--max-eval {value!r}: expected a number of examples or 'all'") from None
    if n < 1:
        raise SoftPromptError(f"--max-eval {n}: expected at least 1 example, or 'all'")
    return n


def cmd_importance(a: argparse.Namespace) -> int:
    from softprompt.analysis.importance import REPLACEMENTS, importance_report
    from softprompt.records.readouts import ImportanceResult

    limit = max_eval(a.max_eval)
    replacements = tuple(r.strip() for r in a.replacements.split(",") if r.strip())
    bad = [r for r in replacements if r not in REPLACEMENTS]
    if bad or not replacements:
        got = repr(bad[0]) if bad else "nothing"
        raise SoftPromptError(f"--replacements {a.replacements!r}: {got} is not one of {', '.join(REPLACEMENTS)}")
    runs = _runs(a)
    _, evaluator = _load(a, runs)
    report = importance_report(
        evaluator, runs, a.out, which=a.which, limit=limit, seed=a.seed, task=a.task, replacements=replacements
    )
    sample = "every validation example" if limit is None else f"a seeded subsample of at most {limit} examples (--max-eval)"
    print(f"scored on {sample}; +- is one standard error, paired over the examples")
    for r in ImportanceResult.from_dict(report, "importance report").runs:
        base = r.base
        accuracy, loss, se = (base.accuracy, base.loss, base.accuracy_se) if base else (None, None, None)
        print(f"\n{r.run} on {r.task} (n {r.n}): accuracy {_fmt(accuracy)} +- {_fmt(se)}, loss {_fmt(loss)}")
        rows = []
        for p in r.positions:
            mean = p.by_replacement.get(MEAN)
            rows.append(
                {
                    "position": p.index,
                    "init token": p.initial_token if p.initial_token is not None else "-",
                    "accuracy drop": _pm(p.accuracy_drop, p.accuracy_drop_se),
                    "loss increase": _pm(p.loss_increase, p.loss_increase_se),
                    "loss increase (mean)": _pm(mean.loss_increase, mean.loss_increase_se) if mean else "-",
                }
            )
        print_table(rows)
        print(f"most important first: {' '.join(map(str, r.ranking))} ({r.wall_time_s or 0:.1f} s)")
        if r.warning:
            print(f"warning: {r.warning}")
    print(f"\nwritten to {a.out}: importance.json")
    return 0


def _pm(value: float | None, se: float | None) -> str:
    return _fmt(value) if se is None else f"{_fmt(value)} +- {_fmt(se)}"


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
    p.add_argument(
        "--max-eval",
        default=str(DEFAULT_MAX_EVAL),
        metavar="N",
        help=f"score on a seeded subsample of N validation examples, or 'all' (default {DEFAULT_MAX_EVAL}: an "
        "accuracy's standard error is then at most 0.035; each run's own standard errors are printed)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation subsample (default 0)")
    p.add_argument(
        "--replacements",
        default="init,mean",
        help="comma-separated: init (the row's initial vector, the primary readout), mean (the mean vocabulary "
        "embedding); each costs one evaluation per position (default init,mean)",
    )
    _model_args(p)
    p.set_defaults(func=cmd_importance)
