"""Battery simulator: a real pymodbus TCP server with a battery behind its registers.

``BatterySim`` serves one battery (Modbus unit ``device_id``) on ``host:port`` through pymodbus'
``SimDevice`` with an ``action`` callback (in pymodbus 3.16 overriding a datablock's ``setValues`` is
silently ignored; the action is the supported hook). It speaks any register map the link speaks:

* plain maps (:class:`~protocols.modbus.register_map.RegisterMap`, default seed map or custom): the
  write points hold the setpoints, the read points (SoC, power, status) are refreshed on every read;
* the SunSpec profile (:func:`~protocols.modbus.register_map.sunspec_map`): "SunS" at the base
  address, model 1 (common), 701 (DER AC measurement: W), 124 (storage: WChaMax, StorCtl_Mod,
  InWRte/OutWRte, revert timer, ChaState, scale factors), 704 (DER AC controls: WSetEna/WSetMod/WSet,
  WSetRvrtTms, WSet_SF) and the 0xFFFF end marker, so pysunspec2's scanner reads it. Read-only points
  answer ILLEGAL_DATA_ADDRESS to writes.

Behaviour:

* The setpoint (kW, > 0 = charging) is what the registers command: plain maps charge - discharge;
  SunSpec 704 ``WSet`` (watts, negative = charging) when ``WSetEna`` = 1, else 124 ``StorCtl_Mod`` bit
  0 (CHARGE) x ``InWRte`` % of ``WChaMax`` minus bit 1 (DISCHARGE) x ``OutWRte`` % of ``WChaMax``.
* A write outside the limits (rate above ``max_charge_kw``/``max_discharge_kw``, limit above the larger
  of the two, SoC target outside 0..100, rate outside -100..100 %, ...) is refused with exception
  ILLEGAL_DATA_VALUE (3) and changes nothing; with ``over_limit="clamp"`` it is clamped instead (the
  read-back then differs, as on devices that clamp silently).
* The actual power is the setpoint within the limits and the power limit (plain SET_POWER_LIMIT /
  SunSpec WChaMax); it is 0 when charging at 100 % or at the SoC target (plain SET_SOC_TARGET: charging
  stops there) and when discharging at 0 %. SoC integrates the actual power over the ``clock``'s time
  (``runtime.core.clock.Clock``; None = real monotonic time), exactly, piecewise, clamped to 0..100.
* SunSpec revert timers: a rate written with ``InOutWRte_RvrtTms`` > 0 (or ``WSetRvrtTms`` > 0 for
  704) falls back to 0 W (StorCtl_Mod = 0 / WSetEna = 0) that many clock seconds later.

Fault injection: ``set_exception(code)`` answers every request with that exception code (None
clears); ``set_silent(True)`` answers nothing (requests time out; writes do not land);
``force(register, words)`` pins raw words at a register whatever the simulated state (e.g. a float32
+inf, ``(0x7F80, 0)``, in a telemetry or status register; ``None`` releases it);
``await set_offline()`` stops listening and drops connections; ``await set_online(reboot=False)``
listens again on the same port (``reboot=True`` also forgets the setpoints, as a power-cycled device).

All coroutines and properties belong to the loop the simulator was started on; ``set_exception`` and
``set_silent`` only flip flags and are safe from any thread.

The ``coordinator sim battery`` command that runs simulators as a process is :mod:`runtime.cli.sim_battery`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from protocols.modbus.codec import RegisterSpec, decode_value, encode_value
from protocols.modbus.register_map import (SUNS_MARKER, SUNSPEC_UNIMPLEMENTED, BatteryRegisterMap, RegisterMap,
                                           RegisterMapError, SunSpecMap, load_register_map, sunspec_map,
                                           sunspec_model_points)
from runtime.core.commands import CommandType
from runtime.core.errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from runtime.core.clock import Clock

log = logging.getLogger(__name__)

__all__ = ["BatterySim", "exception_code"]

_EPS = 1e-9
_NAMES = {"ILLEGAL_DATA_ADDRESS": ExcCodes.ILLEGAL_ADDRESS, "ILLEGAL_DATA_VALUE": ExcCodes.ILLEGAL_VALUE,
          "SERVER_DEVICE_FAILURE": ExcCodes.DEVICE_FAILURE, "SERVER_DEVICE_BUSY": ExcCodes.DEVICE_BUSY,
          "GATEWAY_PATH_UNAVAILABLE": ExcCodes.GATEWAY_PATH_UNAVIABLE,
          "GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND": ExcCodes.GATEWAY_NO_RESPONSE}


def exception_code(code: "int | str | ExcCodes") -> ExcCodes:
    """3, "ILLEGAL_DATA_VALUE" or ExcCodes.ILLEGAL_VALUE -> ExcCodes.ILLEGAL_VALUE."""
    if isinstance(code, ExcCodes):
        return code
    if isinstance(code, str):
        key = code.strip().upper()
        if key in _NAMES:
            return _NAMES[key]
        try:
            return ExcCodes[key]
        except KeyError:
            raise ValueError(f"unknown Modbus exception {code!r}") from None
    try:
        return ExcCodes(int(code))
    except ValueError:
        raise ValueError(f"unknown Modbus exception code {code!r}") from None


class _Image:
    """PDU address -> word, over the server's live register list (or the snapshot while offline)."""

    def __init__(self, sim: "BatterySim") -> None:
        self._sim = sim

    def __getitem__(self, addr: int) -> int:
        live = self._sim._live
        if live is not None:
            start, regs = live
            i = addr - start
            if 0 <= i < len(regs):
                return regs[i]
            raise KeyError(addr)
        return self._sim._mem[addr]

    def __setitem__(self, addr: int, value: int) -> None:
        live = self._sim._live
        if live is not None:
            start, regs = live
            regs[addr - start] = value
        else:
            self._sim._mem[addr] = value


