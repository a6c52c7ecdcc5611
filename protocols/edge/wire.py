"""The frames that cross the cloud command channel, and how they are encoded.

One persistent WebSocket per edge (a site) to the router, and one per operator or service client. A
frame is a map with a protocol version ``v`` and a ``type``; it travels as msgpack (a binary message) or,
from browsers and tools, as JSON (a text message). :func:`decode` takes either and returns a validated
frame model; :func:`encode` writes msgpack (or JSON with ``text=True``). A frame that cannot be decoded
or validated raises :class:`WireError` naming the field and the value, so the receiver can answer an
``error`` frame instead of dropping the connection.

A command, as the operator sends it (the seed's example works verbatim, with or without the envelope)::

    {"command_id": "cmd_12345", "command_type": "setpoint",
     "target": {"edge_id": "site1_edge_prod", "device_id": "bms_main", "channel": "SetActivePower"},
     "value": 50000, "unit": "W", "expiry_sec": 300, "source": "user_456",
     "timestamp": "2026-02-15T14:30:00Z"}

and an ack, as the edge sends it back::

    {"command_id": "cmd_12345", "status": "executed", "executed_at": "2026-02-15T14:30:01.050Z", "error": null}

Frames (``v`` = :data:`VERSION`):

========================  ===============  =================================================================
type                      direction        fields
========================  ===============  =================================================================
``hello``                 edge -> router   edge_id, last_seq (highest command seq the edge journaled),
                                           capabilities, software
``welcome``               router -> edge   edge_id, resume_after (the seq replay starts after), pending (seqs
                                           still lacking a final ack: the edge re-sends those acks first),
                                           server_time
``command``               router -> edge   seq, command (the command object above)
``ack``                   edge -> router   the ack object above (+ seq); status: delivered, accepted,
                                           executed, rejected, failed, expired, superseded, cancelled
``cancel``                router -> edge   command_id
``capabilities``          edge -> router   devices (each: device_id, kind, channels), controllers
``telemetry``             edge -> router   device_id, values, at
``site_state``            edge -> router   controllers (name -> on/off), overrides (active leases)
``submit``                client -> router command (a bare command object is accepted as this frame)
``status``                router -> client command_id, edge_id, status (a cloud state), at, error, source
``subscribe``             client -> router edge_id (None: every edge the client may view)
``error``                 both             code, message, command_id, retry_after
========================  ===============  =================================================================

``expiry_sec`` is the time a command has left when it is sent, never a wall-clock deadline: the router
recomputes it at each send and the edge counts it down on its own monotonic clock, so a wrong edge clock
can neither execute a stale command nor refuse a fresh one.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

import msgpack
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from runtime.core.errors import CoordinatorError

__all__ = [
    "VERSION", "WireError", "CommandType", "Priority", "AckStatus", "CloudStatus", "FINAL_CLOUD_STATUSES",
    "Target", "EdgeCommand", "Ack", "Hello", "Welcome", "CommandFrame", "AckFrame", "Cancel", "Confirm", "Channel",
    "Device", "Capabilities", "Telemetry", "SiteState", "Submit", "Status", "Subscribe", "ErrorFrame", "Frame",
    "encode", "decode", "decode_command", "now_iso",
]

#: The protocol version every frame carries; a receiver refuses any other.
VERSION = 1

CommandType = Literal["setpoint", "mode_change", "config_override", "scheduler_control", "system"]
Priority = Literal["normal", "emergency"]
#: What an edge reports about a command.
AckStatus = Literal["delivered", "accepted", "executed", "rejected", "failed", "expired", "superseded", "cancelled"]
#: The cloud-side states of a command (one audit row per transition).
CloudStatus = Literal["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "EXECUTED", "REJECTED", "FAILED", "EXPIRED",
                      "SUPERSEDED", "CANCELLED", "TIMED_OUT", "EXECUTED_LATE", "FAILED_LATE", "REJECTED_LATE"]
FINAL_CLOUD_STATUSES = frozenset({"EXECUTED", "REJECTED", "FAILED", "EXPIRED", "SUPERSEDED", "CANCELLED",
                                  "TIMED_OUT", "EXECUTED_LATE", "FAILED_LATE", "REJECTED_LATE"})


class WireError(CoordinatorError, ValueError):
    """A frame that cannot be decoded or is not valid: ``code`` (for the error frame) and a message that
    names the field and the value."""

    def __init__(self, message: str, code: str = "bad_frame", command_id: str | None = None) -> None:
        self.code = code
        self.command_id = command_id
        super().__init__(message)


def now_iso(when: datetime | None = None) -> str:
    """``when`` (default now) as ISO 8601 UTC with milliseconds and a ``Z``."""
    when = when or datetime.now(timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$")]


class Target(_Model):
    edge_id: Id
    device_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    channel: Annotated[str, Field(min_length=1, max_length=128)]


class EdgeCommand(_Model):
    """One command for one edge (see the module docstring)."""

    command_id: Id
    command_type: CommandType
    target: Target
    value: float | bool | str | None = None
    unit: Annotated[str, Field(max_length=16)] | None = None
    #: Seconds the command has left when this copy is sent (None: the router's default).
    expiry_sec: Annotated[float, Field(gt=0, le=30 * 24 * 3600)] | None = None
    priority: Priority = "normal"
    #: For config_override: how long the override holds before it reverts by itself.
    duration_sec: Annotated[float, Field(gt=0, le=30 * 24 * 3600)] | None = None
    source: Annotated[str, Field(max_length=128)] | None = None
    timestamp: str | None = None
    #: False: do not supersede an older queued command on the same (device, channel).
    supersede: bool = True

    @field_validator("value")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        return value

    @field_validator("timestamp")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"not an ISO 8601 time: {value!r}") from None
            if parsed.tzinfo is None:
                raise ValueError(f"needs a time zone (e.g. {value}Z): {value!r}")
        return value

    def payload_key(self) -> str:
        """What makes two commands with the same id the same command (everything but the send-time
        fields): the router refuses a reused id with a different payload."""
        data = self.model_dump(exclude={"expiry_sec", "timestamp"})
        return json.dumps(data, sort_keys=True, default=str)


class Ack(_Model):
    command_id: Id
    status: AckStatus
    executed_at: str | None = None
    error: str | None = None


class Hello(_Model):
    v: Literal[1] = VERSION
    type: Literal["hello"] = "hello"
    edge_id: Id
    last_seq: Annotated[int, Field(ge=0)] = 0
    capabilities: "Capabilities | None" = None
    software: str | None = None


class Welcome(_Model):
    v: Literal[1] = VERSION
    type: Literal["welcome"] = "welcome"
    edge_id: Id
    resume_after: Annotated[int, Field(ge=0)] = 0
    #: Seqs of this edge's commands the router has sent and still lacks a final ack for: the edge sends
    #: the latest ack it has for each (acks made while the link was down), before anything else.
    pending: list[int] = []
    server_time: str = Field(default_factory=now_iso)


class CommandFrame(_Model):
    v: Literal[1] = VERSION
    type: Literal["command"] = "command"
    seq: Annotated[int, Field(ge=1)]
    command: EdgeCommand


class AckFrame(_Model):
    v: Literal[1] = VERSION
    type: Literal["ack"] = "ack"
    seq: Annotated[int, Field(ge=0)] | None = None
    command_id: Id
    status: AckStatus
    executed_at: str | None = None
    error: str | None = None

    @property
    def ack(self) -> Ack:
        return Ack(command_id=self.command_id, status=self.status, executed_at=self.executed_at, error=self.error)


class Cancel(_Model):
    v: Literal[1] = VERSION
    type: Literal["cancel"] = "cancel"
    command_id: Id


class Confirm(_Model):
    """Router -> edge, during a session: the router has durably stored these commands' final acks, so the
    edge need not keep them for the cloud any longer (it keeps them for its dedupe window). A ``welcome``
    confirms the same way at the start of a session, by leaving their seqs out of ``pending``."""
    v: Literal[1] = VERSION
    type: Literal["confirm"] = "confirm"
    command_ids: Annotated[list[Id], Field(min_length=1, max_length=10_000)]


class Channel(_Model):
    """One controllable or readable point of a device, as the edge publishes it."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    writable: bool = True
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    #: Which edge command type drives it (setpoint, config_override, ...).
    command_type: CommandType = "setpoint"
    description: str | None = None


