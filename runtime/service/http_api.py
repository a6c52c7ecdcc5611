"""The local HTTP API of a site process: commands, schedules, asset states, Prometheus metrics and the
/healthz + /readyz probes, as one FastAPI app served by uvicorn on the site's own I/O loop.

Endpoints (JSON in and out; every error is ``{"error": message, "problems": [...]}`` with a message
naming the field and the value)::

    POST /api/v1/commands          {asset_id, command_type, value, scheduled_time?, expires_at?, priority?,
                                   command_id?} -> 202 {command_id, status, new, reason}
    GET  /api/v1/commands/{id}     the command's snapshot (every field; times ISO 8601; granted, setpoint)
    POST /api/v1/schedules         {index: [times], columns: {"ev_001_kw": [...]}, asset_map?, batch_id?,
                                   replace?, priority?} -> 202 {batch_id, commands, assets, start, end}
    GET  /api/v1/assets            {"assets": [AssetStatus fields + kind, ...]}
    GET  /api/v1/assets/{id}       one asset
    GET  /api/v1/cloud             the cloud link: url, edge_id, connected, ready, last_seq, queued, in_flight,
                                   leases, controllers, sessions (404 without [cloud])
    GET  /metrics                  Prometheus text format (the site's own registry: runtime.service.metrics)
    GET  /healthz                  200 while the process and its site are alive; 503 once the site failed
    GET  /readyz                   200 when the site runs, every asset reported its health and the API
                                   accepts work; 503 with the reason otherwise

Statuses: 202 accepted (a known command id or batch id is a no-op: ``new: false``); 404 an unknown
command or asset in the path; 422 a malformed body, or one naming an asset the site does not have,
or a schedule the site refuses (the message names the column, the row and the value); 403 a client
that is not on loopback; 503 the site failed, is stopping, or did not answer in time. A command whose
value is outside the device limits is *accepted* (202) and comes back with status REJECTED and the
reason, exactly as the site's policy treats it from the Python API: it is journaled and never sent.

Threads and loops: everything here runs on the site's I/O loop (uvicorn is started there by
:class:`HttpComponent`), beside the OCPP server and the Modbus clients, so nothing may block it.
Every endpoint is ``async``; the actors are asked through :class:`~runtime.service.gateway.SiteGateway`
(a reply callback settles an asyncio future: no ``ask().get()``, no thread waits per request); a
schedule body, which can be large, is parsed and validated in the loop's executor. There is no
authentication: the API is for the machine it runs on. A dependency refuses (403) every client that is
not a loopback address unless ``[http] allow_remote = true``; ``X-Forwarded-For`` is honoured only from
a loopback proxy, so a local reverse proxy cannot turn remote clients into local ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.config.models import HttpConfig, SiteConfig
from runtime.core.commands import Command, new_command_id
from runtime.core.errors import CommandError, ScheduleError, SiteNotRunning, UnknownAsset
from runtime.site import Site

from .api_models import CommandIn, ScheduleIn, asset_json, command_json, schedule_frame
from .gateway import SiteGateway
from .metrics import CONTENT_TYPE, SiteMetrics, site_metrics
from .siteinfo import asset_kinds, start_complete

log = logging.getLogger(__name__)

__all__ = ["HttpComponent", "http_component", "create_app", "ApiContext", "ApiError", "loopback_only",
           "is_loopback"]

#: A schedule body larger than this is refused (413) before it is parsed.
MAX_SCHEDULE_BYTES = 64 * 1024 * 1024
#: How long stop() waits for the server to finish its open requests before it cancels them.
STOP_TIMEOUT_S = 5.0
#: How long /readyz waits for the asset actors' answers.
READY_TIMEOUT_S = 2.0


class ApiError(Exception):
    """An error answer: ``status``, a message naming what is wrong, optional per-field problems."""

    def __init__(self, status: int, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems or []


@dataclass
class ApiContext:
    """What the endpoints need, shared through ``app.state.api`` (touched on the I/O loop only)."""

    site: Site
    gateway: SiteGateway
    metrics: SiteMetrics
    allow_remote: bool = False
    #: True while the server listens and takes work; False before start() and once stop() began.
    accepting: bool = False


# ---- errors --------------------------------------------------------------------------------------

def _error(status: int, message: str, problems: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if problems:
        body["problems"] = problems
    return JSONResponse(jsonable_encoder(body), status_code=status)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def validation_problems(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic errors as problems, each with ``field`` (dotted path, e.g. ``columns.ev_1_kw.3``), a
    ``message`` naming the field and the value given, and that ``value`` when it is small."""
    problems = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        kind, value = e.get("type", ""), e.get("input")
        if kind == "missing":
            problems.append({"field": field, "message": f"{field}: required, not given"})
            continue
        if kind == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", e.get("msg"))
            problems.append({"field": "body", "message": f"body: not valid JSON ({detail})"})
            continue
        message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "value_error" and not loc:  # a model-level check: its message names the field itself
            problems.append({"field": message.split(":", 1)[0], "message": message})
            continue
        problem = {"field": field, "message": f"{field}: {message}, got {_shown(value)}"}
        if isinstance(value, (str, int, float, bool)) or value is None:
            problem["value"] = value
        problems.append(problem)
    return problems


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.problems)

    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = validation_problems(list(exc.errors()))
        return _error(422, "; ".join(p["message"] for p in problems), problems)

    async def invalid_model(request: Request, exc: ValidationError) -> JSONResponse:
        problems = validation_problems(list(exc.errors()))
        return _error(422, "; ".join(p["message"] for p in problems), problems)

    async def unknown_asset(request: Request, exc: UnknownAsset) -> JSONResponse:
        return _error(422, str(exc), [{"field": "asset_id", "message": str(exc)}])

    async def refused(request: Request, exc: CommandError | ScheduleError) -> JSONResponse:
        return _error(422, str(exc))

    async def site_down(request: Request, exc: SiteNotRunning) -> JSONResponse:
        return _error(503, str(exc))

    async def no_answer(request: Request, exc: TimeoutError) -> JSONResponse:
        return _error(503, "the site did not answer in time; try again")

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(exc.status_code, message)

    for exc_type, handler in ((ApiError, api_error), (RequestValidationError, invalid_request),
                              (ValidationError, invalid_model), (UnknownAsset, unknown_asset),
                              (CommandError, refused), (ScheduleError, refused), (SiteNotRunning, site_down),
                              (TimeoutError, no_answer), (StarletteHTTPException, http_error)):
        app.add_exception_handler(exc_type, handler)  # type: ignore[arg-type]


