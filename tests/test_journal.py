"""Journal (runtime.core.journal) and journal recovery (runtime.core.recovery)."""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import zlib
from datetime import datetime, timedelta, timezone
from enum import Enum

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


#: What a new journal without declared kinds holds before its first record: the file header, then the
#: header record.
EMPTY = MAGIC + frame(msgpack.packb({"k": "hdr", "v": 2, "req": [], "opt": []}, use_bin_type=True))


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
    assert data == MAGIC + frame(header) + frame(payload) == EMPTY + frame(payload)
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


# -- gaps found by mutation testing (tests/tools/mutate.py) -------------------------------------


class Colour(Enum):
    RED = "red"


class ShortWrites:
    """Stands in for the journal's raw file. ``write`` takes at most ``step`` bytes a call (as a raw file
    may), answers None (would block: nothing written) on its first call if ``none_first``, and gives up
    after 1000 calls so that a journal that never stops retrying fails instead of hanging."""

    closed = property(lambda self: self.real.closed)

    def __init__(self, real, step: int, none_first: bool = False) -> None:
        self.real, self.step, self.none_first, self.calls = real, step, none_first, 0

    def write(self, data):
        self.calls += 1
        if self.calls > 1000:
            raise RuntimeError("write called 1000 times")
        if self.none_first and self.calls == 1:
            return None
        return self.real.write(bytes(data[: self.step]))

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_good_record_one_byte_after_mid_file_damage_is_corruption_not_a_torn_tail(tmp_path):
    path = tmp_path / "j.journal"
    write(path, RECORDS[:2])
    bad = os.path.getsize(path)
    with open(path, "ab") as f:  # one stray byte, then a whole, valid record
        f.write(b"\x00" + frame(msgpack.packb(RECORDS[2], use_bin_type=True)))
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt) as info:
        list(Journal.read(path))
    assert info.value.offset == bad and f"a valid record follows at byte offset {bad + 1}" in str(info.value)
    with pytest.raises(JournalCorrupt):
        Journal(path)
    assert path.read_bytes() == before


def test_an_empty_map_record_after_damage_is_a_valid_record_so_the_damage_is_corruption(tmp_path):
    path = tmp_path / "j.journal"
    write(path, RECORDS[:2] + [{}])  # {} packs to a one-byte payload
    flip(path, offsets(path)[1] + 4)
    with pytest.raises(JournalCorrupt, match="a valid record follows"):
        list(Journal.read(path))


def test_trailing_bytes_framed_like_records_but_failing_crc_or_decoding_are_still_a_torn_tail(tmp_path, caplog):
    path = tmp_path / "j.journal"
    write(path, RECORDS)
    offs = offsets(path)
    flip(path, offs[3] + 4)  # the last two records both have a bad CRC ...
    flip(path, offs[4] + 4)
    with open(path, "ab") as f:  # ... and after them comes a frame with a good CRC but a map cut short
        f.write(frame(b"\x81"))
    size = os.path.getsize(path)
    with caplog.at_level(logging.WARNING, logger="runtime.core.journal"):
        assert list(Journal.read(path)) == RECORDS[:3]
    assert f"skipping {size - offs[3]} trailing bytes" in caplog.text
    with Journal(path) as j:
        assert j.truncated_bytes == size - offs[3] and j.records_at_open == 3
    assert os.path.getsize(path) == offs[3]


def test_a_non_map_payload_with_a_good_crc_at_the_end_is_a_torn_tail(tmp_path, caplog):
    path = tmp_path / "j.journal"
    write(path, RECORDS[:2])
    with open(path, "ab") as f:
        f.write(frame(msgpack.packb([1, 2, 3])))  # valid msgpack, right CRC, but a list
    with caplog.at_level(logging.WARNING, logger="runtime.core.journal"):
        assert list(Journal.read(path)) == RECORDS[:2]
    assert "payload is a list, not a map" in caplog.text


