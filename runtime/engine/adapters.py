"""Protocol adapters: translate a :class:`~runtime.core.commands.Command` into a protocol request (a dict).

Adapters are pure translators: they do no I/O. The device links in ``protocols/`` send what
``translate`` returns.

* :class:`OCPPAdapter` (chargers, OCPP 1.6 or 2.0.1) returns ``{"action": <OCPP action>, "payload":
  <camelCase request payload>}``; the payload is valid against the official JSON schema of that
  action and version (the schemas that ship in the ``ocpp`` package).
* :class:`ModbusAdapter` (batteries and other register-driven devices) returns a holding-register
  write ``{"function": "write_registers", "unit_id", "register", "address", "values", "data_type",
  "scale", "word_order"}``.
* :class:`AdapterRegistry` maps asset ids to their adapter.

The adapters reuse the protocol code rather than repeat it: SetChargingProfile comes from the OCPP
version's own builder (:mod:`protocols.ocpp.profiles`), register words from the Modbus codec
(:mod:`protocols.modbus.codec`, where :class:`RegisterSpec` and :data:`DEFAULT_REGISTER_MAP` live; both
are re-exported here for the seed API).
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import ItemsView, Mapping
from types import MappingProxyType
from typing import Any, Literal, get_args

from protocols.modbus.codec import DEFAULT_REGISTER_MAP, RegisterSpec, encode_value
from protocols.ocpp.profiles import charging_limit, set_charging_profile, wire_payload

from ..core.commands import Command, CommandType
from ..core.errors import ConfigurationError, InvalidCommand, UnsupportedCommand

__all__ = [
    "UnsupportedCommand", "ProtocolAdapter", "AdapterRegistry", "OCPPAdapter", "ModbusAdapter",
    "RegisterSpec", "DEFAULT_REGISTER_MAP",
]



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
            raise ConfigurationError(f"asset_id: must be a non-empty string, got {asset_id!r}")
        if not callable(getattr(adapter, "translate", None)):
            raise TypeError(f"adapter for asset {asset_id!r}: {adapter!r} has no translate(cmd) method")
        if asset_id in self._adapters and not replace:
            raise ConfigurationError(f"asset {asset_id!r} already has an adapter ({self._adapters[asset_id]!r}); "
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
            raise ConfigurationError(f"site_id: must be a non-empty string, got {site_id!r}")
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
            raise ConfigurationError(f"max_profile_id: must differ from profile_id ({profile_id}), or the power limit "
                             f"profile would replace the charge rate profile")
        if not isinstance(id_tag, str) or not 0 < len(id_tag) <= _ID_TAG_MAX[version]:
            raise ConfigurationError(f"id_tag: must be a string of 1..{_ID_TAG_MAX[version]} characters for OCPP "
                             f"{version}, got {id_tag!r}")
        if isinstance(voltage, bool) or not isinstance(voltage, (int, float)) or not voltage > 0:
            raise ConfigurationError(f"voltage: must be a number > 0, got {voltage!r}")
        if phases not in (1, 2, 3) or isinstance(phases, bool):
            raise ConfigurationError(f"phases: must be 1, 2 or 3, got {phases!r}")
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
                    raise ConfigurationError(f"transaction_id: OCPP 1.6 transaction ids are integers, got {value!r}")
                if self.connector_id == 0:
                    raise ConfigurationError(f"transaction_id: a 1.6 TxProfile needs connector_id > 0 "
                                     f"(charger {self.site_id!r} has connector_id 0)")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, str)) or not 0 < len(str(value)) <= 36:
                    raise ConfigurationError(f"transaction_id: OCPP 2.0.1 transaction ids are strings of 1..36 "
                                     f"characters, got {value!r}")
                if self.evse_id == 0:
                    raise ConfigurationError(f"transaction_id: a 2.0.1 TxProfile needs evse_id > 0 "
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
            raise InvalidCommand(f"asset {cmd.asset_id!r}: {cmd.command_type.value} value {cmd.value!r} kW "
                             f"must be a finite number >= 0")
        return charging_limit(cmd.value, self.unit, voltage=self.voltage, phases=self.phases)

    def _profile(self, cmd: Command, purpose: str, profile_id: int, kind: ProfileKind,
                 target: int) -> dict[str, Any]:
        """SetChargingProfile on connector (1.6) / EVSE (2.0.1) ``target``, built by the version's
        own builder (the one the OCPP charger link uses)."""
        request = set_charging_profile(
            self.version, target=target, profile_id=profile_id, purpose=purpose, limit=self._limit(cmd),
            unit=self.unit, kind=kind, stack_level=self.stack_level, start_schedule=cmd.scheduled_time,
            number_phases=self.phases, transaction_id=self.transaction_id if purpose == "TxProfile" else None)
        return {"action": "SetChargingProfile", "payload": wire_payload(request)}

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
            raise InvalidCommand(f"asset {cmd.asset_id!r}: STOP_CHARGING needs a transaction id, and charger "
                             f"{self.site_id!r} has none (set OCPPAdapter.transaction_id when the "
                             f"transaction starts)")
        if self.version == "1.6":
            return {"action": "RemoteStopTransaction", "payload": {"transactionId": self.transaction_id}}
        return {"action": "RequestStopTransaction", "payload": {"transactionId": str(self.transaction_id)}}

    def _availability(self, cmd: Command) -> dict[str, Any]:
        if cmd.value not in (0, 1):
            raise InvalidCommand(f"asset {cmd.asset_id!r}: CHANGE_AVAILABILITY value must be 1 (Operative) or "
                             f"0 (Inoperative), got {cmd.value!r}")
        status = "Operative" if cmd.value == 1 else "Inoperative"
        if self.version == "1.6":
            return {"action": "ChangeAvailability", "payload": {"connectorId": self.connector_id, "type": status}}
        payload: dict[str, Any] = {"operationalStatus": status}
        if self.evse_id > 0:
            payload["evse"] = {"id": self.evse_id}
        return {"action": "ChangeAvailability", "payload": payload}



def _check_choice(name: str, value: object, choices: Any) -> None:
    if value not in get_args(choices):
        raise ConfigurationError(f"{name}: must be one of {get_args(choices)}, got {value!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name}: must be an integer >= {minimum}, got {value!r}")


class ModbusAdapter(ProtocolAdapter):
    """Commands as holding-register writes on Modbus device ``unit_id`` (0..255).

    ``register_map`` (default :data:`DEFAULT_REGISTER_MAP`) says which register each command type
    writes and how its value is encoded; a custom map replaces the default entirely, and the command
    types it lists are exactly the supported ones. Registers of different command types must not overlap.
    """

    def __init__(self, unit_id: int = 1, register_map: Mapping[CommandType, RegisterSpec] | None = None) -> None:
        _check_int("unit_id", unit_id, 0)
        if unit_id > 255:
            raise ConfigurationError(f"unit_id: must be an integer in 0..255, got {unit_id!r}")
        specs = dict(DEFAULT_REGISTER_MAP if register_map is None else register_map)
        if not specs:
            raise ConfigurationError("register_map: must map at least one command type")
        used: dict[int, CommandType] = {}
        for ctype, spec in specs.items():
            if not isinstance(ctype, CommandType):
                raise ConfigurationError(f"register_map: keys must be CommandType, got {ctype!r}")
            if not isinstance(spec, RegisterSpec):
                raise ConfigurationError(f"register_map[{ctype.value}]: must be a RegisterSpec, got {spec!r}")
            for reg in range(spec.register, spec.register + spec.word_count):
                other = used.setdefault(reg, ctype)
                if other is not ctype:
                    raise ConfigurationError(f"register_map: {ctype.value} and {other.value} both use register {reg}")
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
            raise InvalidCommand(f"asset {cmd.asset_id!r} {cmd.command_type.value}: {e}") from None
        return {"function": "write_registers", "unit_id": self.unit_id, "register": spec.register,
                "address": spec.address, "values": words, "data_type": spec.data_type, "scale": spec.scale,
                "word_order": spec.word_order}
