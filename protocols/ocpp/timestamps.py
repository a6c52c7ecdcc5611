"""The one OCPP timestamp formatter: ISO 8601 in UTC with a ``Z`` suffix, as both OCPP versions expect.

Used for ``currentTime`` in BootNotification and Heartbeat answers, ``startSchedule`` in charging
profiles, and every timestamp the charge point simulator sends.
"""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["ocpp_timestamp"]


def ocpp_timestamp(when: datetime | None = None, *, timespec: str = "seconds") -> str:
    """``when`` (default: now) as ``2026-01-01T08:00:00Z``; ``timespec`` as for :meth:`datetime.isoformat`
    ("seconds" truncates, "milliseconds" keeps three digits). A naive ``when`` is refused (ValueError)."""
    if when is None:
        when = datetime.now(timezone.utc)
    elif when.tzinfo is None:
        raise ValueError(f"when: naive datetime {when!r}; give a timezone (e.g. UTC)")
    return when.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")
