"""Battery register maps as data.

A register map says, for one kind of battery, which holding registers a command writes and which
registers hold the measurements the link polls. Two kinds exist, both :class:`BatteryRegisterMap`:

:class:`RegisterMap` -- plain maps: one :class:`~protocols.modbus.codec.RegisterSpec` per command type
(values encoded with :func:`~protocols.modbus.codec.encode_value`), plus read points.

* ``RegisterMap.default()`` is the seed map (:data:`protocols.modbus.codec.DEFAULT_REGISTER_MAP`):

  ==================  ========  ========  =====  ===============================================
  point               register  type      scale  meaning
  ==================  ========  ========  =====  ===============================================
  SET_CHARGE_RATE     40001     uint16    10     charge rate, 0.1 kW
  SET_DISCHARGE_RATE  40002     uint16    10     discharge rate, 0.1 kW
  SET_POWER_LIMIT     40003     uint16    10     limit on |power|, 0.1 kW
  SET_SOC_TARGET      40004     uint16    10     charging stops at this SoC, 0.1 %
  soc_pct (read)      40010     uint16    10     state of charge, 0.1 %
  power_kw (read)     40011     int16     10     measured power, 0.1 kW, > 0 = charging
  ==================  ========  ========  =====  ===============================================

  Register numbers are the one-based numbers of vendor documentation: 40001 is PDU address 40000.
* ``exclusive_rates`` (default True): SET_CHARGE_RATE also writes 0 to the SET_DISCHARGE_RATE register
  and vice versa (when the map has both), so a battery never holds a charge and a discharge setpoint
  at once. When the two registers are adjacent (40001/40002) both go in ONE write (function 16), so the
  device sees the change atomically; otherwise the opposite register is zeroed first. A rate of 0 writes
  only its own register: it stops that direction and leaves the other alone (a schedule row "charge 20,
  discharge 0" sends both commands, in either order; the battery must end up charging at 20 kW).
* ``RegisterMap.from_config(dict)`` builds a custom map (see :meth:`RegisterMap.from_config`).

:class:`SunSpecMap` -- the SunSpec profile, built by :func:`sunspec_map`. Point offsets come from
pysunspec2's model definitions (``sunspec2.device.Model``); model addresses are discovered on the
device by walking the SunSpec header chain ("SunS" at the base address, then model id/length pairs up
to the 0xFFFF end marker). Scale factors (``*_SF`` points) and WChaMax are read from the device before
every write, never assumed. Points written per command (all big-endian, SunSpec encoding):

* ``control="storage"`` (model 124, the default):

  - SET_CHARGE_RATE v kW: one write of 124.OutWRte = 0, 124.InWRte = v / WChaMax (in %, raw =
    pct / 10^InOutWRte_SF), 124.InOutWRte_WinTms = 0, 124.InOutWRte_RvrtTms = ``revert_s``; then
    124.StorCtl_Mod = 1 (bit 0 CHARGE set, bit 1 DISCHARGE clear).
  - SET_DISCHARGE_RATE v kW: the same block with OutWRte = v / WChaMax (in %) and InWRte = 0; then
    StorCtl_Mod = 2 (DISCHARGE). Model 124 has no WDisChaMax point: OutWRte is taken as a percentage
    of WChaMax, as most implementations do.
  - A rate of 0 stops only its own direction: InWRte (OutWRte) = 0 and StorCtl_Mod with bit 0 (bit 1)
    cleared, the other bit kept.
* ``control="der"`` (model 704):

  - SET_CHARGE_RATE v kW: 704.WSetRvrtTms = ``revert_s``; then one write of 704.WSetEna = 1
    (ENABLED), 704.WSetMod = 1 (WATTS), 704.WSet = -v kW in W (negative = absorbing/charging; raw =
    W / 10^WSet_SF).
  - SET_DISCHARGE_RATE v kW: the same with WSet = +v kW in W.
  - A rate of 0 while WSet runs in the other direction writes nothing (it stops only its own direction).
* Both: SET_POWER_LIMIT v kW -> 124.WChaMax = v kW in W (raw = W / 10^WChaMax_SF). Under SunSpec
  semantics InWRte/OutWRte are percentages of WChaMax, so a new limit scales a running rate with it.
  SET_SOC_TARGET and CHANGE_AVAILABILITY have no SunSpec point: REJECTED.
* Telemetry: soc_pct = 124.ChaState x 10^ChaState_SF; power_kw = -701.W x 10^W_SF / 1000 (model 701
  counts generation as positive; we count charging as positive). Without model 701 no power is polled.
* ``revert_s`` (default 0 = no reversion) is written with every rate. With ``revert_s > 0`` the device
  falls back to 0 W when the controller stops refreshing; the link re-writes the last rate every
  ``revert_s / 3`` seconds of site-clock time (keepalive). Leave it 0 for virtual-clock scenarios that
  jump further than ``revert_s`` in one step.

Every map answers the same questions for the link: :meth:`~BatteryRegisterMap.plan` (which words
to write for a command), :meth:`~BatteryRegisterMap.telemetry_reads` /
:meth:`~BatteryRegisterMap.decode_telemetry`, and :meth:`~BatteryRegisterMap.bind` (discovery after
connecting). A plan is a list of :class:`PointWrite`; :func:`merge_writes` turns it into the
function-16 writes (:class:`WriteBlock`) actually sent.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from runtime.core.commands import CommandType
from runtime.core.errors import RegisterMapError
from runtime.core.statemachine import BatteryState

from .codec import DEFAULT_REGISTER_MAP, RegisterSpec, decode_value, encode_value

__all__ = [
    "BatteryRegisterMap", "RegisterMap", "SunSpecMap", "StatusPoint", "RegisterMapError", "PointWrite",
    "WriteBlock", "merge_writes", "merge_reads", "load_register_map", "sunspec_map", "sunspec_model_points",
    "SunSpecPoint", "DATA_TYPES", "READ_POINTS", "SUNSPEC_DEFAULT_MODELS", "SUNS_MARKER",
]

DATA_TYPES = ("uint16", "int16", "uint32", "int32", "float32")
#: Measurement names a map can read (``status`` is separate: it needs a states table).
READ_POINTS = ("soc_pct", "power_kw")
#: "SunS" as two registers.
SUNS_MARKER = (0x5375, 0x6E53)
#: Models our SunSpec layout holds, in order: common, DER AC measurement (power), storage, DER AC controls.
SUNSPEC_DEFAULT_MODELS = (1, 701, 124, 704)

log = logging.getLogger(__name__)

Reader = Callable[[int, int], Awaitable[list[int]]]
"""``await read(pdu_address, count) -> words``: how a map reads the device during :meth:`bind`."""



@dataclass(frozen=True, slots=True)
class PointWrite:
    """One point of a write plan: ``value`` (engineering units of the point) encoded as ``words``."""

    point: str
    spec: RegisterSpec
    value: float
    words: tuple[int, ...]

    @property
    def address(self) -> int:
        return self.spec.address

    @classmethod
    def of(cls, point: str, spec: RegisterSpec, value: float) -> "PointWrite":
        try:
            words = encode_value(spec, value)
        except ValueError as e:
            raise RegisterMapError(f"{point}: {e}") from None
        return cls(point, spec, float(value), tuple(words))


@dataclass(frozen=True, slots=True)
class WriteBlock:
    """One function-16 write: consecutive registers from ``address`` (PDU, zero-based)."""

    address: int
    words: tuple[int, ...]
    points: tuple[PointWrite, ...]

    def describe(self) -> str:
        pts = ", ".join(f"{p.point}={p.value:g}" for p in self.points)
        return f"register {self.address + 1} x{len(self.words)} ({pts})"


def merge_writes(points: Sequence[PointWrite], *, reorder: bool = False) -> list[WriteBlock]:
    """Plan points -> function-16 writes. Points that follow each other in the plan AND in the register
    space share one write. With ``reorder``, points that together form one contiguous range are sorted
    into a single write (used when their order does not matter)."""
    seq = list(points)
    if reorder and seq:
        ordered = sorted(seq, key=lambda p: p.address)
        if all(a.address + len(a.words) == b.address for a, b in zip(ordered, ordered[1:])):
            seq = ordered
    blocks: list[WriteBlock] = []
    for p in seq:
        last = blocks[-1] if blocks else None
        if last is not None and last.address + len(last.words) == p.address:
            blocks[-1] = WriteBlock(last.address, last.words + p.words, last.points + (p,))
        else:
            blocks.append(WriteBlock(p.address, p.words, (p,)))
    return blocks


def merge_reads(ranges: Sequence[tuple[int, int]], max_count: int = 125) -> list[tuple[int, int]]:
    """(address, count) ranges -> as few reads as possible, merging only overlapping or touching ranges
    (a gap may hold registers the device refuses to read)."""
    out: list[list[int]] = []
    for addr, count in sorted(set(ranges)):
        if out and addr <= out[-1][0] + out[-1][1] and max(out[-1][0] + out[-1][1], addr + count) - out[-1][0] <= max_count:
            out[-1][1] = max(out[-1][0] + out[-1][1], addr + count) - out[-1][0]
        else:
            out.append([addr, count])
    return [(a, c) for a, c in out]


def _words(image: Mapping[int, int], spec: RegisterSpec) -> list[int]:
    return [image[spec.address + i] for i in range(spec.word_count)]


def _finite(spec: RegisterSpec, words: Sequence[int], what: str) -> float | None:
    """The decoded value of ``words``, or None (with a warning naming the register and the value) when
    the device reports a non-finite number (a float32 +-inf or NaN): such a reading is skipped."""
    value = decode_value(spec, words)
    if math.isfinite(value):
        return value
    log.warning("%s: register %d (%s) reads %r (words %s); skipping this reading", what, spec.register,
                spec.data_type, value, [f"0x{w:04X}" for w in words])
    return None


class BatteryRegisterMap(ABC):
    """What a :class:`~protocols.modbus.link.ModbusBatteryLink` needs from a register map.

    ``image`` arguments map PDU addresses to register words, filled from the ranges the map asked for.
    """

    name: str
    revert_s: float = 0.0

    @abstractmethod
    def supports(self, command_type: CommandType) -> bool:
        """True when :meth:`plan` can express ``command_type`` (on a well-formed device)."""

    async def bind(self, read: Reader) -> "BatteryRegisterMap":
        """After connecting: discover the device's layout; returns the map to use for this connection.
        Raises :class:`RegisterMapError` when the device does not fit the map."""
        return self

    def setup_reads(self, command_type: CommandType) -> list[tuple[int, int]]:
        """Ranges :meth:`plan` needs read from the device first (scale factors, WChaMax)."""
        return []

    @abstractmethod
    def plan(self, command_type: CommandType, value: float, image: Mapping[int, int]) -> list[PointWrite]:
        """The points to write for the command, in order. Raises :class:`RegisterMapError` (-> REJECTED)."""

    def blocks(self, command_type: CommandType, value: float, image: Mapping[int, int]) -> list[WriteBlock]:
        """:meth:`plan` merged into the writes to send."""
        return merge_writes(self.plan(command_type, value, image))

    @abstractmethod
    def telemetry_reads(self) -> list[tuple[int, int]]:
        """Ranges to read on every poll."""

    def probe_reads(self) -> list[tuple[int, int]]:
        """What the link reads once after connecting (and discovery) before it reports the link up: a
        device that accepts TCP but never answers is not up. Default: the first telemetry range."""
        return self.telemetry_reads()[:1]

    @abstractmethod
    def decode_telemetry(self, image: Mapping[int, int]) -> dict[str, float]:
        """``{"soc_pct": ..., "power_kw": ...}`` (power > 0 = charging); a point the device does not
        implement is left out."""

    def decode_status(self, image: Mapping[int, int]) -> tuple[str, str] | None:
        """(BatteryState name, raw value) from a status register, or None when the map has none."""
        return None

    def describe(self) -> str:
        return self.name


# ------------------------------------------------------------------------------------ plain maps

@dataclass(frozen=True)
class StatusPoint:
    """A status register and what its raw values mean (BatteryState names)."""

    spec: RegisterSpec
    states: Mapping[int, str]


_DEFAULT_READS: Mapping[str, RegisterSpec] = MappingProxyType({
    "soc_pct": RegisterSpec(40010, "uint16", 10.0),
    "power_kw": RegisterSpec(40011, "int16", 10.0),
})
_OPPOSITE = {CommandType.SET_CHARGE_RATE: CommandType.SET_DISCHARGE_RATE,
             CommandType.SET_DISCHARGE_RATE: CommandType.SET_CHARGE_RATE}
_POWER_SIGNS = {"charge_positive": 1, "discharge_positive": -1}


@dataclass(frozen=True, eq=False)
class RegisterMap(BatteryRegisterMap):
    """A plain register map (see the module docstring). ``power_sign`` is +1 when the device counts
    charging power as positive, -1 when it counts discharging as positive."""

    writes: Mapping[CommandType, RegisterSpec]
    reads: Mapping[str, RegisterSpec] = field(default_factory=dict)
    status: StatusPoint | None = None
    name: str = "custom"
    exclusive_rates: bool = True
    power_sign: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "writes", MappingProxyType(dict(self.writes)))
        object.__setattr__(self, "reads", MappingProxyType(dict(self.reads)))
        if self.power_sign not in (1, -1):
            raise RegisterMapError(f"register map {self.name!r}: power_sign must be 1 or -1, got {self.power_sign!r}")
        for key in self.reads:
            if key not in READ_POINTS:
                raise RegisterMapError(f"register map {self.name!r}: reads.{key}: unknown read point "
                                       f"(expected one of {', '.join(READ_POINTS)}, or status)")
        used: dict[int, str] = {}
        points: list[tuple[str, RegisterSpec]] = [(f"writes.{ct.value}", s) for ct, s in self.writes.items()]
        points += [(f"reads.{k}", s) for k, s in self.reads.items()]
        if self.status is not None:
            points.append(("reads.status", self.status.spec))
        for label, spec in points:
            for reg in range(spec.register, spec.register + spec.word_count):
                other = used.setdefault(reg, label)
                if other != label:
                    raise RegisterMapError(f"register map {self.name!r}: {label} and {other} both use register {reg}")

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "RegisterMap":
        """The seed map: writes 40001..40004 (uint16, x10), SoC at 40010 (uint16, x10 %), power at
        40011 (int16, x10 kW, > 0 = charging)."""
        return cls(writes=dict(DEFAULT_REGISTER_MAP), reads=dict(_DEFAULT_READS), name="default")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, name: str | None = None) -> BatteryRegisterMap:
        """A map from a TOML-like dict::

            name = "vendor-x"                 # optional
            addressing = "one_based"          # or "zero_based": numbers below are PDU addresses
            exclusive_rates = true            # zero the opposite rate register (default true)
            [writes.SET_CHARGE_RATE]          # any CommandType name
            register = 40101                  # required
            type = "int32"                    # uint16 (default) | int16 | uint32 | int32 | float32
            scale = 1000                      # raw = value * scale (default 1)
            word_order = "little"             # big (default) | little: order of the 2 words of 32-bit types
            [reads.soc_pct]                   # optional: soc_pct, power_kw, status
            register = 40120
            [reads.power_kw]
            register = 40121
            type = "int16"
            sign = "charge_positive"          # or "discharge_positive"
            [reads.status]
            register = 40122
            states = {0 = "IDLE", 1 = "CHARGING", 2 = "DISCHARGING", 3 = "STANDBY", 4 = "FAULTED"}

        ``profile = "sunspec"`` (with optional ``base_address``, ``control``, ``revert_s``, ``models``,
        ``discover``) returns a :class:`SunSpecMap` instead. Errors are :class:`RegisterMapError`
        naming the key and the value.
        """
        if not isinstance(cfg, Mapping):
            raise RegisterMapError(f"register map: must be a table/dict, got {type(cfg).__name__} {cfg!r}")
        map_name = name or cfg.get("name") or "custom"
        if not isinstance(map_name, str):
            raise RegisterMapError(f"register map: name must be a string, got {map_name!r}")
        where = f"register map {map_name!r}"
        profile = cfg.get("profile", "plain")
        if profile == "sunspec":
            allowed = {"profile", "name", "base_address", "control", "revert_s", "models", "discover"}
            _no_unknown(cfg, allowed, where)
            kwargs = {k: cfg[k] for k in ("base_address", "control", "revert_s", "discover") if k in cfg}
            if "models" in cfg:
                kwargs["models"] = tuple(cfg["models"]) if isinstance(cfg["models"], (list, tuple)) else cfg["models"]
            return sunspec_map(name=map_name if "name" in cfg or name else "sunspec", **kwargs)
        if profile not in ("plain", "default"):
            raise RegisterMapError(f"{where}: profile: must be 'plain' or 'sunspec', got {profile!r}")
        _no_unknown(cfg, {"profile", "name", "addressing", "exclusive_rates", "writes", "reads"}, where)
        addressing = cfg.get("addressing", "one_based")
        if addressing not in ("one_based", "zero_based"):
            raise RegisterMapError(f"{where}: addressing: must be 'one_based' or 'zero_based', got {addressing!r}")
        base = 1 if addressing == "zero_based" else 0
        exclusive = cfg.get("exclusive_rates", True)
        if not isinstance(exclusive, bool):
            raise RegisterMapError(f"{where}: exclusive_rates: must be true or false, got {exclusive!r}")
        writes_cfg = cfg.get("writes")
        if not isinstance(writes_cfg, Mapping) or not writes_cfg:
            raise RegisterMapError(f"{where}: writes: must be a non-empty table of command types, got {writes_cfg!r}")
        writes: dict[CommandType, RegisterSpec] = {}
        for key, point in writes_cfg.items():
            try:
                ct = CommandType(key)
            except ValueError:
                raise RegisterMapError(f"{where}: writes.{key}: unknown command type "
                                       f"(expected one of {', '.join(t.value for t in CommandType)})") from None
            writes[ct] = _spec(point, f"{where}: writes.{key}", base, extra=())
        reads_cfg = cfg.get("reads", {})
        if not isinstance(reads_cfg, Mapping):
            raise RegisterMapError(f"{where}: reads: must be a table, got {reads_cfg!r}")
        reads: dict[str, RegisterSpec] = {}
        status: StatusPoint | None = None
        power_sign = 1
        for key, point in reads_cfg.items():
            label = f"{where}: reads.{key}"
            if key == "status":
                spec = _spec(point, label, base, extra=("states",))
                status = StatusPoint(spec, _states(point.get("states"), f"{label}.states"))
            elif key == "power_kw":
                reads[key] = _spec(point, label, base, extra=("sign",))
                sign = point.get("sign", "charge_positive")
                if sign not in _POWER_SIGNS:
                    raise RegisterMapError(f"{label}.sign: must be 'charge_positive' or 'discharge_positive', "
                                           f"got {sign!r}")
                power_sign = _POWER_SIGNS[sign]
            elif key in READ_POINTS:
                reads[key] = _spec(point, label, base, extra=())
            else:
                raise RegisterMapError(f"{label}: unknown read point (expected one of soc_pct, power_kw, status)")
        return cls(writes=writes, reads=reads, status=status, name=map_name, exclusive_rates=exclusive,
                   power_sign=power_sign)

    # ---- BatteryRegisterMap ----------------------------------------------------------------------
    def supports(self, command_type: CommandType) -> bool:
        return command_type in self.writes

    def plan(self, command_type: CommandType, value: float, image: Mapping[int, int]) -> list[PointWrite]:
        spec = self.writes.get(command_type)
        if spec is None:
            mapped = ", ".join(t.value for t in self.writes) or "nothing"
            raise RegisterMapError(f"{command_type.value} is not in register map {self.name!r} (it maps {mapped})")
        points = []
        opposite = _OPPOSITE.get(command_type)
        # A zero rate only says "not in this direction": it leaves the opposite rate alone (a schedule row
        # "charge 20, discharge 0" sends both; zeroing the charge register too would stop the battery).
        if self.exclusive_rates and opposite is not None and opposite in self.writes and value > 0:
            points.append(PointWrite.of(opposite.value, self.writes[opposite], 0.0))
        points.append(PointWrite.of(command_type.value, spec, value))
        return points

    def blocks(self, command_type: CommandType, value: float, image: Mapping[int, int]) -> list[WriteBlock]:
        return merge_writes(self.plan(command_type, value, image), reorder=True)

    def telemetry_reads(self) -> list[tuple[int, int]]:
        specs = list(self.reads.values()) + ([self.status.spec] if self.status else [])
        return merge_reads([(s.address, s.word_count) for s in specs])

    def probe_reads(self) -> list[tuple[int, int]]:
        reads = self.telemetry_reads()[:1]
        if not reads and self.writes:  # a map without reads: probe the first write register instead
            spec = next(iter(self.writes.values()))
            reads = [(spec.address, spec.word_count)]
        return reads

    def decode_telemetry(self, image: Mapping[int, int]) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, spec in self.reads.items():
            value = _finite(spec, _words(image, spec), f"{self.describe()}: {key}")
            if value is not None:
                out[key] = value * self.power_sign if key == "power_kw" else value
        return out

    def decode_status(self, image: Mapping[int, int]) -> tuple[str, str] | None:
        if self.status is None:
            return None
        value = _finite(self.status.spec, _words(image, self.status.spec), f"{self.describe()}: status")
        if value is None:
            return None
        raw = int(round(value * self.status.spec.scale))
        state = self.status.states.get(raw)
        return None if state is None else (state, str(raw))

    def describe(self) -> str:
        return f"register map {self.name!r}"


def _no_unknown(cfg: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in cfg:
        if key not in allowed:
            raise RegisterMapError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _spec(point: Any, label: str, base: int, extra: tuple[str, ...]) -> RegisterSpec:
    if not isinstance(point, Mapping):
        raise RegisterMapError(f"{label}: must be a table with register/type/scale/word_order, got {point!r}")
    _no_unknown(point, {"register", "type", "data_type", "scale", "word_order", *extra}, label)
    if "register" not in point:
        raise RegisterMapError(f"{label}.register: missing")
    register = point["register"]
    if isinstance(register, bool) or not isinstance(register, int):
        raise RegisterMapError(f"{label}.register: must be an integer, got {register!r}")
    dtype = point.get("type", point.get("data_type", "uint16"))
    if dtype not in DATA_TYPES:
        raise RegisterMapError(f"{label}.type: unknown data type {dtype!r} (expected one of {', '.join(DATA_TYPES)})")
    scale = point.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise RegisterMapError(f"{label}.scale: must be a finite number > 0, got {scale!r}")
    order = point.get("word_order", "big")
    if order not in ("big", "little"):
        raise RegisterMapError(f"{label}.word_order: must be 'big' or 'little', got {order!r}")
    try:
        return RegisterSpec(register + base, dtype, float(scale), order)
    except ValueError as e:
        raise RegisterMapError(f"{label}: {e}") from None


def _states(states: Any, label: str) -> Mapping[int, str]:
    if not isinstance(states, Mapping) or not states:
        raise RegisterMapError(f"{label}: must be a non-empty table raw value -> state, got {states!r}")
    out: dict[int, str] = {}
    names = {s.name for s in BatteryState}
    for raw, state in states.items():
        try:
            key = int(raw)
        except (TypeError, ValueError):
            raise RegisterMapError(f"{label}: key {raw!r} is not an integer") from None
        if state not in names:
            raise RegisterMapError(f"{label}.{raw}: unknown state {state!r} (expected one of {', '.join(sorted(names))})")
        out[key] = state
    return MappingProxyType(out)


# --------------------------------------------------------------------------------------- SunSpec

_SUNSPEC_TYPES = {"uint16": "uint16", "enum16": "uint16", "bitfield16": "uint16", "count": "uint16",
                  "acc16": "uint16", "int16": "int16", "sunssf": "int16", "pad": "uint16",
                  "uint32": "uint32", "enum32": "uint32", "bitfield32": "uint32", "acc32": "uint32",
                  "int32": "int32", "float32": "float32"}
#: Raw "not implemented" values by SunSpec type (what a device answers for a point it lacks).
SUNSPEC_UNIMPLEMENTED = {"int16": 0x8000, "sunssf": 0x8000, "pad": 0x8000, "uint16": 0xFFFF, "enum16": 0xFFFF,
                         "bitfield16": 0xFFFF, "count": 0, "acc16": 0, "int32": 0x80000000,
                         "uint32": 0xFFFFFFFF, "enum32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF, "acc32": 0,
                         "float32": 0x7FC00000, "int64": 0x8000000000000000, "uint64": 0xFFFFFFFFFFFFFFFF,
                         "acc64": 0, "string": 0}


@dataclass(frozen=True, slots=True)
class SunSpecPoint:
    """A point of a SunSpec model: ``offset`` from the model's ID register, ``size`` in registers."""

    model: int
    name: str
    offset: int
    size: int
    type: str
    sf: str | None
    access: str
    mandatory: bool
    symbols: Mapping[str, int]


