"""The OCPP central system: one websockets server for OCPP 1.6 and 2.0.1 charge points.

Usage (on the site's I/O loop)::

    cs = CentralSystem(host="0.0.0.0", port=9000, basic_auth={"CP1": "secret"})
    await cs.start()                  # cs.port is the bound port (useful with port=0)
    cs.register_listener("CP1", callback)
    result = await cs.call("CP1", ocpp.v16.call.GetConfiguration(), timeout=5)
    await cs.stop()                   # closes the server and every connection, awaits every task

Charge points connect to ``ws://host:port/<anything>/<charge point id>`` (``wss://`` under security
profiles 2 and 3); the id is the last path segment. The subprotocol (``ocpp2.0.1`` or ``ocpp1.6``)
picks the message set; a client that offers neither is refused during the handshake (HTTP 400) and a
warning names its id and what it offered. With ``allow_ids`` an id outside the set is refused (HTTP
404, as OCPP-J 1.6 recommends).

Security profiles (:mod:`protocols.ocpp.security` has the table and the certificate rules):

* 1, ``basic_auth={id: password}``: every charge point must send HTTP Basic credentials whose username
  is its id and whose password is ``basic_auth[id]`` (HTTP 401 otherwise). The websockets library's own
  ``basic_auth`` parses the header; the password is compared in constant time (``hmac.compare_digest``).
* 2, ``tls_cert`` + ``tls_key`` and ``basic_auth``: the same over TLS 1.2+ (``wss://``).
* 3, ``tls_cert`` + ``tls_key`` + ``ca_cert``: TLS, and every charge point presents a client certificate
  that chains to ``ca_cert`` and names the id it connects as. Anything else is refused during the TLS
  handshake or the HTTP upgrade, before any OCPP frame, with a log line that says why.
* 0 (no ``basic_auth``, no TLS): nobody is authenticated. :meth:`CentralSystem.start` warns when such a
  central system listens beyond loopback.

``security_profile`` may be given, and must then match the other arguments; without it the profile
follows from them (``ca_cert``: 3, ``tls_cert``: 2, ``basic_auth``: 1, else 0).

One :class:`ocpp.charge_point.ChargePoint` object serves one connection; a newer connection for an id
replaces (closes) the older one. That is the documented rule for a second connection of a connected id:
under profiles 1-3 the new connection has authenticated as that id, so it replaces the old one as after
a reboot (a charger that rebooted while its old TCP connection is still half-open), logged at INFO.
Under profile 0 nobody proves who they are: the new connection still replaces the old one (refusing it
would lock out a charger that really rebooted until the old connection times out), but a WARNING names
both peers, as it may be another device posing as the charger.

Per charge point id the central system remembers a :class:`ChargePointRecord` across connections:
protocol version, registration, the running transaction per connector/EVSE, the last status, and the
charging rate unit the charger accepts (read after every BootNotification with GetConfiguration
``ChargingScheduleAllowedChargingRateUnit`` (1.6) or GetVariables ``SmartChargingCtrlr.RateUnit``
(2.0.1); "W" when the charger does not say).

A charge point that reconnects without a BootNotification (a network loss, or the site restarted) is
online at its first message, or ``reconnect_grace`` seconds after connecting, if it was accepted
before or its id is known. Such a charger may still be charging in a transaction this central system
does not know (it started before the site restarted), so the central system then asks it, best
effort, to re-announce its state: 1.6 TriggerMessage(MeterValues) and TriggerMessage(StatusNotification)
(MeterValues of a running transaction carry its ``transactionId``), 2.0.1
TriggerMessage(TransactionEvent) (a TransactionEvent Updated per running transaction). A running
transaction is learned from those messages (and from any later 1.6 MeterValues with a
``transactionId`` / 2.0.1 TransactionEvent naming its EVSE), reported as a ``TransactionStarted``.

1.6 transaction ids are assigned by the central system. They start at the current Unix time in
seconds (and above any id this process already gave out), not at 1, so that a restarted central system
does not hand out the id of a transaction still running from before the restart. Ids would only repeat
if an earlier run gave out more ids than seconds passed since it started (more than one transaction
per second on average); they stay below 2**31 until 2038. A new 1.6 transaction is recorded after the
StartTransaction answer went out, so no call naming it (a TxProfile) can reach the charger before the id.

A BootNotification is answered Accepted for a *known* id (one with a registered listener, or listed
in ``allow_ids`` or ``basic_auth``) and ``unknown_boot`` ("Accepted" or "Pending") for any other id.
Registering a listener for a connected Pending charge point sends it TriggerMessage(BootNotification).

Id tags are answered with ``authorize`` (an :class:`~protocols.ocpp.authorization.IdTagPolicy`, or its
config; default: accept all), and a tag this central system sent in a remote start to a charge point is
accepted from that charge point. DataTransfer goes to ``data_transfer={vendor_id: handler}``
(:mod:`protocols.ocpp.data_transfer`); an unknown vendorId is answered UnknownVendorId.

Nothing is ever awaited inside an ``@on`` handler: calls to the charger run in tasks owned by the
connection (cancelled and awaited when it closes) or by the central system (awaited by :meth:`stop`).
Every frame is logged at INFO by the ``protocols.ocpp.wire`` logger (set it to WARNING in production
with many chargers).
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import ipaddress
import itertools
import logging
import os
import ssl
import time
from http import HTTPStatus
from typing import Any, Awaitable, Iterable, Literal, Mapping
from urllib.parse import unquote

import ocpp.messages
import ocpp.v16.call
import ocpp.v201.call
from websockets.asyncio.server import Server, ServerConnection, basic_auth as websockets_basic_auth, serve
from websockets.exceptions import ConnectionClosed, NegotiationError

from runtime.core.errors import ChargerNotConnected, ConfigurationError

from .authorization import AuthorizeConfig, IdTagPolicy, TagDecision
from .connection import ChargePointConnection
from .data_transfer import DataTransferHandler, DataTransferRouter
from .notifications import ChargerOffline, OcppEvent, OcppListener
from .records import ChargePointRecord
from .security import PROFILES, check_client_certificate, server_context
from .v16.central import ChargePoint16Connection
from .v201.central import ChargePoint201Connection

log = logging.getLogger(__name__)

__all__ = ["CentralSystem", "ChargePointRecord", "ChargerNotConnected", "SUBPROTOCOLS", "charge_point_id_from_path"]

#: Subprotocols in order of preference (the server picks the first one the client offers).
SUBPROTOCOLS: tuple[str, ...] = ("ocpp2.0.1", "ocpp1.6")
_VERSION_OF = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}

_last_transaction_id = 0  # the highest 1.6 transaction id any CentralSystem of this process gave out

# The charge point id and the reason of a refused Basic auth, handed between _process_request and the
# credentials check the websockets helper calls (synchronously, in the same task).
_AUTH_CP_ID: contextvars.ContextVar[str] = contextvars.ContextVar("ocpp_auth_cp_id", default="")
_AUTH_PROBLEM: contextvars.ContextVar[str | None] = contextvars.ContextVar("ocpp_auth_problem", default=None)
_BASIC_AUTH_REPLY = {"Missing credentials\n": "no HTTP Basic credentials",
                     "Unsupported credentials\n": "malformed HTTP Basic credentials"}


def charge_point_id_from_path(path: str) -> str:
    """The charge point id in a websocket request path: its last non-empty segment, URL-decoded."""
    path = path.split("?", 1)[0].rstrip("/")
    return unquote(path.rsplit("/", 1)[-1]) if path else ""


def _peer(address: Any) -> str:
    """``host:port`` of a socket address (for log lines)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def is_loopback(host: str | None) -> bool:
    """Does listening on ``host`` reach this machine only? ("localhost" and loopback addresses do; "",
    "0.0.0.0", "::" and other names or addresses reach the network)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_security_profile(profile: int | None, *, basic_auth: bool, tls_cert: bool, tls_key: bool,
                             ca_cert: bool) -> int:
    """The security profile a central system runs at, checked against what it was given.

    Without ``profile``: 3 with a CA, 2 with a certificate, 1 with Basic auth passwords, else 0. Raises
    :class:`ConfigurationError` naming what is missing or what does not belong to the profile."""
    if profile is None:
        profile = 3 if ca_cert else 2 if tls_cert else 1 if basic_auth else 0
    if isinstance(profile, bool) or profile not in PROFILES:
        raise ConfigurationError(f"security_profile: must be 0, 1, 2 or 3, got {profile!r}")
    what = f"security profile {profile} ({PROFILES[profile]})"
    if profile >= 2 and not (tls_cert and tls_key):
        raise ConfigurationError(f"{what} needs tls_cert and tls_key (the central system's certificate and key)")
    if profile == 3 and not ca_cert:
        raise ConfigurationError(f"{what} needs ca_cert (the CA the chargers' certificates must chain to)")
    if profile in (1, 2) and not basic_auth:
        raise ConfigurationError(f"{what} needs a Basic auth password for every charge point (basic_auth)")
    if profile in (0, 3) and basic_auth:
        raise ConfigurationError(f"{what} does not use HTTP Basic auth passwords; "
                                 f"use security profile 1 or 2 for passwords")
    if profile < 2 and (tls_cert or tls_key or ca_cert):
        raise ConfigurationError(f"{what} is plain ws: tls_cert, tls_key and ca_cert belong to profiles 2 and 3")
    if profile == 2 and ca_cert:
        raise ConfigurationError(f"{what} does not check client certificates: ca_cert belongs to profile 3")
    return profile


class CentralSystem:
    """OCPP 1.6 + 2.0.1 central system (see the module docstring).

    ``response_timeout`` bounds every call the central system makes on its own (rate unit query,
    TriggerMessage) and is the default for :meth:`call`. ``inline_validation`` (default True) has the
    ``ocpp`` library validate every message against its JSON schema on the I/O loop itself instead of
    handing each one to a thread pool (``ocpp.messages.ASYNC_VALIDATION = False``, a process-wide
    setting of the library): in a process with hundreds of actor threads the hand-off costs more than
    the validation. Validation stays on either way. ``reconnect_grace``: a charge point that was
    registered before and reconnects without a BootNotification is online at its first message or
    after this many seconds. ``pending_interval`` is the BootNotification interval given with a
    Pending answer (when the charger retries). ``close_timeout`` bounds a websocket closing handshake.

    Security: ``security_profile`` (0-3, or None to infer it), ``basic_auth`` (profiles 1 and 2),
    ``tls_cert`` / ``tls_key`` (PEM files of the central system's certificate chain and unencrypted key,
    profiles 2 and 3) and ``ca_cert`` (PEM file of the CA the chargers' certificates must chain to,
    profile 3); see the module docstring. The TLS files are read when the object is made, so a missing
    or wrong file is a :class:`ConfigurationError` at once. ``authorize``: the id-tag policy
    (:class:`~protocols.ocpp.authorization.IdTagPolicy`, an ``AuthorizeConfig`` or its mapping; default
    accept all). ``data_transfer``: vendorId -> handler (:mod:`protocols.ocpp.data_transfer`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, allow_ids: Iterable[str] | None = None,
                 basic_auth: Mapping[str, str | bytes] | None = None, security_profile: int | None = None,
                 tls_cert: str | os.PathLike[str] | None = None, tls_key: str | os.PathLike[str] | None = None,
                 ca_cert: str | os.PathLike[str] | None = None,
                 authorize: IdTagPolicy | AuthorizeConfig | Mapping[str, Any] | None = None,
                 data_transfer: Mapping[str, DataTransferHandler] | None = None,
                 unknown_boot: Literal["Accepted", "Pending"] = "Accepted", heartbeat_interval: int = 300,
                 response_timeout: float = 10.0, pending_interval: int = 30, reconnect_grace: float = 2.0,
                 close_timeout: float = 5.0, compression: str | None = None,
                 ping_interval: float | None = 20.0, ping_timeout: float | None = 20.0,
                 inline_validation: bool = True) -> None:
        if unknown_boot not in ("Accepted", "Pending"):
            raise ConfigurationError(f"unknown_boot: must be 'Accepted' or 'Pending', got {unknown_boot!r}")
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise ConfigurationError(f"port: must be 0..65535, got {port!r}")
        if response_timeout <= 0:
            raise ConfigurationError(f"response_timeout: must be > 0, got {response_timeout!r}")
        if isinstance(allow_ids, str):
            raise ConfigurationError("allow_ids: give a set of charge point ids, not one string")
        self.host = host
        self._requested_port = port
        self.allow_ids: frozenset[str] | None = frozenset(allow_ids) if allow_ids is not None else None
        self.basic_auth: dict[str, bytes] | None = None
        if basic_auth is not None:
            self.basic_auth = {str(k): (v if isinstance(v, bytes) else str(v).encode("utf-8"))
                               for k, v in basic_auth.items()}
        self.security_profile = resolve_security_profile(
            security_profile, basic_auth=basic_auth is not None, tls_cert=tls_cert is not None,
            tls_key=tls_key is not None, ca_cert=ca_cert is not None)
        self._ssl: ssl.SSLContext | None = None
        if self.security_profile >= 2:
            assert tls_cert is not None and tls_key is not None
            try:
                self._ssl = server_context(tls_cert, tls_key, ca_cert if self.security_profile == 3 else None)
            except (OSError, ssl.SSLError) as exc:  # FileNotFoundError, a file that is not a PEM certificate/key
                raise ConfigurationError(f"TLS (security profile {self.security_profile}): {exc}") from None
        # The websockets library's own HTTP Basic auth (parsing the header, the 401 answer); our check.
        self._basic = (websockets_basic_auth(realm="ocpp", check_credentials=self._check_credentials)
                       if self.basic_auth is not None else None)
        if isinstance(authorize, IdTagPolicy):
            self.authorization = authorize
        else:
            try:
                self.authorization = IdTagPolicy.from_config(authorize)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise ConfigurationError(f"authorize: {exc}") from None
        try:
            self._data_transfer = DataTransferRouter(data_transfer)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self._remote_tags: dict[str, dict[str, None]] = {}  # cp id -> tags it was sent in a remote start
        self.unknown_boot = unknown_boot
        self.heartbeat_interval = int(heartbeat_interval)
        self.pending_interval = int(pending_interval)
        self.response_timeout = float(response_timeout)
        self.reconnect_grace = float(reconnect_grace)
        self.close_timeout = close_timeout
        self.compression = compression
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.inline_validation = inline_validation
        self._server: Server | None = None
        self._port: int | None = None
        self._records: dict[str, ChargePointRecord] = {}
        self._listeners: dict[str, list[OcppListener]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Not 1: a restarted central system must not reuse the id of a transaction still running (see
        # the module docstring); above the ids this process gave out before (a site restarted in-process).
        self._tx_ids = itertools.count(max(int(time.time()), _last_transaction_id + 1))

    # ---- lifecycle -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("CentralSystem.port: the central system is not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        """``ws://host:port``, or ``wss://host:port`` under profiles 2 and 3 (append ``/<charge point id>``)."""
        return f"{'wss' if self._ssl is not None else 'ws'}://{self.host}:{self.port}"

    @property
    def authenticates(self) -> bool:
        """Does every connection prove which charge point it is (security profile 1, 2 or 3)?"""
        return self.security_profile > 0

    async def start(self) -> None:
        """Start serving on the running loop. :attr:`port` is the bound port afterwards."""
        if self._server is not None:
            raise RuntimeError("CentralSystem already started")
        if self.inline_validation:
            ocpp.messages.ASYNC_VALIDATION = False
        self._server = await serve(
            self._handle, self.host, self._requested_port, subprotocols=list(SUBPROTOCOLS),
            select_subprotocol=self._select_subprotocol, process_request=self._process_request,
            compression=self.compression, close_timeout=self.close_timeout, ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout, ssl=self._ssl, logger=logging.getLogger("protocols.ocpp.websockets"))
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("OCPP central system listening on %s (subprotocols %s; security profile %d: %s; id tags: %s)",
                 self.url, ", ".join(SUBPROTOCOLS), self.security_profile, PROFILES[self.security_profile],
                 self.authorization.mode)
        if not self.authenticates and not is_loopback(self.host):
            log.warning("OCPP central system on %s authenticates nobody (security profile 0): anyone who reaches "
                        "port %d can connect as %s; configure passwords (profile 1) or TLS (profiles 2, 3)",
                        self.host or "all interfaces", self._port,
                        "any charge point id" if self.allow_ids is None else "any allowed charge point id")

    async def stop(self) -> None:
        """Close the server and every connection; await every task the central system started."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for rec in self._records.values():
            rec.connection = None
            rec.online = False
        if server is not None:
            log.info("OCPP central system on port %s stopped", self._port)

    async def __aenter__(self) -> "CentralSystem":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ---- registry and listeners ------------------------------------------------------------------
    def charge_point(self, cp_id: str) -> ChargePointRecord | None:
        """What is known about ``cp_id`` (None if it never connected)."""
        return self._records.get(cp_id)

    def connected_ids(self) -> list[str]:
        return [cp_id for cp_id, rec in self._records.items() if rec.connection is not None]

    def online_ids(self) -> list[str]:
        return [cp_id for cp_id, rec in self._records.items() if rec.online]

    def register_listener(self, cp_id: str, callback: OcppListener) -> None:
        """Call ``callback(event)`` (on the loop) for every :mod:`protocols.ocpp.notifications` event of ``cp_id``.

        A connected charge point whose boot was answered Pending is asked to boot again (it is now known).
        """
        self._listeners.setdefault(cp_id, []).append(callback)
        rec = self._records.get(cp_id)
        if rec is not None and rec.connection is not None and rec.registration == "Pending":
            conn = rec.connection
            conn.spawn(conn._trigger_boot(), "trigger-boot")

    def unregister_listener(self, cp_id: str, callback: OcppListener) -> None:
        callbacks = self._listeners.get(cp_id)
        if callbacks and callback in callbacks:
            callbacks.remove(callback)
            if not callbacks:
                del self._listeners[cp_id]

    def _emit(self, cp_id: str, event: OcppEvent) -> None:
        for callback in list(self._listeners.get(cp_id, ())):
            try:
                callback(event)
            except Exception:
                log.exception("OCPP listener %r for %s raised on %r", callback, cp_id, event)

    def _is_known(self, cp_id: str) -> bool:
        return (cp_id in self._listeners or (self.allow_ids is not None and cp_id in self.allow_ids)
                or (self.basic_auth is not None and cp_id in self.basic_auth))

    def _registration_for(self, cp_id: str) -> str:
        return "Accepted" if self._is_known(cp_id) else self.unknown_boot

    def _decide_tag(self, cp_id: str, id_tag: str) -> TagDecision:
        """The answer about ``id_tag`` presented at ``cp_id``: Accepted if this central system sent it to
        that charge point in a remote start, else the id-tag policy's."""
        if id_tag.casefold() in self._remote_tags.get(cp_id, ()):
            return TagDecision("Accepted")
        return self.authorization.decide(id_tag)

    def _note_remote_start(self, cp_id: str, payload: Any) -> None:
        """Remember the tag of a remote start sent to ``cp_id`` (the latest 16 per charge point)."""
        if isinstance(payload, ocpp.v16.call.RemoteStartTransaction):
            tag = payload.id_tag
        elif isinstance(payload, ocpp.v201.call.RequestStartTransaction):
            tag = (payload.id_token or {}).get("id_token")
        else:
            return
        if isinstance(tag, str) and tag:
            tags = self._remote_tags.setdefault(cp_id, {})
            tags.pop(tag.casefold(), None)
            tags[tag.casefold()] = None
            while len(tags) > 16:
                del tags[next(iter(tags))]

    def _next_transaction_id(self) -> int:
        global _last_transaction_id
        tx = next(self._tx_ids)
        _last_transaction_id = max(_last_transaction_id, tx)
        return tx

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- calls -----------------------------------------------------------------------------------
    async def call(self, cp_id: str, payload: Any, *, timeout: float | None = None) -> Any:
        """Send one call (an ``ocpp.v16.call.*`` / ``ocpp.v201.call.*`` object matching the charge
        point's version) and return the ``call_result`` object.

        :raises ChargerNotConnected: no connection, or it closed before the answer.
        :raises TimeoutError: no answer within ``timeout`` (default ``response_timeout``).
        :raises ocpp.exceptions.OCPPError: the charger answered with a CallError (or the payload is invalid).
        """
        rec = self._records.get(cp_id)
        conn = rec.connection if rec is not None else None
        if conn is None:
            raise ChargerNotConnected(f"charge point {cp_id!r} is not connected")
        self._note_remote_start(cp_id, payload)
        try:
            # a timeout scope, not wait_for: no extra task per call (Python 3.11's wait_for wraps the call in one)
            async with asyncio.timeout(self.response_timeout if timeout is None else timeout):
                return await conn.call(payload, suppress=False)
        except ConnectionClosed as exc:
            raise ChargerNotConnected(f"charge point {cp_id!r} disconnected ({exc})") from None

    # ---- handshake -------------------------------------------------------------------------------
    async def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        """Admit or refuse one HTTP upgrade, before any OCPP frame: the id in the path, the allow-list, the
        client certificate's name (profile 3) and the Basic auth credentials (profiles 1 and 2)."""
        cp_id = charge_point_id_from_path(request.path)
        peer = _peer(connection.remote_address)
        if not cp_id:
            log.warning("refusing a websocket client from %s: no charge point id in the path %r", peer, request.path)
            return connection.respond(HTTPStatus.NOT_FOUND, "no charge point id in the URL path\n")
        if self.allow_ids is not None and cp_id not in self.allow_ids:
            log.warning("refusing charge point %r from %s: not in the allow-list", cp_id, peer)
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown charge point\n")
        if self.security_profile == 3:
            why = check_client_certificate(connection.transport.get_extra_info("peercert"), cp_id)
            if why is not None:
                log.warning("refusing charge point %r from %s: %s", cp_id, peer, why)
                return connection.respond(HTTPStatus.FORBIDDEN,
                                          "client certificate does not name this charge point\n")
        if self._basic is not None:
            _AUTH_CP_ID.set(cp_id)
            _AUTH_PROBLEM.set(None)
            response = await self._basic(connection, request)
            if response is not None:
                why = _AUTH_PROBLEM.get() or _BASIC_AUTH_REPLY.get(response.body.decode("utf-8", "replace"),
                                                                    "authentication failed")
                log.warning("refusing charge point %r from %s: %s", cp_id, peer, why)
                return response
        return None

    def _check_credentials(self, username: str, password: str) -> bool:
        """The websockets ``basic_auth`` check: the username must be the charge point id of the path, the
        password that id's (compared in constant time). Why not is left in ``_AUTH_PROBLEM``."""
        assert self.basic_auth is not None
        cp_id = _AUTH_CP_ID.get()
        if username != cp_id:
            _AUTH_PROBLEM.set(f"HTTP Basic username {username!r} is not the charge point id")
            return False
        expected = self.basic_auth.get(cp_id)
        if expected is None:
            _AUTH_PROBLEM.set("no password configured for this id (basic_auth)")
            return False
        # websockets decodes the credentials with surrogateescape: this gives back the bytes that were sent.
        if not hmac.compare_digest(password.encode("utf-8", "surrogateescape"), expected):
            _AUTH_PROBLEM.set("wrong password")
            return False
        return True

    def _select_subprotocol(self, connection: ServerConnection, offered: Any) -> Any:
        for proto in SUBPROTOCOLS:
            if proto in offered:
                return proto
        request = connection.request
        cp_id = charge_point_id_from_path(request.path) if request is not None else "?"
        log.warning("refusing charge point %r from %s: it offered subprotocols %s; this central system speaks %s",
                    cp_id, connection.remote_address, list(offered) or "(none)", ", ".join(SUBPROTOCOLS))
        raise NegotiationError(f"unsupported subprotocol {list(offered)!r}; expected one of {', '.join(SUBPROTOCOLS)}")

    # ---- one connection --------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cp_id = charge_point_id_from_path(ws.request.path)
        version = _VERSION_OF.get(ws.subprotocol or "")
        if version is None:  # select_subprotocol refuses this during the handshake; defensive
            log.warning("charge point %r connected without an OCPP subprotocol; closing", cp_id)
            await ws.close(1002, "OCPP subprotocol required")
            return
        rec = self._records.get(cp_id)
        if rec is None:
            rec = self._records[cp_id] = ChargePointRecord(cp_id)
        cls = ChargePoint16Connection if version == "1.6" else ChargePoint201Connection
        conn = cls(cp_id, ws, self, rec)
        old = rec.connection
        rec.connection = conn
        rec.version = version
        if old is not None:
            old_peer = _peer(old._connection.remote_address)  # type: ignore[attr-defined]
            if self.authenticates:
                log.info("charge point %s: a new authenticated connection from %s replaces the open one from %s "
                         "(as after a reboot)", cp_id, _peer(ws.remote_address), old_peer)
            else:
                log.warning("charge point %s: a second connection from %s while the one from %s is open, and "
                            "nobody is authenticated (security profile 0): it may be another device posing as %s; "
                            "the new connection replaces the old one", cp_id, _peer(ws.remote_address), old_peer,
                            cp_id)
            old.replaced = True
            self._spawn(self._close_replaced(old), f"ocpp-{cp_id}-close-replaced")
            if rec.online:
                rec.online = False
                self._emit(cp_id, ChargerOffline(cp_id, "replaced by a new connection"))
        log.info("charge point %s connected from %s (OCPP %s)", cp_id, ws.remote_address, version)
        if rec.registration == "Accepted" or (rec.registration is None and self._is_known(cp_id)):
            conn.spawn(conn._reconnect_grace(self.reconnect_grace), "reconnect-grace")
        reason = "connection closed"
        try:
            await conn.start()
        except ConnectionClosed as exc:
            reason = f"connection closed ({exc.rcvd.code if exc.rcvd else 1006})"
        except asyncio.CancelledError:
            reason = "central system stopped"
            raise
        except Exception:
            log.exception("charge point %s: connection failed", cp_id)
            reason = "connection failed"
        finally:
            await conn.shutdown()
            if rec.connection is conn:
                rec.connection = None
                was_online, rec.online = rec.online, False
                log.info("charge point %s disconnected: %s", cp_id, reason)
                if was_online:
                    self._emit(cp_id, ChargerOffline(cp_id, reason))

    async def _close_replaced(self, old: ChargePointConnection) -> None:
        try:
            await old._connection.close(1000, "replaced by a newer connection")  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - best effort
            log.debug("closing a replaced connection failed", exc_info=True)

