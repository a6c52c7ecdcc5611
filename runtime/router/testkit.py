"""A fake edge and an operator client that speak the wire format, for the router's tests and benchmark.

They are small on purpose: :class:`FakeEdge` is what the real edge link must at least do (hello with its
last_seq and capabilities, journal each command before acking, re-send the latest ack of every seq the
welcome lists as pending, dedupe by command id), with its acks under the test's control. :class:`Operator`
submits commands and collects the status and error frames. Both use ``websockets.asyncio.client`` on the
caller's loop; every method is a coroutine of that loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocols.edge.channels import device_channels, site_channels
from protocols.edge.wire import (AckFrame, Cancel, Capabilities, CommandFrame, Confirm, Device, EdgeCommand,
                                 ErrorFrame, Hello, Status, Submit, Subscribe, Welcome, decode, encode, now_iso)

__all__ = ["FakeEdge", "Operator", "battery_caps", "setpoint"]


def battery_caps(*device_ids: str, max_kw: float = 100.0) -> Capabilities:
    """Capabilities of an edge with these batteries (OpenEMS channel names) and the site device."""
    devices = [Device(device_id=d, kind="battery", channels=device_channels("battery", max_kw, max_kw))
               for d in device_ids or ("bms_main",)]
    devices.append(Device(device_id="site", kind="site", channels=site_channels()))
    return Capabilities(devices=devices, controllers={"schedule": "follow schedules", "grid_limit": "grid limit"})


def setpoint(command_id: str, edge_id: str, value: float, *, device_id: str = "bms_main",
             channel: str = "SetActivePower", **extra: Any) -> EdgeCommand:
    """A setpoint command like the seed's (W)."""
    return EdgeCommand(command_id=command_id, command_type="setpoint",
                       target={"edge_id": edge_id, "device_id": device_id, "channel": channel},  # type: ignore
                       value=value, **{"unit": "W", **extra})


class _Waits:
    """Bounded waits on a condition, woken by each frame that arrives."""

    _changed: asyncio.Event
    _reader: "asyncio.Task[None] | None"

    def _init_waits(self) -> None:
        self._changed = asyncio.Event()

    def _poke(self) -> None:
        self._changed.set()

    def _describe(self) -> str:
        return ""

    async def wait(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        """Wait (bounded) until ``predicate()`` is truthy, woken by each frame that arrives."""
        deadline = time.monotonic() + timeout
        while True:
            got = predicate()
            if got:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; {self._describe()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.25))
            except TimeoutError:
                pass


class FakeEdge(_Waits):
    """A fake edge. ``auto``: the acks it sends at once for each new command (default delivered, accepted,
    executed; empty: none, the test acks by hand). Its journal survives :meth:`close` / :meth:`connect`, as a real
    edge's would."""

    def __init__(self, base_url: str, edge_id: str, credential: str, *, caps: Capabilities | None = None,
                 auto: tuple[str, ...] = ("delivered", "accepted", "executed"), text: bool = False,
                 on_command: Callable[[CommandFrame], None] | None = None) -> None:
        self.url = base_url.rstrip("/") + "/ws/edge"
        self.edge_id = edge_id
        self.credential = credential
        self.caps = caps if caps is not None else battery_caps()
        self.auto = auto
        self.text = text
        self.on_command = on_command
        #: seq -> command, as journaled (first arrival)
        self.journal: dict[int, EdgeCommand] = {}
        #: command id -> how many times a command frame for it arrived
        self.received: dict[str, int] = defaultdict(int)
        #: command id -> the latest ack made for it
        self.acks: dict[str, AckFrame] = {}
        self.seq_of: dict[str, int] = {}
        self.frames: list[Any] = []
        self.welcomes: list[Welcome] = []
        self.errors: list[ErrorFrame] = []
        self.cancels: list[str] = []
        #: command ids the router confirmed (``confirm`` frames), in order
        self.confirmed: list[str] = []
        self.ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed_code: int | None = None
        self._init_waits()

    def _describe(self) -> str:
        return f"edge {self.edge_id}: received {dict(self.received)}, errors {[e.code for e in self.errors]}"

    @property
    def last_seq(self) -> int:
        return max(self.journal, default=0)

    def _enc(self, frame: Any) -> bytes | str:
        return encode(frame, text=self.text)

    async def connect(self, *, timeout: float = 10.0, headers: dict[str, str] | None = None,
                      path_edge: str | None = None) -> Welcome:
        """Connect, say hello, wait for welcome, re-send the pending acks; start reading."""
        url = self.url + (f"/{path_edge}" if path_edge else "")
        self.ws = await connect(url, additional_headers=headers or {"Authorization": f"Bearer {self.credential}"},
                                open_timeout=timeout, ping_interval=20, max_size=1 << 20)
        try:
            await self.ws.send(self._enc(Hello(edge_id=self.edge_id, last_seq=self.last_seq,
                                               capabilities=self.caps, software="testkit")))
        except ConnectionClosed:
            pass  # refused before the hello: the error frame is still there to read
        while True:
            try:
                frame = decode(await asyncio.wait_for(self.ws.recv(), timeout))
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                reason = exc.rcvd.reason if exc.rcvd else ""
                found = [e for e in self.errors]
                raise PermissionError(f"{found[-1].code}: {found[-1].message}" if found else
                                      f"closed {code}: {reason}") from None
            if isinstance(frame, ErrorFrame):
                self.errors.append(frame)
                await self.ws.close()
                raise PermissionError(f"{frame.code}: {frame.message}")
            if isinstance(frame, Welcome):
                break
        self.welcomes.append(frame)
        by_seq = {seq: cid for cid, seq in self.seq_of.items()}
        for seq in frame.pending:
            cid = by_seq.get(seq)
            if cid is not None and cid in self.acks:
                await self.ws.send(self._enc(self.acks[cid]))
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"fake-edge-{self.edge_id}")
        return frame

    async def connect_to(self, base_url: str, **kw: Any) -> Welcome:
        """Connect to another router instance (the same edge, the same journal)."""
        self.url = base_url.rstrip("/") + "/ws/edge"
        return await self.connect(**kw)

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                frame = decode(message)
                self.frames.append(frame)
                if isinstance(frame, CommandFrame):
                    await self._command(frame)
                elif isinstance(frame, ErrorFrame):
                    self.errors.append(frame)
                elif isinstance(frame, Cancel):
                    self.cancels.append(frame.command_id)
                elif isinstance(frame, Confirm):
                    self.confirmed += frame.command_ids
                self._poke()
        except ConnectionClosed as exc:
            self.closed_code = exc.rcvd.code if exc.rcvd else None
        else:
            self.closed_code = self.ws.close_code
        self._poke()

    async def _command(self, frame: CommandFrame) -> None:
        cid = frame.command.command_id
        self.received[cid] += 1
        if cid in self.seq_of:  # seen before: never executed again; the latest ack answers it
            if cid in self.acks:
                await self._send_ack(self.acks[cid])
            return
        self.journal[frame.seq] = frame.command
        self.seq_of[cid] = frame.seq
        if self.on_command is not None:
            self.on_command(frame)
        for status in self.auto:
            await self.ack(cid, status)

    async def _send_ack(self, ack: AckFrame) -> None:
        if self.ws is not None:
            try:
                await self.ws.send(self._enc(ack))
            except ConnectionClosed:
                pass  # kept in self.acks; re-sent when the welcome lists it as pending

    async def ack(self, command_id: str, status: str, error: str | None = None) -> None:
        """Make an ack (kept, as a journal would) and send it if connected."""
        ack = AckFrame(seq=self.seq_of.get(command_id), command_id=command_id, status=status,  # type: ignore
                       executed_at=now_iso() if status == "executed" else None, error=error)
        self.acks[command_id] = ack
        await self._send_ack(ack)

    async def send(self, frame: Any) -> None:
        assert self.ws is not None
        await self.ws.send(self._enc(frame))

    async def close(self) -> None:
        """Close the websocket cleanly (the journal stays)."""
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self.ws, self._reader = None, None

    async def drop(self) -> None:
        """Lose the link without a close frame (a half-open connection, as far as the router can tell)."""
        if self.ws is not None:
            self.ws.transport.abort()
        await self.close()


