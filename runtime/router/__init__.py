"""The cloud command router (reserved; the cloud-channel issue fills it).

``coordinator router --config router.toml`` will live here: a FastAPI service on uvicorn that keeps
one persistent WebSocket per online edge, authenticates operators and services (JWT) and edges,
authorizes per edge, queues commands for offline edges, routes them, tracks every command through
its cloud-side states with an audit row per transition, and serves the operator page. It speaks to
edges only through the edge wire format (:mod:`protocols.edge`) and never imports ``actors`` or
:mod:`runtime.site` (an import-linter contract holds it to that): a router runs where no site does.
"""
