"""The command journal's records: small, one per command per commit, and read back exactly."""

from __future__ import annotations

import msgpack

from runtime.core.command_table import Change
from runtime.core.commands import CommandStatus
from runtime.core.records import STATUS_CODE, RecordEncoder
from runtime.core.recovery import recover_records

from .journal_history import History, restored


def size(rec: dict) -> int:
    return len(msgpack.packb(rec, use_bin_type=True)) + 8  # payload + length and CRC


def test_a_schedule_row_costs_two_small_transitions_and_no_copy_of_the_command():
    h = History()
    out = h.submit_batch(h.batch("sch-3f2a1b", [0.0] * 3, [0, 1, 2], [7.0, 8.0, 9.0]))
    assert [r["k"] for r in out] == ["bsup", "batch", "t", "t", "t"]           # DISPATCHED, nothing for CREATED
    assert all(r["s"] == STATUS_CODE[CommandStatus.DISPATCHED] and r["n"] == 1 for r in out[2:])
    done = h.answer(0, "complete")
    assert done == [{"k": "t", "i": done[0]["i"], "s": STATUS_CODE[CommandStatus.COMPLETED], "w": done[0]["w"]}]
    assert max(size(r) for r in out[2:] + done) <= 50


def test_a_new_command_is_written_once_in_full_and_its_transitions_carry_only_what_changed():
    h = History()
    [created] = h.submit([h.command("c1", "ev-1", 60.0)])
    assert created["k"] == "n" and created["i"] == "c1" and "e" not in created and "n" not in created
    [sent] = h.tick(60.0)
    assert sent["k"] == "t" and sent["n"] == 1 and "e" not in sent
    [failed] = h.answer(0, "fail")                       # back to PENDING for a retry, with the error
    assert failed["e"] == "device failure" and "n" not in failed
    state = recover_records(h.records)
    assert state.commands["c1"] == h.table.get("c1")


def test_several_changes_of_one_command_in_one_commit_are_one_record_in_first_seen_order():
    h = History()
    out = h.submit([h.command("a", "ev-1", 0.0), h.command("b", "ev-2", 0.0)])   # created and dispatched
    assert [(r["k"], r["i"]) for r in out] == [("n", "a"), ("n", "b")]
    assert all(r["s"] == STATUS_CODE[CommandStatus.DISPATCHED] for r in out)


def test_granted_is_journaled_when_it_changes_and_read_back():
    h = History()
    h.submit([h.command("c1", "ev-1", 600.0)])
    cmd = h.table.get("c1")
    encoder = RecordEncoder()
    encoder.seed([cmd], [])
    [rec] = encoder.encode([Change(cmd.evolve(granted=3.5), cmd.status, None)], h.now)
    assert rec["g"] == 3.5
    state = recover_records(h.records + [rec])
    assert state.commands["c1"].granted == 3.5 and state.commands["c1"].setpoint == 3.5


def test_recovery_of_the_records_gives_the_table_that_wrote_them():
    h = History()
    h.submit([h.command("c1", "ev-1", 0.0), h.command("c2", "bat-1", 300.0, expires_s=60.0)])
    h.submit_batch(h.batch("plan", [0.0, 300.0, 900.0], [0, 1, 2], [1.0, 2.0, 3.0]))
    h.answer(0, "ack")
    h.answer(1, "reject")
    h.availability("bat-1", False)
    h.tick(400.0)
    table = restored(recover_records(h.records), h.now)
    for cid in ["c1", "c2", "plan-0", "plan-1", "plan-2"]:
        live = h.table.get(cid)
        got = table.get(cid)
        if live.status in (CommandStatus.DISPATCHED, CommandStatus.ACKNOWLEDGED):
            assert got == live._replace(status=CommandStatus.PENDING)   # in flight at the crash: sent again
        else:
            assert got == live, cid
