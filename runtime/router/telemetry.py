"""The recent telemetry of each edge, down-sampled, in memory: what the operator page's charts draw.

Edges send ``telemetry`` frames (the latest values of one device, at most every ``telemetry_interval_s``, but
a site may send them as often as it likes). :class:`TelemetryHistory` keeps, per (edge, device, value), one
point per ``[ui] telemetry_bucket_s`` (default 30 s) over the last ``[ui] telemetry_window_s`` (default one
hour): the mean, min and max of the values that fell in the bucket. A chart is therefore at most
window / bucket points (120 by default) per series however busy the site, and the memory is bounded: at most
``[ui] telemetry_max_series`` series (one ring of buckets each, about 5 KB with the defaults). A series that
would go beyond the bound is not kept (logged once); series with nothing in the window are dropped.

Only the values the charts show are kept: :data:`CHART_VALUES` (``ActivePower`` in W, a battery's > 0
discharging, and ``Soc`` in %, named after the read-only channels, as the edge sends them).

A point's time is the edge's ``at`` when it lies within the window (a reconnecting edge sends values measured
before the outage); an ``at`` outside it, or more than 5 s ahead of the router's clock (a wrong edge clock),
is replaced by the time the frame arrived. Nothing is saved: after a router restart the charts start again
from what arrives. In a fleet each instance keeps what its own edges sent (the page's charts show the
telemetry of the edges connected to the instance serving it; the latest values, in ``GET /api/v1/edges``,
come from the shared store). Runs on the router's loop; fed by :class:`~runtime.router.edges.EdgeDirectory`.
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from datetime import datetime
from typing import Any, Callable

from protocols.edge.wire import Telemetry

__all__ = ["TelemetryHistory", "CHART_VALUES"]

log = logging.getLogger(__name__)

#: The telemetry values the charts draw.
CHART_VALUES = ("ActivePower", "Soc")
_AHEAD_S = 5.0


class _Series:
    """A ring of ``n`` buckets: index (bucket number) and sum, count, min, max."""

    __slots__ = ("index", "data", "last")

    def __init__(self, n: int) -> None:
        self.index = array("q", [-1]) * n
        self.data = array("d", [0.0]) * (4 * n)
        self.last = -1

    def add(self, bucket: int, value: float) -> None:
        n = len(self.index)
        slot = bucket % n
        base = 4 * slot
        d = self.data
        if self.index[slot] != bucket:
            if self.index[slot] > bucket:   # older than what the ring holds now
                return
            self.index[slot] = bucket
            d[base], d[base + 1], d[base + 2], d[base + 3] = value, 1.0, value, value
        else:
            d[base] += value
            d[base + 1] += 1.0
            d[base + 2] = min(d[base + 2], value)
            d[base + 3] = max(d[base + 3], value)
        self.last = max(self.last, bucket)

    def points(self, first: int, bucket_s: float) -> list[list[float]]:
        """[[bucket start (epoch s), mean, min, max], ...] of the buckets from ``first`` on, oldest first."""
        out = []
        n = len(self.index)
        for bucket in range(max(first, self.last - n + 1), self.last + 1):
            slot = bucket % n
            if self.index[slot] == bucket:
                base = 4 * slot
                s, c, lo, hi = self.data[base:base + 4]
                out.append([round(bucket * bucket_s, 3), s / c, lo, hi])
        return out


class TelemetryHistory:
    """Per edge, device and value: the last ``window_s`` in buckets of ``bucket_s`` (see the module docstring)."""

    def __init__(self, window_s: float = 3600.0, bucket_s: float = 30.0, max_series: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.max_series = max_series
        self.clock = clock
        self._n = int(math.ceil(window_s / bucket_s)) + 1
        #: edge -> device -> value name -> series
        self._series: dict[str, dict[str, dict[str, _Series]]] = {}
        self._count = 0
        self._warned = False
        self._swept = clock()

    def __len__(self) -> int:
        return self._count

    def add(self, edge_id: str, frame: Telemetry) -> None:
        """Take the chart values of one telemetry frame."""
        values = {k: v for k, v in frame.values.items() if k in CHART_VALUES and math.isfinite(v)}
        if not values:
            return
        now = self.clock()
        at = _epoch(frame.at)
        if at is None or not now - self.window_s <= at <= now + _AHEAD_S:
            at = now
        bucket = int(at // self.bucket_s)
        devices = self._series.setdefault(edge_id, {})
        series = devices.setdefault(frame.device_id, {})
        for name, value in values.items():
            s = series.get(name)
            if s is None:
                if self._count >= self.max_series:
                    if not self._warned:
                        self._warned = True
                        log.warning("telemetry history: %d series kept ([ui] telemetry_max_series); the charts of "
                                    "further devices stay empty", self.max_series)
                    continue
                s = series[name] = _Series(self._n)
                self._count += 1
            s.add(bucket, value)
        if now - self._swept > self.window_s / 4:
            self.sweep(now)

    def sweep(self, now: float | None = None) -> int:
        """Drop the series with nothing in the window; how many were dropped."""
        now = self.clock() if now is None else now
        self._swept = now
        oldest = int((now - self.window_s) // self.bucket_s)
        dropped = 0
        for edge_id in list(self._series):
            devices = self._series[edge_id]
            for device_id in list(devices):
                series = devices[device_id]
                for name in [n for n, s in series.items() if s.last < oldest]:
                    del series[name]
                    dropped += 1
                if not series:
                    del devices[device_id]
            if not devices:
                del self._series[edge_id]
        self._count -= dropped
        return dropped

    def query(self, edge_id: str, since: float | None = None) -> dict[str, Any]:
        """The charts of one edge: ``{"window_s", "bucket_s", "now", "devices": {device: {value: [[t, mean, min,
        max], ...]}}}`` with the buckets of the window (from ``since`` on, when given), oldest first."""
        now = self.clock()
        start = now - self.window_s if since is None else max(since, now - self.window_s)
        first = int(start // self.bucket_s)
        devices = {device_id: {name: s.points(first, self.bucket_s) for name, s in sorted(series.items())}
                   for device_id, series in sorted(self._series.get(edge_id, {}).items())}
        return {"window_s": self.window_s, "bucket_s": self.bucket_s, "now": round(now, 3), "values": CHART_VALUES,
                "devices": devices}


def _epoch(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None
