"""Where the central system reaches into a private part of the ``ocpp`` library to wait for answers.

(The only other such place is ``ChargePointConnection._send`` in :mod:`protocols.ocpp.connection`, which
spells the error code of a CALLERROR the library sends as the connection's OCPP version does.)

``ocpp.charge_point.ChargePoint.call`` sends a CALL and then awaits
``self._get_specific_response(unique_id, timeout)``, which reads the connection's
``_response_queue``. The library's version has two problems for a central system that serves hundreds
of chargers: an answer that arrives after its call timed out is logged as an error and, worse, a call
whose connection closes keeps waiting until its timeout. :class:`ClosingResponseWait` replaces that one
method: late answers are skipped at debug level, and :func:`wake_waiting_call` (called when the
connection closes) ends the wait at once with :class:`~runtime.core.errors.ChargerNotConnected`.

The library offers no public hook for either. ``tests/test_ocpp_library_contract.py`` fails loudly
when the pinned library stops routing ``call`` through ``_get_specific_response`` or renames
``_response_queue``; check it whenever the ``ocpp`` pin moves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from runtime.core.errors import ChargerNotConnected

log = logging.getLogger(__name__)

__all__ = ["ClosingResponseWait", "wake_waiting_call"]

_CLOSED = object()  # put into a connection's response queue when it closes


class ClosingResponseWait:
    """Mixin for an ``ocpp`` ChargePoint subclass (list it first among the bases)."""

    id: str
    _response_queue: asyncio.Queue[Any]

    async def _get_specific_response(self, unique_id: str, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError
            async with asyncio.timeout(remaining):  # unlike wait_for, no extra task per call
                response = await self._response_queue.get()
            if response is _CLOSED:
                self._response_queue.put_nowait(_CLOSED)  # every later call ends at once too
                raise ChargerNotConnected(f"charge point {self.id!r} disconnected while a call waited")
            if response.unique_id == unique_id:
                return response
            log.debug("charge point %s: ignoring a late answer (unique id %s)", self.id, response.unique_id)


def wake_waiting_call(connection: ClosingResponseWait) -> None:
    """The connection closed: a call waiting for its answer (and any later one) raises ChargerNotConnected."""
    connection._response_queue.put_nowait(_CLOSED)
