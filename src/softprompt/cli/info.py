"""`softprompt models` and `softprompt tasks`: what is available."""

from __future__ import annotations

import argparse

from softprompt.cli.common import print_table


def cmd_models(a: argparse.Namespace) -> int:
    from softprompt.model.backbones import list_models

    print_table(list_models())
    return 0


def cmd_tasks(a: argparse.Namespace) -> int:
    from softprompt.tasks import BUILTIN_TASKS
    from softprompt.tasks.stats import task_stats

    if not a.stats:
        print_table(
            [
                {"task": t.name, "classes": "/".join(t.label_words), "metric": t.metric, "description": t.description}
                for t in BUILTIN_TASKS.values()
            ]
        )
        return 0
    print_table(task_stats(list(a.task or BUILTIN_TASKS), a.data_dir))
    return 0


def add_info(sub) -> None:
    sub.add_parser("models", help="list offline model aliases and the Hub default").set_defaults(func=cmd_models)
    p = sub.add_parser("tasks", help="list built-in tasks (--stats: split sizes and majority baselines)")
    p.add_argument("--stats", action="store_true", help="load each task's files: sizes, label balance, majority accuracy")
    p.add_argument("--task", action="append", help="only these tasks (names or .toml files)")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_tasks)
