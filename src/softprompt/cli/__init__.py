"""The command line: a thin layer over the package's functions. Errors print one line, exit 2.

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
from softprompt.cli.evaluate import add_eval, add_generate
from softprompt.cli.info import add_info
from softprompt.cli.peft import add_peft
from softprompt.cli.study import add_study
from softprompt.cli.train import add_train
from softprompt.errors import SoftPromptError
from softprompt.logging_setup import quiet_libraries

REGISTRARS: list[Callable] = [add_train, add_eval, add_generate, add_info, add_peft, add_study, add_baselines, add_analysis]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softprompt", description="Train, evaluate and interpret soft prompts on frozen causal LMs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return args.func(args)
    except SoftPromptError as e:
        print(f"softprompt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "rerun the same command to continue" if args.command == "study" else "rerun with --resume to continue"
        print(f"\nsoftprompt: interrupted; progress was checkpointed: {how}", file=sys.stderr)
        return 130
