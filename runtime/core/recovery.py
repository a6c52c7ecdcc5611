"""Rebuilding the dispatcher's state from its journal when a Site restarts on an existing file.

Pure functions over journal records (no actors, no clock, no I/O beyond reading the file).

Record kinds (the contract between the journal writer - the dispatcher - and this module)
---------------------------------------------------------------------------------------------
Every record is a map with a kind ``"k"``:

``{"k": "cmd", "c": Command.to_record()}``
    A snapshot of one command, written after every change to it (creation, every status change,
    attempts/error updates). The last snapshot of an id is its current state.
``{"k": "batch", "b": CommandBatch.to_record()}``
    A schedule accepted as a batch. Its rows are commands ``f"{batch_id}-{i}"`` that are PENDING
    until a ``cmd`` snapshot of that id says otherwise (the dispatcher journals a row's snapshot when
    it pulls the row into its command table).
``{"k": "bsup", "id": batch_id, "assets": [asset ids], "from": epoch float, "at": epoch float}``
    Written just before the ``batch`` record of batch ``id`` when that batch replaces older ones:
    every not-yet-dispatched command of those assets scheduled at or after ``from`` (inclusive), in
    the batches accepted *before* it, was superseded at time ``at``. Materialized commands also get
    their own SUPERSEDED ``cmd`` snapshot; this record covers the lazy batch rows that never got one.
    Replaying it means: before adding batch ``id``, supersede from ``from`` for those assets. Only the
    first ``bsup`` of an id counts: a later one comes from a repeated submission of the same batch,
    which changes nothing (the dispatcher no longer writes one; older journals may hold it).
``{"k": "ev", "e": Event.to_record()}``
    An event as published. Recovery only counts them.

Records of any other kind are skipped with a warning (a newer writer may add kinds). A known kind
whose content cannot be decoded raises :class:`~runtime.core.journal.JournalCorrupt` with the record's
offset: the record passed its CRC, so the writer wrote something wrong, and guessing is not safe.

Idempotency: command ids are unique, so replaying the same snapshot twice (e.g. after a compaction
that kept it) changes nothing; a batch id journaled twice is kept once (the last record wins).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from .batch import CommandBatch
from .commands import Command
from .journal import Journal, JournalCorrupt

log = logging.getLogger(__name__)

__all__ = ["RecoveredState", "recover", "recover_records", "non_final"]


@dataclass
class RecoveredState:
    """What a journal says.

    * ``commands``: the last snapshot of every command id, in first-seen order
    * ``batches``: accepted batches in journal order (one per batch id)
    * ``batch_supersessions``: the ``bsup`` records, in order (keys ``id``, ``assets``, ``from``, ``at``)
    * ``events``: number of event records; ``records``: number of records read (all kinds)
    * ``unknown``: number of records of a kind this module does not know (skipped)
    """

    commands: dict[str, Command] = field(default_factory=dict)
    batches: list[CommandBatch] = field(default_factory=list)
    batch_supersessions: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0
    records: int = 0
    unknown: int = 0


def recover(path: str | os.PathLike[str]) -> RecoveredState:
    """Read the journal at ``path`` into a :class:`RecoveredState`. A missing or empty file gives an
    empty state. A torn last record is skipped (with a warning); damage elsewhere raises
    :class:`~runtime.core.journal.JournalCorrupt`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return RecoveredState()
    return recover_records(Journal.read_with_offsets(path), path=path)


def recover_records(records: Iterable[tuple[int, dict[str, Any]] | dict[str, Any]],
                    path: str = "<records>") -> RecoveredState:
    """Fold journal records (plain dicts, or ``(offset, dict)`` pairs) into a :class:`RecoveredState`.
    A malformed record raises :class:`~runtime.core.journal.JournalCorrupt` with its byte offset (-1 when
    plain dicts were given) and its index."""
    state = RecoveredState()
    # id -> (offset, index, raw snapshot): only the last snapshot of an id is turned into a Command
    # (building one costs far more than reading the record, and most ids have several snapshots).
    snapshots: dict[str, tuple[int, int, dict[str, Any]]] = {}
    batch_pos: dict[str, int] = {}
    sup_ids: set[str] = set()
    unknown_kinds: set[Any] = set()
    for index, item in enumerate(records):
        offset, rec = item if isinstance(item, tuple) else (-1, item)
        state.records += 1
        kind = rec.get("k")
        try:
            if kind == "cmd":
                raw = rec["c"]
                snapshots[raw["id"]] = (offset, index, raw)
            elif kind == "ev":
                state.events += 1
            elif kind == "batch":
                batch = CommandBatch.from_record(rec["b"])
                pos = batch_pos.get(batch.batch_id)
                if pos is None:
                    batch_pos[batch.batch_id] = len(state.batches)
                    state.batches.append(batch)
                else:
                    state.batches[pos] = batch
            elif kind == "bsup":
                sup = {"id": str(rec["id"]), "assets": [str(a) for a in rec["assets"]],
                       "from": float(rec["from"]), "at": float(rec["at"])}
                if sup["id"] not in sup_ids:  # a repeated submission of a known batch changed nothing
                    sup_ids.add(sup["id"])
                    state.batch_supersessions.append(sup)
            else:
                state.unknown += 1
                if kind not in unknown_kinds:
                    unknown_kinds.add(kind)
                    log.warning("journal %s: skipping records of unknown kind %r (first at offset %s)",
                                path, kind, offset)
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed(path, offset, index, kind, exc) from exc
    commands = state.commands
    for cid, (offset, index, raw) in snapshots.items():
        try:
            commands[cid] = Command.from_record(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed(path, offset, index, "cmd", exc) from exc
    return state


def _malformed(path: str, offset: int, index: int, kind: Any, exc: Exception) -> JournalCorrupt:
    return JournalCorrupt(path, offset, f"record #{index}: malformed {kind!r} record ({type(exc).__name__}: {exc})")


def non_final(state: RecoveredState) -> list[Command]:
    """Commands whose last snapshot is not final (PENDING, DISPATCHED, ACKNOWLEDGED, HELD), in
    first-seen order. Batch rows without any snapshot are not included: they are PENDING by
    definition and the command table restores them from the batch itself."""
    return [cmd for cmd in state.commands.values() if not cmd.is_final]
