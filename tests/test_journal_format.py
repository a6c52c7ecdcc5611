"""Journal format versions: the header record, version-1 files, and what a reader refuses."""

from __future__ import annotations

import logging
import struct
import zlib

import msgpack
import pytest

from runtime import JournalError, JournalUnsupported
from runtime.core.journal import MAGIC, MAGIC_V1, Journal, JournalCorrupt, header_record
from runtime.core.recovery import recover, recover_files


def frame(rec: dict) -> bytes:
    payload = msgpack.packb(rec, use_bin_type=True)
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


V1_CMD = {"id": "a", "asset": "ev1", "type": "SET_CHARGE_RATE", "value": 7.0, "at": 1767225600.0,
          "status": "COMPLETED", "attempts": 1, "priority": 0, "exp": None, "created": 1767225600.0, "err": None,
          "src": "api"}


def test_a_new_file_declares_its_version_and_kinds_in_a_header_record(tmp_path):
    path = tmp_path / "j.jnl"
    with Journal(path, kinds=["n", "t"], optional_kinds=["note"], meta={"s": "commands"}) as j:
        j.append({"k": "n", "x": 1})
        assert j.header.version == 2 and j.header.required == {"n", "t"} and j.header.optional == {"note"}
    header = Journal.read_header(path)
    assert path.read_bytes().startswith(MAGIC) and header.version == 2 and header.meta == {"s": "commands"}
    assert list(Journal.read(path)) == [{"k": "n", "x": 1}]        # the header record is not a data record
    with Journal(path, kinds=["other"]) as j:                       # an existing file keeps its header
        assert j.header.required == {"n", "t"} and j.records_at_open == 1


def test_a_version_1_journal_is_still_read_and_never_appended_to(tmp_path):
    path = tmp_path / "commands.jnl"
    path.write_bytes(MAGIC_V1 + frame({"k": "cmd", "c": V1_CMD}) + frame({"k": "ev", "e": {}}))
    state = recover(path)
    assert state.commands["a"].attempts == 1 and state.events == 1
    assert Journal.read_header(path).version == 1
    before = path.read_bytes()
    with pytest.raises(JournalError, match="format version 1 is read-only"):
        Journal(path)
    assert path.read_bytes() == before


def test_an_unknown_kind_in_a_version_1_journal_is_refused_not_skipped(tmp_path):
    path = tmp_path / "commands.jnl"
    path.write_bytes(MAGIC_V1 + frame({"k": "cmd", "c": V1_CMD}) + frame({"k": "mystery"}))
    with pytest.raises(JournalUnsupported) as info:
        recover(path)
    assert info.value.kind == "mystery" and info.value.version == 1 and str(path) in str(info.value)


def test_a_newer_format_version_is_refused_naming_file_and_version_and_left_as_it_is(tmp_path):
    path = tmp_path / "commands.jnl"
    data = b"QEJRNL\x00\x03" + frame({"k": "hdr", "v": 3})
    path.write_bytes(data)
    for attempt in (lambda: recover(path), lambda: Journal(path), lambda: list(Journal.read(path))):
        with pytest.raises(JournalUnsupported) as info:
            attempt()
        assert info.value.version == 3 and info.value.kind is None
        assert str(path) in str(info.value) and "version 3" in str(info.value)
    assert path.read_bytes() == data  # never "repaired"


def test_a_required_kind_the_reader_does_not_know_is_refused_before_any_record_is_used(tmp_path):
    path = tmp_path / "commands.jnl"
    with Journal(path, kinds=["n", "teleport"]) as j:
        j.append({"k": "n"})  # malformed for recovery, but the header is refused first
    with pytest.raises(JournalUnsupported) as info:
        recover_files([path])
    assert info.value.kind == "teleport" and info.value.version == 2
    assert "teleport" in str(info.value) and str(path) in str(info.value) and "version 2" in str(info.value)


def test_an_undeclared_unknown_kind_is_refused_and_a_declared_optional_one_skipped(tmp_path):
    refused, skipped = tmp_path / "a.jnl", tmp_path / "b.jnl"
    with Journal(refused) as j:
        j.append({"k": "mystery"})
    with pytest.raises(JournalUnsupported, match="'mystery'"):
        recover(refused)
    with Journal(skipped, optional_kinds=["mystery"]) as j:
        j.append({"k": "mystery"})
    state = recover(skipped)
    assert state.unknown == 1 and state.records == 1


