"""The watched folder (runtime.service.folder): schedule files dropped into a folder are submitted to a real
Site (in-memory devices, real clock, a journal) and moved to done/ or failed/."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from runtime import BatterySpec, ChargerSpec, CommandStatus, Site
from runtime.config.models import ChargerConfig, FolderSourceConfig, SiteConfig, SourcesConfig
from runtime.service.folder import FolderWatcher, folder_component
from runtime.service.metrics import site_metrics
from runtime.service.schedule_files import MAX_PROBLEMS, read_schedule_file

from .asyncsupport import wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]

ASSET_MAP = {"ev_1": "ev-1", "battery": "bat-1"}


@pytest.fixture
def site(tmp_path):
    site = Site([ChargerSpec("ev-1", max_kw=22.0), BatterySpec("bat-1")], journal_dir=tmp_path / "journal").start()
    try:
        yield site
    finally:
        site.stop()


def watcher(site: Site, folder: Path, *, poll_s: float = 3600.0,
            timezone_name: str | None = None) -> FolderWatcher:
    """A watcher over ``folder``. With the default poll_s it is driven by :func:`poll` alone (not started)."""
    return FolderWatcher(site, FolderSourceConfig(path=str(folder), poll_s=poll_s, asset_map=ASSET_MAP,
                                                  timezone=timezone_name))


def poll(site: Site, w: FolderWatcher) -> list:
    return site.run_coroutine(w.poll_once()).result(10)


def drop(folder: Path, name: str, text: str) -> Path:
    """Write ``name`` as a writer should: under a temporary name, then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / name)
    return folder / name


def times(n: int, step_s: int = 900) -> list[str]:
    start = datetime.now(timezone.utc).replace(microsecond=0)
    return [(start + timedelta(seconds=i * step_s)).isoformat() for i in range(n)]


def test_a_csv_dropped_in_is_submitted_and_moved_to_done(site, tmp_path):
    folder = tmp_path / "inbox"
    w = watcher(site, folder, poll_s=0.05)
    site.run_coroutine(w.start()).result(10)
    try:
        t = times(2)
        drop(folder, "plan-a.csv", f"time,ev_1_kw,battery_charge_kw\n{t[0]},7,5\n{t[1]},11,0\n")
        wait_until(lambda: (folder / "done" / "plan-a.csv").exists(), what="plan-a.csv in done/")
        assert not (folder / "plan-a.csv").exists()
        assert site.wait_for("plan-a-0").status is CommandStatus.COMPLETED   # batch id = the file's stem
        assert site.wait_for("plan-a-1").status is CommandStatus.COMPLETED
        assert site.device("ev-1").values() == {"SET_CHARGE_RATE": 7.0}
        assert site.command("plan-a-2").scheduled_time == datetime.fromisoformat(t[1])
        assert w.taken[0].outcome == "done" and w.taken[0].commands == 4
        assert site_metrics(site).folder_files.labels("done")._value.get() == 1
    finally:
        site.run_coroutine(w.stop()).result(15)


def test_a_bad_csv_goes_to_failed_beside_an_error_file_naming_each_line_and_column(site, tmp_path):
    folder = tmp_path / "inbox"
    t = times(4)
    drop(folder, "bad.csv", "time,ev_1_kw,ev_9_kw\n"
                            f"{t[0]},7,1\n"
                            f"{t[1]},seven,1\n"
                            f"{t[2]},,1\n"
                            f"{t[3]},-2,1\n")
    w = watcher(site, folder)
    assert poll(site, w) == []          # first sighting: not taken yet
    (result,) = poll(site, w)
    assert result.outcome == "failed" and result.moved_to == folder / "failed" / "bad.csv"
    assert (folder / "failed" / "bad.csv").exists() and not (folder / "bad.csv").exists()
    lines = (folder / "failed" / "bad.csv.error").read_text().splitlines()
    assert lines == [
        "line 1, column 'ev_9_kw': unknown asset 'ev_9'; this site has 'bat-1', 'ev-1' (map schedule keys to "
        "asset ids with asset_map in [sources.folder])",
        "line 3, column 'ev_1_kw': 'seven' is not a number",
        "line 4, column 'ev_1_kw': empty cell (every cell must say what the asset should do; write 0 to stop it)",
        "line 5, column 'ev_1_kw': value -2.0 is negative (direction is in the column name: charge or discharge)",
    ]
    assert site.counts()["PENDING"] == 0 and site.device("ev-1").applied == []
    assert site_metrics(site).folder_files.labels("failed")._value.get() == 1


