"""ModbusBatteryLink: one battery over Modbus TCP, as a :class:`~protocols.base.DeviceLink`.

Each link owns ONE pymodbus ``AsyncModbusTcpClient`` and two tasks on the site's I/O loop, so a dead
or silent battery only ever delays its own commands:

* the connection keeper connects, lets the register map discover the device (SunSpec model chain),
  makes one probe read (the map's ``probe_reads``: a device that accepts TCP but never answers is NOT
  up; the attempt counts as failed and the backoff grows), reports ``LinkUp`` (``rebooted=True`` for
  every connection after the first one of a ``start()``: the asset actor then re-sends its targets), waits for the connection to drop, reports ``LinkDown`` once
  per outage, and reconnects with capped exponential backoff (``reconnect_delay`` doubling up to
  ``reconnect_delay_max``, +-20 % jitter, real time; reset only by an answered probe, never by a bare
  TCP connect). pymodbus' own reconnect is switched off.
* the poller reads SoC and measured power every ``poll_interval_s`` of SITE-CLOCK time (so a virtual
  clock drives it in scenarios) and right after each connect, and reports ``Telemetry({"soc_pct",
  "power_kw"})`` (power > 0 = charging), plus a ``StatusReport`` when the map has a status register.
  With a revert timer in the map (SunSpec ``revert_s > 0``) it also re-writes the last rate every
  ``revert_s / 3`` seconds (keepalive), so the device does not fall back while the site runs.
  A reading the device reports as non-finite (float32 inf/NaN) is skipped with a warning; any error
  in one poll or keepalive is logged and the loop carries on. Both tasks log if they ever end while
  the link runs.

``execute(command)``: reads what the map needs first (SunSpec scale factors and WChaMax), writes the
absolute value(s) with function 16, then (``verify``) reads the same registers back and compares.

=========================================================  ==================================================
what happened                                              outcome (reason)
=========================================================  ==================================================
all writes answered, read-back equal                       COMPLETED
read-back differs                                          FAILED ("read-back 12.0 != written 15.0 (...)")
exception response (``rr.isError()``)                      REJECTED ("ILLEGAL_DATA_VALUE (3) writing ...")
the map cannot express it (unmapped type, value too big)   REJECTED (the map's message)
no answer within ``timeout`` (``ModbusIOException``)       TIMED_OUT (NOT_CONNECTED if the connection dropped)
not connected (``ConnectionException``, reconnecting)      NOT_CONNECTED
=========================================================  ==================================================

A write that timed out may still have landed on the device: every write is an absolute setpoint, so a
retry is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from protocols.base import (DeviceContext, DeviceEvent, DeviceLink, DeviceResult, DeviceSink, LinkDown, LinkUp,
                            Outcome, StatusReport, Telemetry)
from runtime.core.commands import CommandType
from runtime.core.errors import ConfigurationError

from . import pymodbus_log
from .codec import decode_value
from .register_map import BatteryRegisterMap, RegisterMapError, WriteBlock, load_register_map

if TYPE_CHECKING:  # pragma: no cover
    from runtime.core.clock import TimerHandle
    from runtime.core.commands import Command


pymodbus_log.install()  # pymodbus' hex dumps and routine lines (timeouts, late answers), fit for a site's log
log = logging.getLogger(__name__)

__all__ = ["ModbusBatteryLink", "exception_name", "EXCEPTION_NAMES"]

#: Modbus exception codes by their names in the Modbus application protocol specification.
EXCEPTION_NAMES = {1: "ILLEGAL_FUNCTION", 2: "ILLEGAL_DATA_ADDRESS", 3: "ILLEGAL_DATA_VALUE",
                   4: "SERVER_DEVICE_FAILURE", 5: "ACKNOWLEDGE", 6: "SERVER_DEVICE_BUSY",
                   7: "NEGATIVE_ACKNOWLEDGE", 8: "MEMORY_PARITY_ERROR", 10: "GATEWAY_PATH_UNAVAILABLE",
                   11: "GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND"}


def exception_name(code: int) -> str:
    """``3 -> "ILLEGAL_DATA_VALUE (3)"``."""
    return f"{EXCEPTION_NAMES.get(int(code), 'UNKNOWN_EXCEPTION')} ({int(code)})"


class _ExceptionResponse(Exception):
    def __init__(self, code: int, what: str) -> None:
        self.code = code
        super().__init__(f"{exception_name(code)} {what}")


def _fmt(value: float) -> str:
    return repr(round(float(value), 6))


class ModbusBatteryLink(DeviceLink):
    """One Modbus TCP battery (see the module docstring).

    ``register_map``: a :class:`~protocols.modbus.register_map.BatteryRegisterMap`, a config dict,
    "default" or "sunspec" (None = the seed map). ``timeout`` bounds connecting and each request (real
    seconds); ``retries`` is pymodbus' per-request retry count. ``device_id`` is the Modbus unit id.
    """

    def __init__(self, host: str, port: int = 502, *, device_id: int = 1,
                 register_map: "BatteryRegisterMap | Mapping[str, Any] | str | None" = None,
                 timeout: float = 1.0, retries: int = 0, reconnect_delay: float = 0.5,
                 reconnect_delay_max: float = 10.0, poll_interval_s: float = 5.0, verify: bool = True,
                 name: str | None = None) -> None:
        if not isinstance(host, str) or not host:
            raise ConfigurationError(f"host: must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"port: must be an integer in 1..65535, got {port!r}")
        if isinstance(device_id, bool) or not isinstance(device_id, int) or not 0 <= device_id <= 255:
            raise ConfigurationError(f"device_id: must be an integer in 0..255, got {device_id!r}")
        for key, v in (("timeout", timeout), ("reconnect_delay", reconnect_delay),
                       ("reconnect_delay_max", reconnect_delay_max), ("poll_interval_s", poll_interval_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigurationError(f"{key}: must be a number > 0, got {v!r}")
        if reconnect_delay_max < reconnect_delay:
            raise ConfigurationError(f"reconnect_delay_max ({reconnect_delay_max}) must be >= reconnect_delay ({reconnect_delay})")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries: must be an integer >= 0, got {retries!r}")
        self.host, self.port, self.device_id = host, port, device_id
        self.register_map: BatteryRegisterMap = load_register_map(register_map)
        self.timeout, self.retries = float(timeout), retries
        self.reconnect_delay, self.reconnect_delay_max = float(reconnect_delay), float(reconnect_delay_max)
        self.poll_interval_s, self.verify = float(poll_interval_s), verify
        self.name = name or f"{host}:{port}/{device_id}"
        self._client: AsyncModbusTcpClient | None = None
        self._ctx: DeviceContext | None = None
        self._sink: DeviceSink | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._map: BatteryRegisterMap = self.register_map
        self._up = False
        self._running = False
        self._connections = 0
        self._last_error = "not started"
        self._lost: asyncio.Event | None = None
        self._lost_reason = "connection lost"
        self._poll_wakeup: asyncio.Event | None = None
        self._first_attempt: asyncio.Event | None = None
        self._poll_timer: "TimerHandle | None" = None
        self._keepalive: tuple[CommandType, float] | None = None
        self._keepalive_at = 0.0
        self._backoff = self.reconnect_delay
        self._apply_lock: asyncio.Lock | None = None  # one write plan at a time (commands vs keepalive)
        #: Counters for tests and diagnostics.
        #: attempts: connection attempts (each try to connect, bind the map and probe), connects: the ones
        #: that succeeded, tcp_connects: TCP connections made, polls / writes / keepalives: as named.
        self.stats = {"attempts": 0, "connects": 0, "tcp_connects": 0, "polls": 0, "writes": 0, "keepalives": 0}

    # ---- DeviceLink -----------------------------------------------------------------------------
    def describe(self) -> str:
        return f"ModbusBatteryLink({self.name}, {self.register_map.describe()})"

    @property
    def connected(self) -> bool:
        """True between a LinkUp and the next LinkDown."""
        return self._up

    @property
    def reconnect_backoff(self) -> float:
        """The delay (before jitter) the keeper waits before its next connection attempt: grows while
        attempts fail (no TCP, or no answer to the probe), back to ``reconnect_delay`` once one is up."""
        return self._backoff

    async def start(self, ctx: DeviceContext, sink: DeviceSink) -> None:
        """Start the connection keeper and the poller; returns once the first connection attempt has
        finished (LinkUp or LinkDown reported), at most ``timeout`` + 1 s later."""
        if self._running:
            await self.stop()
        self._ctx, self._sink = ctx, sink
        self._client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout, retries=self.retries, reconnect_delay=0,
            reconnect_delay_max=0, name=f"battery {self.name}", trace_connect=self._on_connection_change)
        self._running, self._up, self._connections = True, False, 0
        self._map, self._keepalive = self.register_map, None
        self._lost, self._poll_wakeup, self._first_attempt = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._apply_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_connected(), name=f"modbus-connect {self.name}"),
                       loop.create_task(self._poll_loop(), name=f"modbus-poll {self.name}")]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        try:
            await asyncio.wait_for(self._first_attempt.wait(), self.timeout * 4 + 1.0)
        except asyncio.TimeoutError:
            log.warning("%s: first connection attempt still running after start()", self.describe())

    async def stop(self) -> None:
        """Cancel and await both tasks, close the client; no report after this returns."""
        self._running = False
        self._sink = None
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None
        tasks, self._tasks = self._tasks, []
        pending = set(tasks)
        # Python 3.11's asyncio.wait_for (inside pymodbus's connect and requests) can swallow a cancel that
        # lands as its inner future completes: cancel again until both tasks are done (bounded).
        for _ in range(20):
            if not pending:
                break
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        if pending:
            log.error("%s: tasks %s did not stop within 10 s", self.describe(),
                      sorted(t.get_name() for t in pending))
        client, self._client = self._client, None
        if client is not None:
            client.close()
            await asyncio.sleep(0)  # let the transport's connection_lost run and release the socket
        self._up = False

    async def execute(self, command: "Command") -> DeviceResult:
        ct = command.command_type
        client = self._client
        if not self._running or client is None:
            return DeviceResult(Outcome.NOT_CONNECTED, f"battery {self.name}: link not started")
        if not self._up:
            return DeviceResult(Outcome.NOT_CONNECTED, f"battery {self.name}: not connected ({self._last_error})")
        mp = self._map
        try:
            return await self._apply(client, mp, ct, float(command.setpoint), remember=True)
        except RegisterMapError as e:
            return DeviceResult(Outcome.REJECTED, f"battery {self.name}: {e}")
        except _ExceptionResponse as e:
            return DeviceResult(Outcome.REJECTED, f"battery {self.name}: {e}", {"exception_code": e.code})
        except ModbusIOException as e:
            if not client.connected:
                return DeviceResult(Outcome.NOT_CONNECTED, f"battery {self.name}: connection lost during "
                                                           f"{ct.value} ({e})")
            return DeviceResult(Outcome.TIMED_OUT, f"battery {self.name}: no answer within {self.timeout:g} s "
                                                   f"to {ct.value}")
        except ConnectionException as e:
            return DeviceResult(Outcome.NOT_CONNECTED, f"battery {self.name}: {e}")
        except ModbusException as e:
            return DeviceResult(Outcome.FAILED, f"battery {self.name}: {type(e).__name__}: {e}")

    # ---- commands -------------------------------------------------------------------------------
    async def _apply(self, client: AsyncModbusTcpClient, mp: BatteryRegisterMap, ct: CommandType, value: float,
                     *, remember: bool) -> DeviceResult:
        assert self._apply_lock is not None
        async with self._apply_lock:
            return await self._apply_locked(client, mp, ct, value, remember=remember)

    async def _apply_locked(self, client: AsyncModbusTcpClient, mp: BatteryRegisterMap, ct: CommandType,
                            value: float, *, remember: bool) -> DeviceResult:
        if not remember and (ct, value) != self._keepalive:
            return DeviceResult(Outcome.COMPLETED, "keepalive skipped: a newer command replaced the rate")
        setup = mp.setup_reads(ct)
        image = await self._read_ranges(client, setup, "reading scale factors") if setup else {}
        blocks = mp.blocks(ct, value, image)
        for block in blocks:
            rr = await client.write_registers(block.address, list(block.words), device_id=self.device_id)
            if rr.isError():
                raise _ExceptionResponse(rr.exception_code, f"writing {block.describe()}")
            self.stats["writes"] += 1
        if self.verify:
            for block in blocks:
                words = await self._read(client, block.address, len(block.words), f"reading back {block.describe()}")
                mismatch = _mismatch(block, words)
                if mismatch is not None:
                    return DeviceResult(Outcome.FAILED, f"battery {self.name}: {mismatch}",
                                        {"written": list(block.words), "read": words})
        if remember and mp.revert_s and ct in (CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE) and (
                value > 0 or self._keepalive is None or self._keepalive[0] is ct):
            # (a 0 in the other direction leaves the running rate, and so its keepalive, alone)
            self._keepalive = (ct, value)
            self._keepalive_at = self._now()
        return DeviceResult(Outcome.COMPLETED, None,
                            {"writes": [{"register": b.address + 1, "words": list(b.words),
                                         "points": {p.point: p.value for p in b.points}} for b in blocks],
                             "verified": self.verify})

    async def _read(self, client: AsyncModbusTcpClient, address: int, count: int, what: str) -> list[int]:
        rr = await client.read_holding_registers(address, count=count, device_id=self.device_id)
        if rr.isError():
            raise _ExceptionResponse(rr.exception_code, what)
        words = list(rr.registers)
        if len(words) != count:
            raise ModbusException(f"{what}: asked for {count} registers, got {len(words)}")
        return words

    async def _read_ranges(self, client: AsyncModbusTcpClient, ranges: Sequence[tuple[int, int]],
                           what: str) -> dict[int, int]:
        image: dict[int, int] = {}
        for addr, count in ranges:
            words = await self._read(client, addr, count, f"{what} (register {addr + 1} x{count})")
            image.update(zip(range(addr, addr + count), words))
        return image

    def _task_done(self, task: "asyncio.Task[Any]") -> None:
        """Done-callback of both tasks: they only end by stop() (cancelled); anything else is logged."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s: task %s died: %s: %s", self.describe(), task.get_name(), type(exc).__name__, exc,
                      exc_info=exc)
        elif self._running and task in self._tasks:
            log.error("%s: task %s ended unexpectedly", self.describe(), task.get_name())

    # ---- connection keeper ---------------------------------------------------------------------
    def _on_connection_change(self, connected: bool) -> None:
        if not connected and self._lost is not None:
            self._lost_reason = f"connection to {self.host}:{self.port} lost"
            self._lost.set()

    async def _keep_connected(self) -> None:
        assert self._lost is not None and self._first_attempt is not None and self._poll_wakeup is not None
        self._backoff = self.reconnect_delay
        down_reported = False
        while self._running:
            self.stats["attempts"] += 1
            try:
                error = await self._connect_once()
            except Exception as e:  # never let one odd attempt end the keeper
                log.exception("%s: connection attempt failed", self.describe())
                error = f"{self.host}:{self.port}: {type(e).__name__}: {e}"
                if self._client is not None:
                    self._client.close()
            self._first_attempt.set()
            if error is None:
                self._connections += 1
                self.stats["connects"] += 1
                # the probe read was answered: only now does the backoff start over
                self._backoff, down_reported = self.reconnect_delay, False
                self._up = True
                rebooted = self._connections > 1
                self._emit(LinkUp(rebooted=rebooted, reason=f"{'re' if rebooted else ''}connected to "
                                                            f"{self.host}:{self.port}"))
                self._poll_wakeup.set()
                await self._lost.wait()
                self._up = False
                self._last_error = self._lost_reason
                if self._client is not None:
                    self._client.close()
                self._emit(LinkDown(self._lost_reason))
                down_reported = True
            else:
                self._last_error = error
                if not down_reported:
                    self._emit(LinkDown(error))
                    down_reported = True
            await asyncio.sleep(self._backoff * random.uniform(0.8, 1.2))
            self._backoff = min(self._backoff * 2, self.reconnect_delay_max)

    async def _connect_once(self) -> str | None:
        """Connect, bind the map and probe; None on success, else why not."""
        client = self._client
        assert client is not None and self._lost is not None
        client.close()
        self._lost.clear()
        if not await client.connect():
            return f"cannot connect to {self.host}:{self.port}"
        self.stats["tcp_connects"] += 1
        try:
            self._map = await self.register_map.bind(
                lambda addr, count: self._read(client, addr, count, f"discovering register {addr + 1} x{count}"))
            await self._probe(client, self._map)
        except ModbusIOException:
            client.close()
            return (f"{self.host}:{self.port} accepts connections but does not answer "
                    f"(no reply within {self.timeout:g} s)")
        except (RegisterMapError, _ExceptionResponse, ModbusException) as e:
            client.close()
            return f"{self.host}:{self.port}: {e}"
        if self._lost.is_set():
            client.close()
            return self._lost_reason
        return None

    async def _probe(self, client: AsyncModbusTcpClient, mp: BatteryRegisterMap) -> None:
        """One read that must be answered before the link counts as up (raises ModbusIOException on
        silence). An exception response is an answer: the device is there."""
        try:
            await self._read_ranges(client, mp.probe_reads(), "probing")
        except _ExceptionResponse as e:
            log.info("%s: probe read answered with %s; counting the device as up", self.describe(), e)

    # ---- poller ---------------------------------------------------------------------------------
    def _interval(self) -> float:
        revert = self.register_map.revert_s
        return min(self.poll_interval_s, revert / 3.0) if revert else self.poll_interval_s

    def _now(self) -> float:
        return self._ctx.clock.time() if self._ctx is not None else asyncio.get_running_loop().time()

    def _schedule_poll(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None
        if self._ctx is None or not self._running:
            return
        loop, wakeup = asyncio.get_running_loop(), self._poll_wakeup
        assert wakeup is not None

        def fire() -> None:  # runs in the clock's thread: hand over to the loop
            try:
                loop.call_soon_threadsafe(wakeup.set)
            except RuntimeError:  # loop closed
                pass
        self._poll_timer = self._ctx.clock.call_later(self._interval(), fire)

    async def _poll_loop(self) -> None:
        assert self._poll_wakeup is not None
        self._schedule_poll()
        while True:
            await self._poll_wakeup.wait()
            self._poll_wakeup.clear()
            try:
                self._schedule_poll()
            except Exception:
                log.exception("%s: cannot schedule the next poll", self.describe())
            client = self._client
            if not self._up or client is None:
                continue
            # one bad reading or one odd error must never end the poller: it also keeps the device's
            # revert timer alive. Log it and carry on with the next step / the next tick.
            try:
                await self._poll_once(client)
            except Exception:
                log.exception("%s: poll failed unexpectedly", self.describe())
            try:
                await self._refresh(client)
            except Exception:
                log.exception("%s: keepalive failed unexpectedly", self.describe())

    async def _poll_once(self, client: AsyncModbusTcpClient) -> None:
        mp = self._map
        try:
            image = await self._read_ranges(client, mp.telemetry_reads(), "polling")
            values = mp.decode_telemetry(image)
            status = mp.decode_status(image)
        except _ExceptionResponse as e:
            log.warning("%s: poll refused: %s", self.describe(), e)
            return
        except ModbusIOException:
            log.info("%s: no answer to the poll within %.3g s", self.describe(), self.timeout)
            return
        except ConnectionException:
            return
        except (ModbusException, RegisterMapError, ValueError) as e:
            log.warning("%s: poll failed: %s", self.describe(), e)
            return
        self.stats["polls"] += 1
        if values:
            self._emit(Telemetry(values))
        if status is not None:
            self._emit(StatusReport(status[0], status[1]))

    async def _refresh(self, client: AsyncModbusTcpClient) -> None:
        """Keepalive: re-write the last rate before the device's revert timer runs out."""
        revert = self._map.revert_s
        if not revert or self._keepalive is None or self._now() - self._keepalive_at < revert / 3.0:
            return
        ct, value = self._keepalive
        try:
            result = await self._apply(client, self._map, ct, value, remember=False)
        except (RegisterMapError, _ExceptionResponse, ModbusException) as e:
            log.warning("%s: keepalive of %s %g failed: %s", self.describe(), ct.value, value, e)
            return
        if result.outcome is Outcome.COMPLETED and result.reason is None:
            self._keepalive_at = self._now()
            self.stats["keepalives"] += 1
        elif result.outcome is not Outcome.COMPLETED:
            log.warning("%s: keepalive of %s %g: %s", self.describe(), ct.value, value, result.reason)

    def _emit(self, event: DeviceEvent) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            sink(event)
        except Exception:  # the sink must never break the link
            log.exception("%s: sink raised for %r", self.describe(), event)


def _mismatch(block: WriteBlock, words: list[int]) -> str | None:
    if words == list(block.words):
        return None
    for p in block.points:
        start = p.address - block.address
        got = words[start:start + len(p.words)]
        if got != list(p.words):
            try:
                read, written = _fmt(decode_value(p.spec, got)), _fmt(decode_value(p.spec, list(p.words)))
            except ValueError:
                read, written = repr(got), repr(list(p.words))
            return f"read-back {read} != written {written} ({p.point} at register {p.spec.register})"
    return f"read-back {words} != written {list(block.words)} (register {block.address + 1})"  # pragma: no cover
