"""CommandBatch: many commands held as columns, materialized as :class:`Command` objects on demand.

A day-ahead schedule for a thousand assets is hundreds of thousands of commands, almost all of them
for the future. Building a Python object per command up front would cost more than everything else
the dispatcher does, so :func:`~runtime.core.schedule.schedule_to_commands` returns a batch: numpy columns
sorted by scheduled time, one shared id prefix (command ``i`` has id ``f"{batch_id}-{i}"``). The
batch is a read-only ``Sequence[Command]``; indexing or iterating materializes commands, and the
command table pulls them in only as they fall due.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any, Iterator, overload

import numpy as np

from .clock import to_datetime
from .commands import Command, CommandStatus, CommandType

__all__ = ["CommandBatch", "new_batch_id"]

_TYPES: tuple[CommandType, ...] = tuple(CommandType)
_TYPE_CODE = {t: i for i, t in enumerate(_TYPES)}
_batch_prefix = os.urandom(3).hex()
_batch_counter = itertools.count(1)


def new_batch_id() -> str:
    """A process-unique batch id (``sch-<random>-<n>``)."""
    return f"sch-{_batch_prefix}-{next(_batch_counter)}"


class CommandBatch(Sequence[Command]):
    """Columns of commands sorted by ``times`` (stable: equal times keep their input order).

    * ``times`` / ``expires``: float64 epoch seconds (``expires`` NaN = never)
    * ``asset_codes``: int32 index into ``assets`` (tuple of asset ids)
    * ``type_codes``: int8 index into ``tuple(CommandType)``
    * ``values``: float64
    """

    __slots__ = ("batch_id", "times", "asset_codes", "assets", "type_codes", "values", "expires",
                 "priority", "created_at", "source")

    #: ``type_codes`` index into this tuple.
    TYPES: tuple[CommandType, ...] = _TYPES

    def __init__(self, batch_id: str, times: np.ndarray, asset_codes: np.ndarray, assets: Sequence[str],
                 type_codes: np.ndarray, values: np.ndarray, expires: np.ndarray | None = None,
                 priority: int = 0, created_at: float | None = None, source: str = "schedule",
                 presorted: bool = False) -> None:
        n = len(times)
        for name, arr in (("asset_codes", asset_codes), ("type_codes", type_codes), ("values", values)):
            if len(arr) != n:
                raise ValueError(f"{name}: length {len(arr)} != times length {n}")
        if expires is None:
            expires = np.full(n, np.nan)
        order = None if presorted else np.argsort(times, kind="stable")
        take = (lambda a: a) if order is None else (lambda a: a[order])
        self.batch_id = batch_id
        self.times = take(np.asarray(times, dtype=np.float64))
        self.asset_codes = take(np.asarray(asset_codes, dtype=np.int32))
        self.assets = tuple(assets)
        self.type_codes = take(np.asarray(type_codes, dtype=np.int8))
        self.values = take(np.asarray(values, dtype=np.float64))
        self.expires = take(np.asarray(expires, dtype=np.float64))
        self.priority = int(priority)
        self.created_at = created_at
        self.source = source

    @staticmethod
    def type_code(command_type: CommandType) -> int:
        return _TYPE_CODE[command_type]

    def __len__(self) -> int:
        return len(self.times)

    def command_id(self, i: int) -> str:
        return f"{self.batch_id}-{i}"

    def index_of(self, command_id: str) -> int | None:
        """Row of ``command_id`` in this batch, or None if it is not one of its ids."""
        prefix = self.batch_id + "-"
        if not command_id.startswith(prefix):
            return None
        tail = command_id[len(prefix):]
        if not tail.isdigit():
            return None
        i = int(tail)
        return i if 0 <= i < len(self) else None

    def command(self, i: int, status: CommandStatus = CommandStatus.PENDING) -> Command:
        """Materialize row ``i`` as a Command."""
        exp = self.expires[i]
        return Command(
            command_id=self.command_id(i), asset_id=self.assets[self.asset_codes[i]],
            command_type=_TYPES[self.type_codes[i]], value=float(self.values[i]),
            scheduled_time=to_datetime(float(self.times[i])), status=status, priority=self.priority,
            expires_at=None if exp != exp else to_datetime(float(exp)),
            created_at=to_datetime(self.created_at) if self.created_at is not None else None,
            source=self.source,
        )

    @overload
    def __getitem__(self, i: int) -> Command: ...
    @overload
    def __getitem__(self, i: slice) -> list[Command]: ...

    def __getitem__(self, i: int | slice) -> Command | list[Command]:
        if isinstance(i, slice):
            return [self.command(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"CommandBatch index {i} out of range (len {n})")
        return self.command(i)

    def __iter__(self) -> Iterator[Command]:
        for i in range(len(self)):
            yield self.command(i)

    def count_until(self, t: float) -> int:
        """Number of rows with ``times <= t`` (rows are sorted, so these are the first ones)."""
        return int(np.searchsorted(self.times, t, side="right"))

    @property
    def asset_ids(self) -> tuple[str, ...]:
        return self.assets

    def to_frame(self) -> "Any":
        """The batch as a pandas DataFrame (one row per command)."""
        import pandas as pd
        return pd.DataFrame({
            "command_id": [self.command_id(i) for i in range(len(self))],
            "asset_id": np.asarray(self.assets, dtype=object)[self.asset_codes] if len(self) else [],
            "command_type": [_TYPES[c].value for c in self.type_codes],
            "value": self.values,
            "scheduled_time": pd.to_datetime(self.times, unit="s", utc=True),
            "expires_at": pd.to_datetime(self.expires, unit="s", utc=True),
        })

    def to_record(self) -> dict[str, Any]:
        """A compact msgpack-friendly record (raw little-endian column bytes)."""
        return {"id": self.batch_id, "times": self.times.astype("<f8").tobytes(),
                "assets": list(self.assets), "acodes": self.asset_codes.astype("<i4").tobytes(),
                "tcodes": self.type_codes.astype("i1").tobytes(), "values": self.values.astype("<f8").tobytes(),
                "expires": self.expires.astype("<f8").tobytes(), "priority": self.priority,
                "created": self.created_at, "source": self.source}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "CommandBatch":
        return cls(rec["id"], np.frombuffer(rec["times"], "<f8").copy(),
                   np.frombuffer(rec["acodes"], "<i4").copy(), rec["assets"],
                   np.frombuffer(rec["tcodes"], "i1").copy(), np.frombuffer(rec["values"], "<f8").copy(),
                   np.frombuffer(rec["expires"], "<f8").copy(), priority=rec["priority"],
                   created_at=rec["created"], source=rec["source"], presorted=True)

    def __repr__(self) -> str:
        return f"<CommandBatch {self.batch_id} {len(self)} commands for {len(self.assets)} assets>"
