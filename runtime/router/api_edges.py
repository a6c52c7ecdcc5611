"""REST: the edges a caller may view, online or not, with what they last published.

``GET /api/v1/edges`` lists each edge the token may view: ``online`` (and the router ``instance`` holding it,
across a fleet), ``last_seen``, ``connected_at``, ``software``, ``capabilities``, the latest ``telemetry`` per
device and the latest ``site_state``. ``GET /api/v1/edges/{edge_id}`` is one of them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from .auth import Principal
from .deps import ApiError, principal, router_state
from .hub import Refusal
from .state import RouterState

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
