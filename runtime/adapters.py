"""Protocol adapters: translate a :class:`~runtime.commands.Command` into a protocol request (a dict).

Adapters are pure translators: they do no I/O. The device links in ``protocols/`` send what
``translate`` returns.

* :class:`OCPPAdapter` (chargers, OCPP 1.6 or 2.0.1) returns ``{"action": <OCPP action>, "payload":
  <camelCase request payload>}``; the payload is valid against the official JSON schema of that
  action and version (the schemas that ship in the ``ocpp`` package).
* :class:`ModbusAdapter` (batteries and other register-driven devices) returns a holding-register
  write ``{"function": "write_registers", "unit_id", "register", "address", "values", "data_type",
  "scale", "word_order"}``.
* :class:`AdapterRegistry` maps asset ids to their adapter.

:func:`encode_value` / :func:`decode_value` convert between engineering values and 16-bit register
words for a :class:`RegisterSpec`; they are pure functions that device links and simulators reuse.
"""

from __future__ import annotations

import itertools
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import ItemsView, Mapping, Sequence
from dataclasses import dataclass
from datetime import timezone
from types import MappingProxyType
from typing import Any, Literal, get_args

from .commands import Command, CommandType

__all__ = [
    "UnsupportedCommand", "ProtocolAdapter", "AdapterRegistry", "OCPPAdapter", "ModbusAdapter",
    "RegisterSpec", "DataType", "WordOrder", "encode_value", "decode_value", "DEFAULT_REGISTER_MAP",
]


class UnsupportedCommand(ValueError):
    """The adapter cannot express this command type for this asset (names the asset and the type)."""


class ProtocolAdapter(ABC):
    """Translates commands for one asset into protocol requests. Subclasses set ``supported_types``."""

    supported_types: frozenset[CommandType] = frozenset()

    def supports(self, command_type: CommandType) -> bool:
        """True if :meth:`translate` can express commands of ``command_type``."""
        return command_type in self.supported_types

    @abstractmethod
    def translate(self, cmd: Command) -> dict[str, Any]:
        """The protocol request for ``cmd``.

        :raises UnsupportedCommand: ``cmd.command_type`` is not in ``supported_types``.
        :raises ValueError: the value cannot be expressed (e.g. out of range for the register).
        """

    def _unsupported(self, cmd: Command) -> UnsupportedCommand:
        supported = ", ".join(sorted(t.value for t in self.supported_types))
        return UnsupportedCommand(f"asset {cmd.asset_id!r}: {cmd.command_type.value} is not supported by "
                                  f"{self!r} (supported: {supported})")


class AdapterRegistry:
    """Asset id -> adapter."""

    def __init__(self) -> None:
        self._adapters: dict[str, ProtocolAdapter] = {}

    def register(self, asset_id: str, adapter: ProtocolAdapter, *, replace: bool = False) -> None:
        """Make ``adapter`` the adapter of ``asset_id``.

        :raises ValueError: ``asset_id`` is empty, or already registered and ``replace`` is False.
        :raises TypeError: ``adapter`` has no ``translate`` method.
        """
        if not isinstance(asset_id, str) or not asset_id:
            raise ValueError(f"asset_id: must be a non-empty string, got {asset_id!r}")
        if not callable(getattr(adapter, "translate", None)):
            raise TypeError(f"adapter for asset {asset_id!r}: {adapter!r} has no translate(cmd) method")
        if asset_id in self._adapters and not replace:
            raise ValueError(f"asset {asset_id!r} already has an adapter ({self._adapters[asset_id]!r}); "
                             f"pass replace=True to replace it")
        self._adapters[asset_id] = adapter

    def get(self, asset_id: str) -> ProtocolAdapter:
        """The adapter of ``asset_id``.

        :raises KeyError: ``unknown asset 'x'``.
        """
        try:
            return self._adapters[asset_id]
        except KeyError:
            raise KeyError(f"unknown asset {asset_id!r}") from None

    def __contains__(self, asset_id: object) -> bool:
        return asset_id in self._adapters

    def __len__(self) -> int:
        return len(self._adapters)

    def items(self) -> ItemsView[str, ProtocolAdapter]:
        """(asset id, adapter) pairs in registration order."""
        return self._adapters.items()


