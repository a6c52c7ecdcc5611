"""schedule_to_commands: a kW schedule becomes commands, or a ScheduleError naming column, row and value."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from runtime.bench.schedule import make_bench_schedule, reference_row_by_row
from runtime.core.batch import CommandBatch
from runtime.core.commands import CommandStatus, CommandType
from runtime.core.schedule import ScheduleError, parse_column, schedule_to_commands

T0 = pd.Timestamp("2026-01-01 00:00", tz="UTC")
CR, DR = CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE


def frame(columns: dict[str, list[object]], freq: str = "5min", start: pd.Timestamp = T0) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame(columns, index=pd.date_range(start, periods=n, freq=freq))


def at(minutes: float) -> float:
    return (T0 + pd.Timedelta(minutes=minutes)).timestamp()


def rows(batch: CommandBatch) -> list[tuple[str, CommandType, float, float]]:
    return [(c.asset_id, c.command_type, c.scheduled_time.timestamp(), c.value) for c in batch]


# ------------------------------------------------------------------------------------ emission rule

def test_first_row_always_emits_and_unchanged_values_do_not():
    batch = schedule_to_commands(frame({"ev_1_kw": [7.0, 7.0, 7.0]}))
    assert rows(batch) == [("ev_1", CR, at(0), 7.0)]


def test_a_command_is_emitted_on_every_change_of_value():
    batch = schedule_to_commands(frame({"ev_1_kw": [7.0, 7.0, 11.0, 11.0, 0.0, 7.0]}))
    assert rows(batch) == [("ev_1", CR, at(0), 7.0), ("ev_1", CR, at(10), 11.0),
                           ("ev_1", CR, at(20), 0.0), ("ev_1", CR, at(25), 7.0)]


def test_changes_below_one_micro_kw_are_not_changes():
    batch = schedule_to_commands(frame({"ev_1_kw": [7.0, 7.0 + 1e-9, 7.0 + 2e-6]}))
    assert [c.value for c in batch] == [7.0, 7.000002]


def test_values_are_rounded_to_one_micro_kw_and_solver_noise_below_zero_is_zero():
    batch = schedule_to_commands(frame({"ev_1_kw": [1.23456789, -1e-9]}))
    values = [c.value for c in batch]
    assert values == [1.234568, 0.0]
    assert str(values[1]) == "0.0"  # not -0.0


def test_commands_are_ordered_by_time_then_column_order():
    batch = schedule_to_commands(frame({"ev_b_kw": [1.0, 2.0], "ev_a_kw": [3.0, 4.0]}))
    assert [(c.asset_id, c.value) for c in batch] == [("ev_b", 1.0), ("ev_a", 3.0), ("ev_b", 2.0), ("ev_a", 4.0)]


def test_each_asset_and_type_changes_independently():
    batch = schedule_to_commands(frame({"battery_charge_kw": [5.0, 5.0, 0.0], "battery_discharge_kw": [0.0, 0.0, 3.0]}))
    assert rows(batch) == [("battery", CR, at(0), 5.0), ("battery", DR, at(0), 0.0),
                           ("battery", CR, at(10), 0.0), ("battery", DR, at(10), 3.0)]


def test_result_is_a_command_batch_of_pending_commands_with_batch_ids_and_stamps():
    batch = schedule_to_commands(frame({"ev_1_kw": [1.0, 2.0]}), batch_id="b1", created_at=at(-60), priority=3,
                                 source="dayahead")
    assert isinstance(batch, CommandBatch)
    assert [c.command_id for c in batch] == ["b1-0", "b1-1"]
    c = batch[0]
    assert (c.status, c.priority, c.source) == (CommandStatus.PENDING, 3, "dayahead")
    assert c.created_at == datetime(2025, 12, 31, 23, 0, tzinfo=timezone.utc)


def test_batch_id_defaults_to_a_fresh_id_and_created_at_to_none():
    a = schedule_to_commands(frame({"ev_1_kw": [1.0]}))
    b = schedule_to_commands(frame({"ev_1_kw": [1.0]}))
    assert a.batch_id != b.batch_id
    assert a[0].created_at is None


def test_integer_columns_are_accepted_as_kw():
    batch = schedule_to_commands(frame({"ev_1_kw": [7, 7, 11]}))
    assert [c.value for c in batch] == [7.0, 11.0]


def test_a_non_utc_timezone_is_accepted_and_times_are_absolute():
    df = frame({"ev_1_kw": [1.0, 2.0]}, start=pd.Timestamp("2026-01-01 01:00", tz="Europe/Berlin"))
    assert [c.scheduled_time.timestamp() for c in schedule_to_commands(df)] == [at(0), at(5)]


def test_result_matches_the_row_by_row_reference_on_a_realistic_schedule():
    df = make_bench_schedule(n_assets=40, n_intervals=50, seed=3)
    ours = {(c.asset_id, c.command_type, c.scheduled_time, c.value) for c in schedule_to_commands(df)}
    ref = {(c.asset_id, c.command_type, c.scheduled_time, c.value) for c in reference_row_by_row(df)}
    assert ours == ref
    assert len(ours) == len(schedule_to_commands(df))


# ------------------------------------------------------------------------ column names and asset map

@pytest.mark.parametrize("column, key, ctype", [
    ("ev_001_kw", "ev_001", CommandType.SET_CHARGE_RATE),
    ("ev_site_a_7_kw", "ev_site_a_7", CommandType.SET_CHARGE_RATE),
    ("ev_7_power_limit_kw", "ev_7", CommandType.SET_POWER_LIMIT),
    ("battery_charge_kw", "battery", CommandType.SET_CHARGE_RATE),
    ("battery_discharge_kw", "battery", CommandType.SET_DISCHARGE_RATE),
    ("battery_power_limit_kw", "battery", CommandType.SET_POWER_LIMIT),
    ("battery_soc_target_pct", "battery", CommandType.SET_SOC_TARGET),
    ("battery_2_charge_kw", "battery_2", CommandType.SET_CHARGE_RATE),
    ("battery_2_discharge_kw", "battery_2", CommandType.SET_DISCHARGE_RATE),
    ("battery_west_power_limit_kw", "battery_west", CommandType.SET_POWER_LIMIT),
    ("battery_b-1_soc_target_pct", "battery_b-1", CommandType.SET_SOC_TARGET),
])
def test_each_column_name_drives_its_asset_map_key_and_command_type(column, key, ctype):
    assert parse_column(column) == (key, ctype)


@pytest.mark.parametrize("column", ["ev_kw", "ev_1", "ev_1_kwh", "battery_kw", "battery_1_kw", "pv_kw",
                                    "battery_1_soc_target_kw", "battery__charge_kw", "EV_1_kw", 7])
def test_names_outside_the_table_are_not_recognised(column):
    assert parse_column(column) is None


def test_asset_map_gives_the_asset_id():
    df = frame({"ev_001_kw": [7.0], "battery_charge_kw": [2.0], "battery_discharge_kw": [0.0]})
    batch = schedule_to_commands(df, {"ev_001": "ast_ev_001", "battery": "ast_bat_1"})
    assert [(c.asset_id, c.command_type) for c in batch] == [("ast_ev_001", CR), ("ast_bat_1", CR),
                                                            ("ast_bat_1", DR)]


def test_a_key_missing_from_the_asset_map_is_its_own_asset_id():
    batch = schedule_to_commands(frame({"ev_7_kw": [1.0], "battery_2_charge_kw": [1.0]}), {"ev_1": "x"})
    assert [c.asset_id for c in batch] == ["ev_7", "battery_2"]


def test_several_batteries_are_told_apart_by_their_id():
    df = frame({"battery_1_charge_kw": [5.0], "battery_1_discharge_kw": [0.0],
                "battery_2_charge_kw": [0.0], "battery_2_discharge_kw": [4.0]})
    batch = schedule_to_commands(df, {"battery_1": "bat_a"})
    assert [(c.asset_id, c.command_type, c.value) for c in batch] == [
        ("bat_a", CR, 5.0), ("bat_a", DR, 0.0), ("battery_2", CR, 0.0), ("battery_2", DR, 4.0)]


def test_power_limit_and_soc_target_columns_give_their_command_types():
    df = frame({"battery_power_limit_kw": [50.0], "battery_soc_target_pct": [80.0], "ev_3_power_limit_kw": [11.0]})
    assert [(c.asset_id, c.command_type, c.value) for c in schedule_to_commands(df)] == [
        ("battery", CommandType.SET_POWER_LIMIT, 50.0), ("battery", CommandType.SET_SOC_TARGET, 80.0),
        ("ev_3", CommandType.SET_POWER_LIMIT, 11.0)]


def test_an_empty_asset_id_in_the_map_is_rejected():
    with pytest.raises(ValueError, match=r"asset_map\['ev_1'\]: must be a non-empty string"):
        schedule_to_commands(frame({"ev_1_kw": [1.0]}), {"ev_1": ""})


# --------------------------------------------------------------------------------------------- expiry

def test_a_command_expires_when_the_next_one_for_its_asset_and_type_starts():
    batch = schedule_to_commands(frame({"ev_1_kw": [1.0, 1.0, 2.0, 2.0]}))
    assert [c.expires_at.timestamp() for c in batch] == [at(10), at(20)]


def test_the_last_command_expires_one_interval_after_the_last_row():
    batch = schedule_to_commands(frame({"ev_1_kw": [1.0, 1.0, 1.0]}, freq="15min"))
    assert batch[0].expires_at.timestamp() == at(45)


def test_the_interval_is_inferred_from_the_last_two_rows():
    idx = pd.DatetimeIndex([T0, T0 + pd.Timedelta(minutes=5), T0 + pd.Timedelta(minutes=35)])
    batch = schedule_to_commands(pd.DataFrame({"ev_1_kw": [1.0, 2.0, 3.0]}, index=idx))
    assert [c.expires_at.timestamp() for c in batch] == [at(5), at(35), at(65)]


def test_expiry_is_per_asset_and_type():
    batch = schedule_to_commands(frame({"ev_1_kw": [1.0, 2.0, 2.0], "ev_2_kw": [3.0, 3.0, 4.0]}))
    assert {(c.asset_id, c.scheduled_time.timestamp()): c.expires_at.timestamp() for c in batch} == {
        ("ev_1", at(0)): at(5), ("ev_2", at(0)): at(10), ("ev_1", at(5)): at(15), ("ev_2", at(10)): at(15)}


def test_a_single_row_schedule_has_no_interval_so_its_commands_never_expire():
    batch = schedule_to_commands(frame({"ev_1_kw": [1.0]}))
    assert batch[0].expires_at is None


def test_expiry_none_means_no_command_expires():
    batch = schedule_to_commands(frame({"ev_1_kw": [1.0, 2.0]}), expiry="none")
    assert [c.expires_at for c in batch] == [None, None]
    assert np.isnan(batch.expires).all()


def test_an_unknown_expiry_mode_is_rejected():
    with pytest.raises(ValueError, match="expiry: must be one of"):
        schedule_to_commands(frame({"ev_1_kw": [1.0]}), expiry="never")


# -------------------------------------------------------------------------------------- index errors

def test_a_timezone_naive_index_is_rejected_with_how_to_fix_it():
    df = pd.DataFrame({"ev_1_kw": [1.0]}, index=pd.date_range("2026-01-01", periods=1, freq="5min"))
    with pytest.raises(ScheduleError, match=r"index is timezone-naive; localize it, e\.g\. df\.tz_localize\('UTC'\)"):
        schedule_to_commands(df)


def test_an_index_that_is_not_a_datetime_index_is_rejected():
    with pytest.raises(ScheduleError, match="index must be a pandas DatetimeIndex, got RangeIndex"):
        schedule_to_commands(pd.DataFrame({"ev_1_kw": [1.0]}))


def test_a_missing_timestamp_is_rejected_naming_its_position():
    idx = pd.DatetimeIndex([T0, pd.NaT], tz="UTC")
    with pytest.raises(ScheduleError, match=r"index row 1: timestamp is missing \(NaT\)"):
        schedule_to_commands(pd.DataFrame({"ev_1_kw": [1.0, 2.0]}, index=idx))


def test_a_duplicate_timestamp_is_rejected_naming_it():
    idx = pd.DatetimeIndex([T0, T0 + pd.Timedelta(minutes=5), T0 + pd.Timedelta(minutes=5)])
    with pytest.raises(ScheduleError, match=r"index row 2026-01-01 00:05:00\+00:00: duplicate timestamp"):
        schedule_to_commands(pd.DataFrame({"ev_1_kw": [1.0, 2.0, 3.0]}, index=idx))


def test_unsorted_timestamps_are_rejected_naming_the_row_out_of_order():
    idx = pd.DatetimeIndex([T0, T0 + pd.Timedelta(minutes=10), T0 + pd.Timedelta(minutes=5)])
    with pytest.raises(ScheduleError, match=r"index row 2026-01-01 00:05:00\+00:00: timestamps are not sorted "
                                            r"\(it comes after 2026-01-01 00:10:00\+00:00\)"):
        schedule_to_commands(pd.DataFrame({"ev_1_kw": [1.0, 2.0, 3.0]}, index=idx))


def test_a_schedule_without_rows_is_rejected():
    df = pd.DataFrame({"ev_1_kw": pd.Series([], dtype=float)}, index=pd.DatetimeIndex([], tz="UTC"))
    with pytest.raises(ScheduleError, match="schedule is empty: it has no rows"):
        schedule_to_commands(df)


def test_a_schedule_without_columns_is_rejected():
    with pytest.raises(ScheduleError, match="schedule is empty: it has no columns"):
        schedule_to_commands(pd.DataFrame(index=pd.date_range(T0, periods=2, freq="5min")))


def test_something_that_is_not_a_dataframe_is_rejected():
    with pytest.raises(ScheduleError, match="schedule must be a pandas DataFrame, got Series"):
        schedule_to_commands(pd.Series([1.0], index=pd.date_range(T0, periods=1)))


# ------------------------------------------------------------------------------------- column errors

def test_an_unknown_column_is_rejected_naming_it_and_the_expected_names():
    with pytest.raises(ScheduleError, match=r"column 'pv_kw': unknown column; expected ev_\{id\}_kw"):
        schedule_to_commands(frame({"ev_1_kw": [1.0], "pv_kw": [2.0]}))


def test_a_column_name_occurring_twice_is_rejected():
    df = frame({"ev_1_kw": [1.0]})
    df = pd.concat([df, df], axis=1)
    with pytest.raises(ScheduleError, match="column 'ev_1_kw': occurs more than once"):
        schedule_to_commands(df)


def test_two_columns_driving_the_same_asset_and_type_are_rejected_naming_both():
    df = frame({"ev_1_kw": [1.0], "ev_2_kw": [2.0]})
    with pytest.raises(ScheduleError, match="column 'ev_2_kw': asset 'shared' already gets SET_CHARGE_RATE "
                                            "from column 'ev_1_kw'"):
        schedule_to_commands(df, {"ev_1": "shared", "ev_2": "shared"})


# -------------------------------------------------------------------------------------- value errors

def test_a_negative_value_is_rejected_naming_column_row_and_value():
    df = frame({"ev_1_kw": [1.0, 1.0, 2.0], "ev_7_kw": [1.0, 1.0, -3.0]})
    with pytest.raises(ScheduleError) as e:
        schedule_to_commands(df)
    assert str(e.value) == "column 'ev_7_kw' row 2026-01-01 00:10:00+00:00: value -3.0 is negative"


def test_a_missing_value_is_an_error_never_skipped():
    df = frame({"ev_1_kw": [1.0, np.nan, 2.0]})
    with pytest.raises(ScheduleError, match=r"column 'ev_1_kw' row 2026-01-01 00:05:00\+00:00: value nan is "
                                            r"missing \(NaN\); fill it"):
        schedule_to_commands(df)


def test_a_missing_value_in_a_nullable_float_column_is_an_error():
    df = frame({"ev_1_kw": pd.array([1.0, None], dtype="Float64")})
    with pytest.raises(ScheduleError, match=r"column 'ev_1_kw' row 2026-01-01 00:05:00\+00:00: value nan is missing"):
        schedule_to_commands(df)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_an_infinite_value_is_rejected(bad):
    with pytest.raises(ScheduleError, match=rf"column 'ev_1_kw' row 2026-01-01 00:05:00\+00:00: value {bad!r} "
                                            r"is not finite"):
        schedule_to_commands(frame({"ev_1_kw": [1.0, bad]}))


def test_a_string_value_is_rejected_naming_column_row_and_value():
    df = frame({"ev_1_kw": [1.0, "7kW", 2.0]})
    with pytest.raises(ScheduleError, match=r"column 'ev_1_kw': row 2026-01-01 00:05:00\+00:00: value '7kW' "
                                            r"is not a number; dtype .* is not numeric"):
        schedule_to_commands(df)


def test_a_boolean_column_is_rejected():
    with pytest.raises(ScheduleError, match=r"column 'ev_1_kw': row 2026-01-01 00:00:00\+00:00: value True "
                                            r"is not a number; dtype bool is not numeric"):
        schedule_to_commands(frame({"ev_1_kw": [True, False]}))


def test_a_boolean_inside_an_object_column_is_rejected():
    with pytest.raises(ScheduleError, match=r"row 2026-01-01 00:05:00\+00:00: value True is not a number"):
        schedule_to_commands(frame({"ev_1_kw": [1.0, True]}))


def test_a_datetime_column_is_rejected():
    with pytest.raises(ScheduleError, match=r"column 'ev_1_kw': row 2026-01-01 00:00:00\+00:00: value .* is not a "
                                            r"number; dtype datetime64"):
        schedule_to_commands(frame({"ev_1_kw": pd.date_range(T0, periods=2)}))


def test_a_soc_target_above_100_percent_is_rejected():
    with pytest.raises(ScheduleError, match=r"column 'battery_soc_target_pct' row 2026-01-01 00:05:00\+00:00: "
                                            r"value 120.0 is above 100 %"):
        schedule_to_commands(frame({"battery_soc_target_pct": [80.0, 120.0], "ev_1_kw": [200.0, 200.0]}))


def test_charging_and_discharging_one_battery_in_the_same_row_is_rejected_naming_the_row():
    df = frame({"battery_2_charge_kw": [5.0, 5.0, 0.0], "battery_2_discharge_kw": [0.0, 2.0, 2.0]})
    with pytest.raises(ScheduleError) as e:
        schedule_to_commands(df)
    assert str(e.value) == ("row 2026-01-01 00:05:00+00:00: columns 'battery_2_charge_kw' (5.0) and "
                            "'battery_2_discharge_kw' (2.0) ask one asset to charge and discharge at the same time")


def test_charge_and_discharge_of_different_batteries_may_overlap():
    df = frame({"battery_1_charge_kw": [5.0], "battery_2_discharge_kw": [2.0]})
    assert len(schedule_to_commands(df)) == 2


def test_charge_and_discharge_columns_mapped_to_one_asset_are_checked_together():
    df = frame({"ev_1_kw": [3.0], "battery_discharge_kw": [2.0]})
    with pytest.raises(ScheduleError, match="ask one asset to charge and discharge"):
        schedule_to_commands(df, {"ev_1": "hybrid", "battery": "hybrid"})


def test_the_first_bad_cell_in_row_major_order_is_reported():
    df = frame({"ev_1_kw": [1.0, 1.0, -1.0], "ev_2_kw": [1.0, -2.0, 1.0]})
    with pytest.raises(ScheduleError, match="column 'ev_2_kw' row 2026-01-01 00:05:00"):
        schedule_to_commands(df)


# ------------------------------------------------------- gaps found by mutation testing (tests/tools/mutate.py)

def test_minus_half_a_kilowatt_is_rejected_as_negative_not_rounded_away_as_noise():
    with pytest.raises(ScheduleError) as e:
        schedule_to_commands(frame({"ev_1_kw": [1.0, -0.5]}))
    assert str(e.value) == "column 'ev_1_kw' row 2026-01-01 00:05:00+00:00: value -0.5 is negative"


def test_a_soc_target_of_exactly_100_percent_is_accepted():
    batch = schedule_to_commands(frame({"battery_soc_target_pct": [90.0, 100.0]}))
    assert [(c.command_type, c.value) for c in batch] == [(CommandType.SET_SOC_TARGET, 90.0),
                                                        (CommandType.SET_SOC_TARGET, 100.0)]


def test_a_two_row_index_with_a_duplicate_timestamp_is_rejected():
    idx = pd.DatetimeIndex([T0, T0])
    with pytest.raises(ScheduleError, match=r"index row 2026-01-01 00:00:00\+00:00: duplicate timestamp"):
        schedule_to_commands(pd.DataFrame({"ev_1_kw": [1.0, 2.0]}, index=idx))


def test_a_two_row_index_in_reverse_order_is_rejected():
    idx = pd.DatetimeIndex([T0 + pd.Timedelta(minutes=5), T0])
    with pytest.raises(ScheduleError, match=r"index row 2026-01-01 00:00:00\+00:00: timestamps are not sorted "
                                            r"\(it comes after 2026-01-01 00:05:00\+00:00\)"):
        schedule_to_commands(pd.DataFrame({"ev_1_kw": [1.0, 2.0]}, index=idx))


def test_the_last_command_of_a_two_row_schedule_expires_one_interval_after_the_last_row():
    batch = schedule_to_commands(frame({"ev_1_kw": [1.0, 2.0]}, freq="15min"))
    assert [c.expires_at.timestamp() for c in batch] == [at(15), at(30)]


def test_commands_get_priority_0_and_source_schedule_by_default():
    c = schedule_to_commands(frame({"ev_1_kw": [1.0]}))[0]
    assert (c.priority, c.source) == (0, "schedule")


def test_sub_second_timestamps_are_kept_exactly():
    idx = pd.DatetimeIndex([T0 + pd.Timedelta(milliseconds=250), T0 + pd.Timedelta(milliseconds=750)])
    batch = schedule_to_commands(pd.DataFrame({"ev_1_kw": [1.0, 2.0]}, index=idx))
    assert [c.scheduled_time.timestamp() for c in batch] == [at(0) + 0.25, at(0) + 0.75]
    assert batch[1].expires_at.timestamp() == at(0) + 1.25


def test_a_text_column_is_rejected_even_beside_float_int_and_unsigned_columns():
    df = frame({"ev_1_kw": [1.0, 2.0], "ev_2_kw": [1, 2], "ev_3_kw": np.array([1, 2], dtype=np.uint32),
                "ev_4_kw": [1.0, "7kW"]})
    with pytest.raises(ScheduleError, match=r"column 'ev_4_kw': row 2026-01-01 00:05:00\+00:00: value '7kW' is not a number"):
        schedule_to_commands(df)


def test_an_object_column_is_rejected_by_its_dtype_even_when_every_value_is_a_number():
    df = frame({"ev_1_kw": pd.Series([1.0, 2], dtype=object)})
    with pytest.raises(ScheduleError) as e:
        schedule_to_commands(df)
    assert str(e.value) == "column 'ev_1_kw': dtype object is not numeric (values must be int or float)"


def test_charging_and_discharging_half_a_kilowatt_at_once_is_rejected():
    df = frame({"battery_charge_kw": [0.5], "battery_discharge_kw": [0.5]})
    with pytest.raises(ScheduleError, match=r"'battery_charge_kw' \(0.5\) and 'battery_discharge_kw' \(0.5\) ask one "
                                            r"asset to charge and discharge"):
        schedule_to_commands(df)
