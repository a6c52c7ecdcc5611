"""Adapters: commands become OCPP requests valid against the official schemas, or Modbus register writes."""

from __future__ import annotations

import decimal
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest

from runtime.core.commands import Command, CommandType
from runtime.engine.adapters import (DEFAULT_REGISTER_MAP, AdapterRegistry, ModbusAdapter, OCPPAdapter,
                                     ProtocolAdapter, RegisterSpec, UnsupportedCommand)

T = datetime(2026, 1, 1, 0, 10, tzinfo=timezone.utc)
SCHEMAS = Path(ocpp.__file__).parent
VERSIONS = ["1.6", "2.0.1"]


def cmd(ctype: CommandType, value: float = 7.4, asset: str = "ast_ev_001") -> Command:
    return Command("c-1", asset, ctype, value, T)


def assert_valid(message: dict[str, Any], version: str) -> None:
    """Validate like the ocpp package does: 1.6 floats as Decimal (the schemas use multipleOf 0.1)."""
    if version == "1.6":
        path = SCHEMAS / "v16" / "schemas" / f"{message['action']}.json"
        parse_float: Any = decimal.Decimal
    else:
        path = SCHEMAS / "v201" / "schemas" / f"{message['action']}Request.json"
        parse_float = float
    schema = json.loads(path.read_text(encoding="utf-8-sig"), parse_float=parse_float)
    payload = json.loads(json.dumps(message["payload"]), parse_float=parse_float)
    jsonschema.validators.validator_for(schema)(schema).validate(payload)


# ----------------------------------------------------------------------------------------- registry

def test_registry_returns_the_adapter_registered_for_an_asset():
    registry = AdapterRegistry()
    adapter = OCPPAdapter("ocpp_site_1")
    registry.register("ast_ev_001", adapter)
    assert registry.get("ast_ev_001") is adapter
    assert "ast_ev_001" in registry and "other" not in registry
    assert list(registry.items()) == [("ast_ev_001", adapter)]
    assert len(registry) == 1


def test_registry_get_of_an_unknown_asset_raises_key_error_naming_it():
    with pytest.raises(KeyError, match="unknown asset 'x'"):
        AdapterRegistry().get("x")


def test_registering_an_asset_twice_needs_replace():
    registry = AdapterRegistry()
    registry.register("a", ModbusAdapter())
    with pytest.raises(ValueError, match="asset 'a' already has an adapter"):
        registry.register("a", ModbusAdapter(2))
    replacement = ModbusAdapter(2)
    registry.register("a", replacement, replace=True)
    assert registry.get("a") is replacement


def test_registry_rejects_an_object_without_translate_and_an_empty_asset_id():
    with pytest.raises(TypeError, match="has no translate"):
        AdapterRegistry().register("a", object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="asset_id: must be a non-empty string"):
        AdapterRegistry().register("", ModbusAdapter())


def test_adapters_are_protocol_adapters_that_say_what_they_support():
    for adapter in (OCPPAdapter("s"), ModbusAdapter()):
        assert isinstance(adapter, ProtocolAdapter)
    assert OCPPAdapter("s").supports(CommandType.START_CHARGING)
    assert not OCPPAdapter("s").supports(CommandType.SET_SOC_TARGET)
    assert ModbusAdapter().supported_types == frozenset(DEFAULT_REGISTER_MAP)


# ------------------------------------------------------------------------------------ OCPP: schemas

