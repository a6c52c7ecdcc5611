"""REST for services that do not keep a socket: submit a command, read its state and history, cancel it.

``POST /api/v1/commands`` takes the command object itself (the seed's JSON works as it is) and answers 202
with ``{command_id, edge_id, seq, state, duplicate}`` once the command is durably queued (200 for a
duplicate of a known command); refusals answer ``{code, message, command_id, retry_after}`` with 401, 403,
409 (id reused for another command), 422 (invalid, or does not fit the edge) or 429 (with Retry-After).
``GET /api/v1/commands/{id}`` gives the record and its audit history; ``DELETE`` cancels it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse

from protocols.edge.wire import WireError, decode_command

from .audit import AuditQuery
from .auth import Principal
from .deps import ApiError, principal, router_state
from .hub import Refusal
from .state import RouterState

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/commands", tags=["commands"])

SEED_EXAMPLE = {"command_id": "cmd_12345", "command_type": "setpoint",
                "target": {"edge_id": "site1_edge_prod", "device_id": "bms_main", "channel": "SetActivePower"},
                "value": 50000, "unit": "W", "expiry_sec": 300, "source": "user_456",
                "timestamp": "2026-02-15T14:30:00Z"}


@router.post("", status_code=202, summary="Submit a command (queued durably; sent when the edge is online)")
async def post_command(body: Annotated[dict[str, Any], Body(examples=[SEED_EXAMPLE])],
                       who: Principal = Depends(principal),
                       state: RouterState = Depends(router_state)) -> JSONResponse:
    try:
        command = decode_command(body)
    except WireError as exc:
        raise ApiError(state.hub.refused(who, Refusal(exc.code, str(exc), 422, exc.command_id))) from None
    outcome = await state.hub.submit(who, command)
    if outcome.refusal is not None:
        raise ApiError(outcome.refusal)
    assert outcome.record is not None
    await state.hub.barrier()
    rec = outcome.record
    return JSONResponse({"command_id": rec.command_id, "edge_id": rec.edge_id, "seq": rec.seq, "state": rec.state,
                         "duplicate": outcome.duplicate}, status_code=200 if outcome.duplicate else 202)


@router.get("/{command_id}", summary="A command's state and its audit history")
async def get_command(command_id: str, who: Principal = Depends(principal),
                      state: RouterState = Depends(router_state)) -> dict[str, Any]:
    rec = await state.store.get(command_id)
    if rec is None or not who.may_view(rec.edge_id):
        if rec is not None:
            state.hub.refused(who, Refusal("forbidden", f"{who.subject} may not view edge {rec.edge_id!r}", 403,
                                           command_id), edge_id=rec.edge_id)
        raise ApiError(Refusal("not_found", f"no command {command_id!r}" if rec is None else
                               f"{who.subject} may not view edge {rec.edge_id!r}", 404 if rec is None else 403,
                               command_id))
    record = rec.to_api()   # before the wait for the history: the record in memory may move on meanwhile
    history = await state.audit.query(AuditQuery(command_id=command_id, limit=10_000))   # has every row so far
    return {**record, "history": [r.to_dict() for r in history]}


@router.delete("/{command_id}", summary="Cancel a command (at once while QUEUED; else the edge decides)")
async def cancel_command(command_id: str, who: Principal = Depends(principal),
                         state: RouterState = Depends(router_state)) -> dict[str, Any]:
    outcome = await state.hub.cancel(who, command_id)
    if outcome.refusal is not None:
        raise ApiError(outcome.refusal)
    assert outcome.record is not None
    await state.hub.barrier()
    return {"command_id": command_id, "state": outcome.record.state}