class Device(_Model):
    device_id: Annotated[str, Field(min_length=1, max_length=128)]
    kind: str
    channels: list[Channel] = []


class Capabilities(_Model):
    v: Literal[1] = VERSION
    type: Literal["capabilities"] = "capabilities"
    devices: list[Device] = []
    #: Site controllers that mode_change / scheduler_control switch (name -> description).
    controllers: dict[str, str] = {}


class Telemetry(_Model):
    v: Literal[1] = VERSION
    type: Literal["telemetry"] = "telemetry"
    device_id: str
    values: dict[str, float]
    at: str = Field(default_factory=now_iso)


class SiteState(_Model):
    v: Literal[1] = VERSION
    type: Literal["site_state"] = "site_state"
    controllers: dict[str, bool] = {}
    #: Active overrides: each {command_id, device_id, channel, value, unit, seconds_left}.
    overrides: list[dict[str, Any]] = []
    devices: dict[str, str] = {}


class Submit(_Model):
    v: Literal[1] = VERSION
    type: Literal["submit"] = "submit"
    command: EdgeCommand


class Status(_Model):
    v: Literal[1] = VERSION
    type: Literal["status"] = "status"
    command_id: Id
    edge_id: str
    status: CloudStatus
    at: str = Field(default_factory=now_iso)
    error: str | None = None
    source: str | None = None
    executed_at: str | None = None


