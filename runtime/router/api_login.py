"""REST for the operator page: sign in with a user name and password, who am I, the page's settings.

* ``POST /api/v1/login`` ``{"username", "password"}``: checks the password against the ``[users.<name>]`` hash
  (:mod:`.passwords`, in a worker thread) and answers ``{token, token_type, expires_at, expires_in, user,
  can_control, can_view}``: a JWT signed by the router itself (HS256 with ``[ui] session_secret``, else
  ``[auth] hs256_secret``) that lasts ``[ui] session_ttl_s`` and carries the user's ``can_control`` /
  ``can_view`` from the file and the ``ses`` claim (:data:`~runtime.router.auth.SESSION_CLAIM`). It is then
  used like any other token (Authorization header, ``?access_token=`` on ``/ws/client``). A wrong name or
  password answers 401 with the same message for both (an unknown name costs as long as a wrong password);
  more attempts than ``[limits] login`` for one user name (``login_address`` from one address) answer 429
  with Retry-After,
  before any password is checked. Every sign-in is audited (kind ``login``, status ``SIGNED_IN``), every
  refusal too (kind ``refused``). A router without ``[users]`` answers 404 ``not_available``.
* ``GET /api/v1/me``: the caller's ``user``, ``can_control`` and ``can_view`` as the router understood the
  token (the page enables its controls from this; the router checks every command anyway).
* ``GET /api/v1/ui``: what the page needs before anyone signs in: whether password sign-in is available, how
  often to refresh, the charts' window and bucket. No authentication; it tells nothing about edges.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .audit import AuditRow
from .auth import ALL, SESSION_CLAIM, Principal, mint, user_claims
from .deps import ApiError, principal, router_state
from .hub import Refusal
from .passwords import dummy_hash, verify_password
from .state import RouterState
from .states import iso

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["operator page"])


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def _rights(edges: frozenset[str] | str) -> list[str] | str:
    return ALL if edges == ALL else sorted(edges)


@router.post("/login", summary="Sign in with a [users] name and password: a session token (JWT)")
async def login(request: Request, state: RouterState = Depends(router_state)) -> dict[str, Any]:
    hub, config = state.hub, state.config
    remote = request.client.host if request.client else "?"
    if not config.users:
        raise ApiError(Refusal("not_available", "this router has no [users]: sign in with a token", 404))
    try:
        body = Login.model_validate(await request.json())
    except (ValueError, ValidationError) as exc:
        problem = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in
                            exc.errors()[:3]) if isinstance(exc, ValidationError) else "the body is not JSON"
        raise ApiError(hub.refused(None, Refusal("invalid", f"sign-in: {problem} (send {{\"username\": ..., "
                                                 "\"password\": ...}})", 422), remote=remote)) from None
    name = body.username
    over = await hub.limits.login(name, remote)
    if over is not None:
        which, wait = over
        whose, limit = (f"user {name!r}", config.limits.login) if which == "user" else \
            (f"address {remote}", config.limits.login_address)
        raise ApiError(hub.refused(None, Refusal(
            "rate_limited", f"too many sign-in attempts for {whose} ({limit}); retry after {wait:g} s", 429,
            retry_after=wait), remote=remote))
    user = config.users.get(name)
    ok = await asyncio.to_thread(verify_password, body.password, user.password if user else dummy_hash())
    if user is None or not ok:
        raise ApiError(hub.refused(None, Refusal("unauthorized", "wrong user name or password", 401),
                                   remote=f"{remote}, user {name!r}"))
    secret = config.session_secret()
    assert secret is not None  # the config refuses [users] without one
    now = time.time()
    ttl = config.ui.session_ttl_s
    control = ALL if ALL in user.can_control else list(user.can_control)
    view = ALL if ALL in user.can_view else list(user.can_view)
    claims = user_claims(name, config.auth.audience, control=control, view=view, ttl_s=ttl,
                         issuer=config.auth.issuer, now=now)
    claims[SESSION_CLAIM] = 1
    state.audit.record(AuditRow(at=now, kind="login", status="SIGNED_IN", user_id=name, instance=hub.instance,
                                detail=f"operator page sign-in from {remote}; the session lasts {ttl:g} s"))
    return {"token": mint(claims, secret), "token_type": "Bearer", "expires_at": iso(claims["exp"]),
            "expires_in": int(ttl), "user": name, "can_control": control, "can_view": view}


@router.get("/me", summary="Who the token says the caller is, and which edges it may command or watch")
async def me(who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"user": who.subject, "can_control": _rights(who.control), "can_view": _rights(who.view)}


@router.get("/ui", summary="The operator page's settings (no authentication)")
async def ui_settings(state: RouterState = Depends(router_state)) -> dict[str, Any]:
    ui = state.config.ui
    return {"password_sign_in": bool(state.config.users), "refresh_s": ui.refresh_s,
            "telemetry_window_s": ui.telemetry_window_s, "telemetry_bucket_s": ui.telemetry_bucket_s,
            "instance": state.instance}
