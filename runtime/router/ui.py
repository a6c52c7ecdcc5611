"""The operator page, served by the router itself: ``/ui/`` (and ``/`` redirects there).

The page is plain HTML, CSS and JavaScript (an ES module) in ``runtime/router/ui/``, shipped as package data
and served as it is: no build step, no third-party code, nothing to install in the browser. It was chosen over
templates rendered by the router because the page is live (status frames over ``/ws/client``, polling the
REST API): it renders in the browser from the same JSON the API gives every other client, so the page can
do nothing an API client could not, and every check it makes is made again by the router.

Every file goes out with ``Cache-Control: no-cache`` (a browser revalidates after an upgrade of the router)
and a Content-Security-Policy that allows only the router's own scripts, styles and connections (no inline
script, no other origin). The page keeps its session token in the tab's ``sessionStorage`` and sends it as
``Authorization: Bearer`` (REST) or ``?access_token=`` (the websocket): there is no cookie, so no cross-site
request can act on its behalf. ``[ui] enabled = false`` leaves these routes out.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

__all__ = ["router", "FILES"]

router = APIRouter(include_in_schema=False)

#: The page's files (in runtime/router/ui/) and their media types.
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "app.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _read(name: str) -> bytes:
    return resources.files("runtime.router").joinpath("ui", name).read_bytes()


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
async def ui_no_slash() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
async def index() -> Response:
    return Response(_read("index.html"), media_type=FILES["index.html"], headers=HEADERS)


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    if name not in FILES:
        raise HTTPException(404, f"no file {name!r} in the operator page")
    return Response(_read(name), media_type=FILES[name], headers=HEADERS)


@router.get("/favicon.ico")
async def favicon() -> Response:
    return Response(_read("favicon.svg"), media_type=FILES["favicon.svg"], headers=HEADERS)
