"""What the site process's components read about a :class:`~runtime.site.Site` that its public API
does not say yet: the kind of each asset, where its journal is, its core actors' refs and whether its
start-up health round finished.

Every such read is here, in one place, each behind a public accessor when the Site has one (so that
this module shrinks to nothing once the Site exports them) and otherwise falling back to the Site's
private attribute of the same meaning. All of them are plain attribute reads: cheap, thread-safe
enough for a metrics scrape (a torn read of a dict being replaced is not possible in CPython), and
they never ask an actor, so they may run on the I/O loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.site import Site

__all__ = ["asset_kinds", "journal_files", "core_refs", "start_complete"]

#: The journal files a site writes in its journal directory.
JOURNAL_FILES = ("commands.jnl", "events.jnl")


def asset_kinds(site: Site) -> dict[str, str]:
    """{asset_id: "charger" | "battery"} for every asset of the site (fixed for its lifetime)."""
    specs = getattr(site, "specs", None)
    if specs is None:
        specs = getattr(site, "_specs", {})
    if callable(specs):
        specs = specs()
    return {asset_id: spec.kind for asset_id, spec in dict(specs).items()}


def journal_files(site: Site) -> list[Path]:
    """The journal files of the site (they may not exist yet); [] for a site without a journal."""
    directory = getattr(site, "journal_dir", None)
    if directory is None:
        directory = getattr(site, "_journal_dir", None)
    if directory is None:
        return []
    return [Path(directory) / name for name in JOURNAL_FILES]


def core_refs(site: Site) -> dict[str, Any]:
    """{"dispatcher" | "supervisor" | "events": actor ref} of the running site ({} when stopped)."""
    refs = getattr(site, "_refs", None)
    return dict(refs) if refs else {}


def start_complete(site: Site) -> bool | None:
    """Whether every asset reported its health during :meth:`Site.start` (the dispatcher's ready
    signal): True/False when the Site says so, None when it has no way to (then a started site is
    taken as ready, since ``start()`` waits for that signal before it returns)."""
    ready = getattr(site, "ready", None)
    if ready is None or callable(ready):
        return None
    return bool(ready)
