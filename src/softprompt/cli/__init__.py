"""The command line: a thin layer over the package's functions. Errors print one line, exit 2; never a traceback
for a fault of the inputs or the environment (docs/reliability.md).

One module per command group registers its subcommands (`REGISTRARS`); `common` holds what they
share (flags generated from TrainConfig, the model flags, tables). Nothing outside this package
imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from softprompt.cli.analysis import add_analysis
from softprompt.cli.baselines import add_baselines
from softprompt.cli.describe import add_describe
from softprompt.cli.evaluate import add_eval, add_generate
from softprompt.cli.importance import add_importance
from softprompt.cli.info import add_info
from softprompt.cli.peft import add_peft
from softprompt.cli.study import add_study
from softprompt.cli.train import add_train
from softprompt.errors import SoftPromptError, os_error_line
from softprompt.host_memory import keep_freed_host_memory
from softprompt.logging_setup import quiet_libraries
from softprompt.preemption import sigterm_as_interrupt
from softprompt.threads import ENV_COUNT, configure_threads

REGISTRARS: list[Callable] = [
    add_train,
    add_eval,
    add_generate,
    add_info,
    add_peft,
    add_study,
    add_baselines,
    add_analysis,
    add_importance,
    add_describe,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softprompt", description="Train, evaluate and interpret soft prompts on frozen causal LMs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    for command in sub.choices.values():  # an execution setting of every command (studies and Ray workers included)
        command.add_argument(
            "--threads",
            type=int,
            default=None,
            metavar="N",
            help=f"torch threads (default: ${ENV_COUNT} or auto: the cores this process may use, less those other "
            "processes keep busy at start; an OMP_NUM_THREADS you set is kept; bench/docs/cpu.md 'Sharing the cores')",
        )
    return parser


# What to do after an interrupted command: the commands that checkpoint say how to continue.
CONTINUE = {
    "train": "progress was checkpointed: rerun with --resume to continue",
    "study": "progress was checkpointed: rerun the same command to continue",
    "baselines": "progress was checkpointed: rerun the same command to continue",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A fault of the inputs or the environment is one `softprompt: error:` line and
    exit 2; Ctrl-C exits 130 and SIGTERM (preemption) 143, both after the same checkpoint."""
    args = build_parser().parse_args(argv)
    with sigterm_as_interrupt() as signals:
        try:
            configure_threads(args.threads)  # before torch loads: its OpenMP reads the settings once
            quiet_libraries()
            keep_freed_host_memory()
            return args.func(args)
        except SoftPromptError as e:
            return _error(str(e))
        except OSError as e:  # disk full, no permission, a read-only filesystem, ...: the path and what to do
            return _error(os_error_line(e))
        except MemoryError as e:
            return _error(_out_of_memory(args, e))
        except RuntimeError as e:
            if type(e).__name__ != "OutOfMemoryError":  # torch.cuda.OutOfMemoryError; anything else is a bug
                raise
            return _error(_out_of_memory(args, e))
        except KeyboardInterrupt:
            what = "interrupted (SIGTERM)" if signals.terminated else "interrupted"
            how = CONTINUE.get(args.command)
            print(f"\nsoftprompt: {what}" + (f"; {how}" if how else ""), file=sys.stderr)
            return signals.exit_code


def _error(message: str) -> int:
    print(f"softprompt: error: {message}", file=sys.stderr)
    return 2


def _out_of_memory(args: argparse.Namespace, e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    resume = " (training resumes from its last checkpoint with --resume)" if args.command == "train" else ""
    return f"out of memory ({type(e).__name__}: {first[:200]}): use a smaller --batch-size or --max-length{resume}"
