"""Typed records of softprompt's JSON files: dataclasses read strictly from plain JSON and written back to it.

`Record.from_dict(data, where)` builds a record: every field without a default must be present (a renamed
key is an error naming it and where, never an empty table later), every value must have its declared JSON
type (`int`, `float`, `str`, `bool`, lists, objects, nested records, unions). Fields with a default may be
absent (files written before they existed). Keys a record does not declare are kept, not dropped
(`unknown_keys()` lists them, `to_dict()` writes them back), so a round trip through a record never loses
a number; the test suite checks that what softprompt writes has none.

`to_dict()` writes the declared fields in order; a field that was absent when read, or declared with
`optional()`, is left out while it is None. An `Artifact` is a record that is a whole file (run.json,
results.json, neighbors.json, ...): it carries `SCHEMA_VERSION`, written as "schema_version"; a file
without one was written before versions were recorded (today's layout, version 0) and still loads; a
newer version than this softprompt reads is refused with a one-line error.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar, TypeVar

from softprompt.errors import SoftPromptError

T = TypeVar("T")
R = TypeVar("R", bound="Record")

SCHEMA_KEY = "schema_version"
_OMIT = "omit_none"  # field metadata: left out of to_dict() while None
_KEY = "key"  # field metadata: the JSON key when it is not a Python name (run.json's model "class")


def optional(default: Any = None, *, key: str | None = None) -> Any:
    """A field a file may leave out, written only when set (not None)."""
    meta = {_OMIT: True, **({_KEY: key} if key else {})}
    return dataclasses.field(default=default, metadata=meta)


def renamed(key: str, default: Any = dataclasses.MISSING) -> Any:
    """A field whose JSON key is not a Python name (e.g. "class")."""
    return dataclasses.field(default=default, metadata={_KEY: key})


def _json_key(f: dataclasses.Field) -> str:
    return f.metadata.get(_KEY, f.name)


_SCALARS: dict[Any, tuple[tuple[type, ...], str]] = {
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
    bool: ((bool,), "true or false"),
}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(hint: Any, value: Any, where: str) -> Any:
    """`value` (plain JSON) as `hint` says: records built, lists and objects converted item by item, scalars checked."""
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _union(args, value, where)
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value, where)
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise SoftPromptError(f"{where}: expected a list, got {_describe(value)}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SoftPromptError(f"{where}: expected an object, got {_describe(value)}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else value
    if hint in _SCALARS:
        kinds, name = _SCALARS[hint]
        if not isinstance(value, kinds) or (isinstance(value, bool) and hint is not bool):
            raise SoftPromptError(f"{where}: expected {name}, got {_describe(value)}")
        return value
    raise TypeError(f"{where}: a record field of type {hint!r} cannot be read from JSON")  # a schema bug, not the file's


def _union(args: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise SoftPromptError(f"{where}: null where a value is expected")
    choices = [a for a in args if a is not type(None)]
    if len(choices) == 1:
        return _convert(choices[0], value, where)
    errors = []
    for choice in choices:
        try:
            return _convert(choice, value, where)
        except SoftPromptError as e:
            errors.append(str(e))
    raise SoftPromptError(
        errors[0] if len(errors) == 1 else f"{where}: {_describe(value)} fits none of its types ({'; '.join(errors)})"
    )


def from_json_value(hint: Any, value: Any, where: str) -> Any:
    """`value` (plain JSON) as type `hint` says (records built, containers converted, scalars checked); for a
    container that is not a record itself (run.json's `RunRecord`)."""
    return _convert(hint, value, where)


def to_json_value(value: Any) -> Any:
    """`value` (records, or lists and objects of them) as plain JSON values."""
    return _plain(value)


def unknown_keys_in(value: Any, where: str) -> list[str]:
    """Every key in `value` (a record, or a list or object of them) that its records do not declare."""
    return _unknown(value, where)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(value: Any) -> Any:
    """A record, list or object of records as plain JSON values."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Record:
    """A dataclass read from and written to a JSON object (see the module docstring)."""

    _extras: ClassVar[dict[str, Any]] = {}  # per instance once read: the keys the record does not declare
    _absent: ClassVar[frozenset[str]] = frozenset()  # per instance once read: defaulted fields the file left out

    @classmethod
    def from_dict(cls: type[R], data: Any, where: str | None = None) -> R:
        """The record in `data` (a JSON object); `where` names it in errors (a file and a path in it)."""
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise SoftPromptError(f"{where}: expected an object, got {_describe(data)}")
        hints = _hints(cls)
        values, absent = {}, set()
        declared = dataclasses.fields(cls)  # type: ignore[arg-type]
        for f in declared:
            key = _json_key(f)
            if key not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise SoftPromptError(f"{where}: no field {key!r} (found {sorted(data)})")
                absent.add(f.name)
                continue
            values[f.name] = _convert(hints[f.name], data[key], f"{where}.{key}")
        record = cls(**values)
        known = {_json_key(f) for f in declared}
        extras = {k: v for k, v in data.items() if k not in known}
        if extras:
            object.__setattr__(record, "_extras", extras)
        if absent:
            object.__setattr__(record, "_absent", frozenset(absent))
        return record

    @classmethod
    def from_json(cls: type[R], data: Any, where: str | None = None) -> R:
        """`from_dict` under the name the analyses' self-checks use."""
        return cls.from_dict(data, where)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON object: declared fields in order, then the keys it was read with but does not declare."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and (f.metadata.get(_OMIT) or f.name in self._absent):
                continue
            out[_json_key(f)] = _plain(value)
        for k, v in self._extras.items():
            out.setdefault(k, v)
        return out

    def present(self, name: str) -> bool:
        """Whether field `name` was in the file (or the record was built, not read): a default is not a value."""
        return name not in self._absent

    def unknown_keys(self, where: str = "") -> list[str]:
        """Every key, here and in nested records, that the records do not declare (`where.key` paths)."""
        out = [f"{where}.{k}" if where else k for k in self._extras]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out += _unknown(getattr(self, f.name), f"{where}.{_json_key(f)}" if where else _json_key(f))
        return out


def _unknown(value: Any, where: str) -> list[str]:
    if isinstance(value, Record):
        return value.unknown_keys(where)
    if isinstance(value, list):
        return [k for i, v in enumerate(value) for k in _unknown(v, f"{where}[{i}]")]
    if isinstance(value, dict):
        return [k for name, v in value.items() for k in _unknown(v, f"{where}.{name}")]
    return []


class Artifact(Record):
    """A record that is a whole JSON file, with its schema version (see the module docstring)."""

    SCHEMA_VERSION: ClassVar[int] = 1

    @classmethod
    def from_dict(cls: type[R], data: Any, where: str | None = None) -> R:
        where = where or cls.__name__
        if isinstance(data, dict) and SCHEMA_KEY in data:
            version = data[SCHEMA_KEY]
            newest = cls.SCHEMA_VERSION  # type: ignore[attr-defined]
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise SoftPromptError(f"{where}.{SCHEMA_KEY}: expected an integer, got {_describe(version)}")
            if version > newest:
                raise SoftPromptError(
                    f"{where}: written by a newer softprompt ({cls.__name__} schema {version}; this one reads up to "
                    f"{newest}): upgrade softprompt to read it"
                )
            data = cls.upgrade({k: v for k, v in data.items() if k != SCHEMA_KEY}, version)  # type: ignore[attr-defined]
        elif isinstance(data, dict):
            data = cls.upgrade(data, 0)  # type: ignore[attr-defined]
        return super().from_dict(data, where)  # type: ignore[misc]

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """`data` of schema `version` (0: written before versions were recorded) in this schema's layout."""
        return data

    def to_dict(self) -> dict[str, Any]:
        return {SCHEMA_KEY: self.SCHEMA_VERSION, **super().to_dict()}


class HasFigures:
    """An analysis record with figures: their paths by name (an analysis draws the ones its data allow)."""

    figures: dict[str, str]

    def figure(self, name: str) -> str | None:
        """The path of figure `name`, or None when the analysis did not draw it."""
        return self.figures.get(name)
