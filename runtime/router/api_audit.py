"""REST: the audit log, filtered (``GET /api/v1/audit``).

Query parameters: ``edge_id``, ``user_id``, ``command_id``, ``kind``, ``status`` (repeatable, or comma
separated), ``since`` / ``until`` (ISO 8601 or an age: ``15m``, ``2h``, ``7d``), ``limit`` (default 1000),
``order`` (``asc`` / ``desc``), ``format`` (``json`` / ``csv``). A caller sees the rows of the edges its token
may view; rows that concern no edge (refused connections) only with ``can_view = "*"``.
"""

from __future__ import annotations

import io
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse

from .audit import AuditQuery, format_rows, parse_time
from .auth import ALL, Principal
from .deps import ApiError, principal, router_state
from .hub import Refusal
from .state import RouterState

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


def _time(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value, time.time())
    except ValueError as exc:
        raise ApiError(Refusal("invalid", f"{name}: {exc}", 422)) from None


@router.get("", summary="Audit rows: who sent what to which edge, every state change, every refusal")
async def get_audit(who: Principal = Depends(principal), state: RouterState = Depends(router_state),
                    edge_id: str | None = None, user_id: str | None = None, command_id: str | None = None,
                    kind: str | None = None, status: Annotated[list[str] | None, Query()] = None,
                    since: str | None = None, until: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
                    order: Literal["asc", "desc"] = "asc", format: Literal["json", "csv"] = "json") -> Any:
    if edge_id is not None and not who.may_view(edge_id):
        raise ApiError(state.hub.refused(who, Refusal("forbidden", f"{who.subject} may not view edge {edge_id!r}",
                                                      403), edge_id=edge_id))
    viewable = who.viewable()
    statuses = [s.strip().upper() for item in status or [] for s in item.split(",") if s.strip()]
    q = AuditQuery(edge_id=edge_id, user_id=user_id, command_id=command_id, kind=kind, status=statuses,
                   since=_time(since, "since"), until=_time(until, "until"), limit=limit,
                   viewable=None if viewable == ALL else frozenset(viewable), newest_first=order == "desc")
    rows = await state.audit.query(q)
    if format == "csv":
        out = io.StringIO()
        format_rows(rows, "csv", out)
        return PlainTextResponse(out.getvalue(), media_type="text/csv")
    return {"rows": [r.to_dict() for r in rows], "count": len(rows)}
