"""What pymodbus logs, made fit for a site's log: one line per event, at the level it deserves.

pymodbus (3.16) logs a request that got no answer as an ERROR, "No response received after 0 retries,
continue with next request", followed by a dump of its last 20 frames in hex ("automatic debugging",
added whenever its logger is not at DEBUG), and an answer that comes after that as a WARNING, "received pdu
without a corresponding request, IGNORING". For a site these are the ordinary outcome of a slow or silent
battery, which :class:`~protocols.modbus.link.ModbusBatteryLink` already reports in its own terms (the
command TIMED_OUT with its reason, the poll "no answer within ..."), so a busy site with 50 batteries
filled its log with hex dumps.

:func:`install` puts a :class:`logging.Filter` on the ``pymodbus.logging`` logger (idempotent) that:

* cuts every frame dump from a record, keeping its first line;
* logs those two messages at INFO (dropped unless the logger is enabled for INFO).

Everything else pymodbus logs is left as it is. With the ``pymodbus.logging`` logger at DEBUG pymodbus
logs every frame itself and adds no dump, so nothing is lost for someone debugging a device.
"""

from __future__ import annotations

import logging

__all__ = ["PymodbusLogFilter", "install"]

LOGGER = "pymodbus.logging"
#: The start of pymodbus' frame dump, appended to an ERROR or CRITICAL record's message.
DUMP = "\n>>>>> "
#: Outcomes the link reports itself: logged at INFO.
ROUTINE = ("No response received after", "received pdu without a corresponding request")


class PymodbusLogFilter(logging.Filter):
    """The filter :func:`install` adds (see the module docstring). Runs in the thread that logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if DUMP in message:
            record.msg, record.args = message.split(DUMP, 1)[0], None
            message = record.msg
        if record.levelno > logging.INFO and message.startswith(ROUTINE):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            return logging.getLogger(LOGGER).isEnabledFor(logging.INFO)
        return True


def install() -> None:
    """Add the filter to the ``pymodbus.logging`` logger, once."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, PymodbusLogFilter) for f in logger.filters):
        logger.addFilter(PymodbusLogFilter())