# --------------------------------------------------------------------------------------------- OCPP

OCPPVersion = Literal["1.6", "2.0.1"]
ChargingRateUnit = Literal["W", "A"]
ProfileKind = Literal["Absolute", "Relative"]
IdTokenType = Literal["Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress",
                      "NoAuthorization"]
_ID_TAG_MAX = {"1.6": 20, "2.0.1": 36}


class OCPPAdapter(ProtocolAdapter):
    """Commands for one OCPP charger, as OCPP 1.6 (default) or 2.0.1 requests.

    ============================  ==========================  ==============================
    command type                  1.6 action                  2.0.1 action
    ============================  ==========================  ==============================
    SET_CHARGE_RATE               SetChargingProfile          SetChargingProfile
    SET_POWER_LIMIT               SetChargingProfile          SetChargingProfile
    START_CHARGING                RemoteStartTransaction      RequestStartTransaction
    STOP_CHARGING                 RemoteStopTransaction       RequestStopTransaction
    CHANGE_AVAILABILITY           ChangeAvailability          ChangeAvailability
    ============================  ==========================  ==============================

    SET_CHARGE_RATE sets profile ``profile_id`` at ``stack_level`` on ``connector_id`` (1.6; 0 = all
    connectors) or ``evse_id`` (2.0.1; 0 = whole station), purpose TxDefaultProfile, or TxProfile
    for ``transaction_id`` when one is set (TxProfile needs a connector/EVSE > 0). SET_POWER_LIMIT is
    the charger-wide cap: ChargePointMaxProfile on connector 0 (1.6) / ChargingStationMaxProfile on
    EVSE 0 (2.0.1), profile ``max_profile_id`` (default ``profile_id + 1``, so the two profiles never
    replace each other), always Absolute. Each profile has one period (``startPeriod`` 0) whose
    ``limit`` is ``cmd.value`` kW in W, or with ``unit="A"`` in A per phase (W / (voltage x phases),
    with ``numberPhases``), rounded down to a multiple of 0.1 (1.6 requires one; rounding down never
    allows more than the requested power). ``profile_kind`` "Absolute" starts the schedule at
    ``cmd.scheduled_time`` (``startSchedule``, ISO 8601 UTC); "Relative" starts it with the
    transaction (no ``startSchedule``).

    START_CHARGING authorizes with ``id_tag`` (2.0.1: ``idToken {idToken, type: id_token_type}`` and a
    ``remoteStartId`` counting up from 1 per adapter) on ``connector_id``/``evse_id`` when > 0.
    STOP_CHARGING stops ``transaction_id`` (an int in 1.6, sent as a string in 2.0.1); the asset actor
    sets :attr:`transaction_id` when a transaction starts and clears it (None) when it ends.
    CHANGE_AVAILABILITY: ``cmd.value`` 1 = Operative, 0 = Inoperative, for ``connector_id`` (1.6) or
    ``evse_id`` (2.0.1; 0 = whole station).

    ``site_id`` names the charging station (as the central system knows it); it appears in errors.
    """

    supported_types = frozenset({CommandType.SET_CHARGE_RATE, CommandType.SET_POWER_LIMIT,
                                 CommandType.START_CHARGING, CommandType.STOP_CHARGING,
                                 CommandType.CHANGE_AVAILABILITY})

    def __init__(self, site_id: str, version: OCPPVersion = "1.6", connector_id: int = 0, evse_id: int = 1,
                 unit: ChargingRateUnit = "W", profile_id: int = 1, stack_level: int = 0,
                 transaction_id: int | str | None = None, *, id_tag: str = "coordinator",
                 id_token_type: IdTokenType = "Central", voltage: float = 230.0, phases: int = 3,
                 profile_kind: ProfileKind = "Absolute", max_profile_id: int | None = None) -> None:
        if not isinstance(site_id, str) or not site_id:
            raise ValueError(f"site_id: must be a non-empty string, got {site_id!r}")
        _check_choice("version", version, OCPPVersion)
        _check_choice("unit", unit, ChargingRateUnit)
        _check_choice("id_token_type", id_token_type, IdTokenType)
        _check_choice("profile_kind", profile_kind, ProfileKind)
        for name, v in (("connector_id", connector_id), ("evse_id", evse_id), ("profile_id", profile_id),
                        ("stack_level", stack_level)):
            _check_int(name, v, 0)
        if max_profile_id is not None:
            _check_int("max_profile_id", max_profile_id, 0)
        if max_profile_id == profile_id:
            raise ValueError(f"max_profile_id: must differ from profile_id ({profile_id}), or the power limit "
                             f"profile would replace the charge rate profile")
        if not isinstance(id_tag, str) or not 0 < len(id_tag) <= _ID_TAG_MAX[version]:
            raise ValueError(f"id_tag: must be a string of 1..{_ID_TAG_MAX[version]} characters for OCPP "
                             f"{version}, got {id_tag!r}")
        if isinstance(voltage, bool) or not isinstance(voltage, (int, float)) or not voltage > 0:
            raise ValueError(f"voltage: must be a number > 0, got {voltage!r}")
        if phases not in (1, 2, 3) or isinstance(phases, bool):
            raise ValueError(f"phases: must be 1, 2 or 3, got {phases!r}")
        self.site_id = site_id
        self.version: OCPPVersion = version
        self.connector_id = connector_id
        self.evse_id = evse_id
        self.unit: ChargingRateUnit = unit
        self.profile_id = profile_id
        self.max_profile_id = profile_id + 1 if max_profile_id is None else max_profile_id
        self.stack_level = stack_level
        self.id_tag = id_tag
        self.id_token_type: IdTokenType = id_token_type
        self.voltage = float(voltage)
        self.phases = phases
        self.profile_kind: ProfileKind = profile_kind
        self._remote_start_ids = itertools.count(1)
        self.transaction_id = transaction_id

    @property
    def transaction_id(self) -> int | str | None:
        """The running transaction (None: no transaction). 1.6 needs an int and a connector_id > 0;
        2.0.1 takes an int or a string of at most 36 characters and an evse_id > 0."""
        return self._transaction_id

    @transaction_id.setter
    def transaction_id(self, value: int | str | None) -> None:
        if value is not None:
            if self.version == "1.6":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"transaction_id: OCPP 1.6 transaction ids are integers, got {value!r}")
                if self.connector_id == 0:
                    raise ValueError(f"transaction_id: a 1.6 TxProfile needs connector_id > 0 "
                                     f"(charger {self.site_id!r} has connector_id 0)")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, str)) or not 0 < len(str(value)) <= 36:
                    raise ValueError(f"transaction_id: OCPP 2.0.1 transaction ids are strings of 1..36 "
                                     f"characters, got {value!r}")
                if self.evse_id == 0:
                    raise ValueError(f"transaction_id: a 2.0.1 TxProfile needs evse_id > 0 "
                                     f"(charger {self.site_id!r} has evse_id 0)")
        self._transaction_id = value

    def __repr__(self) -> str:
        return f"OCPPAdapter({self.site_id!r}, OCPP {self.version})"

    def translate(self, cmd: Command) -> dict[str, Any]:
        """``{"action": ..., "payload": ...}`` for ``cmd`` (see the class docstring).

        :raises UnsupportedCommand: SET_DISCHARGE_RATE or SET_SOC_TARGET.
        :raises ValueError: STOP_CHARGING without a transaction id; a negative rate or limit; a
            CHANGE_AVAILABILITY value other than 0 or 1.
        """
        t = cmd.command_type
        if t is CommandType.SET_CHARGE_RATE:
            purpose = "TxDefaultProfile" if self.transaction_id is None else "TxProfile"
            target = self.connector_id if self.version == "1.6" else self.evse_id
            return self._profile(cmd, purpose, self.profile_id, self.profile_kind, target)
        if t is CommandType.SET_POWER_LIMIT:
            purpose = "ChargePointMaxProfile" if self.version == "1.6" else "ChargingStationMaxProfile"
            return self._profile(cmd, purpose, self.max_profile_id, "Absolute", 0)
        if t is CommandType.START_CHARGING:
            return self._start()
        if t is CommandType.STOP_CHARGING:
            return self._stop(cmd)
        if t is CommandType.CHANGE_AVAILABILITY:
            return self._availability(cmd)
        raise self._unsupported(cmd)

    def _limit(self, cmd: Command) -> float:
        if cmd.value < 0 or not math.isfinite(cmd.value):
            raise ValueError(f"asset {cmd.asset_id!r}: {cmd.command_type.value} value {cmd.value!r} kW "
                             f"must be a finite number >= 0")
        watts = cmd.value * 1000.0
        limit = watts if self.unit == "W" else watts / (self.voltage * self.phases)
        # Down to a multiple of 0.1 (never above the requested power); 1e-6 absorbs float noise.
        return math.floor(limit * 10 + 1e-6) / 10

    def _profile(self, cmd: Command, purpose: str, profile_id: int, kind: ProfileKind,
                 target: int) -> dict[str, Any]:
        """SetChargingProfile on connector (1.6) / EVSE (2.0.1) ``target``."""
        period: dict[str, Any] = {"startPeriod": 0, "limit": self._limit(cmd)}
        if self.unit == "A":
            period["numberPhases"] = self.phases
        schedule: dict[str, Any] = {"chargingRateUnit": self.unit, "chargingSchedulePeriod": [period]}
        if kind == "Absolute":
            schedule["startSchedule"] = _iso(cmd)
        profile: dict[str, Any] = {"stackLevel": self.stack_level, "chargingProfilePurpose": purpose,
                                   "chargingProfileKind": kind}
        if purpose == "TxProfile":
            profile["transactionId"] = (self.transaction_id if self.version == "1.6"
                                        else str(self.transaction_id))
        if self.version == "1.6":
            profile = {"chargingProfileId": profile_id, **profile, "chargingSchedule": schedule}
            payload = {"connectorId": target, "csChargingProfiles": profile}
        else:
            profile = {"id": profile_id, **profile, "chargingSchedule": [{"id": profile_id, **schedule}]}
            payload = {"evseId": target, "chargingProfile": profile}
        return {"action": "SetChargingProfile", "payload": payload}

    def _start(self) -> dict[str, Any]:
        if self.version == "1.6":
            payload: dict[str, Any] = {"idTag": self.id_tag}
            if self.connector_id > 0:
                payload["connectorId"] = self.connector_id
            return {"action": "RemoteStartTransaction", "payload": payload}
        payload = {"idToken": {"idToken": self.id_tag, "type": self.id_token_type},
                   "remoteStartId": next(self._remote_start_ids)}
        if self.evse_id > 0:
            payload["evseId"] = self.evse_id
        return {"action": "RequestStartTransaction", "payload": payload}

    def _stop(self, cmd: Command) -> dict[str, Any]:
        if self.transaction_id is None:
            raise ValueError(f"asset {cmd.asset_id!r}: STOP_CHARGING needs a transaction id, and charger "
                             f"{self.site_id!r} has none (set OCPPAdapter.transaction_id when the "
                             f"transaction starts)")
        if self.version == "1.6":
            return {"action": "RemoteStopTransaction", "payload": {"transactionId": self.transaction_id}}
        return {"action": "RequestStopTransaction", "payload": {"transactionId": str(self.transaction_id)}}

    def _availability(self, cmd: Command) -> dict[str, Any]:
        if cmd.value not in (0, 1):
            raise ValueError(f"asset {cmd.asset_id!r}: CHANGE_AVAILABILITY value must be 1 (Operative) or "
                             f"0 (Inoperative), got {cmd.value!r}")
        status = "Operative" if cmd.value == 1 else "Inoperative"
        if self.version == "1.6":
            return {"action": "ChangeAvailability", "payload": {"connectorId": self.connector_id, "type": status}}
        payload: dict[str, Any] = {"operationalStatus": status}
        if self.evse_id > 0:
            payload["evse"] = {"id": self.evse_id}
        return {"action": "ChangeAvailability", "payload": payload}


