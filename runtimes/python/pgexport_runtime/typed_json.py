"""Typed reads of manifest JSON: each returns the value or raises FieldError naming the field.

A manifest is data from outside the runtime. Every field the runtime, `inspect` or `bench` reads goes
through these functions, so that a missing field, a wrong type, a NaN or an absurd size is one BundleError
at load, before any file is opened, instead of a KeyError or TypeError somewhere later.
"""

from __future__ import annotations

import math
import re

from pgexport_runtime.errors import BundleError

MAX_LIST = 4096  # longest list a manifest field may hold (a 3B decoder lists 58 inputs)
MAX_TEXT = 4096  # longest string
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}")


class FieldError(BundleError):
    """A manifest field that is missing, of the wrong type or out of range (load_manifest adds the path)."""


def _get(d: dict, key: str, where: str, optional: bool):
    """The value, or None for an optional field that is absent or null (a required null fails its type check)."""
    if not isinstance(d, dict):
        raise FieldError(f"{where} must be an object, not {_kind(d)}")
    if key not in d and not optional:
        raise FieldError(f"{where}.{key} is missing")
    return d.get(key)


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def section(d: dict, key: str, where: str, optional: bool = False) -> dict | None:
    """A nested object; None when optional and absent or null."""
    value = _get(d, key, where, optional)
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise FieldError(f"{where}.{key} must be an object, not {_kind(value)}")
    return value


def text(d: dict, key: str, where: str, optional: bool = False, choices: tuple[str, ...] = ()) -> str | None:
    value = _get(d, key, where, optional)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise FieldError(f"{where}.{key} must be a non-empty string, not {_kind(value)}")
    if choices and value not in choices:
        raise FieldError(f"{where}.{key} is {value!r}; this runtime knows {', '.join(choices)}")
    return value


def integer(d: dict, key: str, where: str, lo: int, hi: int, optional: bool = False) -> int | None:
    value = _get(d, key, where, optional)
    if value is None and optional:
        return None
    return _int(value, f"{where}.{key}", lo, hi)


def _int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):  # JSON true is a Python int: refuse it
        raise FieldError(f"{name} must be an integer, not {_kind(value)}")
    if not lo <= value <= hi:
        raise FieldError(f"{name} is {value}, outside {lo}..{hi}")
    return value


def number(d: dict, key: str, where: str, lo: float, hi: float, optional: bool = False,
           closed: bool = False) -> float | None:
    """A finite number in (lo, hi], or [lo, hi] when closed. Open by default: the model's floats are scales,
    epsilons and sizes, for which the lower end (0) is as wrong as a negative value."""
    value = _get(d, key, where, optional)
    if value is None and optional:
        return None
    return _number(value, f"{where}.{key}", lo, hi, closed)


def _number(value, name: str, lo: float, hi: float, closed: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(f"{name} must be a number, not {_kind(value)}")
    above = lo <= value if closed else lo < value
    if not math.isfinite(value) or not above or not value <= hi:  # Python's json reads NaN and Infinity
        raise FieldError(f"{name} is {value}, outside {'[' if closed else '('}{lo}, {hi}]")
    return float(value)


def flag(d: dict, key: str, where: str, optional: bool = False) -> bool | None:
    value = _get(d, key, where, optional)
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise FieldError(f"{where}.{key} must be true or false, not {_kind(value)}")
    return value


def _items(d: dict, key: str, where: str, optional: bool, max_len: int) -> list | None:
    value = _get(d, key, where, optional)
    if value is None and optional:
        return None
    if not isinstance(value, list) or len(value) > max_len:
        raise FieldError(f"{where}.{key} must be a list of at most {max_len} items, not {_kind(value)}")
    return value


def texts(d: dict, key: str, where: str, optional: bool = False, max_len: int = MAX_LIST) -> tuple[str, ...]:
    items = _items(d, key, where, optional, max_len) or []
    for v in items:
        if not isinstance(v, str) or not v or len(v) > MAX_TEXT:
            raise FieldError(f"{where}.{key} must hold non-empty strings, not {_kind(v)}")
    return tuple(items)


def integers(d: dict, key: str, where: str, lo: int, hi: int, optional: bool = False,
             max_len: int = MAX_LIST) -> tuple[int, ...]:
    return tuple(_int(v, f"{where}.{key}[]", lo, hi) for v in _items(d, key, where, optional, max_len) or [])


def objects(d: dict, key: str, where: str, optional: bool = False, max_len: int = MAX_LIST) -> tuple[dict, ...]:
    items = _items(d, key, where, optional, max_len) or []
    for i, v in enumerate(items):
        if not isinstance(v, dict):
            raise FieldError(f"{where}.{key}[{i}] must be an object, not {_kind(v)}")
    return tuple(items)


def numbers(d: dict, key: str, where: str, lo: float, hi: float, length: int) -> tuple[float, ...]:
    items = _items(d, key, where, False, length)
    if len(items) != length:
        raise FieldError(f"{where}.{key} must hold {length} numbers, not {len(items)}")
    return tuple(_number(v, f"{where}.{key}[]", lo, hi) for v in items)


def flags(d: dict, key: str, where: str, length: int) -> tuple[bool, ...]:
    items = _items(d, key, where, False, length)
    if len(items) != length or not all(isinstance(v, bool) for v in items):
        raise FieldError(f"{where}.{key} must hold {length} true/false values")
    return tuple(items)


def file_name(value, where: str) -> str:
    """A plain file name inside the bundle: no directory part, no '..', not absolute, no odd characters.

    The bundle's files are the build's own (`decoder.onnx.data`, `tokenizer.json`); anything else in a
    manifest is a manifest written to make the runtime read or hash a file outside the bundle.
    """
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value):  # so never "." or ".."
        raise FieldError(f"{where}: {str(value)[:80]!r} is not a plain file name inside the bundle")
    return value
