"""Typed views of JSON: a dataclass filled from parsed JSON, every field's type checked.

A file a user may have edited (``summary.json``) is read through :func:`from_json` so
that a field of the wrong type is one clear line naming the field
(``summary.json.settings.quick must be a boolean, got 'yes'``), never a traceback or a
blank in a report. Supported field types: ``str``, ``int``, ``float``, ``bool``, ``None``,
unions of those (``float | None``), ``list[T]``, ``dict[str, T]``, ``Any`` and nested
dataclasses. A field named differently in JSON (``class`` is a Python keyword) carries
``metadata={"json": "class"}``; a field with a default may be absent.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from .errors import SegscopeError

T = TypeVar("T")

_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
          type(None): "null", list: "a list", dict: "an object"}


def from_json(cls: type[T], data: Any, where: str) -> T:
    """``cls`` (a dataclass) filled from ``data``; a :class:`SegscopeError` naming the
    field (``where`` + its path) when a field is missing or has the wrong type."""
    return _convert(cls, data, where)


def json_name(f: dataclasses.Field) -> str:
    """The key of dataclass field ``f`` in JSON."""
    return f.metadata.get("json", f.name)


def _describe(tp: Any) -> str:
    if tp in _NAMES:
        return _NAMES[tp]
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "an object"
    return str(tp)


def _fail(where: str, tp: Any, value: Any) -> SegscopeError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return SegscopeError(f"{where} must be {_describe(tp)}, got {shown}")


def _convert(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _fail(where, tp, value)
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            key = json_name(f)
            if key not in value:
                if f.default is not dataclasses.MISSING or \
                        f.default_factory is not dataclasses.MISSING:
                    continue
                raise SegscopeError(f"{where} has no {key!r}")
            kwargs[f.name] = _convert(hints[f.name], value[key], f"{where}.{key}")
        return tp(**kwargs)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(arg, value, where)
            except SegscopeError:
                continue
        raise _fail(where, tp, value)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(where, tp, value)
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, tp, value)
        _, item = typing.get_args(tp)
        return {str(k): _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise _fail(where, tp, value)
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, tp, value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, tp, value)
        return value
    if tp is float:
        # JSON has one number type; NaN is written as NaN by json.dumps and read back.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(where, tp, value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, tp, value)
        return value
    raise TypeError(f"unsupported field type {tp!r} at {where}")  # a bug, not bad input


def to_json(obj: Any) -> Any:
    """A dataclass (nested in lists and dicts) as plain JSON values, keys in field order
    and named as in JSON (the inverse of :func:`from_json`)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {json_name(f): to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj
