"""Reading a configuration file: TOML -> validated model, every problem reported at once.

:func:`read_toml` checks the path (missing, a folder, not valid TOML: each a one-line problem) and
:func:`validate` runs a model over the table, turning pydantic's errors into the lines of one
:class:`~runtime.core.errors.ConfigFileError`. :func:`load_site_config` does both for a site file and
resolves its relative paths against the file's folder.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from runtime.core.errors import ConfigFileError

from .errors import describe_errors
from .models import SiteConfig, duplicate_ids

__all__ = ["read_toml", "validate", "load_site_config"]

M = TypeVar("M", bound=BaseModel)


def read_toml(path: str | os.PathLike[str], error: type[ConfigFileError] = ConfigFileError) -> dict[str, Any]:
    """The TOML table in ``path``; ``error`` (one line) when it is missing, a folder or not TOML."""
    p = Path(path)
    if p.is_dir():
        raise error(str(p), ["is a folder, not a file"])
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(str(p), ["no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(str(p), [f"cannot be read: {exc}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(str(p), [f"not valid TOML: {exc}"]) from None


def raw_problems(data: dict[str, Any]) -> list[str]:
    """Problems found on the raw table that the models can only see once everything else is valid
    (duplicate asset ids), so that they are reported together with the rest."""
    assets = data.get("assets")
    if not isinstance(assets, list):
        return []
    ids = [a.get("id") for a in assets if isinstance(a, dict)]
    return [f"assets{p}" for p in duplicate_ids(ids)]


def validate(model: type[M], data: dict[str, Any], path: str | os.PathLike[str],
             error: type[ConfigFileError] = ConfigFileError) -> M:
    """``model`` built from ``data``; ``error`` with one line per problem otherwise (all of them)."""
    early = raw_problems(data)
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        lines = describe_errors(exc, model)
        raise error(str(path), lines + [p for p in early if p not in lines]) from None
    if early:  # pragma: no cover - the model's own validator catches these when everything else is valid
        raise error(str(path), early)
    return result


def _resolve(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def load_site_config(path: str | os.PathLike[str]) -> SiteConfig:
    """Read and validate a site configuration file (see :mod:`runtime.config.models`).

    Relative paths in it (``journal.dir``, ``sources.folder.path``) are resolved against the file's
    folder. Raises :class:`~runtime.core.errors.ConfigFileError` listing every problem.
    """
    p = Path(path)
    config = validate(SiteConfig, read_toml(p), p)
    base = p.resolve().parent
    journal = config.journal.model_copy(update={"dir": _resolve(base, config.journal.dir)})
    sources = config.sources
    if sources.folder is not None:
        sources = sources.model_copy(update={"folder": sources.folder.model_copy(
            update={"path": _resolve(base, sources.folder.path)})})
    return config.model_copy(update={"journal": journal, "sources": sources})