class Subscribe(_Model):
    v: Literal[1] = VERSION
    type: Literal["subscribe"] = "subscribe"
    edge_id: str | None = None


class ErrorFrame(_Model):
    v: Literal[1] = VERSION
    type: Literal["error"] = "error"
    code: str
    message: str
    command_id: str | None = None
    retry_after: float | None = None


Hello.model_rebuild()

Frame = Annotated[Union[Hello, Welcome, CommandFrame, AckFrame, Cancel, Confirm, Capabilities, Telemetry,
                        SiteState, Submit, Status, Subscribe, ErrorFrame], Field(discriminator="type")]
_FRAME: TypeAdapter[Any] = TypeAdapter(Frame)
_COMMAND: TypeAdapter[EdgeCommand] = TypeAdapter(EdgeCommand)
_MAX_FRAME = 1 << 20


def encode(frame: BaseModel, *, text: bool = False) -> bytes | str:
    """The frame as msgpack bytes (default) or a JSON string (``text``); None fields are left out."""
    data = frame.model_dump(mode="json", exclude_none=True)
    return json.dumps(data, separators=(",", ":")) if text else msgpack.packb(data, use_bin_type=True)


def _raw(message: bytes | str) -> dict[str, Any]:
    if len(message) > _MAX_FRAME:
        raise WireError(f"frame of {len(message)} bytes is larger than {_MAX_FRAME}", "too_large")
    try:
        data = json.loads(message) if isinstance(message, str) else msgpack.unpackb(message, raw=False)
    except (ValueError, RecursionError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError(f"not {'JSON' if isinstance(message, str) else 'msgpack'}: {exc}", "bad_encoding") from None
    if not isinstance(data, dict):
        raise WireError(f"a frame is a map, got {type(data).__name__}", "bad_frame")
    return data


_TYPES = {"hello", "welcome", "command", "ack", "cancel", "capabilities", "telemetry", "site_state", "submit",
          "status", "subscribe", "error"}


def _problem(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = list(err["loc"])
        if loc and loc[0] in _TYPES:   # the union's tag, not a field
            loc = loc[1:]
        where = ".".join(str(p) for p in loc if not (isinstance(p, str) and "[" in p))
        value = repr(err.get("input"))
        parts.append(f"{where or 'frame'}: {err['msg']} (got {value[:60]})")
    return "; ".join(parts)


def decode(message: bytes | str) -> Any:
    """A validated frame from a msgpack or JSON message. A bare command object (no ``type``, with
    ``command_id`` and ``command_type``) is taken as a ``submit`` frame, so the seed's JSON works verbatim.

    :raises WireError: undecodable, not a map, wrong version, unknown type, or an invalid field.
    """
    data = _raw(message)
    if "type" not in data and "command_id" in data and "command_type" in data:
        data = {"v": VERSION, "type": "submit", "command": data}
    version = data.get("v", VERSION)
    if version != VERSION:
        raise WireError(f"v: protocol version {version!r} is not supported (this side speaks {VERSION})",
                        "unsupported_version")
    data.setdefault("v", VERSION)
    try:
        return _FRAME.validate_python(data)
    except ValidationError as exc:
        inner = data.get("command")
        cid = data.get("command_id") or (inner.get("command_id") if isinstance(inner, dict) else None)
        raise WireError(_problem(exc), "invalid", cid if isinstance(cid, str) else None) from None


def decode_command(data: dict[str, Any]) -> EdgeCommand:
    """A command object from a REST body (validated like the frame's)."""
    try:
        return _COMMAND.validate_python(data)
    except ValidationError as exc:
        cid = data.get("command_id") if isinstance(data, dict) else None
        raise WireError(_problem(exc), "invalid", cid if isinstance(cid, str) else None) from None