def _put(image: MutableMapping[int, int] | _Image, spec: RegisterSpec, value: float) -> None:
    for i, w in enumerate(encode_value(spec, value)):
        image[spec.address + i] = w


def _get(image: Mapping[int, int] | _Image, spec: RegisterSpec) -> float:
    return decode_value(spec, [image[spec.address + i] for i in range(spec.word_count)])


class BatterySim:
    """A simulated battery behind a pymodbus server (see the module docstring)."""

    def __init__(self, capacity_kwh: float = 100.0, max_charge_kw: float = 50.0, max_discharge_kw: float = 50.0,
                 soc_pct: float = 50.0, register_map: "BatteryRegisterMap | Mapping[str, Any] | str | None" = None,
                 clock: "Clock | None" = None, host: str = "127.0.0.1", port: int = 0, *, device_id: int = 1,
                 over_limit: str = "reject", name: str = "battery-sim") -> None:
        for key, v in (("capacity_kwh", capacity_kwh), ("max_charge_kw", max_charge_kw),
                       ("max_discharge_kw", max_discharge_kw)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ConfigurationError(f"{key}: must be a finite number > 0, got {v!r}")
        if not 0 <= soc_pct <= 100:
            raise ConfigurationError(f"soc_pct: must be in 0..100, got {soc_pct!r}")
        if over_limit not in ("reject", "clamp"):
            raise ConfigurationError(f"over_limit: must be 'reject' or 'clamp', got {over_limit!r}")
        self.capacity_kwh, self.max_charge_kw, self.max_discharge_kw = float(capacity_kwh), float(max_charge_kw), float(max_discharge_kw)
        self.register_map = load_register_map(register_map)
        self.clock, self.host, self.device_id, self.name = clock, host, device_id, name
        self.over_limit = over_limit
        self._port = port
        self._soc = float(soc_pct)
        self._t = self._time()
        self._server: ModbusTcpServer | None = None
        self._live: tuple[int, list[int]] | None = None
        self._mem: dict[int, int] = {}
        self._readonly: set[int] = set()
        self._exception: ExcCodes | None = None
        self._silent = False
        self._forced: dict[int, list[int]] = {}  # PDU address -> words, re-applied after every refresh
        self.image = _Image(self)
        #: Accepted writes, in order: (PDU address, words).
        self.writes: list[tuple[int, list[int]]] = []
        #: Requests answered (reads + writes), and requests dropped while silent.
        self.requests = 0
        self.dropped = 0
        if isinstance(self.register_map, SunSpecMap):
            self._backend: _Backend = _SunSpecBackend(self, self.register_map)
        elif isinstance(self.register_map, RegisterMap):
            self._backend = _PlainBackend(self, self.register_map)
        else:
            raise ConfigurationError(f"register_map: {self.register_map!r} is not a map the simulator knows")
        self._backend.build()

    # ---- lifecycle ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port (the real one once started with port 0)."""
        return self._port

    @property
    def online(self) -> bool:
        return self._server is not None

    async def start(self) -> "BatterySim":
        """Listen on ``host:port``; returns self."""
        if self._server is not None:
            return self
        device = SimDevice(id=self.device_id, simdata=self._simdata(), action=self._action)
        server = ModbusTcpServer(device, address=(self.host, self._port), trace_pdu=self._trace_pdu)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as e:
            raise OSError(f"battery simulator {self.name}: cannot listen on {self.host}:{self._port} ({e})") from None
        self._port = server.transport.sockets[0].getsockname()[1]
        self._server = server
        self._live = self._find_live(server)
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        self._advance()
        if self._live is not None:
            start, regs = self._live
            for addr in list(self._mem):
                self._mem[addr] = regs[addr - start]
        self._live = None
        await server.shutdown()
        await asyncio.sleep(0)  # let the closed connections release their sockets

    async def set_offline(self) -> None:
        """Fault injection: the device disappears (stops listening, drops connections)."""
        await self.stop()

    async def set_online(self, reboot: bool = False) -> None:
        """Back online on the same port; ``reboot`` also resets the setpoints to 0 (power cycle)."""
        if reboot:
            self._advance()
            self._backend.reset()
        await self.start()

    async def __aenter__(self) -> "BatterySim":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ---- fault injection ------------------------------------------------------------------------
    def set_exception(self, code: "int | str | ExcCodes | None") -> None:
        """Answer every request with exception ``code`` (3, "ILLEGAL_DATA_VALUE", ...); None = normal."""
        self._exception = None if code is None else exception_code(code)

    def set_silent(self, silent: bool = True) -> None:
        """Stop answering (requests are read and dropped: the client times out; writes do not land)."""
        self._silent = bool(silent)

    def force(self, register: int, words: "Sequence[int] | None") -> None:
        """Pin ``words`` at ``register`` (1-based, as in register maps) on every read from now on,
        whatever the simulated state says (a broken sensor: float32 ``(0x7F80, 0)`` = +inf,
        ``(0x7FC0, 0)`` = NaN); ``None`` releases the register (the next read refreshes it)."""
        addr = int(register) - 1
        if words is None:
            self._forced.pop(addr, None)
            return
        for w in words:
            if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 0xFFFF:
                raise ValueError(f"force: word {w!r} is not an integer in 0..65535")
        self._forced[addr] = list(words)
        self._apply_forced()

    def _apply_forced(self) -> None:
        for addr, words in self._forced.items():
            for i, w in enumerate(words):
                self.image[addr + i] = w

    # ---- state ----------------------------------------------------------------------------------
    @property
    def setpoint_kw(self) -> float:
        """What the registers command, in kW (> 0 = charging), before limits."""
        self._advance()
        return self._backend.setpoint_kw()

    @property
    def power_kw(self) -> float:
        """The actual power now (kW, > 0 = charging)."""
        self._advance()
        return self._effective_power()

    @property
    def soc_pct(self) -> float:
        self._advance()
        return self._soc

    @soc_pct.setter
    def soc_pct(self, value: float) -> None:
        if not 0 <= value <= 100:
            raise ValueError(f"soc_pct: must be in 0..100, got {value!r}")
        self._advance()
        self._soc = float(value)

    @property
    def power_limit_kw(self) -> float:
        return self._backend.power_limit_kw()

    @property
    def soc_target_pct(self) -> float:
        return self._backend.soc_target_pct()

    def point(self, command_type: CommandType | str) -> float:
        """The value held in a plain map's write point (e.g. ``point("SET_CHARGE_RATE")``)."""
        if not isinstance(self._backend, _PlainBackend):
            raise TypeError("point() is for plain register maps; use sunspec_point() for SunSpec maps")
        return _get(self.image, self._backend.map.writes[CommandType(command_type)])

    def sunspec_point(self, model: int, name: str) -> float:
        """A SunSpec point's raw value (None-like NaN when not implemented)."""
        if not isinstance(self._backend, _SunSpecBackend):
            raise TypeError("sunspec_point() is for SunSpec maps")
        raw = self._backend.map.raw(self.image, model, name)
        return math.nan if raw is None else float(raw)

    # ---- internals ------------------------------------------------------------------------------
    def _time(self) -> float:
        return self.clock.time() if self.clock is not None else time.monotonic()

    def _simdata(self) -> list[SimData]:
        blocks: list[SimData] = []
        run: list[int] = []
        run_start, run_ro = -2, False
        for addr in sorted(self._mem):
            ro = addr in self._readonly
            if run and addr == run_start + len(run) and ro == run_ro:
                run.append(self._mem[addr])
                continue
            if run:
                blocks.append(SimData(run_start, values=list(run), datatype=DataType.REGISTERS, readonly=run_ro))
            run, run_start, run_ro = [self._mem[addr]], addr, ro
        if run:
            blocks.append(SimData(run_start, values=list(run), datatype=DataType.REGISTERS, readonly=run_ro))
        return blocks

    def _find_live(self, server: ModbusTcpServer) -> tuple[int, list[int]] | None:
        # pymodbus 3.16 keeps a SimDevice's registers in SimCore.devices[id].block["x"] =
        # (start, count, registers, flags); the action callback hands us the same list on each request.
        try:
            start, _count, regs, _flags = server.context.devices[self.device_id].block["x"]
            return start, regs
        except (AttributeError, KeyError, TypeError, ValueError):  # pragma: no cover - other pymodbus
            return None

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if not sending and self._silent:
            self.dropped += 1
            return None  # the request handler sees no request: no processing, no answer
        return pdu

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        self._live = (start_address, registers)
        self.requests += 1
        if self._exception is not None:
            return self._exception
        self._advance()
        if not set_values:
            self._backend.refresh()
            self._apply_forced()
            return None
        changes = {address + i: int(v) for i, v in enumerate(set_values)}
        view = collections.ChainMap(changes, self.image)  # the image as it will be after the write
        try:
            result = self._backend.write(view, changes)
        except (ValueError, RegisterMapError) as e:
            log.info("%s: write %s refused: %s", self.name, changes, e)
            return ExcCodes.ILLEGAL_VALUE
        if isinstance(result, ExcCodes):
            return result
        if result:  # clamped values replace what was asked for
            for addr, word in result.items():
                set_values[addr - address] = word  # type: ignore[index]
        self.writes.append((address, [int(v) for v in set_values]))
        return None

    def _charge_stop_pct(self) -> float:
        return min(100.0, self._backend.soc_target_pct())

    def _effective_power(self) -> float:
        p = self._backend.setpoint_kw()
        p = max(-self.max_discharge_kw, min(self.max_charge_kw, p))
        limit = self._backend.power_limit_kw()
        p = max(-limit, min(limit, p))
        if p > 0 and self._soc >= self._charge_stop_pct() - _EPS:
            return 0.0
        if p < 0 and self._soc <= _EPS:
            return 0.0
        return p + 0.0

    def _advance(self) -> None:
        """Integrate SoC from the last update to now: piecewise constant power, split where the SoC hits
        a bound or a revert timer fires."""
        now = self._time()
        t = self._t
        for _ in range(1000):
            deadline = self._backend.next_revert()
            if deadline is not None and deadline <= t:
                self._backend.revert()
                continue
            if t >= now:
                break
            end, hit = now, None
            if deadline is not None and deadline < end:
                end = deadline
            p = self._effective_power()
            rate = p / self.capacity_kwh * 100.0 / 3600.0  # % per second
            if rate > 0:
                bound = self._charge_stop_pct()
            elif rate < 0:
                bound = 0.0
            if rate != 0:
                ttb = (bound - self._soc) / rate
                if t + ttb < end:
                    end, hit = t + max(0.0, ttb), bound
            self._soc = min(100.0, max(0.0, self._soc + rate * (end - t)))
            if hit is not None:
                self._soc = hit
            t = end
        self._t = max(self._t, now)


# --------------------------------------------------------------------------------------- backends

class _Backend:
    def __init__(self, sim: BatterySim) -> None:
        self.sim = sim

    def build(self) -> None: ...
    def reset(self) -> None: ...
    def refresh(self) -> None: ...
    def write(self, view: Mapping[int, int], changes: Mapping[int, int]) -> "dict[int, int] | ExcCodes | None": ...
    def setpoint_kw(self) -> float: ...
    def power_limit_kw(self) -> float: ...
    def soc_target_pct(self) -> float: return 100.0
    def next_revert(self) -> float | None: return None
    def revert(self) -> None: ...


class _PlainBackend(_Backend):
    def __init__(self, sim: BatterySim, register_map: RegisterMap) -> None:
        super().__init__(sim)
        self.map = register_map
        top = max(sim.max_charge_kw, sim.max_discharge_kw)
        self.limits = {CommandType.SET_CHARGE_RATE: (0.0, sim.max_charge_kw),
                       CommandType.SET_DISCHARGE_RATE: (0.0, sim.max_discharge_kw),
                       CommandType.SET_POWER_LIMIT: (0.0, top), CommandType.SET_SOC_TARGET: (0.0, 100.0),
                       CommandType.CHANGE_AVAILABILITY: (0.0, 1.0)}
        self.initial = {CommandType.SET_POWER_LIMIT: top, CommandType.SET_SOC_TARGET: 100.0,
                        CommandType.CHANGE_AVAILABILITY: 1.0}
        self.values: dict[CommandType, float] = {}

    def build(self) -> None:
        mem, sim = self.sim._mem, self.sim
        for ct, spec in self.map.writes.items():
            _put(mem, spec, self.initial.get(ct, 0.0))
            self.values[ct] = _get(mem, spec)
        specs = list(self.map.reads.values()) + ([self.map.status.spec] if self.map.status else [])
        for spec in specs:
            for i in range(spec.word_count):
                mem[spec.address + i] = 0
                sim._readonly.add(spec.address + i)
        self.refresh_into(mem)

    def reset(self) -> None:
        for ct, spec in self.map.writes.items():
            _put(self.sim.image, spec, self.initial.get(ct, 0.0))
            self.values[ct] = _get(self.sim.image, spec)

    def refresh(self) -> None:
        self.refresh_into(self.sim.image)

    def refresh_into(self, image: Any) -> None:
        p = self.sim._effective_power()
        reads = self.map.reads
        if "soc_pct" in reads:
            _put(image, reads["soc_pct"], _fit(reads["soc_pct"], self.sim._soc))
        if "power_kw" in reads:
            _put(image, reads["power_kw"], _fit(reads["power_kw"], p * self.map.power_sign))
        if self.map.status is not None:
            state = "CHARGING" if p > 0 else "DISCHARGING" if p < 0 else "IDLE"
            raws = {v: k for k, v in reversed(list(self.map.status.states.items()))}
            if state in raws:
                _put(image, self.map.status.spec, raws[state] / self.map.status.spec.scale)

    def write(self, view: Mapping[int, int], changes: Mapping[int, int]) -> "dict[int, int] | ExcCodes | None":
        new: dict[CommandType, float] = {}
        clamped: dict[int, int] = {}
        for ct, spec in self.map.writes.items():
            if not any(spec.address + i in changes for i in range(spec.word_count)):
                continue
            value = _get(view, spec)
            lo, hi = self.limits.get(ct, (-math.inf, math.inf))
            if not math.isfinite(value) or not lo - _EPS <= value <= hi + _EPS:
                if self.sim.over_limit != "clamp" or not math.isfinite(value):
                    raise ValueError(f"{ct.value} = {value!r} outside {lo:g}..{hi:g}")
                value = max(lo, min(hi, value))
                for i, w in enumerate(encode_value(spec, value)):
                    clamped[spec.address + i] = w
            if ct is CommandType.CHANGE_AVAILABILITY and value not in (0.0, 1.0):
                raise ValueError(f"CHANGE_AVAILABILITY = {value!r} must be 0 or 1")
            new[ct] = value
        self.values.update(new)
        return clamped or None

    def setpoint_kw(self) -> float:
        if self.values.get(CommandType.CHANGE_AVAILABILITY, 1.0) == 0.0:
            return 0.0
        return self.values.get(CommandType.SET_CHARGE_RATE, 0.0) - self.values.get(CommandType.SET_DISCHARGE_RATE, 0.0)

    def power_limit_kw(self) -> float:
        return self.values.get(CommandType.SET_POWER_LIMIT, max(self.sim.max_charge_kw, self.sim.max_discharge_kw))

    def soc_target_pct(self) -> float:
        return self.values.get(CommandType.SET_SOC_TARGET, 100.0)


def _fit(spec: RegisterSpec, value: float) -> float:
    """Clamp a measurement into what the register can hold."""
    lo, hi = {"uint16": (0, 0xFFFF), "int16": (-0x8000, 0x7FFF), "uint32": (0, 0xFFFFFFFF),
              "int32": (-0x80000000, 0x7FFFFFFF)}.get(spec.data_type, (-math.inf, math.inf))
    return max(lo / spec.scale, min(hi / spec.scale, value))


def _sf_for(max_abs: float, limit: int) -> int:
    """Smallest scale factor (>= 0) that makes ``max_abs`` fit in ``limit``."""
    sf = 0
    while max_abs / 10 ** sf > limit:
        sf += 1
    return sf


class _SunSpecBackend(_Backend):
    CHA_ST = {"OFF": 1, "EMPTY": 2, "DISCHARGING": 3, "CHARGING": 4, "FULL": 5, "HOLDING": 6}

    def __init__(self, sim: BatterySim, register_map: SunSpecMap) -> None:
        super().__init__(sim)
        # The simulator serves the assumed layout; clients discover it.
        self.map = sunspec_map(register_map.base_address, control=register_map.control,
                               revert_s=register_map.revert_s, models=register_map.models, discover=False)
        self.revert_124: float | None = None
        self.revert_704: float | None = None
        self.wmax_w = max(sim.max_charge_kw, sim.max_discharge_kw) * 1000.0

    def sp(self, model: int, name: str, scale: float = 1.0) -> RegisterSpec:
        return self.map.spec(model, name, scale)

    def set(self, image: Any, model: int, name: str, raw: float) -> None:
        _put(image, self.sp(model, name), raw)

    def build(self) -> None:
        mem, sim, m = self.sim._mem, self.sim, self.map
        base = m.base_address
        mem[base], mem[base + 1] = SUNS_MARKER
        sim._readonly.update((base, base + 1))
        end = base + 2
        for mid in m.models:
            length, points = sunspec_model_points(mid)
            addr = m.model_addresses[mid]
            for p in points.values():
                raw = SUNSPEC_UNIMPLEMENTED.get(p.type, 0)
                words = [(raw >> (16 * (p.size - 1 - i))) & 0xFFFF for i in range(p.size)]
                for i, w in enumerate(words):
                    mem[addr + p.offset + i] = w
                    if p.access != "RW" or mid in (1, 701):
                        sim._readonly.add(addr + p.offset + i)
            mem[addr], mem[addr + 1] = mid, length
            end = addr + 2 + length
        mem[end], mem[end + 1] = 0xFFFF, 0
        sim._readonly.update((end, end + 1))
        self._identity(mem)
        # model 701: measured power (int16 W, generation positive)
        if 701 in m.models:
            self.w_sf = _sf_for(self.wmax_w, 0x7FFF)
            self.set(mem, 701, "W_SF", self.w_sf)
            self.set(mem, 701, "W", 0)
        # model 124: storage
        self.set(mem, 124, "WChaMax_SF", _sf_for(self.wmax_w, 0xFFFE))
        self.set(mem, 124, "WChaDisChaGra_SF", 0)
        self.set(mem, 124, "MinRsvPct_SF", 0)
        self.set(mem, 124, "ChaState_SF", -2)
        self.set(mem, 124, "InOutWRte_SF", -2)
        self.set(mem, 124, "MinRsvPct", 0)
        self.set(mem, 124, "ChaGriSet", 1)  # GRID
        for name in ("WChaGra", "WDisChaGra"):
            self.set(mem, 124, name, 100)
        if 704 in m.models:
            self.set(mem, 704, "WSet_SF", 0)
            for name in ("WSetRvrt", "WSetRvrtRem", "WSetEnaRvrt"):
                self.set(mem, 704, name, 0)
        self._reset_into(mem)
        self.refresh_into(mem)

    def _identity(self, mem: dict[int, int]) -> None:
        for name, text in (("Mn", "Qubit Energy"), ("Md", "BatterySim"), ("Vr", "1.0"),
                           ("SN", f"SIM-{self.sim.name}")):
            p = self.map.point(1, name)
            data = text.encode()[: p.size * 2].ljust(p.size * 2, b"\0")
            addr = self.map.address(1, name)
            for i in range(p.size):
                mem[addr + i] = int.from_bytes(data[2 * i:2 * i + 2], "big")
        self.set(mem, 1, "DA", self.sim.device_id)

    def _reset_into(self, image: Any) -> None:
        sf = self.map.raw(image, 124, "WChaMax_SF") or 0
        self.set(image, 124, "WChaMax", round(self.wmax_w / 10 ** sf))
        for name in ("StorCtl_Mod", "OutWRte", "InWRte", "InOutWRte_WinTms", "InOutWRte_RvrtTms", "InOutWRte_RmpTms"):
            self.set(image, 124, name, 0)
        if 704 in self.map.models:
            for name, v in (("WSetEna", 0), ("WSetMod", 1), ("WSet", 0), ("WSetRvrtTms", 0)):
                self.set(image, 704, name, v)
        self.revert_124 = self.revert_704 = None

    def reset(self) -> None:
        self._reset_into(self.sim.image)

    def refresh(self) -> None:
        self.refresh_into(self.sim.image)

    def refresh_into(self, image: Any) -> None:
        sim = self.sim
        p = sim._effective_power()
        self.set(image, 124, "ChaState", round(sim._soc * 100))
        state = ("CHARGING" if p > 0 else "DISCHARGING" if p < 0 else
                 "FULL" if sim._soc >= 100 - _EPS else "EMPTY" if sim._soc <= _EPS else "HOLDING")
        self.set(image, 124, "ChaSt", self.CHA_ST[state])
        if 701 in self.map.models:
            self.set(image, 701, "W", round(-p * 1000.0 / 10 ** self.w_sf))
        if 704 in self.map.models:
            rem = 0 if self.revert_704 is None else max(0, math.ceil(self.revert_704 - sim._time()))
            self.set(image, 704, "WSetRvrtRem", rem)

    # -- derived values --------------------------------------------------------------------------
    def _val(self, image: Any, model: int, name: str) -> float:
        raw = self.map.raw(image, model, name)
        if raw is None:
            return 0.0
        sf = self.map.point(model, name).sf
        return raw * 10.0 ** (self.map.raw(image, model, sf) or 0) if sf else float(raw)

    def _setpoint(self, image: Any) -> float:
        if 704 in self.map.models and self.map.raw(image, 704, "WSetEna") == 1:
            return -self._val(image, 704, "WSet") / 1000.0 + 0.0
        mod = self.map.raw(image, 124, "StorCtl_Mod") or 0
        wchamax = self._val(image, 124, "WChaMax")
        kw = 0.0
        if mod & 1:
            kw += self._val(image, 124, "InWRte") / 100.0 * wchamax / 1000.0
        if mod & 2:
            kw -= self._val(image, 124, "OutWRte") / 100.0 * wchamax / 1000.0
        return kw + 0.0

    def setpoint_kw(self) -> float:
        return self._setpoint(self.sim.image)

    def power_limit_kw(self) -> float:
        return self._val(self.sim.image, 124, "WChaMax") / 1000.0

    def write(self, view: Mapping[int, int], changes: Mapping[int, int]) -> "dict[int, int] | ExcCodes | None":
        m, sim = self.map, self.sim
        touched = lambda model, *names: any(m.address(model, n) + i in changes  # noqa: E731
                                            for n in names for i in range(m.point(model, n).size))
        clamped: dict[int, int] = {}

        def check(model: int, name: str, lo: float, hi: float) -> None:
            if not touched(model, name):
                return
            value = self._val(view, model, name)
            if lo - _EPS <= value <= hi + _EPS:
                return
            if sim.over_limit != "clamp":
                raise ValueError(f"{model}.{name} = {value:g} outside {lo:g}..{hi:g}")
            sf_name = m.point(model, name).sf
            sf = (m.raw(view, model, sf_name) or 0) if sf_name else 0
            spec = self.sp(model, name)
            for i, w in enumerate(encode_value(spec, round(max(lo, min(hi, value)) / 10 ** sf))):
                clamped[spec.address + i] = w

        check(124, "WChaMax", 0, self.wmax_w)
        check(124, "InWRte", -100, 100)
        check(124, "OutWRte", -100, 100)
        if touched(124, "StorCtl_Mod") and (m.raw(view, 124, "StorCtl_Mod") or 0) & ~3:
            raise ValueError(f"124.StorCtl_Mod = {m.raw(view, 124, 'StorCtl_Mod')} has unknown bits")
        if 704 in m.models:
            check(704, "WSet", -sim.max_charge_kw * 1000.0, sim.max_discharge_kw * 1000.0)
            if touched(704, "WSetEna", "WSetMod"):
                if m.raw(view, 704, "WSetEna") not in (0, 1):
                    raise ValueError("704.WSetEna must be 0 or 1")
                if m.raw(view, 704, "WSetEna") == 1 and m.raw(view, 704, "WSetMod") != 1:
                    raise ValueError("704.WSetMod: only WATTS (1) is simulated")
        now = sim._time()
        if touched(124, "StorCtl_Mod", "InWRte", "OutWRte", "InOutWRte_RvrtTms"):
            rvrt = m.raw(view, 124, "InOutWRte_RvrtTms") or 0
            self.revert_124 = now + rvrt if rvrt else None
        if 704 in m.models and touched(704, "WSetEna", "WSet", "WSetRvrtTms"):
            rvrt = m.raw(view, 704, "WSetRvrtTms") or 0
            self.revert_704 = now + rvrt if rvrt and m.raw(view, 704, "WSetEna") == 1 else None
        return clamped or None

    def next_revert(self) -> float | None:
        times = [t for t in (self.revert_124, self.revert_704) if t is not None]
        return min(times) if times else None

    def revert(self) -> None:
        deadline = self.next_revert()
        image = self.sim.image
        if deadline is not None and deadline == self.revert_124:
            self.revert_124 = None
            for name in ("StorCtl_Mod", "InWRte", "OutWRte"):
                self.set(image, 124, name, 0)
            log.info("%s: 124 rate reverted after InOutWRte_RvrtTms", self.sim.name)
        elif deadline is not None:
            self.revert_704 = None
            self.set(image, 704, "WSetEna", 0)
            log.info("%s: 704 WSet reverted after WSetRvrtTms", self.sim.name)