OCPP_CASES = [
    (CommandType.SET_CHARGE_RATE, 7.4, {}),
    (CommandType.SET_CHARGE_RATE, 7.4, {"unit": "A"}),
    (CommandType.SET_CHARGE_RATE, 11.04321, {"unit": "A", "phases": 1, "voltage": 240.0}),
    (CommandType.SET_CHARGE_RATE, 3.33333, {"connector_id": 1, "evse_id": 1, "transaction_id": 42}),
    (CommandType.SET_CHARGE_RATE, 0.0, {"profile_kind": "Relative"}),
    (CommandType.SET_POWER_LIMIT, 22.0, {}),
    (CommandType.SET_POWER_LIMIT, 16.7, {"unit": "A"}),
    (CommandType.START_CHARGING, 0.0, {}),
    (CommandType.START_CHARGING, 0.0, {"connector_id": 2, "evse_id": 2, "id_tag": "fleet-7"}),
    (CommandType.STOP_CHARGING, 0.0, {"connector_id": 1, "transaction_id": 42}),
    (CommandType.CHANGE_AVAILABILITY, 1.0, {}),
    (CommandType.CHANGE_AVAILABILITY, 0.0, {"connector_id": 1, "evse_id": 0}),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("ctype, value, options", OCPP_CASES)
def test_every_ocpp_request_is_valid_against_the_official_schema(version, ctype, value, options):
    message = OCPPAdapter("cs-1", version, **options).translate(cmd(ctype, value))
    assert set(message) == {"action", "payload"}
    assert_valid(message, version)


def test_the_schema_check_catches_an_invalid_payload():
    message = OCPPAdapter("cs-1").translate(cmd(CommandType.SET_CHARGE_RATE))
    message["payload"]["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 7400.05
    with pytest.raises(jsonschema.ValidationError):
        assert_valid(message, "1.6")


# ------------------------------------------------------------------------------ OCPP: 1.6 contents

def test_charge_rate_in_16_is_a_tx_default_profile_in_watts_starting_at_the_scheduled_time():
    assert OCPPAdapter("cs-1").translate(cmd(CommandType.SET_CHARGE_RATE, 7.4)) == {
        "action": "SetChargingProfile",
        "payload": {"connectorId": 0, "csChargingProfiles": {
            "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {"chargingRateUnit": "W", "startSchedule": "2026-01-01T00:10:00Z",
                                 "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}]}}}}


def test_charge_rate_with_a_transaction_is_a_tx_profile_naming_it():
    profile = OCPPAdapter("cs-1", connector_id=1, transaction_id=42, profile_id=5, stack_level=2).translate(
        cmd(CommandType.SET_CHARGE_RATE))["payload"]["csChargingProfiles"]
    assert (profile["chargingProfilePurpose"], profile["transactionId"]) == ("TxProfile", 42)
    assert (profile["chargingProfileId"], profile["stackLevel"]) == (5, 2)


def test_relative_profiles_have_no_start_schedule():
    schedule = OCPPAdapter("cs-1", profile_kind="Relative").translate(
        cmd(CommandType.SET_CHARGE_RATE))["payload"]["csChargingProfiles"]["chargingSchedule"]
    assert "startSchedule" not in schedule


def test_amps_are_per_phase_at_the_configured_voltage_rounded_down_to_a_tenth():
    period = OCPPAdapter("cs-1", unit="A").translate(
        cmd(CommandType.SET_CHARGE_RATE, 11.0))["payload"]["csChargingProfiles"]["chargingSchedule"][
        "chargingSchedulePeriod"][0]
    assert period == {"startPeriod": 0, "limit": 15.9, "numberPhases": 3}  # 11000 / (230 * 3) = 15.94
    one_phase = OCPPAdapter("cs-1", unit="A", phases=1, voltage=240).translate(cmd(CommandType.SET_CHARGE_RATE, 7.2))
    assert one_phase["payload"]["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 30.0


def test_watt_limits_are_exact_multiples_of_a_tenth():
    limit = OCPPAdapter("cs-1").translate(cmd(CommandType.SET_CHARGE_RATE, 3.33333))[
        "payload"]["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]
    assert limit == 3333.3


def test_power_limit_is_a_charge_point_max_profile_on_connector_0_with_its_own_profile_id():
    payload = OCPPAdapter("cs-1", connector_id=2, profile_id=3).translate(cmd(CommandType.SET_POWER_LIMIT, 22))["payload"]
    assert payload["connectorId"] == 0
    profile = payload["csChargingProfiles"]
    assert (profile["chargingProfilePurpose"], profile["chargingProfileId"]) == ("ChargePointMaxProfile", 4)
    assert profile["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 22000.0}]


def test_start_charging_in_16_is_remote_start_with_the_id_tag():
    assert OCPPAdapter("cs-1", connector_id=1, id_tag="fleet").translate(cmd(CommandType.START_CHARGING)) == {
        "action": "RemoteStartTransaction", "payload": {"idTag": "fleet", "connectorId": 1}}
    assert OCPPAdapter("cs-1").translate(cmd(CommandType.START_CHARGING))["payload"] == {"idTag": "coordinator"}


def test_stop_charging_in_16_is_remote_stop_of_the_transaction():
    assert OCPPAdapter("cs-1", connector_id=1, transaction_id=42).translate(cmd(CommandType.STOP_CHARGING)) == {
        "action": "RemoteStopTransaction", "payload": {"transactionId": 42}}


@pytest.mark.parametrize("version", VERSIONS)
def test_stop_charging_without_a_transaction_id_is_a_clear_error(version):
    with pytest.raises(ValueError, match="asset 'ast_ev_001': STOP_CHARGING needs a transaction id"):
        OCPPAdapter("cs-1", version).translate(cmd(CommandType.STOP_CHARGING))


def test_the_transaction_id_can_be_set_when_a_transaction_starts_and_cleared_when_it_ends():
    adapter = OCPPAdapter("cs-1", connector_id=1)
    adapter.transaction_id = 9
    assert adapter.translate(cmd(CommandType.STOP_CHARGING))["payload"] == {"transactionId": 9}
    adapter.transaction_id = None
    profile = adapter.translate(cmd(CommandType.SET_CHARGE_RATE))["payload"]["csChargingProfiles"]
    assert profile["chargingProfilePurpose"] == "TxDefaultProfile" and "transactionId" not in profile


def test_change_availability_in_16_maps_1_to_operative_and_0_to_inoperative():
    adapter = OCPPAdapter("cs-1", connector_id=1)
    assert adapter.translate(cmd(CommandType.CHANGE_AVAILABILITY, 1)) == {
        "action": "ChangeAvailability", "payload": {"connectorId": 1, "type": "Operative"}}
    assert adapter.translate(cmd(CommandType.CHANGE_AVAILABILITY, 0))["payload"]["type"] == "Inoperative"


# ---------------------------------------------------------------------------- OCPP: 2.0.1 contents

def test_charge_rate_in_201_has_an_evse_and_a_list_of_one_schedule_with_an_id():
    assert OCPPAdapter("cs-1", "2.0.1", evse_id=2, profile_id=7).translate(cmd(CommandType.SET_CHARGE_RATE, 7.4)) == {
        "action": "SetChargingProfile",
        "payload": {"evseId": 2, "chargingProfile": {
            "id": 7, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 7, "chargingRateUnit": "W", "startSchedule": "2026-01-01T00:10:00Z",
                                  "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7400.0}]}]}}}


def test_tx_profile_in_201_sends_the_transaction_id_as_a_string():
    profile = OCPPAdapter("cs-1", "2.0.1", transaction_id="tx-abc").translate(
        cmd(CommandType.SET_CHARGE_RATE))["payload"]["chargingProfile"]
    assert (profile["chargingProfilePurpose"], profile["transactionId"]) == ("TxProfile", "tx-abc")
    assert OCPPAdapter("cs-1", "2.0.1", transaction_id=42).translate(
        cmd(CommandType.STOP_CHARGING)) == {"action": "RequestStopTransaction", "payload": {"transactionId": "42"}}


def test_power_limit_in_201_is_a_charging_station_max_profile_on_evse_0():
    payload = OCPPAdapter("cs-1", "2.0.1").translate(cmd(CommandType.SET_POWER_LIMIT, 50))["payload"]
    assert payload["evseId"] == 0
    assert payload["chargingProfile"]["chargingProfilePurpose"] == "ChargingStationMaxProfile"
    assert payload["chargingProfile"]["id"] == 2


def test_start_charging_in_201_is_request_start_with_an_id_token_and_counting_remote_start_ids():
    adapter = OCPPAdapter("cs-1", "2.0.1", id_tag="fleet", id_token_type="Local")
    first = adapter.translate(cmd(CommandType.START_CHARGING))
    assert first == {"action": "RequestStartTransaction", "payload": {
        "idToken": {"idToken": "fleet", "type": "Local"}, "remoteStartId": 1, "evseId": 1}}
    assert adapter.translate(cmd(CommandType.START_CHARGING))["payload"]["remoteStartId"] == 2


def test_change_availability_in_201_names_the_evse_or_the_whole_station():
    assert OCPPAdapter("cs-1", "2.0.1", evse_id=3).translate(cmd(CommandType.CHANGE_AVAILABILITY, 0)) == {
        "action": "ChangeAvailability", "payload": {"operationalStatus": "Inoperative", "evse": {"id": 3}}}
    assert OCPPAdapter("cs-1", "2.0.1", evse_id=0).translate(cmd(CommandType.CHANGE_AVAILABILITY, 1))[
        "payload"] == {"operationalStatus": "Operative"}


# ------------------------------------------------------------------------------------- OCPP: errors

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("ctype", [CommandType.SET_SOC_TARGET, CommandType.SET_DISCHARGE_RATE])
def test_a_type_a_charger_cannot_do_is_unsupported_naming_asset_and_type(version, ctype):
    with pytest.raises(UnsupportedCommand, match=f"asset 'ast_ev_001': {ctype.value} is not supported"):
        OCPPAdapter("cs-1", version).translate(cmd(ctype))


def test_unsupported_command_is_a_value_error():
    assert issubclass(UnsupportedCommand, ValueError)


def test_a_negative_charge_rate_is_rejected():
    with pytest.raises(ValueError, match="SET_CHARGE_RATE value -1.0 kW must be a finite number >= 0"):
        OCPPAdapter("cs-1").translate(cmd(CommandType.SET_CHARGE_RATE, -1.0))


def test_change_availability_values_other_than_0_and_1_are_rejected():
    with pytest.raises(ValueError, match=r"CHANGE_AVAILABILITY value must be 1 \(Operative\) or 0"):
        OCPPAdapter("cs-1").translate(cmd(CommandType.CHANGE_AVAILABILITY, 2))


@pytest.mark.parametrize("kwargs, message", [
    ({"version": "2.1"}, "version: must be one of"),
    ({"unit": "kW"}, "unit: must be one of"),
    ({"connector_id": -1}, "connector_id: must be an integer >= 0"),
    ({"phases": 4}, "phases: must be 1, 2 or 3"),
    ({"voltage": 0}, "voltage: must be a number > 0"),
    ({"id_tag": "x" * 21}, "id_tag: must be a string of 1..20 characters for OCPP 1.6"),
    ({"transaction_id": 42}, "a 1.6 TxProfile needs connector_id > 0"),
    ({"connector_id": 1, "transaction_id": "abc"}, "OCPP 1.6 transaction ids are integers"),
    ({"version": "2.0.1", "evse_id": 0, "transaction_id": "t"}, "a 2.0.1 TxProfile needs evse_id > 0"),
    ({"version": "2.0.1", "transaction_id": "x" * 37}, "strings of 1..36 characters"),
    ({"profile_id": 2, "max_profile_id": 2}, "max_profile_id: must differ from profile_id"),
    ({"profile_kind": "Recurring"}, "profile_kind: must be one of"),
])
def test_invalid_ocpp_adapter_settings_are_rejected_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OCPPAdapter("cs-1", **kwargs)


# ------------------------------------------------------------------------------------------- Modbus

@pytest.mark.parametrize("ctype, register, value, words", [
    (CommandType.SET_CHARGE_RATE, 40001, 7.4, [74]),
    (CommandType.SET_DISCHARGE_RATE, 40002, 250.0, [2500]),
    (CommandType.SET_POWER_LIMIT, 40003, 6553.5, [65535]),
    (CommandType.SET_SOC_TARGET, 40004, 80.5, [805]),
])
def test_default_register_map_writes_tenths_as_uint16(ctype, register, value, words):
    assert ModbusAdapter(unit_id=3).translate(cmd(ctype, value, asset="bat")) == {
        "function": "write_registers", "unit_id": 3, "register": register, "address": register - 1,
        "values": words, "data_type": "uint16", "scale": 10.0, "word_order": "big"}


def test_register_40001_is_pdu_address_40000():
    assert RegisterSpec(40001).address == 40000


def test_a_custom_register_map_replaces_the_default():
    adapter = ModbusAdapter(register_map={CommandType.SET_CHARGE_RATE: RegisterSpec(100, "int32", 1000, "little")})
    out = adapter.translate(cmd(CommandType.SET_CHARGE_RATE, 5.0, asset="bat"))
    assert (out["register"], out["address"], out["values"], out["data_type"]) == (100, 99, [5000, 0], "int32")
    with pytest.raises(UnsupportedCommand, match="asset 'bat': SET_DISCHARGE_RATE is not supported"):
        adapter.translate(cmd(CommandType.SET_DISCHARGE_RATE, 1.0, asset="bat"))


def test_modbus_types_not_in_the_map_are_unsupported_naming_asset_and_type():
    with pytest.raises(UnsupportedCommand, match="asset 'bat': START_CHARGING is not supported"):
        ModbusAdapter().translate(cmd(CommandType.START_CHARGING, asset="bat"))


def test_a_value_out_of_range_for_the_register_is_rejected_naming_asset_register_and_value():
    with pytest.raises(ValueError, match=r"asset 'bat' SET_CHARGE_RATE: register 40001: value 7000.0 "
                                         r"\(x10.0 = raw 70000\) is out of range for uint16 \(0..65535\)"):
        ModbusAdapter().translate(cmd(CommandType.SET_CHARGE_RATE, 7000.0, asset="bat"))


def test_overlapping_registers_in_a_map_are_rejected():
    with pytest.raises(ValueError, match="SET_DISCHARGE_RATE and SET_CHARGE_RATE both use register 11"):
        ModbusAdapter(register_map={CommandType.SET_CHARGE_RATE: RegisterSpec(10, "uint32"),
                                    CommandType.SET_DISCHARGE_RATE: RegisterSpec(11)})


@pytest.mark.parametrize("kwargs, message", [
    ({"unit_id": 256}, r"unit_id: must be an integer in 0..255"),
    ({"unit_id": -1}, r"unit_id: must be an integer >= 0"),
    ({"register_map": {}}, "register_map: must map at least one command type"),
    ({"register_map": {"SET_CHARGE_RATE": RegisterSpec(1)}}, "register_map: keys must be CommandType"),
    ({"register_map": {CommandType.SET_CHARGE_RATE: 40001}}, r"register_map\[SET_CHARGE_RATE\]: must be a RegisterSpec"),
])
def test_invalid_modbus_adapter_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModbusAdapter(**kwargs)