def test_a_non_map_payload_with_a_good_crc_in_the_middle_is_corruption(tmp_path):
    path = tmp_path / "j.journal"
    write(path, RECORDS[:2])
    bad = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(frame(msgpack.packb([1, 2, 3])) + frame(msgpack.packb(RECORDS[2], use_bin_type=True)))
    with pytest.raises(JournalCorrupt, match="payload is a list, not a map") as info:
        list(Journal.read(path))
    assert info.value.offset == bad


def test_an_existing_empty_file_is_opened_as_a_new_journal_with_a_header(tmp_path):
    path = tmp_path / "j.journal"
    path.write_bytes(b"")
    with Journal(path) as j:
        assert j.records_at_open == 0 and j.truncated_bytes == 0 and j.size == len(EMPTY)
        j.append({"a": 1})
    assert path.read_bytes().startswith(MAGIC)
    assert list(Journal.read(path)) == [{"a": 1}]


def test_reopening_a_journal_without_records_keeps_its_header(tmp_path):
    path = tmp_path / "j.journal"
    Journal(path).close()
    with Journal(path) as j:
        assert j.truncated_bytes == 0 and j.size == len(EMPTY)
        j.append({"a": 1})
    assert list(Journal.read(path)) == [{"a": 1}]


def test_a_torn_first_record_is_cut_back_to_the_header(tmp_path):
    path = tmp_path / "j.journal"
    write(path, RECORDS[:1])
    os.truncate(path, len(EMPTY) + 3)
    with Journal(path) as j:
        assert j.truncated_bytes == 3 and j.records_at_open == 0
        j.append(RECORDS[1])
    assert list(Journal.read(path)) == [RECORDS[1]]


def test_opening_an_intact_journal_changes_nothing_and_costs_no_fsync(tmp_path, fsyncs):
    path = tmp_path / "j.journal"
    write(path, RECORDS)
    before = path.read_bytes()
    fsyncs.clear()
    with Journal(path, fsync="batch") as j:
        assert j.truncated_bytes == 0 and j.records_at_open == len(RECORDS) and j.size == len(before)
    assert fsyncs == [] and path.read_bytes() == before


def test_creating_a_journal_makes_its_header_and_its_directory_entry_durable(tmp_path, fsyncs, monkeypatch):
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(p, flags, *args, **kwargs):
        fd = real_open(p, flags, *args, **kwargs)
        opened.append((os.fspath(p), fd))
        return fd

    monkeypatch.setattr(journal_mod.os, "open", spy)
    with Journal(tmp_path / "j.journal", fsync="batch") as j:
        directory = [fd for p, fd in opened if p == str(tmp_path)]
        assert len(directory) == 1  # the journal's own directory, not the current one
        assert fsyncs == [j._f.fileno(), directory[0]]  # the file (with its header), then the directory


def test_datetimes_enums_and_sets_are_stored_as_plain_values(tmp_path):
    path = tmp_path / "j.journal"
    when = datetime(2025, 1, 1, 12, 30, tzinfo=timezone.utc)
    with Journal(path) as j:
        j.append({"at": when, "colour": Colour.RED, "pair": (1, 2), "set": {3}, "frozen": frozenset({4})})
    assert list(Journal.read(path)) == [{"at": "2025-01-01T12:30:00+00:00", "colour": "red", "pair": [1, 2],
                                         "set": [3], "frozen": [4]}]


def test_a_record_too_large_for_the_length_field_is_refused_before_anything_is_written(tmp_path):
    class Huge(bytes):
        def __len__(self) -> int:
            return 2**32  # one more byte than a u32 length can say

    class HugePacker:
        def pack(self, record):
            return Huge(b"\x80")

    path = tmp_path / "j.journal"
    with Journal(path) as j:
        j._packer = HugePacker()
        with pytest.raises(ValueError, match="journal record too large"):
            j.append({"a": 1})
        with pytest.raises(ValueError, match="journal record too large"):
            j.append_many([{"a": 1}])
    assert path.read_bytes() == EMPTY


