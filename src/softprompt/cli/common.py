"""What the commands share: flags generated from TrainConfig's fields, the model flags, printing a table."""

from __future__ import annotations

import argparse
import functools
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any

from softprompt.config import TrainConfig
from softprompt.errors import SoftPromptError

MODEL_FIELDS = (  # what loading and scoring need
    "model",
    "dtype",
    "compute_dtype",
    "device",
    "data_dir",
    "max_length",
    "prompt_format",
    "scoring_strategy",
)


def locking(dest: str, what: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """A command that writes the folder given by `dest` (`--out`, `--peft`) holds its lock while it runs
    (`softprompt.locks.directory_lock`, as run, study and baselines folders are held): a second command writing the
    same folder is refused at once, in one line naming the holder, before anything is loaded; and a command that
    fails leaving the folder it created empty removes it."""

    def wrap(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(cmd)
        def locked(a: argparse.Namespace) -> int:
            from pathlib import Path

            from softprompt.locks import directory_lock

            with directory_lock(Path(getattr(a, dest)), what):
                return cmd(a)

        return locked

    return wrap


def config_fields(names: Iterable[str] | None = None) -> list[Field]:
    """TrainConfig's fields that are flags (all of them, or those in `names`), in declaration order."""
    wanted = None if names is None else set(names)
    return [f for f in fields(TrainConfig) if f.metadata.get("cli", True) and (wanted is None or f.name in wanted)]


def _value_type(f: Field) -> type:
    """int, float, str or bool from the field's annotation (`X | None` gives X)."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_config_flags(
    p: argparse.ArgumentParser, names: Iterable[str] | None = None, *, helps: Mapping[str, str] | None = None
) -> None:
    """One flag per TrainConfig field (`--batch-size` for `batch_size`), with its default, type, choices and help
    (`helps` replaces a field's help text where a command means something narrower)."""
    helps = helps or {}
    for f in config_fields(names):
        kind = _value_type(f)
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_text = helps.get(f.name, f.metadata.get("help") or None)
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:  # --x sets an option that is off by default; one that is on gets --x / --no-x
            action = argparse.BooleanOptionalAction if default else "store_true"
            p.add_argument(flag, dest=f.name, action=action, default=default, help=help_text)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "type": kind, "default": default, "help": help_text}
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
        if f.metadata.get("required"):
            kwargs["required"] = True
        p.add_argument(flag, **kwargs)


def config_values(a: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The parsed values of the TrainConfig flags, by field name."""
    return {f.name: getattr(a, f.name) for f in config_fields(names)}


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags that say which model to load and how to score with it (TrainConfig's), plus --trust-remote-code."""
    add_config_flags(p, MODEL_FIELDS)
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")


def load_model(a: argparse.Namespace, model: str | None = None, runs: Sequence = ()):
    """The backbone the model flags name (or `model`), and an Evaluator over it with the scoring flags.

    Given trained `runs`, examples are laid out in the runs' prompt format (they must agree), not --prompt-format."""
    from softprompt.evaluate import evaluator_for
    from softprompt.model.backbones import load_backbone

    cfg = TrainConfig(**(config_values(a, MODEL_FIELDS) | {"model": model or a.model}))
    backbone = load_backbone(cfg.model, dtype=cfg.dtype, device=cfg.device, trust_remote_code=a.trust_remote_code)
    formats = sorted({r.prompt_format for r in runs})
    if len(formats) > 1:
        raise SoftPromptError(f"the runs were trained in different prompt formats ({', '.join(formats)}): analyse them apart")
    evaluator = evaluator_for(cfg, backbone, progress=not a.quiet, prompt_format=formats[0] if formats else None)
    return backbone, evaluator


def result_row(res) -> dict[str, float]:
    """An evaluation result as a printed table row."""
    m = res.metrics()
    return {"accuracy": m["accuracy"], "f1_macro": m["f1_macro"], "acc_norm": m["acc_norm"]}


def print_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    if not rows:
        return
    columns = list(columns or rows[0].keys())

    def fmt(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
