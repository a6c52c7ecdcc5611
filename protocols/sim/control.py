"""Fault injection into a running simulator process: one command a line on its stdin
(``coordinator sim ocpp --control`` / ``coordinator sim battery --control``), one answer a line on stdout.

OCPP charge points (by id, e.g. ``CP0007``)::

    outage CP0007 2.5      abort its connection, reconnect after 2.5 s (no BootNotification)
    fault CP0007 [CODE]    report Faulted (StatusNotification, error code default OtherError)
    clear CP0007           clear the fault
    reboot CP0007          close, reconnect and boot again (profiles and transaction lost)

Batteries (by index or name, e.g. ``3`` or ``battery-3``)::

    offline 3 5            stop listening and drop the connections for 5 s, then listen again
    silent 3 5             read requests and answer none for 5 s

Each line is answered ``control ok <line>`` or ``control error <line>: <why>``; a timed fault answers when
it starts (its end is not reported). A stdin that closes ends the control, not the simulators. Used by
``coordinator bench soak`` (:mod:`runtime.bench.soak`).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .battery import BatterySim
from .chargepoint import ChargePointSim

__all__ = ["serve_control", "ocpp_commands", "battery_commands"]

Handler = Callable[[Sequence[str]], Awaitable[None]]


class _Timed:
    """Timed faults run as tasks of their own; cancelled (and awaited) when the control stops."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < 3600:
        raise ValueError(f"seconds must be in 0..3600, got {text}")
    return value


def ocpp_commands(sims: Callable[[], Sequence[ChargePointSim]], timed: _Timed) -> dict[str, Handler]:
    """The OCPP control commands over the fleet's simulators (``sims()``: every one, by id)."""
    def find(cp_id: str) -> ChargePointSim:
        for sim in sims():
            if sim.cp_id == cp_id:
                return sim
        raise KeyError(f"no charge point {cp_id!r}")

    async def outage(args: Sequence[str]) -> None:
        sim, seconds = find(args[0]), _seconds(args[1])
        timed.spawn(sim.outage(seconds))

    async def fault(args: Sequence[str]) -> None:
        await find(args[0]).fault(*(args[1:2] or ["OtherError"]))

    async def clear(args: Sequence[str]) -> None:
        await find(args[0]).clear_fault()

    async def reboot(args: Sequence[str]) -> None:
        timed.spawn(find(args[0]).reboot())

    return {"outage": outage, "fault": fault, "clear": clear, "reboot": reboot}


def battery_commands(sims: Sequence[BatterySim], timed: _Timed) -> dict[str, Handler]:
    """The battery control commands over ``sims`` (by index or name)."""
    def find(key: str) -> BatterySim:
        for i, sim in enumerate(sims):
            if key in (str(i), sim.name):
                return sim
        raise KeyError(f"no battery {key!r}")

    async def offline(args: Sequence[str]) -> None:
        sim, seconds = find(args[0]), _seconds(args[1])
        await sim.set_offline()

        async def back() -> None:
            await asyncio.sleep(seconds)
            await sim.set_online()
        timed.spawn(back())

    async def silent(args: Sequence[str]) -> None:
        sim, seconds = find(args[0]), _seconds(args[1])
        sim.set_silent(True)

        async def back() -> None:
            await asyncio.sleep(seconds)
            sim.set_silent(False)
        timed.spawn(back())

    return {"offline": offline, "silent": silent}


async def _answer(commands: Mapping[str, Handler], line: str) -> str:
    words = line.split()
    if not words:
        return ""
    handler = commands.get(words[0])
    if handler is None:
        return f"control error {line}: unknown command (one of {', '.join(commands)})"
    try:
        await handler(words[1:])
    except IndexError:
        return f"control error {line}: missing argument"
    except KeyError as exc:
        return f"control error {line}: {exc.args[0]}"
    except Exception as exc:  # noqa: BLE001 - a bad line is answered, never fatal to the simulators
        return f"control error {line}: {exc}"
    return f"control ok {line}"


async def serve_control(make: Callable[[_Timed], Mapping[str, Handler]], stream: Any = None) -> None:
    """Read control lines from ``stream`` (default stdin) until it closes or this task is cancelled; answer
    each on stdout. Timed faults still running are cancelled on the way out."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                stream if stream is not None else sys.stdin)
    timed = _Timed()
    commands = make(timed)
    try:
        while True:
            raw = await reader.readline()
            if not raw:
                return
            answer = await _answer(commands, raw.decode(errors="replace").strip())
            if answer:
                print(answer, flush=True)
    finally:
        transport.close()
        await timed.cancel()
