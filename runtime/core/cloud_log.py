"""CloudLog: the edge link's own journal (``cloud.jnl``): every cloud command and every ack, the leases
of configuration overrides, and the controller states the cloud switched.

It is pure bookkeeping (no threads, no clock: every method takes ``now``, site-clock epoch seconds) and
belongs to one thread, the edge-link actor's, like every :class:`~runtime.core.journal.Journal`. The
actor calls :meth:`CloudLog.sync` before it sends anything a record vouches for: a command is journaled
before its "delivered" ack is sent, an ack before it leaves.

What it answers:

* dedupe: :meth:`get` knows every command id received within the dedupe window (and older ones the
  cloud has not confirmed), with its latest ack, so a command seen before is not executed again;
* resume: :attr:`last_seq` (the highest command seq journaled) for ``hello``, and :meth:`pending_acks`
  (the latest ack of each seq the router lists as pending, in the order the acks were made);
* what the cloud has confirmed: a final ack is confirmed by a ``welcome`` whose ``pending`` no longer
  lists its seq (:meth:`confirm`);
* leases (:meth:`leases`: active configuration overrides with the site-clock time they end) and the
  last state of each controller the cloud switched (:attr:`controllers`), to restore after a restart.

Retention, applied when the log is opened (the file is compacted then) and in memory by :meth:`prune`:
a command is kept while it has no final ack, while its final ack is not confirmed (however old), and
for ``dedupe_window_s`` after it was last seen; active leases and the controller states are always
kept. The file is compacted again while running when it has grown to twice its size after the last
compaction (and at least ``compact_min_records`` records).

Records (msgpack maps, ``k`` is the kind)::

    cmd     id seq c (the command as the wire has it) at     a command arrived
    dup     id seq at                                        the same command id arrived again
    ack     id s (status) e (error) x (executed_at) at       an ack was made
    sub     id rid at                                        submitted to the site as command ``rid``
    conf    ids at                                           the cloud has these final acks
    lease   id asset name value ends at                      an override holds until ``ends``
    unlease id at                                            ... and has reverted
    ctl     name on id at                                    a controller was switched by command ``id``
    meta    last_seq at                                      (written by compaction)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .journal import FsyncPolicy, Journal

log = logging.getLogger(__name__)

__all__ = ["CloudLog", "CloudEntry", "Lease", "FINAL_ACKS"]

#: Ack statuses after which nothing more is said about a command.
FINAL_ACKS = frozenset({"executed", "rejected", "failed", "expired", "superseded", "cancelled"})


@dataclass
class CloudEntry:
    """One command the edge received: its seqs (a resent copy may carry a new one), the command as the
    wire has it, and every ack made for it (``acks[i]``: status, error, executed_at, at, n = the order
    the ack was made in, across all commands)."""

    command_id: str
    seq: int
    command: dict[str, Any]
    received_at: float
    seen_at: float
    seqs: list[int] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    submitted: str | None = None
    confirmed: bool = False

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.acks[-1] if self.acks else None

    @property
    def final(self) -> bool:
        return bool(self.acks) and self.acks[-1]["status"] in FINAL_ACKS


@dataclass(frozen=True)
class Lease:
    """A configuration override in force until ``ends_at`` (site clock): ``name`` of ``asset_id`` is ``value``."""

    command_id: str
    asset_id: str
    name: str
    value: float
    ends_at: float
    started_at: float


class CloudLog:
    """The edge link's journal and the state it records (see the module docstring).

    ``path`` None keeps everything in memory only (a site without a journal directory): dedupe then
    holds only while the process lives.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, now: float, fsync: FsyncPolicy = "batch",
                 dedupe_window_s: float = 24 * 3600.0, compact_min_records: int = 10_000) -> None:
        if dedupe_window_s <= 0:
            raise ValueError(f"dedupe_window_s: must be > 0, got {dedupe_window_s!r}")
        self.path = Path(path) if path is not None else None
        self.dedupe_window_s = float(dedupe_window_s)
        self._fsync: FsyncPolicy = fsync
        self._compact_min = compact_min_records
        self._entries: dict[str, CloudEntry] = {}
        self._by_seq: dict[int, str] = {}
        self._leases: dict[str, Lease] = {}
        self.controllers: dict[str, bool] = {}
        self._controller_cmd: dict[str, str | None] = {}
        self.last_seq = 0
        self._ack_n = 0
        self._journal: Journal | None = None
        self._records = self._kept_records = 0
        self.records_at_open = 0
        if self.path is not None:
            if self.path.exists():
                for record in Journal.read(self.path):
                    self._apply(record)
                    self.records_at_open += 1
            self._compact(now)

    # ---- queries -------------------------------------------------------------------------------
    def get(self, command_id: str) -> CloudEntry | None:
        """The command received with this id, or None (never seen, or forgotten after the window)."""
        return self._entries.get(command_id)

    def entries(self) -> list[CloudEntry]:
        """Every command kept, in the order received."""
        return list(self._entries.values())

    def open_entries(self) -> list[CloudEntry]:
        """Commands without a final ack (what a restarted edge must carry on with), in the order received."""
        return [e for e in self._entries.values() if not e.final]

    def leases(self) -> list[Lease]:
        """Active leases, in the order they started."""
        return list(self._leases.values())

    def lease_of(self, command_id: str) -> Lease | None:
        return self._leases.get(command_id)

    def pending_acks(self, seqs: Iterable[int]) -> list[tuple[CloudEntry, dict[str, Any]]]:
        """(entry, latest ack) for each of ``seqs`` the edge knows, in the order those acks were made."""
        found: dict[str, CloudEntry] = {}
        for seq in seqs:
            cid = self._by_seq.get(seq)
            entry = self._entries.get(cid) if cid is not None else None
            if entry is not None and entry.acks:
                found[cid] = entry  # type: ignore[index]
        return sorted(((e, e.acks[-1]) for e in found.values()), key=lambda pair: pair[1]["n"])

    @property
    def records(self) -> int:
        """Records in the file now (since the last compaction, plus what compaction kept)."""
        return self._records

    # ---- writes (journaled; call sync() before acting on them) ---------------------------------
    def receive(self, seq: int, command: dict[str, Any], now: float) -> CloudEntry:
        """A new command arrived: journal it and its "delivered" ack. Returns its entry."""
        cid = command["command_id"]
        if cid in self._entries:
            raise ValueError(f"command {cid} is known already: use duplicate()")
        self._write([{"k": "cmd", "id": cid, "seq": seq, "c": command, "at": now},
                     {"k": "ack", "id": cid, "s": "delivered", "e": None, "x": None, "at": now}])
        return self._entries[cid]

    def duplicate(self, command_id: str, seq: int, now: float) -> CloudEntry:
        """A command id seen before arrived again (with ``seq``): journaled, nothing else changes."""
        self._write([{"k": "dup", "id": command_id, "seq": seq, "at": now}])
        return self._entries[command_id]

    def ack(self, command_id: str, status: str, now: float, error: str | None = None,
            executed_at: str | None = None) -> dict[str, Any] | None:
        """Journal an ack; returns it. A command with a final ack gets no other: None then."""
        entry = self._entries[command_id]
        if entry.final:
            log.debug("command %s has its final ack %s; %s not recorded", command_id, entry.acks[-1]["status"],
                      status)
            return None
        self._write([{"k": "ack", "id": command_id, "s": status, "e": error, "x": executed_at, "at": now}])
        return entry.acks[-1]

    def submitted(self, command_id: str, runtime_id: str, now: float) -> None:
        """The command is being submitted to the site as ``runtime_id`` (journaled before it is)."""
        self._write([{"k": "sub", "id": command_id, "rid": runtime_id, "at": now}])

    def confirm(self, pending: Iterable[int], now: float) -> list[str]:
        """A ``welcome`` listed ``pending``: every final ack whose seqs are not among them is confirmed
        (the cloud has it). Returns the ids confirmed now."""
        waiting = set(pending)
        return self._confirm((e for e in self._entries.values() if not waiting.intersection(e.seqs)), now)

    def confirm_ids(self, command_ids: Iterable[str], now: float) -> list[str]:
        """The router says it has stored these commands' final acks (a ``confirm`` frame): each one whose
        latest ack here is final is confirmed. Ids it does not know, or whose ack is not final, are
        ignored. Returns the ids confirmed now."""
        known = (self._entries[cid] for cid in dict.fromkeys(command_ids) if cid in self._entries)
        return self._confirm(known, now)

    def _confirm(self, entries: Iterable[CloudEntry], now: float) -> list[str]:
        """Confirm those of ``entries`` whose latest ack is final and not yet confirmed (one journal record)."""
        ids = [e.command_id for e in entries if e.final and not e.confirmed]
        if ids:
            self._write([{"k": "conf", "ids": ids, "at": now}])
        return ids

    def lease(self, command_id: str, asset_id: str, name: str, value: float, ends_at: float, now: float) -> Lease:
        """An override starts: ``name`` of ``asset_id`` is ``value`` until ``ends_at`` (site clock)."""
        self._write([{"k": "lease", "id": command_id, "asset": asset_id, "name": name, "value": float(value),
                      "ends": float(ends_at), "at": now}])
        return self._leases[command_id]

    def end_lease(self, command_id: str, now: float) -> Lease | None:
        """The override of ``command_id`` has reverted (or is cancelled); returns it."""
        lease = self._leases.get(command_id)
        if lease is not None:
            self._write([{"k": "unlease", "id": command_id, "at": now}])
        return lease

    def controller(self, name: str, on: bool, command_id: str | None, now: float) -> None:
        """The cloud switched controller ``name`` (restored after a restart)."""
        self._write([{"k": "ctl", "name": name, "on": bool(on), "id": command_id, "at": now}])

    def sync(self) -> None:
        """Make what was written durable according to the fsync policy (before acting on it)."""
        if self._journal is not None:
            self._journal.sync()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    # ---- retention -----------------------------------------------------------------------------
    def prune(self, now: float) -> int:
        """Forget (in memory) what retention no longer needs; compact the file if it has grown a lot.
        Returns how many commands were forgotten."""
        drop = [cid for cid, e in self._entries.items() if not self._keep(e, now)]
        for cid in drop:
            self._forget(cid)
        if self._journal is not None and self._records >= max(self._compact_min, 2 * self._kept_records):
            self._compact(now)
        return len(drop)

    def _keep(self, entry: CloudEntry, now: float) -> bool:
        return (not entry.final or not entry.confirmed or now - entry.seen_at < self.dedupe_window_s
                or entry.command_id in self._leases)

    def _forget(self, command_id: str) -> None:
        entry = self._entries.pop(command_id)
        for seq in entry.seqs:
            if self._by_seq.get(seq) == command_id:
                del self._by_seq[seq]

    def _compact(self, now: float) -> None:
        """Rewrite the file with what retention keeps (see the module docstring), then reopen it."""
        assert self.path is not None
        for cid in [cid for cid, e in self._entries.items() if not self._keep(e, now)]:
            self._forget(cid)
        if self._journal is not None:
            self._journal.close()
        records = list(self._snapshot(now))
        Journal.compact(self.path, records)
        self._journal = Journal(self.path, fsync=self._fsync)
        self._records = self._kept_records = len(records)

    def _snapshot(self, now: float) -> Iterator[dict[str, Any]]:
        yield {"k": "meta", "last_seq": self.last_seq, "at": now}
        acks: list[tuple[int, dict[str, Any]]] = []
        for e in self._entries.values():
            yield {"k": "cmd", "id": e.command_id, "seq": e.seqs[0], "c": e.command, "at": e.received_at}
            for seq in e.seqs[1:]:
                yield {"k": "dup", "id": e.command_id, "seq": seq, "at": e.received_at}
            if e.submitted is not None:
                yield {"k": "sub", "id": e.command_id, "rid": e.submitted, "at": e.received_at}
            acks += [(a["n"], {"k": "ack", "id": e.command_id, "s": a["status"], "e": a["error"],
                               "x": a["executed_at"], "at": a["at"]}) for a in e.acks]
        yield from (record for _, record in sorted(acks, key=lambda pair: pair[0]))
        confirmed = [e.command_id for e in self._entries.values() if e.confirmed]
        if confirmed:
            yield {"k": "conf", "ids": confirmed, "at": now}
        for lease in self._leases.values():
            yield {"k": "lease", "id": lease.command_id, "asset": lease.asset_id, "name": lease.name,
                   "value": lease.value, "ends": lease.ends_at, "at": lease.started_at}
        for name, on in self.controllers.items():
            yield {"k": "ctl", "name": name, "on": on, "id": self._controller_cmd.get(name), "at": now}

    # ---- records -------------------------------------------------------------------------------
    def _write(self, records: list[dict[str, Any]]) -> None:
        if self._journal is not None:
            self._journal.append_many(records)
            self._records += len(records)
        for record in records:
            self._apply(record)

    def _apply(self, r: dict[str, Any]) -> None:
        """Apply one record to the in-memory state (reading the file, and after each write)."""
        kind, at = r.get("k"), r.get("at", 0.0)
        if kind == "cmd":
            cid, seq = r["id"], int(r["seq"])
            if cid not in self._entries:
                self._entries[cid] = CloudEntry(cid, seq, r["c"], at, at, seqs=[seq])
                self._by_seq[seq] = cid
            self.last_seq = max(self.last_seq, seq)
        elif kind == "dup":
            entry = self._entries.get(r["id"])
            seq = int(r["seq"])
            if entry is not None:
                if seq not in entry.seqs:
                    entry.seqs.append(seq)
                entry.seq = seq
                entry.seen_at = max(entry.seen_at, at)
                self._by_seq[seq] = entry.command_id
            self.last_seq = max(self.last_seq, seq)
        elif kind == "ack":
            entry = self._entries.get(r["id"])
            if entry is not None:
                self._ack_n += 1
                entry.acks.append({"status": r["s"], "error": r.get("e"), "executed_at": r.get("x"), "at": at,
                                   "n": self._ack_n})
                entry.seen_at = max(entry.seen_at, at)
        elif kind == "sub":
            entry = self._entries.get(r["id"])
            if entry is not None:
                entry.submitted = r["rid"]
        elif kind == "conf":
            for cid in r["ids"]:
                entry = self._entries.get(cid)
                if entry is not None:
                    entry.confirmed = True
        elif kind == "lease":
            self._leases[r["id"]] = Lease(r["id"], r["asset"], r["name"], float(r["value"]), float(r["ends"]), at)
        elif kind == "unlease":
            self._leases.pop(r["id"], None)
        elif kind == "ctl":
            self.controllers[r["name"]] = bool(r["on"])
            self._controller_cmd[r["name"]] = r.get("id")
        elif kind == "meta":
            self.last_seq = max(self.last_seq, int(r.get("last_seq", 0)))
        else:
            log.warning("cloud journal %s: unknown record kind %r ignored", self.path, kind)
