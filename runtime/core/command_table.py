"""CommandTable: the pure, single-threaded core of command dispatch.

The table owns the current snapshot of every command and applies the lifecycle of
:mod:`runtime.core.commands`: due dates, expiry, supersession, HELD/release, acknowledgement and
completion timeouts, and retries with backoff. It has no threads and never reads a clock: every
method takes ``now`` (epoch seconds). Each state change is returned as a :class:`Change`; the
caller (the synchronous :class:`~runtime.engine.dispatch.DispatchEngine` or the dispatcher actor)
journals and publishes them.

Driving it::

    changes = table.sweep(now)          # pull due batch rows, expire, supersede, hold, time out
    for cmd in table.due(now):          # what to send now, best first
        send(cmd); table.mark_dispatched(cmd.command_id, now)
    wake_at = table.next_deadline()     # when sweep/due would next change anything

Batches (:class:`~runtime.core.batch.CommandBatch`) are stored lazily: a row becomes a :class:`Command`
object only when it falls due (``sweep`` pulls it in and reports it with ``COMMAND_CREATED``),
when it is touched by id (``mark_dispatched``/``reject``/``restore``), or transiently when asked
for by ``get``/``non_final``/``supersede_future``. Rows that a new schedule supersedes before they
are due stay lazy too (a per-batch boolean mask).

Supersession (setpoint types only, :attr:`CommandType.is_setpoint`): every channel
(asset, command type) has at most one due, non-final command, the newest by
(emergency class, scheduled_time, priority, creation sequence): a normal command never supersedes an
emergency one (priority >= :data:`~runtime.core.commands.EMERGENCY_PRIORITY`), however new it is. When a command falls due it either replaces the
channel's current one (which becomes SUPERSEDED, even when in flight: a later device answer for it
is ignored) or is itself SUPERSEDED when it is older. ``last_error`` of the loser names the winner.

Deduplication window (``dedupe_window_s``, default :data:`DEFAULT_DEDUPE_WINDOW_S`, 7 days; None: forever):

* every command expires at the latest ``dedupe_window_s`` after its scheduled time: one without an
  ``expires_at`` that is still PENDING or HELD then becomes EXPIRED (``last_error`` says why), like one
  whose ``expires_at`` passed. So a command that arrives (or is restored) more than the window after
  its time is EXPIRED at once by the next :meth:`CommandTable.sweep`, never sent;
* a final command's id stays known after :meth:`CommandTable.prune` forgot its snapshot, until both the
  window has passed since it ended and its (explicit or implicit) expiry has passed; a batch's id
  likewise, counted from when the batch was dropped. A duplicate within that time is a no-op; one
  after it is unknown, but its expiry has passed by then, so it is EXPIRED at once, never applied as
  new. The known ids are bounded by what ended within the window.

``Change.event`` is None for exactly two kinds of change, which the caller should journal but not
publish as a lifecycle event: a HELD command released to PENDING (``set_available`` or ``sweep``),
and an in-flight command re-queued as PENDING by :meth:`CommandTable.restore`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .batch import CommandBatch
from .clock import to_datetime
from .commands import (ALLOWED_TRANSITIONS, EMERGENCY_PRIORITY, Command, CommandStatus, CommandType,
                       InvalidCommandTransition)
from .errors import ConfigurationError
from .events import EventType
from .retry import RetryPolicy

__all__ = ["Change", "CommandTable", "DEFAULT_DEDUPE_WINDOW_S", "effective_expiry"]

#: How long a final command's id stays known (seconds), and the latest a command may be applied after
#: its scheduled time, unless configured otherwise (see the module docstring).
DEFAULT_DEDUPE_WINDOW_S = 7 * 86400.0

_S = CommandStatus
_WAITING = frozenset({_S.PENDING, _S.HELD})
_IN_FLIGHT = frozenset({_S.DISPATCHED, _S.ACKNOWLEDGED})
_NON_FINAL = _WAITING | _IN_FLIGHT

# Kinds of deadline in the heap. Every entry is (when, tiebreak, kind, key, version). Versions of commands
# are unique in the table (a new one from the tick counter at every change), so a deadline armed for an
# earlier entry under the same id (an id forgotten by the dedupe window and used again) never matches.
_BATCH = 0   # next live row of a batch falls due (key: batch id, version: the batch cursor)
_DUE = 1     # a materialized command reaches its scheduled time (version: the entry's birth; valid until due)
_EXPIRY = 2  # a PENDING/HELD command reaches expires_at
_RETRY = 3   # a retry-pending command reaches retry_at (due() changes; sweep has nothing to do)
_ACK = 4     # a DISPATCHED command's acknowledgement deadline
_DONE = 5    # an ACKNOWLEDGED command's completion deadline


class Change(NamedTuple):
    """One state change of one command (an immutable named tuple: the dispatcher makes four per command,
    and a tuple is built in a third of a frozen dataclass's time).

    ``command`` is the new snapshot, ``previous`` the status before (None when the command was
    created). ``event`` is the lifecycle event to publish; it is None for a HELD command released
    to PENDING and for an in-flight command re-queued by ``restore`` (journal those, publish
    nothing). ``retry_at`` (epoch seconds) is set when a failed or timed-out attempt was scheduled
    for a retry (event COMMAND_RETRY_SCHEDULED, or COMMAND_HELD when the asset is unavailable).
    """

    command: Command
    previous: CommandStatus | None
    event: EventType | None
    retry_at: float | None = None


class _Entry:
    """A materialized command: its snapshot plus the bookkeeping the snapshot does not carry."""

    __slots__ = ("command", "seq", "sched", "expires", "version", "birth", "due_seen", "retry_at", "dispatched_at",
                 "acked_at", "finished_at", "batch", "order")

    def __init__(self, command: Command, seq: int, batch: "_BatchState | None", window: float | None) -> None:
        self.command = command
        self.seq = seq
        self.sched = command.scheduled_time.timestamp()
        self.expires = effective_expiry(command.expires_at.timestamp() if command.expires_at is not None else None,
                                        self.sched, window)
        self.version = 0           # set by the table: unique, renewed at every change
        self.birth = 0             # the version it was inserted with
        self.due_seen = False
        self.retry_at: float | None = None
        self.dispatched_at = 0.0  # meaningful while DISPATCHED
        self.acked_at = 0.0       # meaningful while ACKNOWLEDGED
        self.finished_at: float | None = None
        self.batch = batch
        #: :meth:`CommandTable.due`'s order: higher priority, earlier time, earlier creation
        self.order = (-command.priority, self.sched, seq)

    @property
    def key(self) -> tuple[bool, float, int, int]:
        """Supersession order: an emergency (priority >= EMERGENCY_PRIORITY) beats any normal command;
        within a class, newer scheduled time, then higher priority, then later creation wins."""
        return (self.command.priority >= EMERGENCY_PRIORITY, self.sched, self.command.priority, self.seq)


def effective_expiry(expires_at: float | None, scheduled: float, window: float | None) -> float | None:
    """When a command stops being worth applying: its ``expires_at``, else ``window`` after its time."""
    if expires_at is not None:
        return expires_at
    return scheduled + window if window is not None else None


class _BatchState:
    """A stored batch. Each row is in exactly one of three states:

    * lazy PENDING: ``i >= pos``, not in ``early``, live;
    * lazy SUPERSEDED (masked): ``live[i]`` is False (``live`` stays None until the first one);
    * materialized: live and (``i < pos`` or in ``early``); it is in the table's dict unless pruned.

    ``pos`` never rests on a masked or early row; ``early`` only holds rows ``>= pos``.
    """

    __slots__ = ("batch", "base_seq", "pos", "live", "early", "codes", "in_dict", "lazy_pending",
                 "lazy_superseded", "superseded_at")

    def __init__(self, batch: CommandBatch, base_seq: int) -> None:
        self.batch = batch
        self.base_seq = base_seq
        self.pos = 0
        self.live: np.ndarray | None = None
        self.early: set[int] = set()
        self.codes = {asset: code for code, asset in enumerate(batch.assets)}
        self.in_dict = 0            # rows currently materialized in the table's dict
        self.lazy_pending = len(batch)
        self.lazy_superseded = 0
        self.superseded_at: float | None = None

    def is_live(self, i: int) -> bool:
        return self.live is None or bool(self.live[i])


class CommandTable:
    """The command table: current snapshots, deadlines, retries, supersession, availability.

    Not thread-safe: exactly one owner (an actor, or the synchronous engine) calls it.
    ``retry``: the retry policy; ``ack_timeout_s``: how long a DISPATCHED command may wait for its
    acknowledgement (per-asset override :meth:`set_ack_timeout`, read at dispatch time);
    ``completion_timeout_s``: how long an ACKNOWLEDGED command may wait for completion;
    ``rng_seed``: seeds the jitter of retry delays (None: unpredictable); ``dedupe_window_s``: see the
    module docstring (None: ids are known forever and nothing expires without an ``expires_at``).
    """

    def __init__(self, retry: RetryPolicy = RetryPolicy(), ack_timeout_s: float = 10.0,
                 completion_timeout_s: float = 60.0, rng_seed: int | None = None,
                 dedupe_window_s: float | None = DEFAULT_DEDUPE_WINDOW_S) -> None:
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry: must be a RetryPolicy, got {retry!r}")
        _check_timeout("ack_timeout_s", ack_timeout_s)
        _check_timeout("completion_timeout_s", completion_timeout_s)
        if dedupe_window_s is not None:
            _check_timeout("dedupe_window_s", dedupe_window_s)
        self.dedupe_window_s = float(dedupe_window_s) if dedupe_window_s is not None else None
        self.retry = retry
        self.ack_timeout_s = float(ack_timeout_s)
        self.completion_timeout_s = float(completion_timeout_s)
        self._rng = random.Random(rng_seed)
        self._ack_timeouts: dict[str, float] = {}
        self._cmds: dict[str, _Entry] = {}
        self._pending: dict[str, _Entry] = {}                    # PENDING entries (for due())
        self._by_asset: dict[str, dict[str, _Entry]] = {}        # non-final entries per asset (ordered)
        self._status_counts: dict[CommandStatus, int] = dict.fromkeys(CommandStatus, 0)
        self._batches: dict[str, _BatchState] = {}
        self._retired: dict[str, int] = {}                       # pruned batch id -> its length
        self._retired_until: dict[str, float] = {}               # pruned batch id -> known until
        self._pruned: dict[str, float] = {}                      # pruned ids not covered by a batch -> known until
        self._forget: list[tuple[float, int, str, bool]] = []    # (until, tick, id, is_batch): heap
        self._heads: dict[tuple[str, CommandType], str] = {}     # setpoint channel -> its due command
        self._unavailable: set[str] = set()
        self._heap: list[tuple[float, int, int, str, int]] = []
        #: (id, birth) of entries inserted already due: the next sweep takes them (a _DUE deadline that
        #: skips the heap; the same validity rule applies)
        self._due_now: list[tuple[str, int]] = []
        self._finished: list[tuple[float, int, str]] = []
        self._compact_at = 1024                                  # heap size that triggers _compact
        self._tick = itertools.count()
        self._next_seq = 0

    # ------------------------------------------------------------------ configuration

    def set_ack_timeout(self, asset_id: str, seconds: float) -> None:
        """Acknowledgement timeout for ``asset_id`` (applies to commands dispatched from now on)."""
        _check_timeout("seconds", seconds)
        self._ack_timeouts[asset_id] = float(seconds)

    def ack_timeout(self, asset_id: str) -> float:
        """The acknowledgement timeout that applies to ``asset_id``."""
        return self._ack_timeouts.get(asset_id, self.ack_timeout_s)

    def is_available(self, asset_id: str) -> bool:
        """False after ``set_available(asset_id, False)`` or ``hold_in_flight``; unknown assets are available."""
        return asset_id not in self._unavailable

    # ------------------------------------------------------------------ adding

    def add(self, commands: Iterable[Command], now: float) -> list[Change]:
        """Add commands (status PENDING); returns a COMMAND_CREATED change for each one created.

        Idempotent: an id the table knows (materialized, in a batch, or pruned) is ignored and not
        returned. A missing ``created_at`` is set to ``now``. A command with another status raises
        ValueError naming its id, before anything is added. Commands become due at the next
        :meth:`sweep` at or after their scheduled time.
        """
        given = list(commands)
        for cmd in given:
            if not isinstance(cmd, Command):
                raise TypeError(f"add: expected Command objects, got {cmd!r}")
            if cmd.status is not _S.PENDING:
                raise ValueError(f"command {cmd.command_id}: only PENDING commands can be added, "
                                 f"got {cmd.status.value}")
        changes = []
        created: object = None
        for cmd in given:
            if self._known(cmd.command_id):
                continue
            if cmd.created_at is None:
                if created is None:
                    created = to_datetime(now)
                values = list(cmd)
                values[9] = created   # cmd.evolve(created_at=created), without its per-call checks
                cmd = tuple.__new__(Command, values)
            e = self._insert(cmd, self._take_seq(), None, now)
            changes.append(Change(e.command, None, EventType.COMMAND_CREATED))
        return changes

    def add_batch(self, batch: CommandBatch, now: float) -> list[Change]:
        """Store ``batch`` lazily; always returns [] (journal the batch as one record).

        No row is materialized here: rows are pulled in by :meth:`sweep` when they fall due, each
        reported then as COMMAND_CREATED. A batch id seen before is ignored. Creation sequence
        (the last supersession tie-break) follows row order, after everything added before.
        """
        if batch.batch_id in self._batches or batch.batch_id in self._retired:
            return []
        bs = _BatchState(batch, self._next_seq)
        self._next_seq += len(batch)
        self._batches[batch.batch_id] = bs
        self._advance(bs)
        return []

    def restore(self, commands: Iterable[Command], now: float) -> list[Change]:
        """Recovery: put back the last known snapshot of each command.

        DISPATCHED/ACKNOWLEDGED come back as PENDING (they are re-sent: setpoints are absolute and
        safe to repeat; ``attempts`` is kept); each such re-queue is returned as a Change with
        event None. Other statuses come back as they were, final ones included so that their ids
        stay idempotent. Ids already materialized or pruned are skipped (the first restore wins).
        For rows of a stored batch (call :meth:`add_batch` first): an untouched PENDING row stays
        lazy, a SUPERSEDED row is masked, any other snapshot replaces the row (even one masked by a
        replayed ``supersede_future``: the snapshot is the truth). Restored non-final
        commands are due-processed (supersession, HELD/release) by the next :meth:`sweep`.
        """
        changes = []
        for cmd in commands:
            cid = cmd.command_id
            if cid in self._cmds or cid in self._pruned:
                continue
            row = self._row(cid)
            batch_state: _BatchState | None = None
            if row is not None:
                bs, i = row
                if bs is None or (bs.is_live(i) and not self._is_lazy(bs, i)):
                    continue  # a row of a pruned batch, or a pruned row
                if cmd.status is _S.SUPERSEDED:
                    if bs.is_live(i):
                        self._mask_rows(bs, np.array([i]), now)
                    continue
                if cmd.status is _S.PENDING and cmd.attempts == 0 and bs.is_live(i):
                    continue  # an untouched row: stays lazy
                batch_state = bs
                seq = bs.base_seq + i
                self._take_row(bs, i)
            else:
                seq = self._take_seq()
            previous = cmd.status
            if previous in _IN_FLIGHT:
                cmd = cmd.evolve(_S.PENDING)
            e = self._insert(cmd, seq, batch_state, now)
            if previous in _IN_FLIGHT:
                changes.append(Change(e.command, previous, None))
        return changes

    def restore_mask(self, batch_id: str, rows: Iterable[int] | np.ndarray, at: float) -> None:
        """Recovery (a compacted journal): rows of a stored batch that were superseded while lazy, at ``at``."""
        bs = self._batches[batch_id]
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size:
            rows = rows[bs.live[rows]] if bs.live is not None else rows
            rows = np.array([i for i in rows.tolist() if self._is_lazy(bs, i)], dtype=np.int64)
        if rows.size:
            self._mask_rows(bs, rows, at)

    def restore_final_rows(self, batch_id: str, rows: Iterable[int] | np.ndarray) -> None:
        """Recovery (a compacted journal): rows of a stored batch that ended and whose snapshots were
        dropped. They become what a pruned row is: known (never applied again), without a snapshot.
        Call right after :meth:`add_batch` (and :meth:`restore_mask`)."""
        bs = self._batches[batch_id]
        taken = [i for i in np.unique(np.asarray(rows, dtype=np.int64)).tolist()
                 if 0 <= i < len(bs.batch) and self._is_lazy(bs, i)]
        if not taken:
            return
        bs.lazy_pending -= len(taken)
        bs.early.update(taken)
        if bs.pos in bs.early:
            self._advance(bs)

    def restore_known(self, ids: dict[str, float] | Iterable[tuple[str, float]],
                      batches: dict[str, tuple[int, float]] | Iterable[tuple[str, tuple[int, float]]] = (),
                      ) -> None:
        """Recovery (a compacted journal): ids of final commands, and batches whose rows all ended, that
        stay known until the given time (epoch seconds) without a snapshot. Known ones are skipped."""
        for cid, until in (ids.items() if isinstance(ids, dict) else ids):
            if not self._known(cid):
                self._remember(cid, float(until), False)
        for bid, (n, until) in (batches.items() if isinstance(batches, dict) else batches):
            if bid not in self._batches and bid not in self._retired:
                self._retired[bid] = int(n)
                self._remember(bid, float(until), True)

    # ------------------------------------------------------------------ time-driven

    def sweep(self, now: float) -> list[Change]:
        """Apply everything that is due at ``now``; returns the changes in the order they happened.

        In order: (a) batch rows with time <= now are materialized as PENDING (COMMAND_CREATED),
        superseded rows skipped; (b) PENDING/HELD commands past ``expires_at`` become EXPIRED;
        (c) commands that fell due are compared on their setpoint channel and the older ones
        become SUPERSEDED (see the module docstring); (d) a due PENDING command of an unavailable
        asset becomes HELD, a due HELD command of an available asset (after ``restore``) PENDING;
        (e) DISPATCHED past the acknowledgement deadline and (f) ACKNOWLEDGED past the completion
        deadline time out: retried or final TIMED_OUT (see :meth:`time_out`).
        """
        changes: list[Change] = []
        newly_due: list[_Entry] = []
        for bs in list(self._batches.values()):
            self._pull(bs, now, changes, newly_due)
        expiries: list[_Entry] = []
        timeouts: list[tuple[_Entry, int]] = []
        heap = self._heap
        if self._due_now:
            due_now, self._due_now = self._due_now, []
            for key, ver in due_now:
                if self._valid(_DUE, key, ver):
                    e = self._cmds[key]
                    if e.sched <= now:
                        e.due_seen = True
                        newly_due.append(e)
                    else:  # the clock went back since it was inserted: wait for its time
                        self._push(e.sched, _DUE, key, ver)
        while heap and heap[0][0] <= now:
            _, _, kind, key, ver = heapq.heappop(heap)
            if not self._valid(kind, key, ver):
                continue
            if kind == _DUE:
                e = self._cmds[key]
                e.due_seen = True
                newly_due.append(e)
            elif kind == _EXPIRY:
                expiries.append(self._cmds[key])
            elif kind in (_ACK, _DONE):
                timeouts.append((self._cmds[key], ver))
            # _BATCH entries were handled by the pull; _RETRY only changes what due() returns.
        for e in expiries:  # valid entries: still PENDING/HELD since the expiry was armed
            if e.command.expires_at is None:  # the implicit expiry: the dedupe window after its time
                changes.append(self._apply(e, _S.EXPIRED, EventType.COMMAND_EXPIRED, now, last_error=(
                    f"not applied: scheduled more than the dedupe window ({self.dedupe_window_s:g} s) ago")))
            else:
                changes.append(self._apply(e, _S.EXPIRED, EventType.COMMAND_EXPIRED, now))
        newly_due.sort(key=lambda x: x.key)
        for e in newly_due:
            if not e.command.is_final and e.command.command_type.is_setpoint:
                self._supersede_on_channel(e, now, changes)
        for e in newly_due:
            status, asset = e.command.status, e.command.asset_id
            if status is _S.PENDING and asset in self._unavailable:
                changes.append(self._apply(e, _S.HELD, EventType.COMMAND_HELD, now))
            elif status is _S.HELD and asset not in self._unavailable:
                changes.append(self._apply(e, _S.PENDING, None, now))
        for e, ver in timeouts:
            if e.version == ver:
                changes.extend(self.time_out(e.command.command_id, now))
        return changes

    def due(self, now: float) -> list[Command]:
        """PENDING commands to send at ``now``, best first; does not change anything.

        Due means scheduled_time <= now and, for a retry, retry_at <= now; commands of unavailable
        assets are left out. Order: higher priority, then earlier scheduled time, then creation.
        Call :meth:`sweep` with the same ``now`` first, so that batch rows are pulled in and
        superseded, expired and held commands are out.
        """
        ready = [e for e in self._pending.values()
                 if e.sched <= now and (e.retry_at is None or e.retry_at <= now)
                 and e.command.asset_id not in self._unavailable]
        ready.sort(key=_ORDER)
        return [e.command for e in ready]

    def idle_at(self, now: float) -> bool:
        """True when :meth:`sweep` at ``now`` would change nothing and :meth:`due` would return nothing:
        no command is PENDING and no deadline is at or before ``now``. O(1) amortized: a caller may skip
        its sweep then."""
        if self._pending:
            return False
        deadline = self.next_deadline()
        return deadline is None or deadline > now

    def next_deadline(self) -> float | None:
        """Earliest time (epoch seconds) at which :meth:`sweep` or :meth:`due` would change something.

        Covers the next live batch row, scheduled times of materialized commands not yet due,
        retry times, acknowledgement and completion deadlines and expiries. Deadlines that a sweep
        has consumed are not reported again; a result <= now means "sweep now". None: nothing
        is scheduled. Amortized O(log n) (a heap with lazy deletion).
        """
        heap = self._heap
        while heap and not self._valid(heap[0][2], heap[0][3], heap[0][4]):
            heapq.heappop(heap)
        deadline = heap[0][0] if heap else None
        if self._due_now:
            self._due_now = [(k, v) for k, v in self._due_now if self._valid(_DUE, k, v)]
            if self._due_now:
                due = min(self._cmds[k].sched for k, _ in self._due_now)
                deadline = due if deadline is None else min(deadline, due)
        return deadline

    # ------------------------------------------------------------------ command answers

    def mark_dispatched(self, command_id: str, now: float, granted: float | None = None) -> Change:
        """PENDING -> DISPATCHED: attempts + 1, acknowledgement deadline armed; ``granted`` (when given)
        is what the policy stage allowed for this send.

        Raises KeyError for an unknown id and :class:`InvalidCommandTransition` when the command
        is not PENDING (HELD and final commands cannot be sent).
        """
        e = self._entry(command_id, now, materialize=True)
        if e is None or e.command.status is not _S.PENDING:
            status = "final (superseded or pruned)" if e is None else e.command.status.value
            raise InvalidCommandTransition(f"command {command_id}: only a PENDING command can be dispatched, "
                                           f"it is {status}")
        e.retry_at = None
        e.dispatched_at = now
        return self._apply(e, _S.DISPATCHED, EventType.COMMAND_DISPATCHED, now, sent=True, granted=granted)

    def acknowledge(self, command_id: str, now: float) -> list[Change]:
        """DISPATCHED -> ACKNOWLEDGED, completion deadline armed. Ignored ([]) in any other status."""
        e = self._entry(command_id, now)
        if e is None or e.command.status is not _S.DISPATCHED:
            return []
        e.acked_at = now
        return [self._apply(e, _S.ACKNOWLEDGED, EventType.COMMAND_ACKNOWLEDGED, now)]

    def acknowledge_and_complete(self, command_id: str, now: float) -> list[Change]:
        """What :meth:`acknowledge` then :meth:`complete` do, in one call (a device that answered and
        finished at once): DISPATCHED -> ACKNOWLEDGED -> COMPLETED gives both changes, without arming the
        completion deadline in between; ACKNOWLEDGED -> COMPLETED; ignored ([]) unless in flight."""
        e = self._entry(command_id, now)
        if e is None or e.command.status not in _IN_FLIGHT:
            return []
        if e.command.status is _S.ACKNOWLEDGED:
            return [self._apply(e, _S.COMPLETED, EventType.COMMAND_COMPLETED, now)]
        e.acked_at = now
        acked = self._apply(e, _S.ACKNOWLEDGED, EventType.COMMAND_ACKNOWLEDGED, now, arm=False)
        return [acked, self._apply(e, _S.COMPLETED, EventType.COMMAND_COMPLETED, now)]

    def complete(self, command_id: str, now: float) -> list[Change]:
        """DISPATCHED/ACKNOWLEDGED -> COMPLETED. Ignored ([]) unless in flight (a late answer)."""
        e = self._entry(command_id, now)
        if e is None or e.command.status not in _IN_FLIGHT:
            return []
        return [self._apply(e, _S.COMPLETED, EventType.COMMAND_COMPLETED, now)]

    def fail(self, command_id: str, error: str, now: float, retryable: bool = True) -> list[Change]:
        """The device reported failure of an in-flight command: retry, or final FAILED.

        Retry rule (also for :meth:`time_out`): with ``retryable`` and attempts < max_attempts the
        command goes back to PENDING (COMMAND_RETRY_SCHEDULED, ``Change.retry_at`` = now + backoff;
        HELD with COMMAND_HELD if its asset is unavailable), unless it has expired (EXPIRED);
        otherwise it ends FAILED. ``last_error`` carries ``error`` in every case. Ignored ([])
        unless in flight.
        """
        e = self._entry(command_id, now)
        if e is None or e.command.status not in _IN_FLIGHT:
            return []
        return [self._retry_or_end(e, now, error, _S.FAILED, EventType.COMMAND_FAILED, retryable)]

    def time_out(self, command_id: str, now: float, reason: str | None = None) -> list[Change]:
        """An in-flight command got no (acknowledgement or completion) answer in time.

        Same retry rule as :meth:`fail`; without a retry left it ends TIMED_OUT. Ignored ([])
        unless in flight. :meth:`sweep` calls this at the deadlines it tracks; ``reason`` (a device's
        own timeout, as its asset reported it) becomes ``last_error``, else the deadline that passed.
        """
        e = self._entry(command_id, now)
        if e is None or e.command.status not in _IN_FLIGHT:
            return []
        if reason:
            error = f"{reason} (attempt {e.command.attempts})"
        elif e.command.status is _S.DISPATCHED:
            error = f"no acknowledgement after {now - e.dispatched_at:g} s (attempt {e.command.attempts})"
        else:
            error = f"not completed {now - e.acked_at:g} s after acknowledgement (attempt {e.command.attempts})"
        return [self._retry_or_end(e, now, error, _S.TIMED_OUT, EventType.COMMAND_TIMED_OUT, True)]

    def reject(self, command_id: str, reason: str, now: float) -> list[Change]:
        """Any non-final status -> REJECTED (final; invalid for the device), ``last_error`` = reason.

        Ignored ([]) when already final.
        """
        e = self._entry(command_id, now, materialize=True)
        if e is None or e.command.is_final:
            return []
        return [self._apply(e, _S.REJECTED, EventType.COMMAND_REJECTED, now, last_error=reason)]

    # ------------------------------------------------------------------ assets and schedules

    def supersede_future(self, asset_ids: Iterable[str], from_time: float, now: float, *,
                         row_changes: bool = True) -> list[Change]:
        """A new schedule replaces the old one: SUPERSEDE every not-yet-dispatched command of these
        assets (PENDING, retry-pending or HELD; materialized or lazy batch rows) whose scheduled
        time is >= ``from_time``. Batch rows are selected with a vectorized mask and stay lazy;
        with ``row_changes`` their changes are returned too (a snapshot built per row: about 10 us
        each, seconds for a whole day of a large site). With ``row_changes=False`` only
        materialized commands produce changes: record the call itself (assets, from_time, now)
        and replay it on recovery before :meth:`restore`.
        """
        assets = list(dict.fromkeys(asset_ids))
        changes = []
        for asset in assets:
            for e in list(self._by_asset.get(asset, {}).values()):
                if e.command.status in _WAITING and e.sched >= from_time:
                    changes.append(self._apply(e, _S.SUPERSEDED, EventType.COMMAND_SUPERSEDED, now))
        for bs in self._batches.values():
            n = len(bs.batch)
            codes = [bs.codes[a] for a in assets if a in bs.codes]
            start = max(bs.pos, int(np.searchsorted(bs.batch.times, from_time, side="left")))
            if not codes or start >= n:
                continue
            sel = np.isin(bs.batch.asset_codes[start:], codes)
            if bs.live is not None:
                sel &= bs.live[start:]
            for i in bs.early:
                if i >= start:
                    sel[i - start] = False
            rows = np.flatnonzero(sel) + start
            if rows.size:
                self._mask_rows(bs, rows, now)
                if row_changes:
                    changes.extend(Change(bs.batch.command(i, _S.SUPERSEDED), _S.PENDING,
                                          EventType.COMMAND_SUPERSEDED) for i in rows.tolist())
        return changes

    def set_available(self, asset_id: str, available: bool, now: float) -> list[Change]:
        """Mark an asset (un)available.

        Unavailable: its due PENDING commands (scheduled_time <= now, retries included) become
        HELD (COMMAND_HELD); later ones are held by :meth:`sweep` as they fall due, and
        :meth:`due` never returns its commands. Available: its HELD commands go back to PENDING
        (event None), a retry keeping its retry_at; they are not due-checked again here.
        """
        if available:
            self._unavailable.discard(asset_id)
            return [self._apply(e, _S.PENDING, None, now)
                    for e in list(self._by_asset.get(asset_id, {}).values()) if e.command.status is _S.HELD]
        self._unavailable.add(asset_id)
        return [self._apply(e, _S.HELD, EventType.COMMAND_HELD, now)
                for e in list(self._by_asset.get(asset_id, {}).values())
                if e.command.status is _S.PENDING and e.sched <= now]

    def hold(self, command_id: str, reason: str, now: float) -> list[Change]:
        """One in-flight command could not reach its device (link down): DISPATCHED/ACKNOWLEDGED ->
        HELD with ``last_error`` = reason, released by ``set_available(asset, True)``. Waiting for a link
        is not an attempt: the attempt counted by :meth:`mark_dispatched` is given back, so a later real
        failure is retried as usual. It does not mark the asset unavailable (the asset reports its own
        health). Not in flight: no change."""
        e = self._cmds.get(command_id)
        if e is None or e.command.status not in _IN_FLIGHT:
            return []
        change = self._apply(e, _S.HELD, EventType.COMMAND_HELD, now, last_error=reason,
                             attempts=max(0, e.command.attempts - 1))
        if e.command.asset_id not in self._unavailable:  # released at once if the asset is healthy
            return [change, self._apply(e, _S.PENDING, None, now)]
        return [change]

    def hold_in_flight(self, asset_id: str, reason: str, now: float) -> list[Change]:
        """The asset's actor died: its DISPATCHED/ACKNOWLEDGED commands become HELD (``last_error`` =
        reason) and the asset is marked unavailable (so its due PENDING ones are held too).

        ``set_available(asset_id, True, now)`` releases them; they are then sent again.
        """
        changes = [self._apply(e, _S.HELD, EventType.COMMAND_HELD, now, last_error=reason)
                   for e in list(self._by_asset.get(asset_id, {}).values()) if e.command.status in _IN_FLIGHT]
        return changes + self.set_available(asset_id, False, now)

    # ------------------------------------------------------------------ queries and housekeeping

    def has_batch(self, batch_id: str) -> bool:
        """True when a batch with this id was added (and is stored or has been pruned)."""
        return batch_id in self._batches or batch_id in self._retired

    def get(self, command_id: str) -> Command | None:
        """Current snapshot of a command, lazy batch rows included (PENDING or SUPERSEDED); None if
        unknown or pruned. Does not store lazily built snapshots."""
        e = self._cmds.get(command_id)
        if e is not None:
            return e.command
        if command_id in self._pruned:
            return None
        bs, i = self._row(command_id) or (None, 0)
        if bs is None:
            return None
        if not bs.is_live(i):
            return bs.batch.command(i, _S.SUPERSEDED)
        return bs.batch.command(i) if self._is_lazy(bs, i) else None

    def commands(self, status: CommandStatus | None = None) -> list[Command]:
        """Materialized commands (not the lazy batch rows), optionally of one status, in the order
        they were materialized."""
        return [e.command for e in self._cmds.values() if status is None or e.command.status is status]

    def non_final(self) -> list[Command]:
        """Every non-final command: materialized ones first, then the lazy PENDING batch rows
        (built for the returned list, not stored)."""
        out = [e.command for e in self._cmds.values() if not e.command.is_final]
        for bs in self._batches.values():
            n = len(bs.batch)
            live = np.ones(n - bs.pos, dtype=bool) if bs.live is None else bs.live[bs.pos:].copy()
            for i in bs.early:
                live[i - bs.pos] = False
            out.extend(bs.batch.command(i) for i in (np.flatnonzero(live) + bs.pos).tolist())
        return out

    def counts(self) -> dict[str, int]:
        """Number of commands per status value (every status present), lazy batch rows included."""
        out = {s.value: n for s, n in self._status_counts.items()}
        for bs in self._batches.values():
            out[_S.PENDING.value] += bs.lazy_pending
            out[_S.SUPERSEDED.value] += bs.lazy_superseded
        return out

    def __len__(self) -> int:
        """All commands held: materialized plus lazy batch rows (pruned ones not counted)."""
        return len(self._cmds) + sum(bs.lazy_pending + bs.lazy_superseded for bs in self._batches.values())

    def prune(self, older_than: float) -> int:
        """Forget final commands that became final before ``older_than``; returns how many.

        Their ids stay known, so the same id is still never applied twice. A batch whose rows are
        all pulled or masked, whose materialized rows are all pruned and whose last lazy
        supersession is older than ``older_than`` is dropped as a whole (its id stays known).
        Known ids whose dedupe window (see the module docstring) ended before ``older_than`` are
        forgotten.
        """
        removed = 0
        window = self.dedupe_window_s
        while self._finished and self._finished[0][0] < older_than:
            finished, _, cid = heapq.heappop(self._finished)
            e = self._cmds.pop(cid)
            self._status_counts[e.command.status] -= 1
            if e.batch is not None:
                e.batch.in_dict -= 1
            else:
                self._remember(cid, _until(finished, e.expires, window), False)
            removed += 1
        for bid, bs in list(self._batches.items()):
            if bs.pos >= len(bs.batch) and bs.in_dict == 0 and \
                    (bs.superseded_at is None or bs.superseded_at < older_than):
                removed += bs.lazy_superseded
                del self._batches[bid]
                self._retired[bid] = len(bs.batch)
                # every row ended before older_than; the last expiry of a row bounds the rest
                self._remember(bid, _until(older_than, _batch_expiry(bs.batch, window), window), True)
        forget = self._forget
        while forget and forget[0][0] < older_than:
            until, _, key, is_batch = heapq.heappop(forget)
            if is_batch:
                if self._retired_until.get(key) == until:
                    del self._retired[key], self._retired_until[key]
            elif self._pruned.get(key) == until:
                del self._pruned[key]
        return removed

    def known_ids(self) -> int:
        """Number of ids known without a snapshot (pruned commands and dropped batches)."""
        return len(self._pruned) + len(self._retired)

    def _remember(self, key: str, until: float, is_batch: bool) -> None:
        """Keep ``key`` (a command id, or a dropped batch's id) known until ``until`` (inf: forever)."""
        if is_batch:
            self._retired_until[key] = until
        else:
            self._pruned[key] = until
        if until != math.inf:
            heapq.heappush(self._forget, (until, next(self._tick), key, is_batch))

    # ------------------------------------------------------------------ internals

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _known(self, command_id: str) -> bool:
        return command_id in self._cmds or command_id in self._pruned or self._row(command_id) is not None

    def _row(self, command_id: str) -> tuple[_BatchState | None, int] | None:
        """(batch state, row) when ``command_id`` is a row of a stored batch; state None when retired."""
        if not self._batches and not self._retired:  # no schedule: no id is a row (the common API case)
            return None
        prefix, sep, tail = command_id.rpartition("-")
        if not sep or not (tail.isascii() and tail.isdigit()) or tail != str(int(tail)):
            return None
        i = int(tail)
        bs = self._batches.get(prefix)
        if bs is not None:
            return (bs, i) if i < len(bs.batch) else None
        return (None, i) if i < self._retired.get(prefix, 0) else None

    def _is_lazy(self, bs: _BatchState, i: int) -> bool:
        """Row ``i`` is still a lazy PENDING row (not pulled, materialized ahead, nor masked)."""
        return i >= bs.pos and i not in bs.early and bs.is_live(i)

    def _entry(self, command_id: str, now: float, materialize: bool = False) -> _Entry | None:
        """The entry of ``command_id``; None when final without an entry (pruned, lazily superseded)
        or, unless ``materialize``, still a lazy row. KeyError when unknown."""
        e = self._cmds.get(command_id)
        if e is not None:
            return e
        if command_id in self._pruned:
            return None
        row = self._row(command_id)
        if row is None:
            raise KeyError(f"unknown command {command_id!r}")
        bs, i = row
        if bs is None or not materialize or not self._is_lazy(bs, i):
            return None
        self._take_row(bs, i)
        return self._insert(bs.batch.command(i), bs.base_seq + i, bs, now)

    def _take_row(self, bs: _BatchState, i: int) -> None:
        """Lazy row ``i`` (PENDING or masked) is about to be materialized out of the cursor's order."""
        if bs.live is not None and not bs.live[i]:
            bs.live[i] = True
            bs.lazy_superseded -= 1
        else:
            bs.lazy_pending -= 1
        if i >= bs.pos:
            bs.early.add(i)
            if i == bs.pos:
                self._advance(bs)

    def _insert(self, cmd: Command, seq: int, batch: _BatchState | None, now: float, due: bool = False) -> _Entry:
        """Store a new entry for ``cmd`` (any status) and arm its deadlines; ``due``: already due-processed."""
        e = _Entry(cmd, seq, batch, self.dedupe_window_s)
        e.version = e.birth = next(self._tick)
        e.due_seen = due
        self._cmds[cmd.command_id] = e
        self._status_counts[cmd.status] += 1
        if batch is not None:
            batch.in_dict += 1
        if cmd.is_final:
            e.finished_at = now
            heapq.heappush(self._finished, (now, next(self._tick), cmd.command_id))
            return e
        self._by_asset.setdefault(cmd.asset_id, {})[cmd.command_id] = e
        if cmd.status is _S.PENDING:
            self._pending[cmd.command_id] = e
        if not due:
            if e.sched <= now:
                self._due_now.append((cmd.command_id, e.birth))
            else:
                self._push(e.sched, _DUE, cmd.command_id, e.birth)
        self._arm(e, now)
        return e

    def _apply(self, e: _Entry, status: CommandStatus, event: EventType | None, now: float, arm: bool = True,
               sent: bool = False, granted: float | None = None, **fields: object) -> Change:
        """Move ``e`` to ``status`` (lifecycle-checked) with ``fields`` changed, update the indexes, arm the
        new deadlines (unless ``arm`` is False: the caller moves it on at once). ``sent``: this is a send,
        attempts + 1, and ``granted`` (when not None) is what the policy allowed."""
        old = e.command
        if fields:
            if sent:
                fields["attempts"] = old.attempts + 1
                if granted is not None:
                    fields["granted"] = granted
            new = old.evolve(status, **fields)
        else:
            new = _moved(old, status, sent, granted)
        if "priority" in fields:
            e.order = (-new.priority, e.sched, e.seq)
        cid = new.command_id
        e.command = new
        e.version = next(self._tick)
        self._status_counts[old.status] -= 1
        self._status_counts[status] += 1
        if old.status is _S.PENDING:
            del self._pending[cid]
        if status is _S.PENDING:
            self._pending[cid] = e
        if new.is_final:
            per_asset = self._by_asset[new.asset_id]
            del per_asset[cid]
            if not per_asset:
                del self._by_asset[new.asset_id]
            e.finished_at = now
            heapq.heappush(self._finished, (now, next(self._tick), cid))
        elif arm:
            self._arm(e, now)
        retry_at = e.retry_at if status in _WAITING and old.status in _IN_FLIGHT else None
        return Change(new, old.status, event, retry_at)

    def _arm(self, e: _Entry, now: float) -> None:
        """Push the deadlines of ``e``'s current (non-final) status, tagged with its version."""
        status, cid, ver = e.command.status, e.command.command_id, e.version
        if status in _WAITING:
            if e.expires is not None:
                self._push(e.expires, _EXPIRY, cid, ver)
            if status is _S.PENDING and e.retry_at is not None and e.retry_at > now:
                self._push(e.retry_at, _RETRY, cid, ver)
        elif status is _S.DISPATCHED:
            self._push(now + self.ack_timeout(e.command.asset_id), _ACK, cid, ver)
        else:
            self._push(now + self.completion_timeout_s, _DONE, cid, ver)

    def _push(self, when: float, kind: int, key: str, version: int) -> None:
        heapq.heappush(self._heap, (when, next(self._tick), kind, key, version))
        if len(self._heap) > self._compact_at:
            self._compact()

    def _valid(self, kind: int, key: str, version: int) -> bool:
        if kind == _BATCH:
            bs = self._batches.get(key)
            return bs is not None and bs.pos == version and version < len(bs.batch)
        e = self._cmds.get(key)
        if e is None:
            return False
        if kind == _DUE:
            return e.birth == version and not e.due_seen and not e.command.is_final
        return e.version == version

    def _compact(self) -> None:
        """Drop stale heap entries when they outnumber the live ones (keeps memory bounded); the
        next check comes when the heap has doubled, so the cost is amortized O(1) per push."""
        live = sum(self._status_counts[s] for s in _NON_FINAL) + len(self._batches)
        if len(self._heap) > 4 * live:
            self._heap[:] = [h for h in self._heap if self._valid(h[2], h[3], h[4])]
            heapq.heapify(self._heap)
        self._compact_at = max(1024, 2 * len(self._heap))

    def _advance(self, bs: _BatchState) -> None:
        """Move the cursor past masked and early rows and arm the next row's deadline."""
        n = len(bs.batch)
        pos = bs.pos
        while pos < n:
            if not bs.is_live(pos):
                assert bs.live is not None
                rest = bs.live[pos:]
                k = int(rest.argmax())
                pos = pos + k if rest[k] else n
            elif pos in bs.early:
                pos += 1
            else:
                break
        bs.pos = pos
        if bs.early:
            bs.early = {i for i in bs.early if i >= pos}
        if pos < n:
            self._push(float(bs.batch.times[pos]), _BATCH, bs.batch.batch_id, pos)

    def _pull(self, bs: _BatchState, now: float, changes: list[Change], newly_due: list[_Entry]) -> None:
        """Materialize the live rows of ``bs`` with time <= now (the only per-row loop: due rows)."""
        n = bs.batch.count_until(now)
        if n <= bs.pos:
            return
        start = bs.pos
        rows = range(start, n) if bs.live is None else (np.flatnonzero(bs.live[start:n]) + start).tolist()
        for i in rows:
            if i in bs.early:
                continue
            e = self._insert(bs.batch.command(i), bs.base_seq + i, bs, now, due=True)
            bs.lazy_pending -= 1
            changes.append(Change(e.command, None, EventType.COMMAND_CREATED))
            newly_due.append(e)
        bs.pos = n
        self._advance(bs)

    def _mask_rows(self, bs: _BatchState, rows: np.ndarray, now: float) -> None:
        """Mark lazy rows of ``bs`` SUPERSEDED without materializing them."""
        if bs.live is None:
            bs.live = np.ones(len(bs.batch), dtype=bool)
        bs.live[rows] = False
        bs.lazy_pending -= int(rows.size)
        bs.lazy_superseded += int(rows.size)
        bs.superseded_at = now
        if bs.pos < len(bs.batch) and not bs.live[bs.pos]:
            self._advance(bs)

    def _supersede_on_channel(self, e: _Entry, now: float, changes: list[Change]) -> None:
        """``e`` fell due on its setpoint channel: the newer of it and the channel's current one stays."""
        channel = e.command.channel
        head_id = self._heads.get(channel)
        head = self._cmds.get(head_id) if head_id is not None else None
        if head is None or head.command.is_final:
            self._heads[channel] = e.command.command_id
            return
        winner, loser = (e, head) if e.key > head.key else (head, e)
        self._heads[channel] = winner.command.command_id
        changes.append(self._apply(loser, _S.SUPERSEDED, EventType.COMMAND_SUPERSEDED, now,
                                   last_error=f"superseded by {winner.command.command_id}"))

    def _retry_or_end(self, e: _Entry, now: float, error: str, final: CommandStatus, final_event: EventType,
                      retryable: bool) -> Change:
        attempts = e.command.attempts
        if not retryable or attempts >= self.retry.max_attempts:
            return self._apply(e, final, final_event, now, last_error=error)
        if e.expires is not None and e.expires <= now:
            return self._apply(e, _S.EXPIRED, EventType.COMMAND_EXPIRED, now, last_error=error)
        e.retry_at = now + self.retry.delay(attempts, self._rng)
        if e.command.asset_id in self._unavailable:
            return self._apply(e, _S.HELD, EventType.COMMAND_HELD, now, last_error=error)
        return self._apply(e, _S.PENDING, EventType.COMMAND_RETRY_SCHEDULED, now, last_error=error)


def _moved(old: Command, status: CommandStatus, sent: bool = False, granted: float | None = None) -> Command:
    """``old.evolve(status)``, faster (the table's most frequent changes): ``sent``: attempts + 1 too, and
    ``granted`` when not None. Indexes are those of :class:`~runtime.core.commands.Command`'s fields."""
    if status not in ALLOWED_TRANSITIONS[old[5]] and status is not old[5]:
        old.evolve(status)   # raises the error naming the transition
    values = list(old)
    values[5] = status
    if sent:
        values[6] += 1
        if granted is not None:
            values[12] = granted
    return tuple.__new__(Command, values)


assert (Command._fields[5], Command._fields[6], Command._fields[9], Command._fields[12]) == (
    "status", "attempts", "created_at", "granted")   # the indexes _moved and add() set


def _ORDER(e: _Entry) -> tuple[int, float, int]:
    return e.order


def _until(finished: float, expires: float | None, window: float | None) -> float:
    """Until when the id of a command that ended at ``finished`` (with this effective expiry) stays known."""
    if window is None:
        return math.inf
    return max(finished + window, expires if expires is not None else -math.inf)


def _batch_expiry(batch: CommandBatch, window: float | None) -> float | None:
    """The latest effective expiry of the rows of ``batch`` (None: an empty batch)."""
    if not len(batch):
        return None
    implicit = batch.times + (window if window is not None else np.inf)
    exp = np.where(np.isnan(batch.expires), implicit, batch.expires)
    return float(exp.max())


def _check_timeout(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name}: must be a finite number of seconds > 0, got {value!r}")
