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
from softprompt.cli.interrupts import interrupted_note
from softprompt.cli.peft import add_peft
from softprompt.cli.study import add_study
from softprompt.cli.train import add_train
from softprompt.errors import SoftPromptError, os_error_line
from softprompt.host_memory import keep_freed_host_memory
from softprompt.logging_setup import quiet_libraries
from softprompt.preemption import Signals, hold_point, stop_at_safe_points
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A fault of the inputs or the environment is one `softprompt: error:` line and exit 2;
    Ctrl-C exits 130 and SIGTERM (preemption) 143, at the command's next safe point (`softprompt.preemption`), after
    the same checkpoint; a signal that came after the last one still ends the command so, its work done."""
    args = build_parser().parse_args(argv)
    with stop_at_safe_points() as signals:
        try:
            configure_threads(args.threads)  # before torch loads: its OpenMP reads the settings once
            quiet_libraries()
            keep_freed_host_memory()
            code = args.func(args)
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
            return _interrupted(args, signals)
        hold_point("command-end")
        if signals.received:  # after the last safe point: the work is done, and the signal is not ignored
            name = "SIGTERM" if signals.terminated else "Ctrl-C"
            print(f"softprompt: interrupted ({name}) as the command finished; its output is complete", file=sys.stderr)
            return signals.exit_code
        return code


def _interrupted(args: argparse.Namespace, signals: Signals) -> int:
    """The last line after Ctrl-C or SIGTERM: what the command kept (never a checkpoint that does not exist) and
    how to continue (`interrupted_note`)."""
    what = "interrupted (SIGTERM)" if signals.terminated else "interrupted"
    try:
        how = interrupted_note(args)
    except Exception:  # noqa: BLE001 - the exit code matters more than the note
        how = None
    print(f"\nsoftprompt: {what}" + (f"; {how}" if how else ""), file=sys.stderr)
    return signals.exit_code


def _error(message: str) -> int:
    print(f"softprompt: error: {message}", file=sys.stderr)
    return 2


def _out_of_memory(args: argparse.Namespace, e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    resume = " (training resumes from its last checkpoint with --resume)" if args.command == "train" else ""
    return f"out of memory ({type(e).__name__}: {first[:200]}): use a smaller --batch-size or --max-length{resume}"
