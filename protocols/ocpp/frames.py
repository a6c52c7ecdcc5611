"""Checking one OCPP-J frame from a charger before the ``ocpp`` library routes it.

The library's ``ChargePoint.route_message`` answers nothing to a frame it cannot unpack (it only logs
it), and lets a TypeError (a CALL whose action is a list), RecursionError (JSON nested too deep) or
ValueError (an integer literal too long for Python) escape to the connection handler, which closes the
charger's connection. :func:`check_frame` finds every such frame first and says how it is answered;
:meth:`protocols.ocpp.connection.ChargePointConnection.route_message` sends that answer and hands only
well-formed frames to the library.

What each version's RPC framework says (OCPP-J 1.6 §4.1.3, §4.2.3 Table 7; OCPP-J 2.0.1 §4.1.3,
§4.2.3, §4.3 Table 8, §4.4), and therefore what a bad frame gets:

=============================================  ======================  ==========================
frame                                          OCPP 1.6                OCPP 2.0.1
=============================================  ======================  ==========================
unique id cannot be read (not JSON and no      not answered (logged)   RpcFrameworkError, id "-1"
readable start, not a list, empty, id not a
string)
not JSON, or nested deeper than                FormationViolation      FormatViolation
:data:`MAX_NESTING` (the id read from its
start)
CALL with fewer than 4 elements                ProtocolError           RpcFrameworkError
CALL with more than 4 elements, or an action   FormationViolation      RpcFrameworkError
that is not a string
CALL payload not a JSON object (nor null)      FormationViolation      ProtocolError
message type not a number                      not answered (logged)   RpcFrameworkError
message type a number other than 2, 3, 4       not answered (logged)   MessageTypeNotSupported
CALLRESULT / CALLERROR with an unreadable id   not answered (logged)   not answered (logged)
or nested too deep
CALL whose action the version does not define  NotImplemented          NotImplemented
CALL whose action the version defines, but     NotSupported            NotSupported
that the central system does not handle
=============================================  ======================  ==========================

Why: 2.0.1 §4.2.3 says that when the message id of a corrupt message cannot be read, the CALLERROR
carries "-1" as its id, and its RpcFrameworkError is "Content of the call is not a valid RPC Request,
for example: MessageId could not be read" -- the code for a broken RPC wrapper (the action is part of
the wrapper, not of the payload). FormatViolation ("Payload for Action is syntactically incorrect")
covers text we cannot parse, ProtocolError ("Payload for Action is not conform the PDU structure") a
payload that is not an object. §4.4: "When an OCPP 2.0.1 implementation receives a message with an
unknown message type, it SHALL respond with an CALLERROR with errorCode: MessageTypeNotSupported".

1.6 has neither RpcFrameworkError nor MessageTypeNotSupported, nor the "-1" rule: a CallError's
UniqueId "must be the exact same id that is in the call request", so a frame without a readable id
cannot be answered. For a message type other than CALL, CALLRESULT, CALLERROR, §4.1.3 prescribes:
"When a server receives a message with a Message Type Number not in this list, it SHALL ignore the
message payload" (and §4.2.3 uses a CallError only for a received *call*), so such a frame is ignored
and logged -- answering it with a code made for calls would tell the charger something the 1.6 spec
does not. The other 1.6 codes are the closest of Table 7: FormationViolation ("Payload for Action is
syntactically incorrect or not conform the PDU structure for Action", the 1.6 spelling) and
ProtocolError ("Payload for Action is incomplete") for a CALL that lacks its payload.

Actions (OCPP-J 1.6 Table 7, OCPP-J 2.0.1 Table 8, the same words in both): NotImplemented "Requested
Action is not known by receiver", NotSupported "Requested Action is recognized but not supported by the
receiver". An action the version does not define at all (``"Probe"``, or a 2.0.1 action on a 1.6
connection) is not known: NotImplemented; one it defines but that no handler answers here (a 1.6
charger sending RemoteStartTransaction, which only a central system receives) is recognized but not
supported: NotSupported. The ``ocpp`` library (2.1.0) answers the other way round, with each code's
description swapped to match (``_raise_key_error``; mobilityhouse/ocpp PR 426 and issue 493), so
:func:`check_frame` answers both cases itself when given the actions that are handled.

A CALLRESULT or CALLERROR is never answered with a CALLERROR: it is itself an answer, and its id names
one of our calls. A well-formed one goes to the library (which matches it to the waiting call).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import AbstractSet, Any

from ocpp.v16.enums import Action as Action16
from ocpp.v201.enums import Action as Action201

__all__ = ["ACTIONS", "FrameProblem", "MAX_NESTING", "NOT_IMPLEMENTED", "NOT_SUPPORTED", "call_error",
           "check_frame"]

#: Deepest nesting of arrays and objects accepted in a frame (the frame itself is level 1). OCPP payloads
#: nest about a dozen levels; the limit leaves room for vendor ``customData`` and keeps every recursive
#: walk the library makes (json, jsonschema, the camelCase conversion) far from Python's recursion limit.
MAX_NESTING = 64

CALL, CALLRESULT, CALLERROR = 2, 3, 4

# What went wrong -> the error code of each version (None: the version prescribes no answer).
_UNREADABLE_ID, _SYNTAX, _INCOMPLETE, _BAD_WRAPPER, _BAD_PAYLOAD, _BAD_TYPE, _UNKNOWN_TYPE = range(7)
_CODES: dict[str, dict[int, str | None]] = {
    "1.6": {_UNREADABLE_ID: None, _SYNTAX: "FormationViolation", _INCOMPLETE: "ProtocolError",
            _BAD_WRAPPER: "FormationViolation", _BAD_PAYLOAD: "FormationViolation", _BAD_TYPE: None,
            _UNKNOWN_TYPE: None},
    "2.0.1": {_UNREADABLE_ID: "RpcFrameworkError", _SYNTAX: "FormatViolation", _INCOMPLETE: "RpcFrameworkError",
              _BAD_WRAPPER: "RpcFrameworkError", _BAD_PAYLOAD: "ProtocolError", _BAD_TYPE: "RpcFrameworkError",
              _UNKNOWN_TYPE: "MessageTypeNotSupported"},
}
# The id a CALLERROR carries when the frame's own id cannot be read: "-1" in 2.0.1 (OCPP-J 2.0.1 §4.2.3);
# 1.6 has no such id (its CallError must carry "the exact same id that is in the call request").
_NO_ID: dict[str, str | None] = {"1.6": None, "2.0.1": "-1"}

# The start of a CALL-like frame, read when the whole frame cannot be parsed: [<type>, "<id>"...
_START = re.compile(r'\s*\[\s*(\d{1,3})\s*,\s*(?=")')
_STRING = json.JSONDecoder()

#: Every action each version defines (in either direction): the ones a receiver can "recognize".
ACTIONS: dict[str, frozenset[str]] = {"1.6": frozenset(a.value for a in Action16),
                                      "2.0.1": frozenset(a.value for a in Action201)}
#: The OCPP-J descriptions of the two codes (1.6 Table 7, 2.0.1 Table 8).
NOT_IMPLEMENTED = "Requested Action is not known by receiver"
NOT_SUPPORTED = "Requested Action is recognized but not supported by the receiver"


@dataclass(frozen=True)
class FrameProblem:
    """Why a frame is not handed to the library, and its answer: a CALLERROR with ``code`` to
    ``unique_id``, or none when either is None (the frame is then only logged)."""

    description: str
    code: str | None = None
    unique_id: str | None = None

    @property
    def answered(self) -> bool:
        return self.code is not None and self.unique_id is not None


def call_error(problem: FrameProblem) -> str:
    """The CALLERROR frame that answers ``problem`` (which must be :attr:`~FrameProblem.answered`)."""
    return json.dumps([CALLERROR, problem.unique_id, problem.code, problem.description, {}], separators=(",", ":"))


def check_frame(raw: str | bytes, version: str, handled: AbstractSet[str] | None = None) -> FrameProblem | None:
    """None if ``raw`` is a frame the library can route safely; else what is wrong and how ``version``
    ("1.6" or "2.0.1") answers it (see the module docstring). With ``handled`` (the actions that have a
    handler), a CALL of any other action is answered NotImplemented or NotSupported here."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        frame = json.loads(text)
    except RecursionError:
        return _unparsable(raw, version, f"frame nests deeper than {MAX_NESTING} levels")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer literal over 4300 digits
        return _unparsable(raw, version, f"frame is not valid JSON ({type(exc).__name__})")
    if not isinstance(frame, list) or not frame:
        return _problem(version, _UNREADABLE_ID, "frame is not a non-empty JSON array", None)
    kind = frame[0]
    unique_id = frame[1] if len(frame) > 1 and isinstance(frame[1], str) else None
    if not _is_number(kind):
        return _problem(version, _BAD_TYPE, "message type is not a number", unique_id)
    if kind not in (CALL, CALLRESULT, CALLERROR):
        return _problem(version, _UNKNOWN_TYPE, "message type is not 2, 3 or 4", unique_id)
    if kind != CALL:  # an answer: never answered, only dropped (logged) when it cannot be matched or walked
        if unique_id is None:
            return FrameProblem("answer whose unique id is not a string")
        if _too_deep(frame, text):
            return FrameProblem(f"answer nests deeper than {MAX_NESTING} levels")
        return None
    if unique_id is None:
        return _problem(version, _UNREADABLE_ID, "unique id is not a string", None)
    if _too_deep(frame, text):
        return _problem(version, _SYNTAX, f"frame nests deeper than {MAX_NESTING} levels", unique_id)
    if len(frame) < 4:
        return _problem(version, _INCOMPLETE, "CALL has fewer than 4 elements [2, id, action, payload]", unique_id)
    if len(frame) > 4:
        return _problem(version, _BAD_WRAPPER, "CALL has more than 4 elements [2, id, action, payload]", unique_id)
    if not isinstance(frame[2], str):
        return _problem(version, _BAD_WRAPPER, "action is not a string", unique_id)
    if not isinstance(frame[3], dict) and frame[3] is not None:  # null: "no payload" (OCPP-J), left to the library
        return _problem(version, _BAD_PAYLOAD, "payload is not a JSON object", unique_id)
    if handled is not None and frame[2] not in handled:
        if frame[2] in ACTIONS[version]:
            return FrameProblem(NOT_SUPPORTED, "NotSupported", unique_id)
        return FrameProblem(NOT_IMPLEMENTED, "NotImplemented", unique_id)
    return None