def _iso(cmd: Command) -> str:
    return cmd.scheduled_time.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _check_choice(name: str, value: object, choices: Any) -> None:
    if value not in get_args(choices):
        raise ValueError(f"{name}: must be one of {get_args(choices)}, got {value!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


# -------------------------------------------------------------------------------------------- Modbus

DataType = Literal["uint16", "int16", "uint32", "int32", "float32"]
WordOrder = Literal["big", "little"]
_FORMATS: dict[str, tuple[str, int]] = {"uint16": (">H", 1), "int16": (">h", 1), "uint32": (">I", 2),
                                        "int32": (">i", 2), "float32": (">f", 2)}
_INT_RANGES: dict[str, tuple[int, int]] = {"uint16": (0, 0xFFFF), "int16": (-0x8000, 0x7FFF),
                                           "uint32": (0, 0xFFFFFFFF), "int32": (-0x80000000, 0x7FFFFFFF)}
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where and how one value is written.

    ``register`` is the one-based holding register number of vendor documentation ("40001"); the
    zero-based PDU ``address`` sent on the wire is ``register - 1`` (40001 -> 40000). ``raw =
    round(value * scale)`` (Python ``round``: halves to even) for the integer types, ``value * scale``
    for float32; 32-bit types use two registers, high word first for ``word_order="big"`` and low word
    first for ``"little"`` (bytes within a word are always big-endian, as Modbus defines).
    """

    register: int
    data_type: DataType = "uint16"
    scale: float = 1.0
    word_order: WordOrder = "big"

    def __post_init__(self) -> None:
        _check_choice("data_type", self.data_type, DataType)
        _check_choice("word_order", self.word_order, WordOrder)
        last = 0x10000 - self.word_count + 1
        if isinstance(self.register, bool) or not isinstance(self.register, int) or not 1 <= self.register <= last:
            raise ValueError(f"register: must be an integer in 1..{last} for {self.data_type}, "
                             f"got {self.register!r}")
        if (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float))
                or not math.isfinite(self.scale) or self.scale <= 0):
            raise ValueError(f"scale: must be a finite number > 0, got {self.scale!r} (register {self.register})")

    @property
    def address(self) -> int:
        """Zero-based PDU address of the first register."""
        return self.register - 1

    @property
    def word_count(self) -> int:
        """Number of 16-bit registers the value occupies (1 or 2)."""
        return _FORMATS[self.data_type][1]


def encode_value(spec: RegisterSpec, value: float) -> list[int]:
    """``value`` (engineering units) -> register words for ``spec``.

    :raises ValueError: ``value`` is not a finite number, or ``value * scale`` is out of range for the
        data type (the message names the register and the value).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"register {spec.register}: value {value!r} is not a finite number")
    fmt, _ = _FORMATS[spec.data_type]
    if spec.data_type == "float32":
        raw: float = value * spec.scale
        if abs(raw) > _FLOAT32_MAX:
            raise ValueError(f"register {spec.register}: value {value!r} (x{spec.scale} = {raw!r}) is out of "
                             f"range for float32")
    else:
        raw = round(value * spec.scale)
        lo, hi = _INT_RANGES[spec.data_type]
        if not lo <= raw <= hi:
            raise ValueError(f"register {spec.register}: value {value!r} (x{spec.scale} = raw {raw}) is out of "
                             f"range for {spec.data_type} ({lo}..{hi})")
    data = struct.pack(fmt, raw)
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if spec.word_order == "little" else words


