"""One charge point's connection to the central system: what both OCPP versions share.

:class:`ChargePointConnection` is the base of the per-version connection classes
(:class:`protocols.ocpp.v16.central.ChargePoint16Connection`,
:class:`protocols.ocpp.v201.central.ChargePoint201Connection`), mixed in before the ``ocpp``
library's ``ChargePoint``. It owns the tasks the connection starts (cancelled and awaited when it
closes, see :meth:`ChargePointConnection.shutdown`), the BootNotification answer and what follows it
(reading the charger's rate unit, then ChargerOnline), the reconnect logic for a charger that comes
back without booting (TriggerMessage to re-announce its transactions), the helpers the handlers
use to report connector states, meter readings and transactions to the central system's listeners,
and the guard every frame from the charger passes first (:meth:`ChargePointConnection.route_message`:
a bad frame, or a CALL of an action no handler answers, is answered as its OCPP-J version prescribes,
see :mod:`protocols.ocpp.frames`, and never closes the connection).

Every CALLERROR the library itself sends passes :meth:`ChargePointConnection._send` (the library's one
send method), which spells its error code as the connection's version does: the library raises
``FormatViolation`` for an invalid payload whatever the version, but OCPP-J 1.6 Table 7 names that code
``FormationViolation`` (and ``OccurenceConstraintViolation``, sic), and a strict 1.6 charger refuses a
code its version does not have. This is the second private method of the library overridden here (after
:mod:`protocols.ocpp.response_wait`); ``tests/test_ocpp_conformance.py`` proves it end to end.

The handlers ask the central system about id tags through :meth:`ChargePointConnection._decide_tag`
(:mod:`protocols.ocpp.authorization`) and about vendor messages through
:meth:`ChargePointConnection._data_transfer` (:mod:`protocols.ocpp.data_transfer`); the messages a charger
sends under security profiles 2 and 3 (SecurityEventNotification, SignCertificate) are logged and
answered by :meth:`ChargePointConnection._security_event` and :meth:`ChargePointConnection._csr`.

Everything here runs on the I/O loop. Nothing is awaited inside an ``@on`` handler: calls to the
charger run in tasks (:meth:`ChargePointConnection.spawn`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Mapping

from websockets.exceptions import ConnectionClosed

from runtime.core.errors import ChargerNotConnected

from .authorization import TagDecision
from .frames import FrameProblem, call_error, check_frame
from .meter import parse_meter_values
from .notifications import ChargerOnline, ConnectorStatus, MeterReading, TransactionStarted
from .records import ChargePointRecord
from .response_wait import ClosingResponseWait, wake_waiting_call

if TYPE_CHECKING:  # pragma: no cover
    from .central_system import CentralSystem

log = logging.getLogger("protocols.ocpp.central_system")
#: Every OCPP frame, both directions, at INFO (set it to WARNING in production with many chargers).
WIRE_LOG = logging.getLogger("protocols.ocpp.wire")

__all__ = ["ChargePointConnection", "WIRE_LOG"]

_PREVIEW = 120  # characters of a bad frame quoted in the log

# The error codes the library may send, as each version spells them (OCPP-J 1.6 Table 7, 2.0.1 Table 8).
_SPELLING: dict[str, dict[str, str]] = {
    "1.6": {"FormatViolation": "FormationViolation",
            "OccurrenceConstraintViolation": "OccurenceConstraintViolation"},
    "2.0.1": {"FormationViolation": "FormatViolation",
              "OccurenceConstraintViolation": "OccurrenceConstraintViolation"},
}


def _preview(raw: str | bytes) -> str:
    """The start of a frame, for the log (a bad frame can be a megabyte of brackets)."""
    start = raw[:_PREVIEW] if isinstance(raw, str) else repr(raw[:_PREVIEW])
    return start if len(raw) <= _PREVIEW else f"{start}... ({len(raw)} characters)"


class ChargePointConnection(ClosingResponseWait):
    """Mixin for the per-connection ChargePoint classes: owned tasks, registration and announce
    logic, helpers for the handlers. Subclasses implement the version's queries and triggers."""

    version: str

    def _setup(self, cs: "CentralSystem", record: ChargePointRecord) -> None:
        self._cs = cs
        self._record = record
        self._tasks: set[asyncio.Task[Any]] = set()
        self._registration: str | None = None  # this connection's BootNotification answer
        self._announcing = False
        self._closed = False
        self.replaced = False
        #: The actions a handler answers; any other CALL is answered NotImplemented / NotSupported.
        self._handled = frozenset(action for action, hooks in self.route_map.items()  # type: ignore[attr-defined]
                                  if "_on_action" in hooks)

    # ---- tasks owned by this connection --------------------------------------------------------
    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any] | None:
        if self._closed:
            coro.close()  # type: ignore[attr-defined]
            return None
        task = asyncio.get_running_loop().create_task(coro, name=f"ocpp-{self.id}-{name}")  # type: ignore[attr-defined]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, (ConnectionClosed, ChargerNotConnected)):
                log.debug("charge point %s: %s ended: connection closed", self.id, task.get_name())  # type: ignore[attr-defined]
            else:
                log.error("charge point %s: task %s failed", self.id, task.get_name(), exc_info=exc)  # type: ignore[attr-defined]

    async def shutdown(self) -> None:
        """Cancel and await every task this connection started; wake a waiting call."""
        self._closed = True
        wake_waiting_call(self)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- frames from the charger ---------------------------------------------------------------
    async def route_message(self, raw_msg: str | bytes) -> None:
        """Route one frame from the charger (the library's receive loop calls this for every frame).

        A frame the library cannot route safely (:func:`~protocols.ocpp.frames.check_frame`) is answered
        here with the CALLERROR its OCPP-J version prescribes, or only logged where the version prescribes
        no answer; a well-formed frame goes to the library's ``route_message``. No frame closes the
        connection: an unexpected error while the library handles one is logged and the next frame is read.
        """
        problem = check_frame(raw_msg, self.version, self._handled)
        if problem is not None:
            await self._refuse_frame(problem, raw_msg)
            return
        try:
            await super().route_message(raw_msg)  # type: ignore[misc]
        except ConnectionClosed:
            raise
        except Exception:  # noqa: BLE001 - one frame must not end the charger's connection
            log.exception("charge point %s: handling a frame failed; the connection stays open: %s",
                          self.id, _preview(raw_msg))  # type: ignore[attr-defined]

    async def _refuse_frame(self, problem: FrameProblem, raw_msg: str | bytes) -> None:
        cp_id: str = self.id  # type: ignore[attr-defined]
        if not problem.answered:
            log.warning("charge point %s: bad OCPP %s frame ignored, not answered (%s): %s", cp_id, self.version,
                        problem.description, _preview(raw_msg))
            return
        log.warning("charge point %s: OCPP %s frame answered %s (%s): %s", cp_id, self.version, problem.code,
                    problem.description, _preview(raw_msg))
        answer = call_error(problem)
        WIRE_LOG.info("%s: send %s", cp_id, answer)  # as the library logs what it sends
        await self._connection.send(answer)  # type: ignore[attr-defined]

    async def _send(self, message: str) -> None:
        """The library's send (every frame it sends passes here): a CALLERROR's code spelled as this
        connection's OCPP version spells it (see the module docstring)."""
        if message.startswith("[4,"):
            message = _respell_error(message, self.version)
        await super()._send(message)  # type: ignore[misc]

    # ---- registration / announce ---------------------------------------------------------------
    def _boot_answer(self, payload: Mapping[str, Any]) -> tuple[str, int]:
        status = self._cs._registration_for(self.id)  # type: ignore[attr-defined]
        self._registration = status
        self._record.registration = status
        self._record.boot = dict(payload)
        # A reboot ends every transaction (the charger reports the old ones with StopTransaction later).
        self._record.transactions.clear()
        self._record.charging_states.clear()
        interval = self._cs.heartbeat_interval if status == "Accepted" else self._cs.pending_interval
        if status != "Accepted":
            log.info("charge point %s: BootNotification answered %s (unknown id)", self.id, status)  # type: ignore[attr-defined]
        return status, interval

    def _after_boot(self) -> None:
        if self._registration == "Accepted":
            reason = "rebooted" if self._record.ever_online else "booted"
            self._announcing = True
            self.spawn(self._announce(reason, read_unit=True), "post-boot")

    def _on_traffic(self) -> None:
        """Any message but BootNotification (or the reconnect grace timer): a charge point that reconnected
        without booting is online if it was accepted before, or if it was never seen by this central
        system but its id is known (a charger reconnecting after the site restarted does not boot)."""
        if self._announcing or self._registration is not None or self._closed:
            return
        reg = self._record.registration
        if reg == "Accepted" or (reg is None and self._cs._is_known(self.id)):  # type: ignore[attr-defined]
            self._announcing = True
            self.spawn(self._announce("reconnected", read_unit=not self._record.rate_unit_known), "reconnect")

    async def _reconnect_grace(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._on_traffic()

    async def _announce(self, reason: str, read_unit: bool) -> None:
        if reason == "reconnected":
            # It did not boot, so it may still be charging in a transaction we do not know (the site
            # restarted) or that changed while it was away: ask it to tell (in its own task; the
            # triggers go out before the rate unit query, so their answers usually precede ChargerOnline).
            self.spawn(self._resync(), "resync")
        if read_unit:
            await self._read_rate_unit()
        rec = self._record
        if rec.connection is not self or self._closed:
            return
        # "reconnected" without ever being online here: it was connected to an earlier run of the site
        # and may hold stale profiles, so it counts as rebooted too.
        rebooted = rec.ever_online or reason == "reconnected"
        rec.online = True
        rec.ever_online = True
        log.info("charge point %s online (OCPP %s, %s, rate unit %s)", self.id, self.version, reason,  # type: ignore[attr-defined]
                 rec.rate_unit)
        self._cs._emit(self.id, ChargerOnline(self.id, self.version, rebooted, reason, rec.rate_unit))  # type: ignore[attr-defined]

    async def _read_rate_unit(self) -> None:
        try:
            unit = await asyncio.wait_for(self._query_rate_unit(), self._cs.response_timeout)
        except (ConnectionClosed, ChargerNotConnected):
            raise
        except asyncio.TimeoutError:
            log.warning("charge point %s: no answer about its charging rate unit; using %s", self.id,  # type: ignore[attr-defined]
                        self._record.rate_unit)
            return
        except Exception as exc:  # CallError, invalid answer
            log.warning("charge point %s: could not read its charging rate unit (%s); using %s", self.id,  # type: ignore[attr-defined]
                        exc, self._record.rate_unit)
            return
        if unit is None:
            log.info("charge point %s did not report a charging rate unit; using %s", self.id,  # type: ignore[attr-defined]
                     self._record.rate_unit)
            return
        self._record.rate_unit = unit
        self._record.rate_unit_known = True

    async def _query_rate_unit(self) -> str | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _resync_triggers(self) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _resync(self) -> None:
        """Best effort: TriggerMessage for each message that re-announces the charger's transactions and
        status. Refusals, CallErrors (NotSupported/NotImplemented) and timeouts are logged and ignored."""
        for payload in self._resync_triggers():
            if self._closed:
                return
            try:
                res = await asyncio.wait_for(self.call(payload, suppress=False), self._cs.response_timeout)
            except (ConnectionClosed, ChargerNotConnected):
                return
            except Exception as exc:  # noqa: BLE001 - CallError, timeout, invalid answer: best effort
                log.info("charge point %s: TriggerMessage(%s) failed (%s); ignored", self.id,  # type: ignore[attr-defined]
                         payload.requested_message, exc or type(exc).__name__)
                continue
            log.debug("charge point %s: TriggerMessage(%s) answered %s", self.id,  # type: ignore[attr-defined]
                      payload.requested_message, res.status)

    async def _trigger_boot(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # ---- helpers for the handlers ----------------------------------------------------------------
    def _decide_tag(self, id_tag: str) -> TagDecision:
        """The central system's answer about ``id_tag`` presented at this charge point (logged unless Accepted)."""
        cp_id: str = self.id  # type: ignore[attr-defined]
        decision = self._cs._decide_tag(cp_id, id_tag)
        if decision.status != "Accepted":
            log.info("charge point %s: id tag %r answered %s", cp_id, id_tag, decision.status)
        return decision

    async def _data_transfer(self, vendor_id: str, message_id: str | None, data: Any) -> tuple[str, Any]:
        cp_id: str = self.id  # type: ignore[attr-defined]
        return await self._cs._data_transfer.answer(cp_id, self.version, vendor_id, message_id, data)

    def _security_event(self, type: str, timestamp: str, tech_info: str | None) -> None:
        """A SecurityEventNotification (sent under profiles 2 and 3, e.g. after a failed TLS handshake or a
        settings change): logged at WARNING, for the operator; nothing else follows from it here."""
        cp_id: str = self.id  # type: ignore[attr-defined]
        log.warning("charge point %s: security event %s at %s%s", cp_id, type, timestamp,
                    f" ({tech_info})" if tech_info else "")

    def _csr(self, certificate_type: str | None) -> None:
        """A SignCertificate (the charger asks for a certificate to be signed, to move to profile 3 or to
        renew one): this central system signs no certificates, so it is answered Rejected, and logged."""
        cp_id: str = self.id  # type: ignore[attr-defined]
        log.warning("charge point %s: SignCertificate request (%s) answered Rejected: this central system does "
                    "not sign certificates; install the charger's certificate by other means", cp_id,
                    certificate_type or "ChargingStationCertificate")

    def _set_state(self, connector: int, state: str | None, raw: str, error_code: str | None = None,
                   info: str | None = None, *, status_notification: bool = True) -> None:
        """Record and report a connector state. A StatusNotification is always reported; a state
        derived from a TransactionEvent only when it differs from the last one."""
        rec = self._record
        if status_notification:
            rec.statuses[connector] = raw
        if state is None:
            log.warning("charge point %s connector %s: unknown status %r", self.id, connector, raw)  # type: ignore[attr-defined]
            return
        if not status_notification and rec.states.get(connector) == (state, raw):
            return
        rec.states[connector] = (state, raw)
        self._cs._emit(self.id, ConnectorStatus(self.id, connector, state, raw, error_code, info))  # type: ignore[attr-defined]

    def _meter(self, connector: int, meter_value: Any, transaction_id: int | str | None = None) -> None:
        power, energy = parse_meter_values(meter_value, charger=self.id)  # type: ignore[attr-defined]
        if power is None and energy is None:
            return
        self._cs._emit(self.id, MeterReading(self.id, connector, power, energy, transaction_id))  # type: ignore[attr-defined]

    def _learn_transaction(self, connector: int, transaction_id: int | str) -> None:
        """A message names a running transaction on ``connector`` (1.6 MeterValues): record it if it is
        new (e.g. it started before the site restarted) and report it as started. An id that ended
        here (a late, queued message) is ignored."""
        rec = self._record
        if rec.transactions.get(connector) == transaction_id or rec.has_ended(transaction_id):
            return
        rec.transactions[connector] = transaction_id
        log.info("charge point %s: transaction %s on connector %s learned from its messages", self.id,  # type: ignore[attr-defined]
                 transaction_id, connector)
        self._cs._emit(self.id, TransactionStarted(self.id, connector, transaction_id))  # type: ignore[attr-defined]



def _respell_error(message: str, version: str) -> str:
    """``message`` (a CALLERROR frame) with its error code as ``version`` spells it; unchanged otherwise."""
    try:
        frame = json.loads(message)
    except ValueError:
        return message
    if not (isinstance(frame, list) and len(frame) == 5 and frame[0] == 4):
        return message
    code = _SPELLING[version].get(frame[2])
    if code is None:
        return message
    frame[2] = code
    return json.dumps(frame, separators=(",", ":"))
