"""What the central system knows about each charge point id, kept across its connections.

A :class:`ChargePointRecord` holds the protocol version, the registration (BootNotification answer),
whether it is online, the charging rate unit it accepts, the running transaction per connector/EVSE,
the last status per connector and the open connection (if any). :func:`parse_rate_unit` reads the
rate unit a charger reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChargePointRecord", "parse_rate_unit"]


def parse_rate_unit(value: str | None) -> str | None:
    """"W" or "A" from a 1.6 ``ChargingScheduleAllowedChargingRateUnit`` ("Current,Power") or a 2.0.1
    ``SmartChargingCtrlr.RateUnit`` ("A,W") value; "W" when both are allowed, None when neither."""
    if not value:
        return None
    tokens = {t.strip().lower() for t in str(value).split(",")}
    if tokens & {"power", "w"}:
        return "W"
    if tokens & {"current", "a"}:
        return "A"
    return None



@dataclass
class ChargePointRecord:
    """What the central system knows about one charge point id (kept across connections).

    ``connector`` keys are 1.6 connector ids or 2.0.1 EVSE ids.
    """

    cp_id: str
    version: str | None = None            #: "1.6" or "2.0.1" (of the latest connection)
    registration: str | None = None       #: last BootNotification answer: "Accepted" / "Pending"
    online: bool = False                  #: connected and registered (ChargerOnline was sent)
    ever_online: bool = False
    rate_unit: str = "W"                  #: charging rate unit for profiles: "W" or "A"
    rate_unit_known: bool = False         #: the charger told us (else "W" is an assumption)
    transactions: dict[int, int | str] = field(default_factory=dict)
    #: ids of the latest ended transactions (a late message naming one does not bring it back)
    ended_transactions: list[str] = field(default_factory=list)
    statuses: dict[int, str] = field(default_factory=dict)        #: last StatusNotification status per connector
    states: dict[int, tuple[str, str]] = field(default_factory=dict)  #: last (state, raw value) per connector
    charging_states: dict[int, str] = field(default_factory=dict)  #: 2.0.1 chargingState per EVSE
    boot: dict[str, Any] = field(default_factory=dict)            #: last BootNotification payload
    connection: Any = field(default=None, repr=False)

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def transaction_on(self, connector: int) -> int | str | None:
        return self.transactions.get(connector)

    def connector_of(self, transaction_id: int | str) -> int | None:
        for conn, tx in self.transactions.items():
            if str(tx) == str(transaction_id):
                return conn
        return None

    def transaction_ended(self, transaction_id: int | str | None) -> None:
        """Remember that ``transaction_id`` ended (the latest 32 are kept)."""
        if transaction_id is None:
            return
        self.ended_transactions.append(str(transaction_id))
        del self.ended_transactions[:-32]

    def has_ended(self, transaction_id: int | str) -> bool:
        return str(transaction_id) in self.ended_transactions

