"""pymodbus' log, fit for a site's log (protocols.modbus.pymodbus_log): no hex dumps, routine timeouts at
INFO. Records are made by pymodbus' own logging class, as the client makes them."""

from __future__ import annotations

import logging

import pytest
from pymodbus.logging import Log

import protocols.modbus.link  # noqa: F401  (installs the filter, as every site with a battery does)
from protocols.modbus.pymodbus_log import LOGGER, PymodbusLogFilter, install

from .asyncsupport import run


@pytest.fixture(autouse=True)
def fresh_repeat_state() -> None:
    """pymodbus says "Repeating...." against the last message logged anywhere: each test starts afresh."""
    Log.last_log_text, Log.repeat_log = "", False


def frames() -> None:
    """What the client records of its traffic while its logger is not at DEBUG (the dump's material)."""
    Log.transport_dump(Log.SEND_DATA, b"\x00\x01\x00\x00\x00\x06\x01\x03\x9c\x40\x00\x02", b"")
    Log.transport_dump(Log.RECV_DATA, b"\x00\x01\x00\x00\x00\x07\x01\x03\x04\x00\x12\x00\x00", b"")


def test_a_timed_out_request_is_one_info_line_without_a_frame_dump(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    frames()
    Log.error("No response received after {} retries, continue with next request", 0)
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.INFO
    assert record.getMessage() == "No response received after 0 retries, continue with next request"


def test_other_errors_keep_their_level_and_lose_only_the_dump(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    frames()
    Log.error("Unable to decode frame {}", "x-42")
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR and record.getMessage() == "Unable to decode frame x-42"
    assert ">>>>>" not in caplog.text


def test_routine_lines_are_dropped_when_the_site_logs_warnings_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    Log.warning("ERROR: received pdu without a corresponding request, IGNORING")  # pymodbus 3.16's own text
    Log.warning("Failed to connect {}", "[Errno 111] at 7")
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == ["Failed to connect [Errno 111] at 7"]


def test_the_routine_texts_are_those_pymodbus_logs() -> None:
    """The filter matches message starts: they must be what the pinned pymodbus writes."""
    import inspect

    from pymodbus.transaction import transaction
    from pymodbus.transport import transport
    assert '"ERROR: received pdu without a corresponding request, IGNORING"' in inspect.getsource(transaction)
    assert 'Log.error("Cancel send, because not connected!")' in inspect.getsource(transport)


def test_a_send_on_a_dropped_connection_is_info_and_so_is_its_repeat(caplog: pytest.LogCaptureFixture) -> None:
    """A request on a connection that has just dropped: pymodbus' ERROR and its "Repeating...." line are INFO,
    and an error after them keeps its level (a real client, never connected)."""
    from pymodbus.client import AsyncModbusTcpClient
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def body() -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=9)
        for _ in range(3):
            client.ctx.send(b"\x00\x01")
        Log.error("Unable to decode frame {}", "x-43")
        client.close()
    run(body)
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert got == [(logging.INFO, "Cancel send, because not connected!"), (logging.INFO, "Repeating...."),
                   (logging.ERROR, "Unable to decode frame x-43")]


def test_the_filter_is_installed_once() -> None:
    install()
    install()
    assert sum(isinstance(f, PymodbusLogFilter) for f in logging.getLogger(LOGGER).filters) == 1


def test_the_repeat_of_an_error_keeps_the_errors_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    Log.error("Cancel send, because not connected!")
    Log.error("Unable to decode frame {}", "x-44")
    Log.error("Unable to decode frame {}", "x-44")
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert got == [(logging.INFO, "Cancel send, because not connected!"),
                   (logging.ERROR, "Unable to decode frame x-44"), (logging.ERROR, "Repeating....")]