def test_a_half_written_file_is_not_taken_until_it_stops_changing(site, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    t = times(3)
    path = folder / "growing.csv"
    path.write_text(f"time,ev_1_kw\n{t[0]},7\n")   # a writer that does not use a temporary name
    w = watcher(site, folder)
    assert poll(site, w) == []
    with path.open("a") as f:
        f.write(f"{t[1]},8\n{t[2]},")               # still being written: the last cell is not there yet
    assert poll(site, w) == []                      # it changed since the last poll: not taken
    assert path.exists() and site.command("growing-0") is None
    with path.open("a") as f:
        f.write("9\n")
    assert poll(site, w) == []
    (result,) = poll(site, w)                       # unchanged over two polls: taken, whole
    assert result.outcome == "done" and result.commands == 3
    assert site.wait_for("growing-0").status is CommandStatus.COMPLETED


def test_a_file_dropped_again_under_the_same_name_is_a_no_op(site, tmp_path):
    folder = tmp_path / "inbox"
    w = watcher(site, folder)
    t = times(1)
    for _ in range(2):
        drop(folder, "again.csv", f"time,ev_1_kw\n{t[0]},6\n")
        poll(site, w)
        poll(site, w)
    # nothing is overwritten in done/
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["again-1.csv", "again.csv"]
    site.wait_for("again-0")
    assert [a.command_id for a in site.device("ev-1").applied] == ["again-0"]


def test_naive_timestamps_are_refused_unless_the_folder_has_a_time_zone(site, tmp_path):
    folder = tmp_path / "inbox"
    local = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d 12:00:00")
    drop(folder, "naive.csv", f"time,ev_1_kw\n{local},4\n")
    w = watcher(site, folder)
    poll(site, w)
    (refused,) = poll(site, w)
    assert refused.outcome == "failed"
    assert refused.problems[0].startswith(f"line 2, column 'time': '{local}' has no time zone")

    drop(folder, "berlin.csv", f"time,ev_1_kw\n{local},4\n")
    w = watcher(site, folder, timezone_name="Europe/Berlin")
    poll(site, w)
    (taken,) = poll(site, w)
    assert taken.outcome == "done"
    expected = pd.Timestamp(local).tz_localize("Europe/Berlin").to_pydatetime()
    assert site.command("berlin-0").scheduled_time == expected
    assert site.counts()["PENDING"] == 1   # a future row, held lazily until it is due


def test_a_parquet_file_is_taken_too(site, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    index = pd.DatetimeIndex(pd.to_datetime(times(2)))
    frame = pd.DataFrame({"ev_1_kw": [3.0, 4.0], "battery_discharge_kw": [0.0, 2.5]}, index=index)
    frame.to_parquet(folder / ".day.parquet.tmp")
    os.replace(folder / ".day.parquet.tmp", folder / "day.parquet")
    w = watcher(site, folder)
    poll(site, w)
    (result,) = poll(site, w)
    assert result.outcome == "done" and result.commands == 4
    assert site.wait_for("day-0").status is CommandStatus.COMPLETED


def test_other_files_hidden_files_and_sub_folders_are_left_alone(site, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a schedule")
    (folder / ".hidden.csv").write_text("time,ev_1_kw\n")
    (folder / "plan.csv.tmp").write_text("time,ev_1_kw\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "x.csv").write_text("time,ev_1_kw\n")
    w = watcher(site, folder)
    assert poll(site, w) == [] and poll(site, w) == []
    assert sorted(p.name for p in folder.iterdir()) == [".hidden.csv", "done", "failed", "notes.txt",
                                                        "plan.csv.tmp", "sub"]


def test_a_schedule_the_site_refuses_goes_to_failed_with_its_reason(site, tmp_path):
    folder = tmp_path / "inbox"
    t = times(1)
    drop(folder, "both.csv", f"time,battery_charge_kw,battery_discharge_kw\n{t[0]},5,5\n")
    w = watcher(site, folder)
    poll(site, w)
    (result,) = poll(site, w)
    assert result.outcome == "failed"
    assert "ask one asset to charge and discharge at the same time" in result.problems[0]
    assert (folder / "failed" / "both.csv.error").read_text() == result.problems[0] + "\n"


def test_the_component_is_off_without_a_folder_and_stop_ends_the_task(site, tmp_path):
    config = SiteConfig(assets=[ChargerConfig(id="ev-1", kind="charger")])
    assert folder_component(site, config) is None
    with_folder = config.model_copy(update={"sources": SourcesConfig(folder=FolderSourceConfig(
        path=str(tmp_path / "new" / "inbox"), poll_s=0.05))})
    component = folder_component(site, with_folder)
    assert component is not None and component.name == "folder"
    site.run_coroutine(component.start()).result(10)
    assert (tmp_path / "new" / "inbox" / "done").is_dir() and (tmp_path / "new" / "inbox" / "failed").is_dir()
    task = component._task
    site.run_coroutine(component.stop()).result(15)
    assert task is not None and task.done()


def test_problems_are_listed_in_file_order_and_capped(tmp_path):
    rows = "".join(f"2026-01-01T{h:02d}:{m:02d}:00Z,x\n" for h in range(10) for m in range(0, 60, 5))
    path = tmp_path / "many.csv"
    path.write_text("time,ev_1_kw\n" + rows)
    problems = read_schedule_file(path).problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0] == "line 2, column 'ev_1_kw': 'x' is not a number"
    assert problems[-1] == f"... and {120 - MAX_PROBLEMS} more problem(s)"
