"""What pymodbus logs, made fit for a site's log: one line per event, at the level it deserves.

pymodbus (3.16) logs a request that got no answer as an ERROR, "No response received after 0 retries,
continue with next request", followed by a dump of its last 20 frames in hex ("automatic debugging",
added whenever its logger is not at DEBUG), an answer that comes after that as a WARNING, "ERROR: received
pdu without a corresponding request, IGNORING", and a request made on a connection that has just dropped as
an ERROR, "Cancel send, because not connected!". For a site these are the ordinary outcome of a slow, silent
or unplugged battery, which :class:`~protocols.modbus.link.ModbusBatteryLink` already reports in its own
terms (the command TIMED_OUT with its reason, the poll "no answer within ...", the link down), so a busy site
with 50 batteries filled its log with hex dumps and errors.

:func:`install` puts a :class:`logging.Filter` on the ``pymodbus.logging`` logger (idempotent) that:

* cuts every frame dump from a record, keeping its first line;
* logs those messages at INFO (dropped unless the logger is enabled for INFO), and so the "Repeating...."
  line pymodbus writes in place of the same message logged again right after it.

Everything else pymodbus logs is left as it is. With the ``pymodbus.logging`` logger at DEBUG pymodbus
logs every frame itself and adds no dump, so nothing is lost for someone debugging a device.
"""

from __future__ import annotations

import logging

__all__ = ["PymodbusLogFilter", "install"]

LOGGER = "pymodbus.logging"
#: The start of pymodbus' frame dump, appended to an ERROR or CRITICAL record's message.
DUMP = "\n>>>>> "
#: Outcomes the link reports itself (the starts of pymodbus' messages): logged at INFO.
ROUTINE = ("No response received after", "ERROR: received pdu without a corresponding request",
           "Cancel send, because not connected")
#: What pymodbus logs instead of a message equal to the one before it (once, until another comes).
REPEATING = "Repeating...."


class PymodbusLogFilter(logging.Filter):
    """The filter :func:`install` adds (see the module docstring). Runs in the thread that logs.

    pymodbus decides on "Repeating...." against the last message of any thread, and the filter sees records
    a moment later: so a "Repeating...." is demoted only when the last message this filter saw came from the
    same thread and was routine (two threads logging at once may keep a routine repeat at its level, never
    demote another one)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: tuple[int | None, bool] = (None, False)   # (thread, routine) of the last other message

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if DUMP in message:
            record.msg, record.args = message.split(DUMP, 1)[0], None
            message = record.msg
        if message == REPEATING:
            routine = self._last == (record.thread, True)
        else:
            routine = message.startswith(ROUTINE)
            self._last = (record.thread, routine)
        if routine and record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            return logging.getLogger(LOGGER).isEnabledFor(logging.INFO)
        return True


def install() -> None:
    """Add the filter to the ``pymodbus.logging`` logger, once."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, PymodbusLogFilter) for f in logger.filters):
        logger.addFilter(PymodbusLogFilter())
