"""Schemas of plain config sections: dataclasses whose annotations give each key's type and range.

    @dataclasses.dataclass
    class TrainSection:
        max_steps: Annotated[int, Range(ge=1)] = 10000
        max_grad_norm: Annotated[float, Range(ge=0, note="0 disables clipping")] = 1.0
        mixed_precision: Literal["no", "bf16", "fp16"] = "no"

``schema_errors(values, TrainSection, "train")`` lists every unknown key, missing required key
(a field without default), wrong type and value out of range at once, each naming the key, the
value and what is allowed; ``schema_defaults(TrainSection)`` is the section's defaults as a plain
dict. Types: ``bool``, ``int`` (not a bool), ``float`` (finite; an int is accepted), ``str``,
``Literal[...]``, ``list[X]``, ``dict``, ``Any``, ``X | None`` and other unions, and nested schema
dataclasses; ``Annotated[X, Range(...)]`` adds bounds to a number.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number: ``ge <= x``, ``gt < x``, ``x <= le``, ``x < lt``; ``note`` explains a special value."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    note: str = ""

    def contains(self, x: float) -> bool:
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def describe(self) -> str:
        low = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}" if self.gt is not None else ""
        high = f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}" if self.lt is not None else ""
        text = " and ".join(part for part in (low, high) if part)
        return f"{text} ({self.note})" if self.note else text


def schema_defaults(schema: type) -> dict:
    """The defaults of ``schema``'s fields as a plain dict (nested schemas as dicts); required fields are left out."""
    out = {}
    for field in dataclasses.fields(schema):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            continue
        out[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def schema_errors(values: Any, schema: type, where: str = "", partial: bool = False) -> list[str]:
    """Every problem of the mapping ``values`` against the dataclass ``schema`` (empty when valid).

    ``where`` is the dotted key of ``values`` in its config ("" for the top level). ``partial``:
    only the keys present are checked (other keys are allowed, none is required).
    """
    section = where or "config"
    if not isinstance(values, Mapping):
        return [f"{section}: expected a mapping, got {type(values).__name__} {values!r}"]
    fields = {field.name: field for field in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema, include_extras=True)
    errors = []
    unknown = sorted(set(values) - set(fields))
    if unknown and not partial:
        errors.append(f"{section}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    for name, field in fields.items():
        key = f"{where}.{name}" if where else name
        if name in values:
            errors += _value_errors(values[name], hints[name], key)
        elif not partial and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            errors.append(f"{section}: the {'section' if not where else 'key'} {name!r} is required")
    return errors


def _value_errors(value: Any, annotation: Any, key: str) -> list[str]:
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return schema_errors(value, annotation, key)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        for arm in args:
            if dataclasses.is_dataclass(arm) and isinstance(value, Mapping):
                return schema_errors(value, arm, key)
        if any(_matches(value, arm) for arm in args):
            return []
    elif origin is list and isinstance(value, list):
        return [error for i, item in enumerate(value) for error in _value_errors(item, args[0], f"{key}[{i}]")]
    elif _matches(value, annotation):
        return []
    return [f"{key}={value!r} must be {describe(annotation)}"]


def _matches(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin is Annotated:
        bounds = [a for a in args[1:] if isinstance(a, Range)]
        return _matches(value, args[0]) and all(b.contains(value) for b in bounds)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in args)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arm) for arm in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value)
    if origin is dict or annotation is dict:
        return isinstance(value, Mapping)
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, Mapping) and not schema_errors(value, annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    raise TypeError(f"schema type {annotation!r} is not supported")


def describe(annotation: Any) -> str:
    """What a value of ``annotation`` is, in words (``an integer >= 1``, ``null or a number > 0``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return "any value"
    if annotation is type(None):
        return "null"
    if origin is Annotated:
        bounds = " and ".join(a.describe() for a in args[1:] if isinstance(a, Range))
        return f"{describe(args[0])} {bounds}".strip()
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arm) for arm in sorted(args, key=lambda arm: arm is not type(None)))
    if origin is list:
        return f"a list of ({describe(args[0])})"
    if origin is dict or annotation is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return names[annotation]