@functools.lru_cache(maxsize=None)
def sunspec_model_points(model_id: int) -> tuple[int, Mapping[str, SunSpecPoint]]:
    """(model length L, {point name: SunSpecPoint}) from pysunspec2's definition of ``model_id``.

    Top-level points are named as in the model ("WSet"); points of (repeating-once) groups are named
    "Group.Point". Offsets count from the model's ID register (ID = 0, L = 1).
    """
    from sunspec2 import device as ss_device  # pysunspec2; imported lazily (it loads JSON on first use)
    try:
        model = ss_device.Model(model_id=model_id)
    except Exception as e:  # pragma: no cover - pysunspec2 raises assorted errors
        raise RegisterMapError(f"SunSpec model {model_id}: no definition in pysunspec2 ({e})") from None
    if not model.points:
        raise RegisterMapError(f"SunSpec model {model_id}: no definition in pysunspec2")
    points: dict[str, SunSpecPoint] = {}

    def add(group: Any, prefix: str) -> None:
        for pname, p in group.points.items():
            pdef = p.pdef
            points[prefix + pname] = SunSpecPoint(
                model_id, prefix + pname, p.offset, p.len, pdef.get("type"), pdef.get("sf"),
                pdef.get("access", "R"), pdef.get("mandatory") == "M",
                MappingProxyType({s["name"]: s["value"] for s in pdef.get("symbols", [])}))
        for gname, g in getattr(group, "groups", {}).items():
            for sub in (g if isinstance(g, list) else [g]):
                add(sub, f"{prefix}{gname}.")

    add(model, "")
    return model.len - 2, MappingProxyType(points)


