"""DataTransfer from a charger: the hook for a vendor's own messages, and the answer to everyone else.

DataTransfer (1.6 Core profile; 2.0.1 use case P02) carries a vendor's own message: a ``vendorId``, an
optional ``messageId`` and ``data``. The central system answers it from the ``data_transfer`` mapping it
was given (``CentralSystem(data_transfer={vendor_id: handler})``)::

    def on_acme(cp_id: str, message_id: str | None, data: Any) -> tuple[str, Any]:
        if message_id != "Temperature":
            return "UnknownMessageId", None
        return "Accepted", {"ack": True}

    cs = CentralSystem(..., data_transfer={"com.acme": on_acme})

* a handler returns ``(status, data)`` or just a status: "Accepted", "Rejected", "UnknownMessageId" or
  "UnknownVendorId" (the DataTransfer statuses of both versions); ``data`` None sends no data. 1.6 data
  is a string: anything else is sent as its JSON text. A handler runs on the I/O loop inside the
  message handler: it must return quickly and must not call the charger (it may be a coroutine
  function, but awaiting a call to the same charger there deadlocks its connection);
* a vendorId with no handler is answered ``UnknownVendorId``, as both specifications prescribe for an
  unknown vendor (1.6 §4.3 "If the recipient of the request has no implementation for the specific
  vendorId it SHALL return a status UnknownVendorId"; 2.0.1 P02.FR.06; OCTT TC_064_CSMS, TC_P_02_CSMS);
* a handler that raises, or returns a status outside the four, is logged and answered ``Rejected``.

vendorIds are compared without regard to case (1.6: a CiString255).
"""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any, Awaitable, Callable, Mapping, Union

log = logging.getLogger("protocols.ocpp.central_system")

__all__ = ["DataTransferHandler", "DATA_TRANSFER_STATUSES", "DataTransferRouter"]

#: The statuses of a DataTransfer answer (1.6 DataTransferStatus, 2.0.1 DataTransferStatusEnumType).
DATA_TRANSFER_STATUSES = ("Accepted", "Rejected", "UnknownMessageId", "UnknownVendorId")

_Answer = Union[str, "tuple[str, Any]"]
#: ``handler(cp_id, message_id, data) -> (status, data) | status`` (or a coroutine function returning that).
DataTransferHandler = Callable[[str, "str | None", Any], Union[_Answer, Awaitable[_Answer]]]


class DataTransferRouter:
    """The ``data_transfer`` mapping of a central system: vendorId -> handler (see the module docstring)."""

    def __init__(self, handlers: Mapping[str, DataTransferHandler] | None = None) -> None:
        self._handlers: dict[str, DataTransferHandler] = {}
        for vendor_id, handler in (handlers or {}).items():
            if not isinstance(vendor_id, str) or not vendor_id:
                raise ValueError(f"data_transfer: a vendorId must be a non-empty string, got {vendor_id!r}")
            if not callable(handler):
                raise ValueError(f"data_transfer[{vendor_id!r}]: the handler must be callable, got {handler!r}")
            self._handlers[vendor_id.casefold()] = handler

    def __bool__(self) -> bool:
        return bool(self._handlers)

    async def answer(self, cp_id: str, version: str, vendor_id: str, message_id: str | None,
                     data: Any) -> tuple[str, Any]:
        """(status, data) for one DataTransfer of ``cp_id`` (data already fit for ``version``: a string
        or None for 1.6)."""
        handler = self._handlers.get(vendor_id.casefold())
        if handler is None:
            log.info("charge point %s: DataTransfer from unknown vendorId %r (messageId %r) answered "
                     "UnknownVendorId", cp_id, vendor_id, message_id)
            return "UnknownVendorId", None
        try:
            result = handler(cp_id, message_id, data)
            if inspect.isawaitable(result):
                result = await result
        except Exception:  # noqa: BLE001 - a vendor hook must not break the connection
            log.exception("charge point %s: the DataTransfer handler of vendorId %r raised; answered Rejected",
                          cp_id, vendor_id)
            return "Rejected", None
        status, out = (result, None) if isinstance(result, str) else _pair(result)
        if status not in DATA_TRANSFER_STATUSES:
            log.error("charge point %s: the DataTransfer handler of vendorId %r returned %r, not one of %s; "
                      "answered Rejected", cp_id, vendor_id, result, ", ".join(DATA_TRANSFER_STATUSES))
            return "Rejected", None
        if version == "1.6" and out is not None and not isinstance(out, str):
            out = json.dumps(out, separators=(",", ":"), default=str)
        return status, out


def _pair(result: Any) -> tuple[Any, Any]:
    if isinstance(result, tuple) and len(result) == 2:
        return result[0], result[1]
    return result, None