class Operator(_Waits):
    """An operator or service on ``/ws/client``: submits, subscribes, collects statuses and errors."""

    def __init__(self, base_url: str, token: str, *, text: bool = False,
                 on_status: Callable[[Status], None] | None = None) -> None:
        self.url = base_url.rstrip("/") + "/ws/client"
        self.token = token
        self.text = text
        self.on_status = on_status
        #: command id -> the statuses seen, in order
        self.statuses: dict[str, list[str]] = defaultdict(list)
        self.last: dict[str, Status] = {}
        self.errors: list[ErrorFrame] = []
        self.ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed_code: int | None = None
        self._init_waits()

    def _describe(self) -> str:
        return f"statuses {dict(self.statuses)}, errors {[(e.code, e.message) for e in self.errors]}"

    async def connect(self, *, timeout: float = 10.0, headers: dict[str, str] | None = None) -> "Operator":
        self.ws = await connect(self.url, additional_headers=headers if headers is not None else
                                {"Authorization": f"Bearer {self.token}"}, open_timeout=timeout, max_size=1 << 22)
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="operator")
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                frame = decode(message)
                if isinstance(frame, Status):
                    self.statuses[frame.command_id].append(frame.status)
                    self.last[frame.command_id] = frame
                    if self.on_status is not None:
                        self.on_status(frame)
                elif isinstance(frame, ErrorFrame):
                    self.errors.append(frame)
                self._poke()
        except ConnectionClosed as exc:
            self.closed_code = exc.rcvd.code if exc.rcvd else None
        else:
            self.closed_code = self.ws.close_code
        self._poke()

    async def submit(self, command: EdgeCommand | dict[str, Any]) -> None:
        assert self.ws is not None
        if isinstance(command, dict):  # the bare seed JSON, as a dashboard sends it
            import json
            await self.ws.send(json.dumps(command))
        else:
            await self.ws.send(encode(Submit(command=command), text=self.text))

    async def subscribe(self, edge_id: str | None = None) -> None:
        assert self.ws is not None
        await self.ws.send(encode(Subscribe(edge_id=edge_id), text=self.text))

    async def cancel(self, command_id: str) -> None:
        assert self.ws is not None
        await self.ws.send(encode(Cancel(command_id=command_id), text=self.text))

    async def wait_status(self, command_id: str, status: str, timeout: float = 10.0) -> Status:
        await self.wait(lambda: status in self.statuses.get(command_id, []), timeout,
                        f"{command_id} to become {status}")
        return self.last[command_id]

    async def wait_error(self, code: str, timeout: float = 10.0) -> ErrorFrame:
        found = await self.wait(lambda: [e for e in self.errors if e.code == code], timeout, f"an error {code}")
        return found[-1]  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self.ws, self._reader = None, None
