"""The cloud command router: ``coordinator router --config router.toml`` (FastAPI on uvicorn).

Edges keep one persistent websocket here (``/ws/edge``); operators and services submit commands over
``/ws/client`` or REST (``/api/v1/commands``) with a JWT. The router authorizes per edge, rate-limits per user
and per edge, checks each command against the edge's published capabilities, queues it durably (sent at
once when the edge is online, on reconnect otherwise, superseded or expired when it went stale), tracks it
through its cloud-side states (QUEUED, SENT, DELIVERED, ACCEPTED, EXECUTED, or REJECTED, FAILED, EXPIRED,
SUPERSEDED, CANCELLED, TIMED_OUT and the *_LATE states of a late ack) with one audit row per transition, and
reports every state change to the clients that may see it. Several instances share one Redis as a fleet. It
serves the operator page too (``/ui/``): sites, one site with its channels and charts, a command form,
live command states, the audit history.

Modules, one thing each:

=====================  ======================================================================================
:mod:`.config`         ``router.toml``: strict models
:mod:`.auth`           JWTs (HS256, RS256, EdDSA, JWKS) and edge credentials; who may control / view what
:mod:`.states`         the command record and the rules of its states
:mod:`.validate`       a command against the edge's capabilities
:mod:`.store`          the store interface; :mod:`.store_sqlite` (default), :mod:`.store_redis` (fleet);
                       :mod:`.sqlite_db` the SQLite file's group commit on a writer thread
:mod:`.audit`          audit rows and queries; :mod:`.audit_sqlite` (default), :mod:`.audit_postgres`
:mod:`.ratelimit`      per user, per edge, handshakes (``limits``)
:mod:`.registry`       the edges connected to this instance; :mod:`.clients` the operators and services
:mod:`.outbox`         frames to one peer, in order, after what they vouch for is durable
:mod:`.edges`          what each edge published (capabilities, telemetry, site state, last seen)
:mod:`.fleet`          owner keys and pub/sub between instances over Redis
:mod:`.hub`            the command flow: submit, send, resume, acks, timeouts, expiry
:mod:`.state`          building an instance's parts from its config
:mod:`.app`            the FastAPI app: :mod:`.ws_edge`, :mod:`.ws_client` (and :mod:`.ws_common`),
                       :mod:`.api_commands`, :mod:`.api_edges`, :mod:`.api_audit` composed, auth as a
                       dependency (:mod:`.deps`)
:mod:`.server`         uvicorn, in the main thread or on a thread of its own
:mod:`.testkit`        a fake edge and an operator client (tests, benchmark)
:mod:`.passwords`      scrypt hashes of the ``[users]`` passwords
:mod:`.api_login`      sign-in for the operator page (a router-signed session JWT), who am I, page settings
:mod:`.telemetry`      the recent telemetry per edge, down-sampled, for the page's charts (memory, bounded)
:mod:`.ui`             the operator page at ``/ui/`` (plain HTML, CSS and JS in ``ui/``, package data)
=====================  ======================================================================================

It speaks to edges only through the edge wire format (:mod:`protocols.edge`) and never imports ``actors``,
:mod:`runtime.site`, :mod:`runtime.service` or device protocols (an import-linter contract holds it to that):
a router runs where no site does. Nothing heavy is imported here.
"""