def _sunspec_layout(base_address: int, models: Sequence[int]) -> dict[int, int]:
    addr = base_address + 2
    out: dict[int, int] = {}
    for mid in models:
        length, _ = sunspec_model_points(mid)
        out[mid] = addr
        addr += 2 + length
    return out


def sunspec_map(base_address: int = 40000, *, control: str = "storage", revert_s: int = 0,
                models: Sequence[int] = SUNSPEC_DEFAULT_MODELS, discover: bool = True,
                name: str = "sunspec") -> "SunSpecMap":
    """The SunSpec profile (see the module docstring for exactly which points each command writes).

    ``base_address`` is the PDU address of "SunS" (40000 = register 40001; pysunspec2 scans 40000, 0,
    50000). ``models`` is the layout assumed when ``discover`` is False (and served by the simulator);
    with ``discover`` (default) the link walks the device's model chain after connecting.
    ``control``: "storage" (model 124 rates) or "der" (model 704 WSet in watts). ``revert_s``: the
    revert timer written with every rate (0 = none).
    """
    if control not in ("storage", "der"):
        raise RegisterMapError(f"sunspec map: control: must be 'storage' or 'der', got {control!r}")
    if isinstance(base_address, bool) or not isinstance(base_address, int) or not 0 <= base_address <= 0xFFFF - 4:
        raise RegisterMapError(f"sunspec map: base_address: must be a PDU address in 0..65531, got {base_address!r}")
    if isinstance(revert_s, bool) or not isinstance(revert_s, (int, float)) or not 0 <= revert_s <= 0xFFFF:
        raise RegisterMapError(f"sunspec map: revert_s: must be a number of seconds in 0..65535, got {revert_s!r}")
    if not isinstance(discover, bool):
        raise RegisterMapError(f"sunspec map: discover: must be true or false, got {discover!r}")
    models = tuple(models)
    for mid in models:
        if isinstance(mid, bool) or not isinstance(mid, int):
            raise RegisterMapError(f"sunspec map: models: {mid!r} is not a model id")
        sunspec_model_points(mid)
    needed = {124} | ({704} if control == "der" else set())
    if not needed <= set(models):
        raise RegisterMapError(f"sunspec map: models {list(models)} lack model(s) {sorted(needed - set(models))} "
                               f"needed for control {control!r}")
    layout = _sunspec_layout(base_address, models)
    if max(layout.values()) + 2 + sunspec_model_points(models[-1])[0] + 2 > 0x10000:
        raise RegisterMapError(f"sunspec map: models {list(models)} do not fit above base address {base_address}")
    return SunSpecMap(base_address=base_address, control=control, revert_s=int(revert_s), models=models,
                      model_addresses=layout, discover=discover, name=name)


