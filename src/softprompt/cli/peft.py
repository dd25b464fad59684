"""`softprompt export` and `softprompt import-peft`: a run's prompt as a PEFT adapter, and back."""

from __future__ import annotations

import argparse

from softprompt.cli.common import add_config_flags, locking

IMPORT_SETTINGS = ("prompt_format", "max_length", "dtype", "compute_dtype")  # with --model: what changes a score


def cmd_export(a: argparse.Namespace) -> int:
    from softprompt.peft_interop import export_peft

    print(f"PEFT adapter written to {export_peft(a.run, a.peft, which=a.which, overwrite=a.overwrite)}")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    from softprompt.peft_interop import import_peft

    settings = {name: getattr(a, name) for name in IMPORT_SETTINGS}
    out = import_peft(a.adapter, a.out, task=a.task, model=a.model, allow_pickle=a.allow_pickle, settings=settings)
    print(f"run written to {out}")
    return 0


def add_peft(sub) -> None:
    p = sub.add_parser("export", help="export a run's prompt as a PEFT prompt-tuning adapter")
    p.add_argument("run")
    p.add_argument("--peft", required=True, help="output adapter directory")
    p.add_argument("--which", default="last", choices=["last", "best"])
    p.add_argument(
        "--overwrite", action="store_true", help="replace an adapter exported there before (other files are never touched)"
    )
    p.set_defaults(func=locking("peft", "--peft")(cmd_export))
    p = sub.add_parser("import-peft", help="turn a PEFT prompt-tuning adapter into a softprompt run")
    p.add_argument("adapter", help="PEFT adapter directory")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--task", default=None, help="task the prompt was trained on (default: the one a softprompt export records)")
    p.add_argument(
        "--model", default=None, help="base model (default: the model a softprompt export records, else base_model_name_or_path)"
    )
    add_config_flags(
        p,
        IMPORT_SETTINGS,
        helps={
            n: f"the {n.replace('_', ' ')} the prompt was trained with (default: what a softprompt export records; "
            "otherwise assumed, with a warning: plain, 512, float32, auto)"
            for n in IMPORT_SETTINGS
        },
    )
    p.set_defaults(**dict.fromkeys(IMPORT_SETTINGS))
    p.add_argument("--allow-pickle", action="store_true", help="accept adapter_model.bin (pickle) from a trusted source")
    p.set_defaults(func=locking("out", "run directory")(cmd_import))
