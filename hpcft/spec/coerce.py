"""Per-value checks of the job description: a value against its field's type and metadata (``min``, ``max``,
``pattern``, choices), each problem with its dotted path. Used by ``spec.model``'s parser; reads no files."""

from __future__ import annotations

import re
import types
import typing
from types import MappingProxyType
from typing import Any, Literal


def coerce(value: Any, ftype: Any, path: str, meta: typing.Mapping, problems: list[str]) -> tuple[bool, Any]:
    """Check ``value`` against ``ftype`` and the field's metadata; record a problem if wrong."""
    origin, args = typing.get_origin(ftype), typing.get_args(ftype)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], path, meta, problems)
        for alternative in inner:  # e.g. int | Literal["auto"]: the first that takes the value
            ok, out = coerce(value, alternative, path, meta, [])
            if ok:
                return True, out
        problems.append(f"{path}: expected {' or '.join(_expected(a, meta) for a in inner)}, got {show(value)}")
        return False, None
    choices = args if origin is Literal else meta.get("choices")
    if choices is not None:
        if value in choices:
            return True, value
        problems.append(f"{path}: expected one of {', '.join(map(str, choices))}, got {show(value)}")
        return False, None
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str | int | float) for v in items):
            problems.append(f"{path}: expected a list of strings, got {show(value)}")
            return False, None
        out = tuple(str(v) for v in items)
        return _no_control(out, path, meta, problems), out
    if origin is dict:
        if not isinstance(value, typing.Mapping):
            problems.append(f"{path}: expected a mapping NAME: value, got {show(value)}")
            return False, None
        if any(v is None for v in value.values()):
            nulls = ", ".join(str(k) for k, v in value.items() if v is None)
            problems.append(f"{path}: {nulls}: no value (null) (HINT: quote an empty value as '')")
            return False, None
        out = MappingProxyType({str(k): _scalar_str(v) for k, v in value.items()})
        return _no_control((*out, *out.values()), path, meta, problems), out
    ok, out = _coerce_scalar(value, ftype, path, meta, problems)
    return (ok and (not isinstance(out, str) or _no_control((out,), path, meta, problems))), out


def _expected(ftype: Any, meta: typing.Mapping) -> str:
    """What a value of ``ftype`` looks like, for an error message."""
    if typing.get_origin(ftype) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(ftype))
    name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(ftype, str(ftype))
    return name + (f" of at least {meta['min']}" if "min" in meta else "")


def _coerce_scalar(value: Any, ftype: type, path: str, meta: typing.Mapping, problems: list[str]) -> tuple[bool, Any]:
    if ftype is bool:
        ok = isinstance(value, bool)
    elif ftype is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ftype is float:
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept what float() reads.
        value = _float_or_same(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        value = str(value) if ok else value
    if not ok:
        problems.append(f"{path}: expected {ftype.__name__}, got {show(value)}")
        return False, None
    if "min" in meta and value < meta["min"]:
        problems.append(f"{path}: must be at least {meta['min']}, got {value}")
        return False, None
    if "max" in meta and value > meta["max"]:
        problems.append(f"{path}: must be at most {meta['max']}, got {value}")
        return False, None
    if "pattern" in meta and not meta["pattern"].match(value):
        problems.append(f"{path}: expected {meta['expect']}, got {value!r}")
        return False, None
    return True, value


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _no_control(values: typing.Iterable[str], path: str, meta: typing.Mapping, problems: list[str]) -> bool:
    """True unless a value holds a control character (a newline would end an #SBATCH line or start a command)."""
    if meta.get("multiline"):
        return True
    bad = sorted({ch for v in values for ch in _CONTROL.findall(v)})
    if bad:
        problems.append(f"{path}: may not contain control characters ({', '.join(map(repr, bad))}): a newline would "
                        "end an #SBATCH line or start a shell command (HINT: remove it)")  # fmt: skip
    return not bad


def _float_or_same(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _scalar_str(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