def test_a_closed_journal_refuses_appends_and_syncs_naming_its_path(tmp_path):
    path = tmp_path / "j.journal"
    j = Journal(path)
    j.close()
    for call in (lambda: j.append({"a": 1}), lambda: j.append_many([{"a": 1}]), j.sync):
        with pytest.raises(ValueError, match=rf"journal {re.escape(str(path))} is closed"):
            call()
    assert path.read_bytes() == EMPTY


def test_close_after_a_failed_final_fsync_is_still_idempotent(tmp_path, monkeypatch):
    j = Journal(tmp_path / "j.journal", fsync="batch")
    j.append({"a": 1})

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_mod.os, "fsync", failing)
    with pytest.raises(OSError):
        j.close()
    assert j.closed
    j.close()  # a second close (say, in a finally) neither fsyncs a closed file nor raises


def test_a_with_block_closes_the_journal_and_repr_shows_its_size_or_closed(tmp_path):
    path = tmp_path / "j.journal"
    with Journal(path, fsync="never") as j:
        j.append({"a": 1})
        assert repr(j) == f"<Journal {path} fsync=never {os.path.getsize(path)} bytes>"
    assert j.closed
    assert repr(j) == f"<Journal {path} fsync=never closed>"


def test_partial_writes_are_continued_until_the_whole_record_is_written(tmp_path):
    path = tmp_path / "j.journal"
    with Journal(path) as j:
        real = j._f
        j._f = short = ShortWrites(real, step=7, none_first=True)
        j.append(RECORDS[3])
        j.append_many(RECORDS[:2])
        j._f = real
        assert j.size == os.path.getsize(path)
    assert short.calls > 3
    assert list(Journal.read(path)) == [RECORDS[3]] + RECORDS[:2]


def test_a_write_that_makes_no_progress_fails_and_the_journal_stays_valid(tmp_path):
    path = tmp_path / "j.journal"
    with Journal(path) as j:
        j.append({"n": 1})
        real = j._f
        j._f = ShortWrites(real, step=0)
        with pytest.raises(OSError, match="write made no progress"):
            j.append({"n": 2})
        j._f = real
        j.append({"n": 3})
    assert list(Journal.read(path)) == [{"n": 1}, {"n": 3}]


