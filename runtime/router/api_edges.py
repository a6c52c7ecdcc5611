"""REST: the edges a caller may view, online or not, with what they last published.

``GET /api/v1/edges`` lists each edge the token may view: ``online`` (and the router ``instance`` holding it,
across a fleet), ``last_seen``, ``connected_at``, ``software``, ``capabilities``, the latest ``telemetry`` per
device and the latest ``site_state`` (with ``site_state_at``, when it arrived). ``GET /api/v1/edges/{edge_id}``
is one of them. ``GET /api/v1/edges/{edge_id}/telemetry[?since=...]`` is the recent telemetry the operator
page charts, down-sampled (:class:`~runtime.router.telemetry.TelemetryHistory`): at most window / bucket
points per device and value, whatever the edge sends.
"""

from __future__ import annotations

from typing import Any

import time

from fastapi import APIRouter, Depends, Request

from .auth import Principal
from .deps import ApiError, principal, router_state
from .hub import Refusal
from .state import RouterState
from .telemetry import TelemetryHistory

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/edges", tags=["edges"])


async def _listing(state: RouterState, who: Principal) -> list[dict[str, Any]]:
    hub = state.hub
    known = sorted(set(await hub.edges.known()) | set(hub.registry.ids()))
    owners = await hub.fleet.owners(known)
    return await hub.edges.listing(who.viewable(), owners)


@router.get("", summary="Edges: online, last seen, capabilities, latest telemetry and site state")
async def list_edges(who: Principal = Depends(principal),
                     state: RouterState = Depends(router_state)) -> dict[str, Any]:
    return {"edges": await _listing(state, who)}


@router.get("/{edge_id}", summary="One edge")
async def get_edge(edge_id: str, who: Principal = Depends(principal),
                   state: RouterState = Depends(router_state)) -> dict[str, Any]:
    if not who.may_view(edge_id):
        raise ApiError(state.hub.refused(who, Refusal("forbidden", f"{who.subject} may not view edge {edge_id!r}",
                                                      403), edge_id=edge_id))
    for info in await _listing(state, who):
        if info["edge_id"] == edge_id:
            return info
    raise ApiError(Refusal("not_found", f"edge {edge_id!r} has never connected", 404))


def telemetry_history(request: Request) -> TelemetryHistory:
    return request.app.state.telemetry  # type: ignore[no-any-return]


@router.get("/{edge_id}/telemetry", summary="Recent telemetry of one edge, down-sampled (the page's charts)")
async def get_telemetry(edge_id: str, since: str | None = None, who: Principal = Depends(principal),
                        state: RouterState = Depends(router_state),
                        history: TelemetryHistory = Depends(telemetry_history)) -> dict[str, Any]:
    if not who.may_view(edge_id):
        raise ApiError(state.hub.refused(who, Refusal("forbidden", f"{who.subject} may not view edge {edge_id!r}",
                                                      403), edge_id=edge_id))
    start = None
    if since is not None:
        from .audit import parse_time
        try:
            start = parse_time(since, time.time())
        except ValueError as exc:
            raise ApiError(Refusal("invalid", f"since: {exc}", 422)) from None
    return {"edge_id": edge_id, **history.query(edge_id, start)}
