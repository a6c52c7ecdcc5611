"""What the site process's components read about a :class:`~runtime.site.Site` besides asking its
actors: the kind of each asset, its core actors' inbox depths and whether its
start-up health round finished. Every one is a plain read of the Site's public API that never asks
an actor, so it may run on the I/O loop (a metrics scrape).
"""

from __future__ import annotations

from runtime.site import Site

__all__ = ["asset_kinds", "inbox_depths", "start_complete"]

def asset_kinds(site: Site) -> dict[str, str]:
    """{asset_id: "charger" | "battery"} for every asset of the site (fixed for its lifetime)."""
    return {asset_id: spec.kind for asset_id, spec in site.specs.items()}


def inbox_depths(site: Site) -> dict[str, int]:
    """Messages waiting per core actor ({} when stopped)."""
    return site.inbox_depths()


def start_complete(site: Site) -> bool:
    """Whether every asset reported its health during :meth:`Site.start`."""
    return site.ready
