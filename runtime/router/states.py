"""A command as the router keeps it (:class:`CommandRecord`) and the rules of its cloud-side states.

::

    QUEUED --send--> SENT --ack delivered--> DELIVERED --accepted--> ACCEPTED --executed--> EXECUTED
      |                |  \\____________ rejected / failed / expired / superseded / cancelled (any of them)
      |                +-- no ack within ack_timeout_s --> TIMED_OUT --late executed/failed/rejected--> *_LATE
      +-- expired in the queue --> EXPIRED;  a newer setpoint on the same (device, channel) --> SUPERSEDED
      +-- cancelled before it was sent --> CANCELLED

Every command is QUEUED first: it is in the durable queue before anything else happens; for an online edge
SENT follows in the same turn of the loop. An edge may skip states (an "executed" ack straight after
SENT); it may not go back (a "delivered" after "executed" changes nothing and is recorded as an ack).
An ack after TIMED_OUT is late: executed, failed and rejected become EXECUTED_LATE, FAILED_LATE and
REJECTED_LATE; any other is recorded and reported with the state left as it is. Nothing here does I/O.

Deadlines (what the sweeper acts on, per state): QUEUED expires at ``expires_at``; SENT times out
``ack_timeout_s`` after the send; DELIVERED and ACCEPTED time out ``ack_timeout_s`` after ``expires_at`` (by
then the edge must have reported the result, or expired it itself); TIMED_OUT stays listed as pending to the
edge (so a late ack still comes) until ``expires_at``, then it is closed. Final states have none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from protocols.edge.channels import SITE_DEVICE
from protocols.edge.wire import FINAL_CLOUD_STATUSES, EdgeCommand, now_iso

__all__ = ["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "TIMED_OUT", "IN_FLIGHT", "FINAL", "ACK_STATE", "LATE_STATE",
           "CommandRecord", "next_state", "supersede_key", "payload_digest", "iso"]

QUEUED, SENT, DELIVERED, ACCEPTED, TIMED_OUT = "QUEUED", "SENT", "DELIVERED", "ACCEPTED", "TIMED_OUT"
#: Sent to the edge and not final yet.
IN_FLIGHT = frozenset({SENT, DELIVERED, ACCEPTED})
FINAL = FINAL_CLOUD_STATUSES
_RANK = {QUEUED: 0, SENT: 1, DELIVERED: 2, ACCEPTED: 3}
ACK_STATE = {"delivered": DELIVERED, "accepted": ACCEPTED, "executed": "EXECUTED", "rejected": "REJECTED",
             "failed": "FAILED", "expired": "EXPIRED", "superseded": "SUPERSEDED", "cancelled": "CANCELLED"}
LATE_STATE = {"executed": "EXECUTED_LATE", "failed": "FAILED_LATE", "rejected": "REJECTED_LATE"}


def next_state(current: str, ack: str) -> str | None:
    """The state an ``ack`` status moves a command in ``current`` to; None when it changes nothing."""
    if current == TIMED_OUT:
        return LATE_STATE.get(ack)
    if current in FINAL:
        return None
    new = ACK_STATE[ack]
    if new in _RANK:
        return new if _RANK[new] > _RANK[current] else None
    return new


def supersede_key(command: EdgeCommand) -> str:
    """What a newer command supersedes an older queued one on: (device, channel)."""
    return f"{command.target.device_id or SITE_DEVICE}/{command.target.channel}"


def payload_digest(command: EdgeCommand) -> str:
    """A short digest of :meth:`EdgeCommand.payload_key`: the same id with another digest is another command."""
    return hashlib.sha256(command.payload_key().encode()).hexdigest()[:32]


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (None stays None)."""
    if epoch is None:
        return None
    from datetime import datetime, timezone
    return now_iso(datetime.fromtimestamp(epoch, timezone.utc))


@dataclass
class CommandRecord:
    """One command in the store: the command as submitted (``source`` filled in with the sender when it had
    none), its per-edge ``seq``, its state and the times that matter (epoch seconds, router clock)."""

    command: EdgeCommand
    seq: int
    state: str
    user: str
    submitted_at: float
    expires_at: float
    origin: str = ""
    sent_at: float | None = None
    deadline: float | None = None
    error: str | None = None
    executed_at: str | None = None
    updated_at: float = 0.0
    sends: int = 0
    digest: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def command_id(self) -> str:
        return self.command.command_id

    @property
    def edge_id(self) -> str:
        return self.command.target.edge_id

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_api(self) -> dict[str, Any]:
        """The record as the REST API shows it."""
        return {"command_id": self.command_id, "edge_id": self.edge_id, "seq": self.seq, "state": self.state,
                "user": self.user, "submitted_at": iso(self.submitted_at), "expires_at": iso(self.expires_at),
                "sent_at": iso(self.sent_at), "updated_at": iso(self.updated_at), "error": self.error,
                "executed_at": self.executed_at, "sends": self.sends,
                "command": self.command.model_dump(mode="json", exclude_none=True)}