# ---- dependencies ----------------------------------------------------------------------------------

def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


async def context(request: Request) -> ApiContext:
    return request.app.state.api


async def loopback_only(request: Request) -> None:
    """Refuse (403) a client that is not on loopback, unless ``allow_remote``; on every route."""
    ctx: ApiContext = request.app.state.api
    if ctx.allow_remote:
        return
    host = request.client.host if request.client is not None else None
    if not is_loopback(host):
        log.warning("HTTP API: refused %s %s from %s (not loopback)", request.method, request.url.path, host)
        raise ApiError(403, f"client {host} is not a loopback address: this API answers loopback clients only "
                            f"(set allow_remote = true in [http] to serve other hosts)",
                       [{"field": "client", "message": f"client {host} is not loopback", "value": host}])


async def accepting_work(ctx: ApiContext = Depends(context)) -> None:
    """Refuse (503) new work before the server is up and once the process is stopping."""
    if not ctx.accepting:
        raise ApiError(503, "the site process is not accepting work (it is starting or shutting down)")


# ---- routers ---------------------------------------------------------------------------------------

def commands_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/commands", tags=["commands"])

    @router.post("", status_code=202, dependencies=[Depends(accepting_work)])
    async def post_command(body: CommandIn, ctx: ApiContext = Depends(context)) -> dict[str, Any]:
        """Accept one command (journaled before the answer). A value outside the device limits is
        accepted and comes back REJECTED with the reason."""
        command = Command(body.command_id or new_command_id(), body.asset_id, body.command_type, body.value,
                          body.scheduled_time or ctx.site.clock.now(), priority=body.priority,
                          expires_at=body.expires_at, source="http")
        new = await ctx.gateway.submit([command])
        snapshot = await ctx.gateway.command(command.command_id)
        if new:
            log.info("HTTP API: command %s accepted (%s %s %g)", command.command_id, command.asset_id,
                     command.command_type.value, command.value)
        return {"command_id": command.command_id, "status": snapshot.status.value if snapshot else "UNKNOWN",
                "new": bool(new), "reason": snapshot.last_error if snapshot else None}

    @router.get("/{command_id:path}")
    async def get_command(command_id: str, ctx: ApiContext = Depends(context)) -> dict[str, Any]:
        snapshot = await ctx.gateway.command(command_id)
        if snapshot is None:
            raise ApiError(404, f"unknown command {command_id!r} (never accepted here, or a final command "
                                f"forgotten after the journal's retention_s)",
                           [{"field": "command_id", "message": f"unknown command {command_id!r}",
                             "value": command_id}])
        return command_json(snapshot)

    return router