def decode_value(spec: RegisterSpec, words: Sequence[int]) -> float:
    """Register words -> value (engineering units) for ``spec``; the inverse of :func:`encode_value`.

    :raises ValueError: wrong number of words for the data type, or a word outside 0..65535.
    """
    if len(words) != spec.word_count:
        raise ValueError(f"register {spec.register}: {spec.data_type} needs {spec.word_count} word(s), "
                         f"got {len(words)}: {list(words)!r}")
    for w in words:
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 0xFFFF:
            raise ValueError(f"register {spec.register}: word {w!r} is not an integer in 0..65535")
    ordered = list(words)[::-1] if spec.word_order == "little" else list(words)
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    (raw,) = struct.unpack(_FORMATS[spec.data_type][0], data)
    return raw / spec.scale


#: kW rates and limits as uint16 at 0.1 kW (scale 10, 0..6553.5 kW); SOC target as uint16 at 0.1 %.
DEFAULT_REGISTER_MAP: Mapping[CommandType, RegisterSpec] = MappingProxyType({
    CommandType.SET_CHARGE_RATE: RegisterSpec(40001, "uint16", 10.0),
    CommandType.SET_DISCHARGE_RATE: RegisterSpec(40002, "uint16", 10.0),
    CommandType.SET_POWER_LIMIT: RegisterSpec(40003, "uint16", 10.0),
    CommandType.SET_SOC_TARGET: RegisterSpec(40004, "uint16", 10.0),
})