def _problem(version: str, what: int, description: str, unique_id: str | None) -> FrameProblem:
    code = _CODES[version][what]
    if code is None:
        return FrameProblem(description)
    return FrameProblem(description, code, unique_id if unique_id is not None else _NO_ID[version])


def _unparsable(raw: str | bytes, version: str, description: str) -> FrameProblem:
    """A frame json cannot parse: answerable if its start reads ``[2, "<id>"`` (a CALL with a readable id)."""
    kind, unique_id = _read_start(raw)
    if kind in (CALLRESULT, CALLERROR):
        return FrameProblem(f"answer that cannot be parsed: {description}")
    if kind != CALL or unique_id is None:
        return _problem(version, _UNREADABLE_ID, f"unique id cannot be read: {description}", None)
    return _problem(version, _SYNTAX, description, unique_id)


def _read_start(raw: str | bytes) -> tuple[int | None, str | None]:
    """(message type, unique id) from the first characters of a frame, each None if not readable there."""
    try:
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else raw
        m = _START.match(text)
        if m is None:
            return None, None
        unique_id, _end = _STRING.raw_decode(text, m.end())
    except (ValueError, RecursionError):
        return None, None
    return int(m.group(1)), unique_id if isinstance(unique_id, str) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _too_deep(frame: list[Any], text: str) -> bool:
    """Does ``frame`` (parsed from ``text``) nest arrays/objects deeper than :data:`MAX_NESTING`? A frame
    with no more brackets than that cannot (the usual case, counted in C); else it is walked, iteratively."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return False
    level: list[Any] = [frame]  # the arrays/objects at one depth, starting at the frame's (1)
    for _depth in range(MAX_NESTING):
        deeper = []
        for value in level:
            for child in value.values() if isinstance(value, dict) else value:
                if isinstance(child, (dict, list)):
                    deeper.append(child)
        if not deeper:
            return False
        level = deeper
    return True  # something is nested at depth MAX_NESTING + 1