def _parse_schedule(raw: bytes) -> tuple[ScheduleIn, Any]:
    """In the executor: validate a schedule body and build its DataFrame."""
    body = ScheduleIn.model_validate_json(raw)
    return body, schedule_frame(body)


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body: larger than {limit} bytes; send the schedule in parts or drop it into "
                                f"the watched folder")
        chunks.append(chunk)
    return b"".join(chunks)


def schedules_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"])
    schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": ScheduleIn.model_json_schema(ref_template="#/components/schemas/{model}")}}}}

    @router.post("", status_code=202, dependencies=[Depends(accepting_work)], openapi_extra=schema)
    async def post_schedule(request: Request, ctx: ApiContext = Depends(context)) -> dict[str, Any]:
        """Accept a schedule as one batch. The body is parsed in the executor (it can be large)."""
        raw = await _read_body(request, MAX_SCHEDULE_BYTES)
        body, frame = await asyncio.get_running_loop().run_in_executor(None, _parse_schedule, raw)
        batch = await ctx.gateway.submit_schedule(frame, body.asset_map, replace=body.replace,
                                                  priority=body.priority, batch_id=body.batch_id)
        log.info("HTTP API: schedule %s accepted (%d commands for %d assets)", batch.batch_id, len(batch),
                 len(batch.assets))
        first, last = (frame.index[0], frame.index[-1])
        return {"batch_id": batch.batch_id, "commands": len(batch), "assets": list(batch.assets),
                "start": first.isoformat(), "end": last.isoformat()}

    return router


def assets_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/assets", tags=["assets"])

    @router.get("")
    async def list_assets(ctx: ApiContext = Depends(context)) -> dict[str, Any]:
        kinds = asset_kinds(ctx.site)
        return {"assets": [asset_json(s, kinds.get(s.asset_id)) for s in await ctx.gateway.asset_statuses()]}

    @router.get("/{asset_id}")
    async def get_asset(asset_id: str, ctx: ApiContext = Depends(context)) -> dict[str, Any]:
        try:
            status = await ctx.gateway.asset_status(asset_id)
        except UnknownAsset:
            known = ", ".join(map(repr, sorted(ctx.site.asset_ids)))
            raise ApiError(404, f"unknown asset {asset_id!r}; this site has {known}",
                           [{"field": "asset_id", "message": f"unknown asset {asset_id!r}", "value": asset_id}]
                           ) from None
        return asset_json(status, asset_kinds(ctx.site).get(asset_id))

    return router


def cloud_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/cloud", tags=["cloud"])

    @router.get("")
    async def get_cloud(ctx: ApiContext = Depends(context)) -> dict[str, Any]:
        status = await ctx.gateway.cloud_status()
        if status is None:
            raise ApiError(404, "this site has no cloud link (add a [cloud] section to its file)")
        options = ctx.site.cloud_options
        assert options is not None
        return {"url": options.url, "edge_id": options.edge_id, **status}

    return router


async def readiness(ctx: ApiContext) -> tuple[list[str], list[str]]:
    """(why the site is not ready, assets that are up but unhealthy). Not ready: the site is not
    running, the API is not accepting work, the site says its start-up health round did not finish,
    an asset's actor is restarting (it has not reported its health since), or the actors do not
    answer within ``READY_TIMEOUT_S``. An unhealthy asset (link down, FAULTED) or one the supervisor
    gave up on does not make the site unready: its commands are HELD, the others' are sent."""
    site = ctx.site
    if site.state != "running":
        return [f"the site is {site.state}" + (f": {site.failure}" if site.failure else "")], []
    problems = []
    if not ctx.accepting:
        problems.append("the HTTP API is not accepting work (starting or shutting down)")
    if start_complete(site) is False:
        problems.append("not every asset has reported its health since the site started")
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            statuses = await ctx.gateway.asset_statuses()
    except (TimeoutError, SiteNotRunning) as exc:
        why = f"the site's actors did not answer within {READY_TIMEOUT_S:g} s ({exc or 'timeout'})"
        return [*problems, why], []
    for s in statuses:
        if s.supervision == "restarting":
            problems.append(f"asset {s.asset_id} is restarting (its actor crashed; it has not reported its "
                            f"health since)")
    return problems, [s.asset_id for s in statuses if not s.healthy]


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz(ctx: ApiContext = Depends(context)) -> Response:
        """Liveness: answered by the loop itself (no actor asked); 503 once the site failed or stopped."""
        site = ctx.site
        if site.state == "running":
            return JSONResponse({"status": "ok", "site": "running"})
        return JSONResponse({"status": "failing", "site": site.state,
                             "reason": site.failure or "the site is stopped"}, status_code=503)

    @router.get("/readyz")
    async def readyz(ctx: ApiContext = Depends(context)) -> Response:
        problems, unhealthy = await readiness(ctx)
        if problems:
            return JSONResponse({"status": "not ready", "reason": "; ".join(problems), "problems": problems},
                                status_code=503)
        return JSONResponse({"status": "ready", "unhealthy_assets": unhealthy})

    return router