@dataclass(frozen=True, eq=False)
class SunSpecMap(BatteryRegisterMap):
    """The SunSpec profile; build it with :func:`sunspec_map`. ``model_addresses`` maps model id ->
    PDU address of its ID register (the assumed layout, replaced by :meth:`bind` when discovering)."""

    base_address: int
    control: str
    models: tuple[int, ...]
    model_addresses: Mapping[int, int]
    revert_s: int = 0
    discover: bool = True
    name: str = "sunspec"

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_addresses", MappingProxyType(dict(self.model_addresses)))

    # ---- points ----------------------------------------------------------------------------------
    def point(self, model: int, name: str) -> SunSpecPoint:
        return sunspec_model_points(model)[1][name]

    def address(self, model: int, name: str) -> int:
        """PDU address of a point (raises RegisterMapError when the device has no such model)."""
        if model not in self.model_addresses:
            raise RegisterMapError(f"SunSpec device has no model {model} "
                                   f"(it has {', '.join(map(str, self.model_addresses)) or 'none'})")
        return self.model_addresses[model] + self.point(model, name).offset

    def spec(self, model: int, name: str, scale: float = 1.0) -> RegisterSpec:
        p = self.point(model, name)
        dtype = _SUNSPEC_TYPES.get(p.type)
        if dtype is None:  # pragma: no cover - only simple types are used
            raise RegisterMapError(f"{model}.{name}: SunSpec type {p.type} is not supported")
        return RegisterSpec(self.address(model, name) + 1, dtype, scale, "big")

    def model_range(self, model: int) -> tuple[int, int]:
        """(address, count) of a whole model, header included."""
        return self.address(model, "ID"), 2 + sunspec_model_points(model)[0]

    def raw(self, image: Mapping[int, int], model: int, name: str) -> int | None:
        """A point's raw integer (two's complement applied), or None when it reads "not implemented"
        (or, float32, a non-finite value: skipped with a warning)."""
        p = self.point(model, name)
        spec = self.spec(model, name)
        words = _words(image, spec)
        unimpl = SUNSPEC_UNIMPLEMENTED.get(p.type)
        as_unsigned = functools.reduce(lambda acc, w: (acc << 16) | w, words, 0)
        if unimpl is not None and as_unsigned == unimpl and p.type not in ("count", "acc16", "acc32"):
            return None
        value = _finite(spec, words, f"{self.describe()}: {model}.{name}")
        return None if value is None else int(value)

    def sf(self, image: Mapping[int, int], model: int, name: str) -> int:
        """A scale factor read from the device (RegisterMapError if it is not implemented or absurd)."""
        value = self.raw(image, model, name)
        if value is None or not -10 <= value <= 10:
            raise RegisterMapError(f"SunSpec {model}.{name} is not implemented or invalid on the device "
                                   f"(raw {value!r}); cannot scale the value")
        return value

    def scaled_spec(self, image: Mapping[int, int], model: int, name: str) -> RegisterSpec:
        """The RegisterSpec of a point whose scale factor is read from ``image``."""
        sf_name = self.point(model, name).sf
        scale = 1.0 if sf_name is None else 10.0 ** (-self.sf(image, model, sf_name))
        return self.spec(model, name, scale)

    # ---- BatteryRegisterMap ----------------------------------------------------------------------
    def supports(self, command_type: CommandType) -> bool:
        return command_type in (CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE,
                                CommandType.SET_POWER_LIMIT)

    async def bind(self, read: Reader) -> "SunSpecMap":
        if not self.discover:
            return self
        head = await read(self.base_address, 2)
        if tuple(head) != SUNS_MARKER:
            raise RegisterMapError(f"no SunSpec marker 'SunS' at register {self.base_address + 1} "
                                   f"(PDU {self.base_address}); read {list(head)}")
        addr = self.base_address + 2
        found: dict[int, int] = {}
        for _ in range(256):
            if addr + 2 > 0x10000:
                break
            mid, length = await read(addr, 2)
            if mid == 0xFFFF:
                break
            found.setdefault(mid, addr)
            if mid in self.models or mid in (124, 704, 701):
                needed = sunspec_model_points(mid)[0]
                if length < needed:
                    raise RegisterMapError(f"SunSpec model {mid} at register {addr + 1} has length {length}, "
                                           f"pysunspec2's definition needs {needed}")
            addr += 2 + length
        needed_models = {124} | ({704} if self.control == "der" else set())
        missing = needed_models - set(found)
        if missing:
            raise RegisterMapError(f"SunSpec device lacks model(s) {sorted(missing)} (found "
                                   f"{', '.join(map(str, found)) or 'none'})")
        return dataclasses.replace(self, model_addresses=found)

    def setup_reads(self, command_type: CommandType) -> list[tuple[int, int]]:
        ranges = [self.model_range(124)]
        if self.control == "der" and command_type in _OPPOSITE:
            for name in ("WSetEna", "WSet", "WSet_SF"):  # the current WSet: see plan() for a zero rate
                ranges.append((self.address(704, name), self.point(704, name).size))
        return merge_reads(ranges)

    def plan(self, command_type: CommandType, value: float, image: Mapping[int, int]) -> list[PointWrite]:
        ct = command_type
        if ct is CommandType.SET_POWER_LIMIT:
            return [PointWrite.of("124.WChaMax", self.scaled_spec(image, 124, "WChaMax"), value * 1000.0)]
        if ct not in _OPPOSITE:
            raise RegisterMapError(f"{ct.value} has no SunSpec point (register map {self.name!r} supports "
                                   f"SET_CHARGE_RATE, SET_DISCHARGE_RATE, SET_POWER_LIMIT)")
        charging = ct is CommandType.SET_CHARGE_RATE
        if self.control == "der":
            watts = -value * 1000.0 if charging else value * 1000.0
            wset = self.scaled_spec(image, 704, "WSet")
            if value == 0 and self.raw(image, 704, "WSetEna") == 1:
                # A zero rate only stops this direction: the opposite one running now stays as it is.
                current = decode_value(wset, _words(image, wset))
                if (current > 0 and charging) or (current < 0 and not charging):
                    return []
            return [PointWrite.of("704.WSetRvrtTms", self.spec(704, "WSetRvrtTms"), self.revert_s),
                    PointWrite.of("704.WSetEna", self.spec(704, "WSetEna"), 1),
                    PointWrite.of("704.WSetMod", self.spec(704, "WSetMod"), 1),
                    PointWrite.of("704.WSet", wset, watts)]
        wchamax_raw = self.raw(image, 124, "WChaMax")
        if wchamax_raw is None:
            raise RegisterMapError("SunSpec 124.WChaMax is not implemented on the device: cannot express a rate "
                                   "as a percentage of it")
        wchamax = wchamax_raw * 10.0 ** self.sf(image, 124, "WChaMax_SF")
        if wchamax <= 0:
            raise RegisterMapError(f"SunSpec 124.WChaMax is {wchamax:g} W: cannot express {value:g} kW as a "
                                   f"percentage of it")
        pct = value * 1000.0 / wchamax * 100.0
        rte = self.scaled_spec(image, 124, "InWRte")
        out_rte = self.scaled_spec(image, 124, "OutWRte")
        if value == 0:
            # A zero rate only stops this direction: clear its rate and its StorCtl_Mod bit, and leave the
            # opposite direction (its rate, bit and revert timer) as it is.
            mod = self.raw(image, 124, "StorCtl_Mod") or 0
            if charging:
                return [PointWrite.of("124.InWRte", rte, 0.0),
                        PointWrite.of("124.StorCtl_Mod", self.spec(124, "StorCtl_Mod"), mod & ~1 & 3)]
            return [PointWrite.of("124.OutWRte", out_rte, 0.0),
                    PointWrite.of("124.StorCtl_Mod", self.spec(124, "StorCtl_Mod"), mod & ~2 & 3)]
        return [PointWrite.of("124.OutWRte", out_rte, 0.0 if charging else pct),
                PointWrite.of("124.InWRte", rte, pct if charging else 0.0),
                PointWrite.of("124.InOutWRte_WinTms", self.spec(124, "InOutWRte_WinTms"), 0),
                PointWrite.of("124.InOutWRte_RvrtTms", self.spec(124, "InOutWRte_RvrtTms"), self.revert_s),
                PointWrite.of("124.StorCtl_Mod", self.spec(124, "StorCtl_Mod"), 1 if charging else 2)]

    def telemetry_reads(self) -> list[tuple[int, int]]:
        ranges = [self.model_range(124)]
        if 701 in self.model_addresses:
            ranges += [(self.address(701, "W"), 1), (self.address(701, "W_SF"), 1)]
        return merge_reads(ranges)

    def decode_telemetry(self, image: Mapping[int, int]) -> dict[str, float]:
        out: dict[str, float] = {}
        soc = self.raw(image, 124, "ChaState")
        soc_sf = self.raw(image, 124, "ChaState_SF")
        if soc is not None and soc_sf is not None:
            out["soc_pct"] = soc * 10.0 ** soc_sf
        if 701 in self.model_addresses:
            w = self.raw(image, 701, "W")
            w_sf = self.raw(image, 701, "W_SF")
            if w is not None and w_sf is not None:
                out["power_kw"] = -w * 10.0 ** w_sf / 1000.0 + 0.0  # + 0.0: no -0.0
        return out

    def describe(self) -> str:
        return f"SunSpec map {self.name!r} (base {self.base_address}, control {self.control})"


def load_register_map(spec: "BatteryRegisterMap | Mapping[str, Any] | str | None") -> BatteryRegisterMap:
    """None or "default" -> the seed map; "sunspec" -> ``sunspec_map()``; a dict -> ``RegisterMap.from_config``;
    a map -> itself."""
    if spec is None or spec == "default":
        return RegisterMap.default()
    if spec == "sunspec":
        return sunspec_map()
    if isinstance(spec, BatteryRegisterMap):
        return spec
    if isinstance(spec, Mapping):
        return RegisterMap.from_config(spec)
    raise RegisterMapError(f"register map: expected 'default', 'sunspec', a table or a map, got {spec!r}")