def test_a_file_cut_inside_its_header_record_is_an_empty_journal(tmp_path, caplog):
    path = tmp_path / "j.jnl"
    Journal(path).close()
    full = path.read_bytes()
    path.write_bytes(full[:len(MAGIC) + 5])   # a crash while the file was being created
    with caplog.at_level(logging.WARNING):
        assert list(Journal.read(path)) == []
        with Journal(path, kinds=["n"]) as j:
            assert j.header.required == {"n"}
            j.append({"k": "n"})
    assert list(Journal.read(path)) == [{"k": "n"}]


def test_a_version_2_file_whose_first_record_is_not_a_header_is_corrupt(tmp_path):
    path = tmp_path / "j.jnl"
    path.write_bytes(MAGIC + frame({"k": "n"}) + frame({"k": "n"}))
    with pytest.raises(JournalCorrupt, match="header record"):
        list(Journal.read(path))


def test_a_header_record_that_names_another_version_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "commands.jnl"
    data = MAGIC + frame({"k": "hdr", "v": 3, "req": [], "opt": []}) + frame({"k": "n"})
    path.write_bytes(data)
    for attempt in (lambda: list(Journal.read(path)), lambda: Journal(path), lambda: recover(path)):
        with pytest.raises(JournalUnsupported, match="says version 3 in a version-2 file") as info:
            attempt()
        assert info.value.version == 3 and info.value.kind is None and str(path) in str(info.value)
    assert path.read_bytes() == data


def test_a_first_record_that_is_not_a_header_is_refused_even_when_it_carries_a_version(tmp_path):
    path = tmp_path / "j.jnl"
    path.write_bytes(MAGIC + frame({"k": "n", "v": 2}) + frame({"k": "n"}))
    with pytest.raises(JournalCorrupt, match="is not its header record") as info:
        list(Journal.read(path))
    assert info.value.offset == len(MAGIC)


def test_the_refusal_of_an_unknown_kind_says_why_the_kind_is_unknown(tmp_path):
    v2, v1 = tmp_path / "a.jnl", tmp_path / "b.jnl"
    with Journal(v2) as j:
        j.append({"k": "mystery"})
    with pytest.raises(JournalUnsupported, match="not declared in the file's header"):
        recover(v2)
    v1.write_bytes(MAGIC_V1 + frame({"k": "mystery"}))
    with pytest.raises(JournalUnsupported, match="not a kind version-1 journals hold"):
        recover(v1)


def test_header_record_sorts_and_deduplicates_kinds_and_refuses_metadata_that_overrides_them(tmp_path):
    assert header_record() == {"k": "hdr", "v": 2, "req": [], "opt": []}
    assert header_record(["t", "n", "t"], ["note"], {"s": "commands"}) == \
        {"k": "hdr", "v": 2, "req": ["n", "t"], "opt": ["note"], "s": "commands"}
    for key in ("k", "v", "req", "opt"):
        with pytest.raises(ValueError, match=f"header metadata cannot override '{key}'"):
            header_record(meta={key: 1})
    with pytest.raises(ValueError, match="cannot override 'v'"):
        Journal(tmp_path / "j.jnl", meta={"v": 1})
    assert list(tmp_path.iterdir()) == []  # refused before the file was created


def test_read_header_reads_only_the_header_so_later_damage_does_not_matter(tmp_path, caplog):
    path = tmp_path / "j.jnl"
    with Journal(path, kinds=["n"], meta={"s": "commands"}) as j:
        j.append_many([{"k": "n", "i": i} for i in range(3)])
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF           # damage in the last record: a torn tail for a full read
    path.write_bytes(bytes(data) + frame({"k": "n", "i": 9}))   # and now corruption in the middle
    with caplog.at_level(logging.WARNING):
        header = Journal.read_header(path)
    assert header.version == 2 and header.required == {"n"} and header.meta == {"s": "commands"}
    assert caplog.records == []  # the records after the header were not even looked at
    with pytest.raises(JournalCorrupt):
        list(Journal.read(path))


def test_a_header_shows_its_path_version_required_kinds_and_metadata(tmp_path):
    path = tmp_path / "j.jnl"
    Journal(path, kinds=["t", "n"], meta={"s": "commands"}).close()
    assert repr(Journal.read_header(path)) == f"<JournalHeader {path} v2 req=['n', 't'] {{'s': 'commands'}}>"