def metrics_router() -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics")
    async def metrics(ctx: ApiContext = Depends(context)) -> Response:
        """The site's registry in the Prometheus text format (the collector only does cheap reads)."""
        await ctx.metrics.refresh()
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    return router


def create_app(ctx: ApiContext) -> FastAPI:
    """The FastAPI app over ``ctx``: the five routers, the loopback check on every route, JSON errors."""
    app = FastAPI(title="Site coordinator", version="1", dependencies=[Depends(loopback_only)],
                  openapi_url="/api/v1/openapi.json", docs_url=None, redoc_url=None)
    app.state.api = ctx
    for router in (commands_router(), schedules_router(), assets_router(), cloud_router(), health_router(),
                   metrics_router()):
        app.include_router(router)
    _install_error_handlers(app)
    return app


# ---- the component ---------------------------------------------------------------------------------

def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port): bound here, so that a port in use is an OSError naming the
    address (uvicorn would call sys.exit inside the loop's task)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        return socket.create_server(address, family=family)
    except OSError as exc:
        raise OSError(exc.errno, f"HTTP API: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


class HttpComponent:
    """The HTTP API as a :class:`~runtime.service.process.Component`: uvicorn served as a task on the
    site's I/O loop (the loop :meth:`start` is awaited on). ``port`` is the bound port once started
    (``listen = "127.0.0.1:0"`` picks a free one)."""

    name = "http"

    def __init__(self, site: Site, http: HttpConfig, *, gateway: SiteGateway | None = None,
                 metrics: SiteMetrics | None = None) -> None:
        self.site = site
        self.host, self._wanted_port = split_listen(http.listen)
        self.context = ApiContext(site, gateway or SiteGateway(site), metrics or site_metrics(site),
                                  allow_remote=http.allow_remote)
        self.app = create_app(self.context)
        self.server: uvicorn.Server | None = None
        self.port: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Start the metrics, bind, serve; return once the server listens (a client may connect at once)."""
        await self.context.metrics.start()
        try:
            sock = _bind(self.host, self._wanted_port)
        except OSError:
            await self.context.metrics.stop()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, host=self.host, port=self.port, lifespan="off", log_config=None,
                                access_log=False, http="h11", ws="none", proxy_headers=True,
                                forwarded_allow_ips="127.0.0.1,::1", server_header=False,
                                timeout_graceful_shutdown=int(STOP_TIMEOUT_S))
        self.server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]), name="http-api")
        try:
            async with asyncio.timeout(10):
                while not self.server.started:  # uvicorn has no "started" event: a short bounded poll
                    if self._task.done():
                        break
                    await asyncio.sleep(0.005)
        except TimeoutError:
            pass
        if not self.server.started:
            await self.stop()
            sock.close()
            error = self._task.exception() if self._task.done() and not self._task.cancelled() else None
            raise RuntimeError(f"HTTP API did not start on {self.url}: {error or 'timeout'}") from error
        self.context.accepting = True
        log.info("HTTP API listening on %s (%s)", self.url,
                 "remote clients allowed" if self.context.allow_remote else "loopback clients only")

    async def stop(self) -> None:
        """Refuse new work, let open requests finish (bounded), close the socket, unsubscribe the metrics."""
        self.context.accepting = False
        task, server = self._task, self.server
        if task is not None and server is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S + 2)
            except TimeoutError:
                log.warning("HTTP API did not stop within %g s; cancelling it", STOP_TIMEOUT_S + 2)
                server.force_exit = True
                task.cancel()
                await asyncio.wait([task], timeout=1)
            except Exception:
                log.exception("HTTP API server ended with an error")
        self._task = None
        await self.context.metrics.stop()


def http_component(site: Site, config: SiteConfig) -> HttpComponent | None:
    """The HTTP API component of a site process, or None when the configuration has no ``[http]``."""
    if config.http is None:
        return None
    return HttpComponent(site, config.http)
