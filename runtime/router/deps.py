"""FastAPI dependencies shared by the REST routers: the router's state and the authenticated caller.

Authentication is a dependency (:func:`principal`), not code in each handler: a handler that takes
``who: Principal = Depends(principal)`` only runs for a verified token, and a refused token is audited and
answered 401 (403 for an edge credential) with ``{"code", "message"}``. :class:`ApiError` carries a
:class:`~runtime.router.hub.Refusal` to the app's exception handler, which adds ``Retry-After`` on 429.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth import AuthError, Principal
from .hub import Refusal
from .state import RouterState

__all__ = ["ApiError", "router_state", "principal", "bearer"]

bearer = HTTPBearer(auto_error=False, description="a JWT with sub, aud, exp and the can_control / can_view "
                                                  "claims (coordinator token user ... mints one)")


class ApiError(Exception):
    """A refusal to answer as JSON ``{"code", "message", ...}`` with its HTTP status."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(refusal.message)


def router_state(request: Request) -> RouterState:
    return request.app.state.router  # type: ignore[no-any-return]


async def principal(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    """The verified caller of a REST request."""
    state = router_state(request)
    try:
        return await state.auth.user(f"Bearer {creds.credentials}" if creds else None)
    except AuthError as exc:
        remote = f"{request.client.host}:{request.client.port}" if request.client else None
        refusal = state.hub.refused(None, Refusal(exc.code, exc.message, exc.status), remote=remote)
        raise ApiError(refusal) from None
