"""The router as one FastAPI app: small routers composed, the parts built in the lifespan.

* ``/ws/edge`` (:mod:`.ws_edge`), ``/ws/client`` (:mod:`.ws_client`): the websockets;
* ``/api/v1/commands`` (:mod:`.api_commands`), ``/api/v1/edges`` (:mod:`.api_edges`), ``/api/v1/audit``
  (:mod:`.api_audit`): REST, authenticated by a dependency;
* ``/api/v1/login``, ``/api/v1/me``, ``/api/v1/ui`` (:mod:`.api_login`) and the operator page at ``/ui/``
  (:mod:`.ui`; left out with ``[ui] enabled = false``);
* ``/healthz``; OpenAPI at ``/docs`` and ``/openapi.json`` (FastAPI's own).

The lifespan builds :class:`~runtime.router.state.RouterState` on uvicorn's loop (stores, audit, fleet, hub)
and the page's :class:`~runtime.router.telemetry.TelemetryHistory` (fed by the edge directory), and closes
them after uvicorn has closed the connections.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from . import api_audit, api_commands, api_edges, api_login, ui as ui_page, ws_client, ws_edge
from .config import RouterConfig
from .deps import ApiError
from .state import RouterState
from .telemetry import TelemetryHistory

__all__ = ["create_app"]


def create_app(config: RouterConfig) -> FastAPI:
    """The router app for ``config`` (nothing is opened until uvicorn runs its lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await RouterState.open(config)
        app.state.router = state
        ui = config.ui
        history = TelemetryHistory(ui.telemetry_window_s, ui.telemetry_bucket_s, ui.telemetry_max_series)
        state.hub.edges.telemetry_listeners.append(history.add)
        app.state.telemetry = history
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(title="qubit-energy-coordinator router", lifespan=lifespan,
                  description="The cloud side of the command channel: edges keep a websocket here (/ws/edge), "
                              "operators and services submit commands over /ws/client or REST, every state change "
                              "is audited.")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers: dict[str, str] = {}
        if exc.refusal.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(exc.refusal.retry_after + 0.999)))
        if exc.refusal.http == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(exc.refusal.body(), status_code=exc.refusal.http, headers=headers)

    @app.get("/healthz", tags=["health"], summary="The instance is up")
    async def healthz(request: Request) -> dict[str, Any]:
        state: RouterState = request.app.state.router
        return {"status": "ok", "instance": state.instance, "edges": len(state.hub.registry),
                "clients": len(state.hub.clients.conns)}

    for module in (ws_edge, ws_client, api_commands, api_edges, api_audit, api_login):
        app.include_router(module.router)
    if config.ui.enabled:
        app.include_router(ui_page.router)
    return app