def test_a_journal_that_cannot_cut_back_a_failed_write_closes_itself(tmp_path, monkeypatch, caplog):
    path = tmp_path / "j.journal"
    j = Journal(path)
    j.append({"n": 1})
    real = j._f

    class DiskFull:
        closed = property(lambda self: real.closed)

        def write(self, data):
            real.write(bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(real, name)

    def no_truncate(fd, size):
        raise OSError(5, "Input/output error")

    j._f = DiskFull()
    monkeypatch.setattr(journal_mod.os, "ftruncate", no_truncate)
    with caplog.at_level(logging.ERROR, logger="runtime.core.journal"):
        with pytest.raises(OSError, match="No space"):
            j.append({"n": 2, "pad": "x" * 100})
    assert j.closed and "could not truncate after a failed write" in caplog.text
    with pytest.raises(ValueError, match="is closed"):  # nothing can land after the fragment
        j.append({"n": 3})
    monkeypatch.undo()
    assert list(Journal.read(path)) == [{"n": 1}]  # the fragment reads as a torn tail


def test_compaction_of_more_than_one_mib_is_written_in_chunks_of_about_one_mib(tmp_path, monkeypatch):
    path = tmp_path / "j.journal"
    records = [{"n": i, "pad": b"x" * 1000} for i in range(3500)]  # about 3.4 MiB
    sizes: list[int] = []
    real_fdopen = os.fdopen

    class Recorder:
        def __init__(self, f) -> None:
            self.f = f

        def write(self, data):
            sizes.append(len(data))
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(journal_mod.os, "fdopen", lambda fd, *a, **kw: Recorder(real_fdopen(fd, *a, **kw)))
    Journal.compact(path, records)
    monkeypatch.undo()
    assert list(Journal.read(path)) == records
    assert sum(sizes) == os.path.getsize(path)
    record_size = len(path.read_bytes()) // len(records) + 1
    assert len(sizes) == 4  # three full chunks and the rest: memory stays bounded, writes stay few
    assert all((1 << 20) <= s < (1 << 20) + record_size for s in sizes[:-1]) and sizes[-1] < (1 << 20)


def test_compaction_fsyncs_the_temp_file_after_every_byte_reached_it(tmp_path, monkeypatch):
    path = tmp_path / "j.journal"
    sizes_at_fsync: list[int] = []
    real = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            sizes_at_fsync.append(st.st_size)
        real(fd)

    monkeypatch.setattr(journal_mod.os, "fsync", fsync)
    Journal.compact(path, RECORDS)
    assert sizes_at_fsync == [os.path.getsize(path)]


def test_a_journal_cut_short_while_it_is_read_ends_at_its_last_whole_record(tmp_path, caplog):
    path = tmp_path / "j.journal"
    big = [{"n": i, "pad": b"x" * 100_000} for i in range(3)]
    write(path, big)
    offs = offsets(path)
    reader = Journal.read(path)
    with caplog.at_level(logging.WARNING, logger="runtime.core.journal"):
        assert next(reader) == big[0]
        os.truncate(path, offs[1] + 5000)  # someone cuts the file while it is being read
        assert list(reader) == []
    assert "truncated payload" in caplog.text


def test_a_last_frame_whose_length_runs_past_the_end_is_a_torn_tail_whatever_bytes_are_there(tmp_path, caplog):
    path = tmp_path / "j.journal"
    write(path, RECORDS[:3])
    offs = offsets(path)
    flip(path, offs[2] + 4)  # the last record is damaged ...
    with open(path, "ab") as f:  # ... and after it a frame of 100 bytes was cut after its first byte, which
        f.write(struct.pack("<II", 100, zlib.crc32(b"\x80")) + b"\x80")  # happens to match the CRC
    size = os.path.getsize(path)
    with caplog.at_level(logging.WARNING, logger="runtime.core.journal"):
        assert list(Journal.read(path)) == RECORDS[:2]
    assert f"skipping {size - offs[2]} trailing bytes" in caplog.text
    with Journal(path) as j:
        assert j.truncated_bytes == size - offs[2] and j.records_at_open == 2


def test_a_record_of_exactly_the_largest_length_the_field_can_hold_is_not_refused(tmp_path):
    class Largest(bytes):
        def __len__(self) -> int:
            return 2**32 - 1  # what a u32 length can say

    class LargestPacker:
        def pack(self, record):
            return Largest(b"\x80")

    with Journal(tmp_path / "j.journal", fsync="never") as j:
        j._packer = LargestPacker()
        j.append({"a": 1})
        j.append_many([{"a": 1}])


def test_opening_for_append_checks_framing_and_crc_of_every_record_but_decodes_only_header_and_last(tmp_path):
    # The documented start-up cost: a record with a good CRC was written whole by a writer that only
    # writes maps, so only the last record (a possible torn leftover) is worth decoding. A full read
    # decodes everything and refuses what is not a map.
    path = tmp_path / "j.journal"
    write(path, RECORDS[:1])
    with open(path, "ab") as f:
        f.write(frame(msgpack.packb([1, 2, 3])) + frame(msgpack.packb(RECORDS[1], use_bin_type=True)))
    size = os.path.getsize(path)
    with Journal(path) as j:
        assert j.records_at_open == 3 and j.truncated_bytes == 0 and j.size == size
    with pytest.raises(JournalCorrupt, match="payload is a list, not a map"):
        list(Journal.read(path))


def test_compaction_returns_the_size_of_the_file_it_wrote(tmp_path):
    path = tmp_path / "j.journal"
    assert Journal.compact(path, RECORDS) == os.path.getsize(path)
    assert Journal.compact(path, [], durable=False) == os.path.getsize(path) == len(EMPTY)
    big = [{"n": i, "pad": b"x" * 1000} for i in range(2500)]  # written in more than one chunk
    assert Journal.compact(path, big, durable=False) == os.path.getsize(path) > 2 * (1 << 20)
