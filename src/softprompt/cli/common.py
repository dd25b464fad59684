"""What the commands share: flags generated from TrainConfig's fields, the model flags, printing a table."""

from __future__ import annotations

import argparse
import functools
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any

from softprompt.config import DEFAULT_MODEL, SCORE_SETTINGS, TrainConfig
from softprompt.errors import SoftPromptError, warn

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


def add_model_args(p: argparse.ArgumentParser, names: Iterable[str] = MODEL_FIELDS, *, from_runs: bool = False) -> None:
    """The flags that say which model to load and how to score with it (TrainConfig's `names`), plus
    --trust-remote-code. `from_runs`: the command reads runs, so the settings that change a score (model, prompt
    format, max length, dtypes: `config.SCORE_SETTINGS`) default to the runs' own (`resolve_settings`)."""
    add_config_flags(p, names)
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    if not from_runs:
        return
    own = [n for n in SCORE_SETTINGS if n in set(names)]
    p.set_defaults(**dict.fromkeys(own))  # None: the run's own value (resolve_settings)
    for action in p._actions:
        if action.dest == "model":
            action.help = f"offline alias, local folder or Hub id (default: the run's own model; without a run {DEFAULT_MODEL})"
        elif action.dest in own:
            action.help = f"{action.help or action.dest} (default: the run's own, from its run.json)".lstrip()


def resolve_settings(a: argparse.Namespace, runs: Sequence = ()) -> None:
    """Fill the score-changing flags left out (None) from the runs' run.json (`runs.settings.run_settings`), or
    TrainConfig's defaults without runs. A flag given that disagrees with a run: --prompt-format is refused (a
    prompt is scored in the layout it was trained in), the others (--model, --max-length, --dtype, --compute-dtype)
    are used as asked with a one-line warning naming the run's value. Runs that disagree among themselves need the
    flag (or, for the prompt format, to be analysed apart)."""
    from softprompt.runs.settings import run_settings

    if getattr(a, "_settings_resolved", False):  # once per command: a second call would repeat its warnings
        return
    a._settings_resolved = True
    defaults = {f.name: f.default for f in config_fields(SCORE_SETTINGS)}
    recorded = [(run.path, run_settings(run)) for run in runs]
    for name in (n for n in SCORE_SETTINGS if hasattr(a, n)):
        flag, asked = "--" + name.replace("_", "-"), getattr(a, name)
        values = {path: s[name] for path, s in recorded if s[name] is not None}
        if asked is None:
            setattr(a, name, _recorded_value(name, flag, values, recorded, defaults[name]))
            continue
        for path, theirs in values.items():
            if theirs == asked:
                continue
            if name == "prompt_format":
                raise SoftPromptError(
                    f"{flag} {asked}: run {path} was trained in the {theirs} prompt format, and its prompt is scored in "
                    f"that layout; leave {flag} out"
                )
            trained = f"on model {theirs!r}" if name == "model" else f"with {name} {theirs}"
            warn(f"{flag} {asked}: run {path} was trained {trained}; scoring with {asked}, as asked")
            break


def _recorded_value(name: str, flag: str, values: dict, recorded: list, default: Any) -> Any:
    """The one value the runs recorded for `name` (the default without runs), or a one-line error."""
    distinct = sorted({str(v) for v in values.values()})
    if len(distinct) > 1:
        if name == "prompt_format":
            raise SoftPromptError(
                f"the runs were trained in different prompt formats ({', '.join(distinct)}): analyse them apart"
            )
        what = "on different models" if name == "model" else f"with different {name}"
        raise SoftPromptError(f"the runs were trained {what} ({', '.join(distinct)}): pass {flag} to choose one")
    if values:
        return next(iter(values.values()))
    if recorded and name == "model":
        raise SoftPromptError(f"run {recorded[0][0]} does not name its model (an adapter imported without one): pass --model")
    return default


def load_model(a: argparse.Namespace, runs: Sequence = ()):
    """The backbone the model flags name and an Evaluator over it with the scoring flags, both with the runs' own
    settings where a flag was left out (`resolve_settings`: call it after the runs' prompts are checked)."""
    from softprompt.evaluate import evaluator_for
    from softprompt.model.backbones import load_backbone

    resolve_settings(a, runs)
    cfg = TrainConfig(**config_values(a, MODEL_FIELDS))
    backbone = load_backbone(cfg.model, dtype=cfg.dtype, device=cfg.device, trust_remote_code=a.trust_remote_code)
    return backbone, evaluator_for(cfg, backbone, progress=not a.quiet)


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
