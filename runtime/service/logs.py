"""Log lines for the site process: text for people, JSON (one object per line) for log collectors.

JSON lines carry ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message`` and, when the record has
them, ``exc_info`` (the formatted traceback) and any ``extra`` fields given to the logging call.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Send every log record to stderr as ``fmt`` ("text" or "json") at ``level``; the OCPP wire loggers
    stay at WARNING (one line per frame otherwise)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("protocols.ocpp.wire", "protocols.sim.wire", "protocols.ocpp.websockets", "pymodbus"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
