"""`softprompt study`: a whole study from a TOML config, on the local or the Ray executor."""

from __future__ import annotations

import argparse
from pathlib import Path

from softprompt.config import EXECUTORS
from softprompt.errors import SoftPromptError

# argparse name -> (flag, RayOptions field); a flag left unset keeps RayOptions' default
RAY_FLAGS = {
    "ray_address": ("--ray-address", "address"),
    "cpus_per_run": ("--cpus-per-run", "cpus_per_run"),
    "gpus_per_run": ("--gpus-per-run", "gpus_per_run"),
    "max_retries": ("--max-retries", "max_retries"),
}


def cmd_study(a: argparse.Namespace) -> int:
    from softprompt import study
    from softprompt.records.results import StudyTiming
    from softprompt.study.timing import phase_lines

    given = {name: getattr(a, name) for name in RAY_FLAGS if getattr(a, name) is not None}
    ray_options = None
    if a.executor == "ray":
        from softprompt.study.ray_executor import RayOptions

        ray_options = RayOptions(**{RAY_FLAGS[name][1]: value for name, value in given.items()}, torch_threads=a.threads)
    elif given:
        flags = [RAY_FLAGS[name][0] for name in given]
        raise SoftPromptError(f"{', '.join(flags)} appl{'ies' if len(flags) == 1 else 'y'} to --executor ray only")
    # the local executor's workers each take --threads threads (with Ray, --threads went to ray_options above);
    # run_study refuses --workers with Ray
    workers = {"workers": a.workers, "threads_per_worker": a.threads if a.executor == "local" else None}
    results = study.run_study(a.config, a.out, progress=not a.quiet, executor=a.executor, ray_options=ray_options, **workers)
    out = Path(a.out)
    print(f"\nstudy {results['study']['name']}: {len(results['runs'])} prompt runs; report: {out / 'report.html'}")
    timing = (results.get("setup") or {}).get("timing")
    if timing is not None:
        print("\n".join(phase_lines(StudyTiming.from_dict(timing, "results.json setup.timing"))))
    return 0


def add_study(sub) -> None:
    p = sub.add_parser(
        "study",
        help="run a whole study from a TOML config and write report.html",
        description="Prompt runs (tasks x seeds), baselines, analyses and the HTML report. Re-running skips "
        "finished work, resumes interrupted runs and redoes only what a config change affects.",
    )
    p.add_argument("config", help="study config (.toml), e.g. configs/demo.toml")
    p.add_argument(
        "--out",
        required=True,
        help="study directory (runs, analyses, report.html, results.json, tables/); a local path, not a URL; "
        "with --executor ray one that every worker sees (shared filesystem)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--executor",
        default="local",
        choices=list(EXECUTORS),
        help="local: every unit in this process (default); ray: prompt runs and baselines as Ray tasks "
        "(pip install 'softprompt[ray]'; see docs/scale-out.md)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local executor: prompt runs, baselines and analyses in N worker processes at once, each with --threads torch "
        "threads (default: the config's [execution] workers, else 1; threads: the usable cores / N)",
    )
    g = p.add_argument_group("Ray executor (--executor ray)")
    g.add_argument(
        "--ray-address",
        default=None,
        help="cluster to connect to, passed to ray.init: 'auto' (a `ray start` cluster on this machine) or "
        "HEAD_IP:6379 (default: $RAY_ADDRESS, else start a local cluster)",
    )
    g.add_argument("--cpus-per-run", type=float, default=None, help="CPUs (and torch threads) each unit reserves (default 1)")
    g.add_argument("--gpus-per-run", type=float, default=None, help="GPUs each unit reserves (default 0)")
    g.add_argument(
        "--max-retries", type=int, default=None, help="retries of a unit whose worker died (default 3); errors are not retried"
    )
    p.set_defaults(func=cmd_study)
