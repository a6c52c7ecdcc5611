"""Journal (runtime.core.journal) and journal recovery (runtime.core.recovery)."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from datetime import datetime, timedelta, timezone

import msgpack
import numpy as np
import pytest

import runtime.core.journal as journal_mod
from runtime.core.batch import CommandBatch
from runtime.core.commands import Command, CommandStatus, CommandType
from runtime.core.events import Event, EventType
from runtime.core.journal import MAGIC, Journal, JournalCorrupt
from runtime.core.recovery import RecoveredState, non_final, recover, recover_records

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
RECORDS = [{"k": "ev", "n": i, "name": f"r{i}", "blob": bytes([i]) * i} for i in range(5)]


def offsets(path) -> list[int]:
    return [off for off, _ in Journal.read_with_offsets(path)]


def write(path, records, fsync="never") -> None:
    with Journal(path, fsync=fsync) as j:
        j.append_many(records)


def corrupt(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def frame(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


# -- writing and reading ------------------------------------------------------------------------


def test_round_trip_preserves_values(tmp_path):
    path = tmp_path / "j.journal"
    rec = {"s": "héllo", "i": -3, "big": 2**62, "f": 1.5, "b": b"\x00\xff", "none": None, "t": True,
           "list": [1, "two", [3.0]], "nested": {"a": {"b": b"c"}}, 7: "int key"}
    with Journal(path) as j:
        j.append(rec)
        j.append({"k": "ev"})
    assert list(Journal.read(path)) == [rec, {"k": "ev"}]


def test_file_starts_with_magic_and_records_are_framed(tmp_path):
    path = tmp_path / "j.journal"
    write(path, [{"a": 1}])
    data = path.read_bytes()
    payload = msgpack.packb({"a": 1}, use_bin_type=True)
    header = msgpack.packb({"k": "hdr", "v": 2, "req": [], "opt": []}, use_bin_type=True)
    assert data == MAGIC + frame(header) + frame(payload)
    assert MAGIC == b"QEJRNL\x00\x02"


def test_append_after_reopen_continues_the_file(tmp_path):
    path = tmp_path / "j.journal"
    write(path, RECORDS[:2])
    with Journal(path) as j:
        assert j.records_at_open == 2 and j.truncated_bytes == 0
        j.append(RECORDS[2])
        j.append_many(RECORDS[3:])
    assert list(Journal.read(path)) == RECORDS


def test_append_many_is_one_write_call(tmp_path):
    path = tmp_path / "j.journal"
    with Journal(path) as j:
        calls = []
        real = j._f

        class Spy:
            closed = property(lambda self: real.closed)

            def write(self, data):
                calls.append(len(data))
                return real.write(data)

            def __getattr__(self, name):
                return getattr(real, name)

        j._f = Spy()
        j.append_many(iter(RECORDS))
        j.append_many([])
        j._f = real
    assert len(calls) == 1
    assert list(Journal.read(path)) == RECORDS


def test_rejects_non_dict_and_unpackable_records_without_writing(tmp_path):
    path = tmp_path / "j.journal"
    with Journal(path) as j:
        j.append({"ok": 1})
        with pytest.raises(TypeError):
            j.append([1, 2])  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            j.append_many([{"ok": 2}, {"bad": object()}])
        with pytest.raises(TypeError):
            j.append_many([{"ok": 3}, "not a dict"])  # type: ignore[list-item]
    assert list(Journal.read(path)) == [{"ok": 1}]


def test_closed_journal_refuses_appends_and_close_is_idempotent(tmp_path):
    j = Journal(tmp_path / "j.journal")
    j.close()
    j.close()
    assert j.closed
    with pytest.raises(ValueError, match="closed"):
        j.append({"a": 1})


def test_unknown_fsync_policy_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="fsync"):
        Journal(tmp_path / "j.journal", fsync="sometimes")  # type: ignore[arg-type]


def test_failed_write_leaves_the_journal_valid(tmp_path):
    path = tmp_path / "j.journal"
    with Journal(path) as j:
        j.append({"n": 1})
        real = j._f

        class DiskFull:
            closed = property(lambda self: real.closed)

            def write(self, data):
                real.write(bytes(data[: len(data) // 2]))
                raise OSError(28, "No space left on device")

            def __getattr__(self, name):
                return getattr(real, name)

        j._f = DiskFull()
        with pytest.raises(OSError):
            j.append({"n": 2, "pad": "x" * 100})
        j._f = real
        j.append({"n": 3})
    assert list(Journal.read(path)) == [{"n": 1}, {"n": 3}]


# -- fsync policies -----------------------------------------------------------------------------


@pytest.fixture
def fsyncs(monkeypatch):
    calls: list[int] = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(journal_mod.os, "fsync", counting)
    return calls


def test_fsync_always_syncs_every_append(tmp_path, fsyncs):
    path = tmp_path / "j.journal"
    with Journal(path, fsync="always") as j:
        fsyncs.clear()
        for rec in RECORDS[:3]:
            j.append(rec)
        assert len(fsyncs) == 3
        j.append_many(RECORDS[3:])
        assert len(fsyncs) == 4
        j.sync()
    assert len(fsyncs) == 4  # nothing left to sync, on sync() or close()
    assert list(Journal.read(path)) == RECORDS


def test_fsync_batch_syncs_on_sync_flush_and_close(tmp_path, fsyncs):
    path = tmp_path / "j.journal"
    j = Journal(path, fsync="batch")
    fsyncs.clear()
    j.append_many(RECORDS[:2])
    j.append(RECORDS[2])
    assert fsyncs == []
    j.sync()
    assert len(fsyncs) == 1
    j.sync()  # nothing new: no fsync
    assert len(fsyncs) == 1
    j.append(RECORDS[3])
    j.flush()
    assert len(fsyncs) == 2
    j.append(RECORDS[4])
    j.close()
    assert len(fsyncs) == 3
    assert list(Journal.read(path)) == RECORDS


def test_fsync_never_does_not_sync(tmp_path, fsyncs):
    path = tmp_path / "j.journal"
    with Journal(path, fsync="never") as j:
        j.append_many(RECORDS[:2])
        j.append(RECORDS[2])
        j.sync()
        j.append_many(RECORDS[3:])
    assert fsyncs == []
    assert list(Journal.read(path)) == RECORDS


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_every_policy_round_trips_across_reopen(tmp_path, policy):
    path = tmp_path / "j.journal"
    for rec in RECORDS:
        with Journal(path, fsync=policy) as j:
            j.append(rec)
            j.sync()
    assert list(Journal.read(path)) == RECORDS


# -- torn last record ---------------------------------------------------------------------------


def _tear_header(path, last):  # crash after 5 bytes of the last record's header
    os.truncate(path, last + 5)


def _tear_payload(path, last):  # crash in the middle of the last payload
    os.truncate(path, os.path.getsize(path) - 3)


def _flip_crc(path, last):
    flip(path, last + 5)


def _flip_payload(path, last):
    flip(path, os.path.getsize(path) - 1)


def _bad_msgpack(path, last):  # CRC fine, payload is not msgpack (0xc1 is never used)
    os.truncate(path, last)
    with open(path, "ab") as f:
        f.write(frame(b"\xc1"))


def _zero_tail(path, last):  # e.g. a filesystem that extended the file but never wrote the data
    os.truncate(path, last)
    with open(path, "ab") as f:
        f.write(b"\x00" * 4096)


TEARS = [_tear_header, _tear_payload, _flip_crc, _flip_payload, _bad_msgpack, _zero_tail]


@pytest.mark.parametrize("tear", TEARS, ids=lambda f: f.__name__.strip("_"))
def test_torn_last_record_is_skipped_with_a_warning_and_cut_off_before_appending(tmp_path, caplog, tear):
    path = tmp_path / "j.journal"
    write(path, RECORDS)
    last = offsets(path)[-1]
    tear(path, last)
    good = RECORDS[:-1]

    with caplog.at_level(logging.WARNING, logger="runtime.core.journal"):
        assert list(Journal.read(path)) == good
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(path) in message and f"offset {last}" in message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runtime.core.journal"):
        with Journal(path) as j:
            assert j.truncated_bytes > 0 and j.records_at_open == len(good)
            assert os.path.getsize(path) == last
            j.append({"k": "ev", "new": True})
    assert any(f"offset {last}" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runtime.core.journal"):
        assert list(Journal.read(path)) == good + [{"k": "ev", "new": True}]
    assert caplog.records == []  # the journal is valid again


def test_torn_append_many_keeps_the_complete_records(tmp_path, caplog):
    path = tmp_path / "j.journal"
    write(path, RECORDS)
    os.truncate(path, offsets(path)[3] + 10)  # one write of 5 records, cut inside the 4th
    with caplog.at_level(logging.WARNING):
        assert list(Journal.read(path)) == RECORDS[:3]
    assert "truncated payload" in caplog.text


def test_torn_file_header_is_an_empty_journal(tmp_path, caplog):
    path = tmp_path / "j.journal"
    path.write_bytes(MAGIC[:3])
    with caplog.at_level(logging.WARNING):
        assert list(Journal.read(path)) == []
        with Journal(path) as j:
            j.append({"a": 1})
    assert "torn file header" in caplog.text
    assert list(Journal.read(path)) == [{"a": 1}]


# -- corruption in the middle -------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["crc", "payload", "length_huge", "length_small"])
def test_middle_corruption_raises_naming_path_and_offset(tmp_path, damage):
    path = tmp_path / "j.journal"
    write(path, RECORDS)
    offs = offsets(path)
    bad = offs[2]
    if damage == "crc":
        flip(path, bad + 4)
    elif damage == "payload":
        flip(path, bad + 9)
    elif damage == "length_huge":
        corrupt(path, bad, struct.pack("<I", 0x7FFFFFFF))
    else:
        corrupt(path, bad, struct.pack("<I", 2))
    before = path.read_bytes()

    seen = []
    with pytest.raises(JournalCorrupt) as info:
        for rec in Journal.read(path):
            seen.append(rec)
    assert seen == RECORDS[:2]  # everything before the damage was delivered
    assert info.value.offset == bad and info.value.path == str(path)
    assert str(path) in str(info.value) and f"offset {bad}" in str(info.value)

    with pytest.raises(JournalCorrupt):
        Journal(path)
    assert path.read_bytes() == before  # opening did not "repair" (truncate) anything


def test_a_file_that_is_not_a_journal_is_never_truncated(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[site]\nname = "x"\n')
    with pytest.raises(JournalCorrupt) as info:
        Journal(path)
    assert info.value.offset == 0 and "not a journal" in str(info.value)
    assert path.read_text() == '[site]\nname = "x"\n'


# -- compaction ---------------------------------------------------------------------------------


def test_compaction_replaces_the_records(tmp_path):
    path = tmp_path / "j.journal"
    write(path, RECORDS)
    os.chmod(path, 0o640)
    Journal.compact(path, (r for r in Journal.read(path) if r["n"] % 2 == 0))  # may read itself
    assert list(Journal.read(path)) == [RECORDS[0], RECORDS[2], RECORDS[4]]
    assert os.listdir(tmp_path) == ["j.journal"]  # no temp file left behind
    assert os.stat(path).st_mode & 0o777 == 0o640
    with Journal(path) as j:  # and the compacted file can be appended to
        j.append({"n": 9})
    assert [r["n"] for r in Journal.read(path)] == [0, 2, 4, 9]


def test_compaction_is_atomic_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "j.journal"
    write(path, RECORDS)
    before = path.read_bytes()

    def failing():
        yield {"n": 100}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Journal.compact(path, failing())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["j.journal"]

    def no_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(journal_mod.os, "replace", no_replace)
    with pytest.raises(OSError):
        Journal.compact(path, [{"n": 100}])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["j.journal"]


def test_compaction_fsyncs_file_and_directory(tmp_path, fsyncs):
    path = tmp_path / "j.journal"
    Journal.compact(path, RECORDS)  # also creates a journal that did not exist
    assert len(fsyncs) == 2
    assert list(Journal.read(path)) == RECORDS


# -- empty and missing --------------------------------------------------------------------------


def test_empty_and_missing_journals(tmp_path):
    missing = tmp_path / "missing.journal"
    with pytest.raises(FileNotFoundError):
        list(Journal.read(missing))
    assert recover(missing) == RecoveredState()
    assert not missing.exists()

    empty = tmp_path / "empty.journal"
    empty.write_bytes(b"")
    assert list(Journal.read(empty)) == []
    assert recover(empty) == RecoveredState()

    fresh = tmp_path / "fresh.journal"
    Journal(fresh).close()
    assert fresh.read_bytes().startswith(MAGIC) and Journal.read_header(fresh).version == 2
    assert list(Journal.read(fresh)) == []
    assert recover(fresh) == RecoveredState()


# -- recovery -----------------------------------------------------------------------------------


def _cmd(cid: str, **kw) -> Command:
    return Command(command_id=cid, asset_id=kw.pop("asset", "ev1"), command_type=CommandType.SET_CHARGE_RATE,
                   value=kw.pop("value", 7.0), scheduled_time=T0, created_at=T0, **kw)


def _batch(batch_id: str = "sch-1") -> CommandBatch:
    n = 6
    return CommandBatch(batch_id, times=T0.timestamp() + 900.0 * np.arange(n),
                        asset_codes=np.array([0, 1] * 3), assets=("ev1", "bat1"),
                        type_codes=np.full(n, CommandBatch.type_code(CommandType.SET_CHARGE_RATE)),
                        values=np.arange(n, dtype=float), created_at=T0.timestamp())


def test_recover_returns_last_snapshot_per_command_batches_and_counts(tmp_path):
    path = tmp_path / "site.journal"
    a, b, c = _cmd("a"), _cmd("b", asset="bat1"), _cmd("c")
    batch = _batch()
    ev = Event(EventType.COMMAND_CREATED, T0, {"command_id": "a"})
    with Journal(path, optional_kinds=["future-kind"]) as j:  # a newer writer's kind, declared optional
        j.append({"k": "cmd", "c": a.to_record()})
        j.append({"k": "ev", "e": ev.to_record()})
        j.append({"k": "cmd", "c": b.to_record()})
        j.append({"k": "batch", "b": batch.to_record()})
        a = a.evolve(CommandStatus.DISPATCHED, attempts=1)
        j.append_many([{"k": "cmd", "c": a.to_record()}, {"k": "ev", "e": ev.to_record()}])
        b = b.evolve(CommandStatus.DISPATCHED).evolve(CommandStatus.COMPLETED)
        j.append({"k": "cmd", "c": b.to_record()})
        j.append({"k": "cmd", "c": c.to_record()})
        j.append({"k": "bsup", "id": "sch-1", "assets": ["bat1"], "from": T0.timestamp() + 1800.0,
                  "at": T0.timestamp() + 60.0})
        row0 = batch.command(0).evolve(CommandStatus.DISPATCHED)
        j.append({"k": "cmd", "c": row0.to_record()})
        j.append({"k": "future-kind", "x": 1})

    state = recover(path)
    assert list(state.commands) == ["a", "b", "c", "sch-1-0"]  # first-seen order
    assert state.commands["a"] == a and state.commands["b"] == b and state.commands["c"] == c
    assert state.commands["a"].status is CommandStatus.DISPATCHED and state.commands["a"].attempts == 1
    assert state.commands["sch-1-0"] == row0
    assert [x.batch_id for x in state.batches] == ["sch-1"]
    got = state.batches[0]
    assert got.assets == batch.assets and len(got) == len(batch)
    assert np.array_equal(got.times, batch.times) and np.array_equal(got.values, batch.values)
    assert state.batch_supersessions == [{"id": "sch-1", "assets": ["bat1"], "from": T0.timestamp() + 1800.0,
                                          "at": T0.timestamp() + 60.0}]
    assert state.events == 2 and state.records == 11 and state.unknown == 1

    assert [x.command_id for x in non_final(state)] == ["a", "c", "sch-1-0"]


def test_recover_after_torn_tail_and_restart(tmp_path, caplog):
    path = tmp_path / "site.journal"
    a = _cmd("a")
    with Journal(path) as j:
        j.append({"k": "cmd", "c": a.to_record()})
        j.append({"k": "cmd", "c": a.evolve(CommandStatus.DISPATCHED).to_record()})
    os.truncate(path, os.path.getsize(path) - 1)  # crash while journaling DISPATCHED
    with caplog.at_level(logging.WARNING):
        state = recover(path)
    assert state.commands["a"].status is CommandStatus.PENDING
    assert "torn last record" in caplog.text
    with Journal(path) as j:  # the restarted site journals on
        j.append({"k": "cmd", "c": a.evolve(CommandStatus.HELD).to_record()})
    assert recover(path).commands["a"].status is CommandStatus.HELD


def test_duplicate_batch_is_kept_once():
    batch = _batch()
    state = recover_records([{"k": "batch", "b": batch.to_record()}] * 2)
    assert len(state.batches) == 1


def test_malformed_known_record_raises_naming_the_offset(tmp_path):
    path = tmp_path / "site.journal"
    with Journal(path) as j:
        j.append({"k": "cmd", "c": _cmd("a").to_record()})
        j.append({"k": "cmd", "c": {"id": "b"}})
    bad = offsets(path)[1]
    with pytest.raises(JournalCorrupt) as info:
        recover(path)
    assert info.value.offset == bad and "malformed 'cmd'" in str(info.value)


def test_recover_on_middle_corruption_raises(tmp_path):
    path = tmp_path / "site.journal"
    write(path, [{"k": "cmd", "c": _cmd(f"c{i}").to_record()} for i in range(3)])
    flip(path, offsets(path)[1] + 4)
    with pytest.raises(JournalCorrupt):
        recover(path)


def test_recovered_times_are_tz_aware():
    rec = _cmd("a", expires_at=T0 + timedelta(hours=1)).to_record()
    cmd = recover_records([{"k": "cmd", "c": rec}]).commands["a"]
    assert cmd.scheduled_time == T0 and cmd.expires_at == T0 + timedelta(hours=1)
