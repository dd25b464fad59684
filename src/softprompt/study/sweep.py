"""A study's sweep: `[sweep]` axes (TrainConfig field -> list of values), their cells, and a directory name per cell.

Every combination of the axes' values (the cartesian product, in the config's axis order) is a cell;
each cell is trained for every task and seed. The interpretation sections (neighbours, geometry,
transfer) read one cell, the analysis cell: `[analysis] cell = {...}` where given (an axis it leaves
out takes the default cell's value), else the cell equal to the `[train]` values if the product holds
it, else the first cell.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import typing
from dataclasses import fields, replace
from typing import Any

from softprompt.config import TrainConfig
from softprompt.errors import SoftPromptError

Cell = tuple[tuple[str, Any], ...]  # ((axis, value), ...) in the sweep's axis order; () without a sweep

# TrainConfig fields a sweep may not vary, and why (the first five are set per run by the study itself).
NOT_SWEPT = {
    "task": "the study sets it ([study] tasks)",
    "seed": "the study sets it ([study] seeds)",
    "model": "the study sets it ([study] model)",
    "method": "the study sets it (prompt runs; the other methods are [baselines])",
    "data_dir": "the study sets it ([study] data_dir)",
    "max_eval": "every evaluation of a study uses one validation subsample ([study] max_eval)",
    "dtype": "the study loads the model once",
    "device": "the study loads the model once",
    "extra": "it is free-form",
}


def _field_type(name: str) -> type:
    """int, float, str or bool from TrainConfig's annotation of `name` (`X | None` gives X)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _typed(name: str, value: Any, where: str) -> Any:
    """`value` as the field's type (an int where a float is expected becomes a float), or a one-line error."""
    kind = _field_type(name)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise SoftPromptError(f"{where} {name}: {value!r} is not {'an' if kind is int else 'a'} {kind.__name__}")
    return value


def parse_sweep(table: dict[str, Any], base: TrainConfig, where: str) -> dict[str, list[Any]]:
    """Validate `[sweep]` against TrainConfig: known, sweepable fields, non-empty lists of distinct values of the
    field's type, each value (and each cell) a valid TrainConfig on top of `base`."""
    known = {f.name for f in fields(TrainConfig)}
    sweep: dict[str, list[Any]] = {}
    for name, values in table.items():
        if name not in known:
            raise SoftPromptError(f"{where}: unknown field {name!r}; a sweep axis is a [train] field: {sorted(known)}")
        if name in NOT_SWEPT:
            raise SoftPromptError(f"{where}: {name} cannot be swept: {NOT_SWEPT[name]}")
        if not isinstance(values, list) or not values:
            raise SoftPromptError(f"{where} {name}: expected a non-empty list of values, got {values!r}")
        typed = [_typed(name, v, where) for v in values]
        if len({json.dumps(v) for v in typed}) != len(typed):
            raise SoftPromptError(f"{where} {name}: values repeat in {values!r}")
        for v in typed:
            try:
                replace(base, **{name: v})
            except SoftPromptError as e:
                raise SoftPromptError(f"{where} {name} = {v!r}: {e}") from None
        sweep[name] = typed
    for cell in cells(sweep):
        try:
            replace(base, **dict(cell))
        except SoftPromptError as e:
            raise SoftPromptError(f"{where}: the cell {cell_label(cell)}: {e}") from None
    return sweep


def cells(sweep: dict[str, list[Any]]) -> list[Cell]:
    """Every combination of the axes' values, first axis slowest; [()] without a sweep."""
    names = list(sweep)
    return [tuple(zip(names, combo, strict=True)) for combo in itertools.product(*(sweep[n] for n in names))]


def analysis_cell(sweep: dict[str, list[Any]], base: TrainConfig, given: dict[str, Any] | None, where: str) -> Cell:
    """The cell the interpretation sections read (see the module docstring); `given` is validated against the axes."""
    all_cells = cells(sweep)
    at_base = tuple((name, getattr(base, name)) for name in sweep)
    default = at_base if at_base in all_cells else all_cells[0]
    if not given:
        return default
    if not sweep:
        raise SoftPromptError(f"{where} cell: there is no [sweep], so there is only one cell")
    chosen = dict(default)
    for name, value in given.items():
        if name not in sweep:
            raise SoftPromptError(f"{where} cell: {name!r} is not a swept axis; the axes are {list(sweep)}")
        value = _typed(name, value, f"{where} cell")
        if value not in sweep[name]:
            raise SoftPromptError(f"{where} cell: {name} = {value!r} is not one of the swept values {sweep[name]}")
        chosen[name] = value
    return tuple(chosen.items())


def cell_label(cell: Cell) -> str:
    """How a reader sees a cell: `tokens=20, init=text`."""
    return ", ".join(f"{k}={_text(v)}" for k, v in cell) or "(no sweep)"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in text).strip("-.") or "_"


def cell_name(sweep: dict[str, list[Any]], cell: Cell) -> str:
    """The cell's directory name, `tokens=20,init=text`: readable, one path component, distinct for distinct cells.

    A value whose characters had to be replaced gets a short hash of itself when another value of its axis
    would read the same; a name longer than 120 characters is cut and given the hash of the whole cell."""
    parts = []
    for name, value in cell:
        slug = _safe(_text(value))
        if any(_safe(_text(v)) == slug for v in sweep.get(name, []) if v != value):
            slug += "~" + hashlib.sha256(json.dumps(value).encode()).hexdigest()[:8]
        parts.append(f"{name}={slug}")
    out = ",".join(parts)
    if len(out) > 120:
        out = out[:110] + "~" + hashlib.sha256(json.dumps(cell).encode()).hexdigest()[:8]
    return out
