"""Typed configuration from one dataclass: string coercion by type hints, per-field checks, argparse flags.

A config class declares each option once, with `option(default, help, check=..., choices=...)`. From that field
and its type hint come: the conversion of strings from a command line, `--model_args` or YAML (`coerce`), the
range check (`check_fields`), the command-line flag (`add_arguments`), and the documentation (`describe`). So a new
option is one field, one check and one doc row, and the entry points cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Callable, Mapping

from .errors import ConfigError, EMDMError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("none", "null", "")

Check = Callable[[Any], "str | None"]  # value -> problem (what is wrong and what to pass instead), or None


def option(default: Any, help: str, *, check: Check | None = None, choices: tuple[str, ...] | None = None,
           group: str = "", flag: bool = True, **metadata: Any) -> Any:
    """A dataclass field that carries its help text, range check, choices and argparse group."""
    kwargs: dict[str, Any] = {"metadata": {"help": help, "check": check, "choices": choices, "group": group,
                                           "flag": flag, **metadata}}
    if isinstance(default, (dict, list, set)):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
    else:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


# --- checks --------------------------------------------------------------------------------------------------


def at_least(low: float, hint: str = "") -> Check:
    """Check: value >= low."""
    return lambda v: None if v >= low else f"must be >= {low}{hint}"


def greater_than(low: float, hint: str = "") -> Check:
    """Check: value > low."""
    return lambda v: None if v > low else f"must be > {low}{hint}"


def in_range(low: float, high: float, low_open: bool = False, high_open: bool = False, hint: str = "") -> Check:
    """Check: low <= value <= high (either end open when asked)."""
    def check(v: float) -> str | None:
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        return None if ok else f"must be in {lo}{low}, {high}{hi}{hint}"

    return check


# --- type hints ----------------------------------------------------------------------------------------------


def base_type(hint: Any) -> tuple[Any, bool]:
    """(the non-None type of a hint, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        non_none = [a for a in args if a is not type(None)]
        return (non_none[0] if len(non_none) == 1 else typing.Union[tuple(non_none)]), len(non_none) < len(args)
    return hint, False


def type_name(hint: Any) -> str:
    """A short readable name of a type hint."""
    base, optional = base_type(hint)
    name = getattr(base, "__name__", None) or str(base).replace("typing.", "")
    return f"{name} or None" if optional else name


def parse_mapping(text: str, what: str = "option") -> dict[str, str]:
    """`k=v,k=v` -> dict (raise ConfigError on an item without `=`)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {text!r}: expected key=value[,key=value...]; got {item!r}")
        out[key.strip()] = value.strip()
    return out


def coerce(value: Any, hint: Any, name: str, error: type[Exception] = ConfigError) -> Any:
    """Convert `value` (often a string) to the type `hint`; raise `error` with a one-line message."""
    base, optional = base_type(hint)
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE and base is not str):
        if optional:
            return None
        raise error(f"{name} needs a value ({type_name(hint)})")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            low = str(value).strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            if isinstance(value, str) and any(c in value for c in ".eE") and not value.lower().startswith("0x"):
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise error(f"{name}={value!r} is not a finite number; give a finite value")
            return out
        if base is str:
            return str(value)
        if typing.get_origin(base) is tuple:  # tuple[int, ...] etc.: "1,2,3" or a sequence
            item = typing.get_args(base)[0]
            parts = value if isinstance(value, (list, tuple)) else [x for x in str(value).split(",") if x.strip()]
            return tuple(coerce(x.strip() if isinstance(x, str) else x, item, name, error) for x in parts)
        if typing.get_origin(base) in (dict, Mapping) or base in (dict, Mapping):
            if isinstance(value, Mapping):
                return dict(value)
            return parse_mapping(str(value), name)
        return value
    except EMDMError:
        raise
    except (TypeError, ValueError):
        raise error(f"{name}={value!r} is not a valid {type_name(hint)}") from None


# --- dataclass configs ---------------------------------------------------------------------------------------


def fields(cls: type) -> list[dataclasses.Field]:
    """The dataclass fields of `cls` that are options (everything declared with `option`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass."""
    return typing.get_type_hints(cls)


def field_problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` for field `f` (a non-finite float, choices, then its check), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number; give a finite value"
    choices = f.metadata.get("choices")
    if choices and value is not None and value not in choices:
        return f"is unknown; use one of {', '.join(map(str, choices))}"
    check = f.metadata.get("check")
    if check is not None and value is not None:
        return check(value)
    return None


def problem_message(label: str, value: Any, problem: str) -> str:
    """One line: `steps must be >= 1 (got 0)`, or `greedy='maybe' is unknown; ...` for problems that start with
    `is ` (`--flag 'maybe' is unknown; ...` for command-line labels)."""
    if problem.startswith("is "):
        return f"{label} {value!r} {problem}" if label.startswith("--") else f"{label}={value!r} {problem}"
    return f"{label} {with_value(problem, value)}"


def check_fields(obj: Any, error: type[Exception] = ConfigError, label: Callable[[str], str] = str) -> None:
    """Run every field's choices and check; raise `error` naming the option (`label(name)`)."""
    for f in fields(type(obj)):
        value = getattr(obj, f.name)
        problem = field_problem(f, value)
        if problem:
            raise error(problem_message(label(f.name), value, problem))


def with_value(problem: str, value: Any) -> str:
    """`must be >= 1; hint` -> `must be >= 1 (got 0); hint` (unless the problem already shows the value)."""
    if "(got" in problem:
        return problem
    head, sep, tail = problem.partition(";")
    return f"{head} (got {value!r}){sep}{tail}"


def build(cls: type, values: Mapping[str, Any], *, origin: str = "options", error: type[Exception] = ConfigError,
          aliases: Mapping[str, str] | None = None) -> Any:
    """An instance of dataclass `cls` from a mapping of (possibly string) values; unknown keys are an error."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    type_hints = hints(cls)
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        key = (aliases or {}).get(key, key)
        if key not in known:
            close = [k for k in known if k.startswith(key[:4])] if len(key) >= 4 else []
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise error(f"unknown option {raw_key!r} in {origin}{hint}; options: {', '.join(sorted(known))}")
        kwargs[key] = coerce(value, type_hints[key], key, error)
    return cls(**kwargs)


def flag_name(name: str) -> str:
    """`learning_rate` -> `--learning-rate`."""
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (),
                  grouped: bool = True, special: Mapping[str, Callable[[Any, str, str], None]] | None = None) -> None:
    """One flag per option field of `cls` (values parsed later by `build`; absent flags are left out)."""
    type_hints = hints(cls)
    groups: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in exclude or not f.metadata.get("flag", True):
            continue
        group_name = f.metadata.get("group") or ""
        target = parser
        if grouped and group_name:
            target = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = (f.metadata["help"] + ("" if default in (None, {}, []) else f" [default: {default}]"))
        help_text = help_text.replace("%", "%%")
        flag = flag_name(f.name)
        if special and f.name in special:
            special[f.name](target, flag, help_text)
            continue
        base, _optional = base_type(type_hints[f.name])
        if base is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "type": str}
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            else:
                kwargs["metavar"] = f.name.upper()
            target.add_argument(flag, **kwargs)


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, help) of every option field: the rows of a documentation table."""
    rows = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        rows.append((f.name, repr(default) if isinstance(default, str) else str(default), f.metadata["help"]))
    return rows
