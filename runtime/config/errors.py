"""Turning pydantic's validation errors into lines a person can act on.

Each problem becomes one line: the key path as the user wrote it (``assets[0].max_kw``), what is wrong,
the value given and what was expected; a misspelled key gets the nearest known key as a suggestion.
:class:`~runtime.core.errors.ConfigFileError` carries all of a file's problems at once.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from runtime.core.errors import ConfigFileError

__all__ = ["ConfigFileError", "describe_errors"]

#: pydantic error type -> what was expected, in words
_EXPECTED = {
    "float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
    "int_from_float": "a whole number", "int_parsing": "a whole number", "string_type": "text (a quoted string)",
    "bool_type": "true or false", "list_type": "a list", "dict_type": "a table", "model_type": "a table",
    "model_attributes_type": "a table", "finite_number": "a finite number",
}
_RELATIVE = re.compile(r"^[A-Za-z_][\w.\[\]]*: ")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation may hold (through Optional, Annotated, list, Union)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        found: list[Any] = []
        for arg in typing.get_args(annotation):
            found += _unwrap(arg)
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _fields_at(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Known keys of the table at ``loc`` (the location of an unknown key's parent)."""
    models: list[Any] = [root]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[Any] = []
        for model in models:
            if part in model.model_fields:
                nxt += _unwrap(model.model_fields[part].annotation)
            elif model.model_config.get("title") == part or getattr(model, "__name__", "") == part:
                nxt.append(model)
        tagged = [m for m in models if _tag_of(m) == part]
        models = tagged or nxt or models
    names: list[str] = []
    for model in models:
        names += [n for n in model.model_fields if n not in names]
    return names


def _tag_of(model: Any) -> Any:
    field = getattr(model, "model_fields", {}).get("kind")
    args = typing.get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 else None


def _is_noise(part: Any, prev: Any) -> bool:
    """Location parts pydantic adds for unions (a discriminator tag, a member type name)."""
    if not isinstance(part, str):
        return False
    if part in ("charger", "battery") and isinstance(prev, int):
        return True
    return bool(re.match(r"^(literal\[|dict\[|list\[|function-|nullable|json-or-python|str$|int$|float$|bool$)", part))


def _path(loc: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    text, kept, prev = "", [], None
    for part in loc:
        if _is_noise(part, prev):
            prev = part
            continue
        kept.append(part)
        text += f"[{part}]" if isinstance(part, int) else (("." if text else "") + str(part))
        prev = part
    return text, tuple(kept)


def describe_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem (duplicates from union members merged), in the file's order."""
    lines: list[str] = []
    seen: set[str] = set()
    for err in exc.errors():
        path, loc = _path(tuple(err["loc"]))
        kind, value = err["type"], err.get("input")
        msg = str(err["msg"])
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            known = _fields_at(root, loc[:-1])
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else (f"; known keys: {', '.join(known)}" if known else "")
            line = f"{path}: unknown key (value {_short(value)}){hint}"
        elif kind == "missing":
            line = f"{path}: missing; it is required"
        elif kind in _EXPECTED:
            line = f"{path}: got {_short(value)}, expected {_EXPECTED[kind]}"
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            bound = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
            limit = (err.get("ctx") or {}).get({"greater_than_equal": "ge", "greater_than": "gt",
                                                "less_than_equal": "le", "less_than": "lt"}[kind])
            line = f"{path}: got {_short(value)}, expected a value {bound} {limit}"
        elif kind == "literal_error":
            line = f"{path}: got {_short(value)}, expected {msg.removeprefix('Input should be ')}"
        elif kind == "union_tag_invalid":
            tags = (err.get("ctx") or {}).get("expected_tags", "")
            line = f"{path}.kind: got {_short((err.get('ctx') or {}).get('tag'))}, expected one of {tags}"
        elif kind == "union_tag_not_found":
            line = f"{path}.kind: missing; expected 'charger' or 'battery'"
        elif kind in ("string_too_short", "too_short"):
            line = f"{path}: got {_short(value)}, expected {msg.removeprefix('Input should ').removeprefix('have ')}"
        elif kind == "string_pattern_mismatch":
            line = f"{path}: got {_short(value)}, which is not allowed here ({msg.removeprefix('String should ')})"
        elif kind == "value_error":
            text = msg.removeprefix("Value error, ")
            if text.startswith("["):
                line = f"{path}{text}"
            elif path and _RELATIVE.match(text):
                line = f"{path}.{text}"
            else:
                line = f"{path}: {text}" if path else text
        else:
            line = f"{path}: {msg} (got {_short(value)})"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return lines
