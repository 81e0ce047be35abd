"""One typed parser for recipes and model configs: JSON object -> `@dataclass`.

Why: a recipe is hand-written JSON, and a typo (`"unet_channel"`), a quoted number
(`"steps": "100"`) or a missing key should stop a run before it starts, with one
line that names the fix, never a traceback from deep inside a model constructor
or a silent default. `parse_config` checks every key and value against the
dataclass's annotations, converts what JSON cannot express (lists -> tuples,
ints -> floats) and raises `ConfigError` with a message meant to be printed as is.

    cfg = parse_config(TrainConfig, json.loads(text), where="configs/shapes-ldm.json")

Values already of the right Python type pass through unchanged, so
`parse_config(C, dataclasses.asdict(C()))` == `C()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "parse_config"]


class ConfigError(ValueError):
    """Bad config input; the message is one line, meant to be printed as is."""


def parse_config(cls, raw: dict, where: str = "config"):
    """Build dataclass `cls` from a JSON object, or raise ConfigError with one line naming the fix."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a JSON object, got {_given(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(k for k in raw if k not in fields)
    if unknown:
        key, valid = unknown[0], sorted(fields)
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
        raise ConfigError(f"{where}: unknown key {key!r}; {hint}")
    for name, f in fields.items():
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key {name!r}")
    hints = get_type_hints(cls)
    return cls(**{k: _convert(v, hints.get(k, Any), where, k) for k, v in raw.items()})


def _convert(value, tp, where: str, key: str, expected: str | None = None):
    """`value` as type `tp`, or ConfigError; `expected` overrides the description of `tp` in the message."""
    origin, args = get_origin(tp), get_args(tp)

    def bad(got=value):
        return ConfigError(f"{where}: {key!r} must be {expected or _describe(tp)}, got {_given(got)}")

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:  # Optional[X]: X's own errors, but say null is allowed too
            return _convert(value, members[0], where, key, expected or _describe(tp))
        for member in members:
            try:
                return _convert(value, member, where, key)
            except ConfigError:
                pass
        raise bad()
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            # Every integer of a recipe or model config is a size, a count, a step or a seed: never negative
            # (a negative width builds a model that fails only when it first runs).
            if value < 0:
                raise ConfigError(f"{where}: '{key}' must not be negative, got {value}")
            return value
        raise bad()
    if tp is float:
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if tp in (str, bool):
        if isinstance(value, tp):
            return value
        raise bad()
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        container = origin or tp
        if not args:
            return value if isinstance(value, container) else container(value)
        if container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{where}: {key!r} must be {_describe(tp)}, got a list of {len(value)}")
            item_types = args
        else:
            item_types = [args[0]] * len(value)
        items = [_convert(v, t, where, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))]
        return container(items)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad()
        if len(args) != 2:
            return value
        return {k: _convert(v, args[1], where, f"{key}[{k!r}]") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad()
        return parse_config(tp, value, f"{where}.{key}")
    return value  # Any, Path, other classes: accepted as is


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "booleans"), dict: ("a JSON object", "JSON objects"),
          list: ("a list", "lists"), tuple: ("a list", "lists")}


def _describe(tp, plural: bool = False) -> str:
    """'an integer', 'a list of integers', 'one of 'a', 'b'', 'a number or null'..."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a, plural) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    if origin in (list, tuple) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
        return ("lists" if plural else "a list") + " of " + _describe(args[0], plural=True)
    if origin is dict:
        return "JSON objects" if plural else "a JSON object"
    if tp in _NAMES:
        return _NAMES[tp][plural]
    if dataclasses.is_dataclass(tp):
        return "JSON objects" if plural else "a JSON object"
    return getattr(tp, "__name__", str(tp))


def _show(value) -> str:
    """A short one-line rendering of a config value: strings quoted, the rest as JSON."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:37] + "..."


def _given(value) -> str:
    """What was given, for an error message: "'100' (a string)", '3.5 (a number)', 'a list'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{_show(value)} (a boolean)"
    if isinstance(value, str):
        return f"{_show(value)} (a string)"
    if isinstance(value, (int, float)):
        return f"{_show(value)} (a number)"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a JSON object"
    return f"{_show(value)} (a {type(value).__name__})"