class ModbusAdapter(ProtocolAdapter):
    """Commands as holding-register writes on Modbus device ``unit_id`` (0..255).

    ``register_map`` (default :data:`DEFAULT_REGISTER_MAP`) says which register each command type
    writes and how its value is encoded; a custom map replaces the default entirely, and the command
    types it lists are exactly the supported ones. Registers of different command types must not overlap.
    """

    def __init__(self, unit_id: int = 1, register_map: Mapping[CommandType, RegisterSpec] | None = None) -> None:
        _check_int("unit_id", unit_id, 0)
        if unit_id > 255:
            raise ValueError(f"unit_id: must be an integer in 0..255, got {unit_id!r}")
        specs = dict(DEFAULT_REGISTER_MAP if register_map is None else register_map)
        if not specs:
            raise ValueError("register_map: must map at least one command type")
        used: dict[int, CommandType] = {}
        for ctype, spec in specs.items():
            if not isinstance(ctype, CommandType):
                raise ValueError(f"register_map: keys must be CommandType, got {ctype!r}")
            if not isinstance(spec, RegisterSpec):
                raise ValueError(f"register_map[{ctype.value}]: must be a RegisterSpec, got {spec!r}")
            for reg in range(spec.register, spec.register + spec.word_count):
                other = used.setdefault(reg, ctype)
                if other is not ctype:
                    raise ValueError(f"register_map: {ctype.value} and {other.value} both use register {reg}")
        self.unit_id = unit_id
        self.register_map: Mapping[CommandType, RegisterSpec] = MappingProxyType(specs)
        self.supported_types = frozenset(specs)

    def __repr__(self) -> str:
        return f"ModbusAdapter(unit_id={self.unit_id})"

    def translate(self, cmd: Command) -> dict[str, Any]:
        """The register write for ``cmd``.

        :raises UnsupportedCommand: the command type is not in the register map.
        :raises ValueError: the value does not fit the register's data type (names asset, register, value).
        """
        spec = self.register_map.get(cmd.command_type)
        if spec is None:
            raise self._unsupported(cmd)
        try:
            words = encode_value(spec, cmd.value)
        except ValueError as e:
            raise ValueError(f"asset {cmd.asset_id!r} {cmd.command_type.value}: {e}") from None
        return {"function": "write_registers", "unit_id": self.unit_id, "register": spec.register,
                "address": spec.address, "values": words, "data_type": spec.data_type, "scale": spec.scale,
                "word_order": spec.word_order}
