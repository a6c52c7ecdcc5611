"""Many simulated charge points in one process: a fleet, started with bounded concurrency.

``start_fleet(url, count)`` starts ``count`` :class:`~protocols.sim.chargepoint.ChargePointSim` (ids from
:func:`fleet_ids`: ``CP0001``...), at most ``concurrency`` handshakes at a time, and returns after that one
attempt: the :class:`Fleet` lists what started in ``sims`` and what did not in ``failed`` (tests rely on
that). ``run_fleet`` runs one until told to stop; with ``retry=True`` (what the ``coordinator sim ocpp``
command, :mod:`runtime.cli.sim_ocpp`, uses) it keeps retrying every charge point that did not start, so a
fleet started before its central system connects once the central system is up.

Retry policy (:class:`Backoff`): rounds of attempts over the charge points still not started; before
retry ``n`` (1 = the first retry) each of them waits a random time in ``[0, min(cap, base * 2**(n-1))]``
(each draws its own wait; the round ends when each has tried once): exponential backoff with full
jitter, so the chargers of a large fleet spread out instead of all hitting a central system that just
came up at the same instant. Defaults: 0.5 s doubling to a 30 s cap. Logging: one line per round, not one per
charger per attempt; a WARNING when the outcome changes (the first failure, a different error or number
of chargers still out, and the recovery, so the recovery shows wherever the failure did), INFO while an
outage just goes on. A charge point that connected once and later loses its connection reconnects on its
own (``auto_reconnect``, :class:`~protocols.sim.chargepoint.ChargePointSim`).

:func:`check_url` rejects a central system URL that can never work (not ``ws://``/``wss://``, no host, a
bad port, unparsable): ``run_fleet`` raises ``ValueError`` for it at once instead of retrying forever.
The fleet benchmark starts fleets through the command.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import Any, Callable, Iterable, Literal, Mapping
from urllib.parse import urlsplit

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from .chargepoint import ChargePointSim

log = logging.getLogger(__name__)

__all__ = ["Backoff", "Fleet", "check_url", "fleet_ids", "start_fleet", "run_fleet", "stop_on"]


def fleet_ids(count: int, id_prefix: str = "CP") -> list[str]:
    """The charge point ids of a fleet: ``CP0001`` .. (1-based, at least 4 digits)."""
    width = max(4, len(str(count)))
    return [f"{id_prefix}{i:0{width}d}" for i in range(1, count + 1)]


def check_url(url: str) -> str:
    """``url`` if it can be a central system URL (each charge point connects to ``<url>/<id>``), else a
    ``ValueError`` saying what is wrong with it: the scheme is not ws/wss, there is no host, the port is
    not a number in 1..65535, it has a query or fragment (the id could not be appended), it holds
    whitespace, or it cannot be parsed at all."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("it contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"cannot parse it ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"the scheme must be ws:// or wss://, not {scheme}:" if scheme
                         else "it has no ws:// or wss:// scheme")
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if not rest.startswith(":") and rest:
            raise ValueError(f"cannot parse it (unexpected {rest!r} after the IPv6 address)")
        raw_port = rest[1:]
    else:
        host, _, raw_port = hostport.partition(":")
    if not host:
        raise ValueError("it has no host")
    if raw_port:
        if not raw_port.isdigit():
            raise ValueError(f"the port {raw_port!r} is not a number")
        if not 1 <= int(raw_port) <= 65535:
            raise ValueError(f"the port {int(raw_port)} is not in 1..65535")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("it has a query or fragment (each charge point appends /<id> to the URL)")
    try:
        parse_uri(f"{url.rstrip('/')}/CP")  # what the websockets client will make of it
    except InvalidURI as exc:
        raise ValueError(f"cannot parse it ({exc})") from None
    return url


class Backoff:
    """Exponential backoff with full jitter, capped: retry ``n`` (1 = the first retry) waits a uniform random
    time in ``[0, ceiling(n)]``, ``ceiling(n) = min(cap, base * 2**(n-1))``. Full jitter spreads the retries
    of many clients over the whole window (no synchronized bursts at a server that comes back). ``rng``: a
    seeded :class:`random.Random` makes the waits reproducible."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        if not (base > 0 and cap > 0):
            raise ValueError(f"backoff: base and cap must be > 0, got base={base!r} cap={cap!r}")
        if cap < base:
            raise ValueError(f"backoff: cap ({cap:g} s) must be >= base ({base:g} s)")
        self.base = float(base)
        self.cap = float(cap)
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry ``attempt`` (1-based)."""
        exponent = min(max(attempt, 1) - 1, 64)  # 2**64 * base is past any cap; no float overflow
        return min(self.cap, self.base * 2.0 ** exponent)

    def delay(self, attempt: int) -> float:
        """A random wait before retry ``attempt``: uniform in ``[0, ceiling(attempt)]``."""
        return self._rng.uniform(0.0, self.ceiling(attempt))


class Fleet:
    """Simulators started by :func:`start_fleet`: ``sims`` those running, ``failed`` (id, error) of those
    that did not start, ``pending`` their (stopped) simulators, which :func:`run_fleet` retries;
    ``order`` all of them, in fleet order."""

    def __init__(self, sims: list[ChargePointSim], failed: list[tuple[str, str]],
                 pending: list[ChargePointSim] | None = None) -> None:
        self.sims = sims
        self.failed = failed
        self.pending = pending if pending is not None else []
        self.order = [*sims, *self.pending]  # every simulator, in fleet order

    def __len__(self) -> int:
        return len(self.sims)

    async def stop(self) -> None:
        """Stop every simulator, the pending ones too (an attempt cut short may have left one connected)."""
        await asyncio.gather(*(s.stop() for s in self.order), return_exceptions=True)


async def _start_one(sim: ChargePointSim, sem: asyncio.Semaphore, plug_in: bool, start_transactions: bool,
                     wait: float = 0.0) -> str | None:
    """Start ``sim`` (after ``wait`` seconds), then plug in or start a transaction if asked; None when it
    started, else the error (and the simulator is stopped again)."""
    if wait > 0:
        await asyncio.sleep(wait)
    async with sem:
        try:
            await sim.start()
            if start_transactions:
                await sim.start_transaction()
            elif plug_in:
                await sim.plug_in()
            return None
        except Exception as exc:  # noqa: BLE001 - any failure to start is retried (or reported) the same way
            await sim.stop()
            return f"{type(exc).__name__}: {exc}"


async def _attempt(fleet: Fleet, sims: list[ChargePointSim], sem: asyncio.Semaphore, plug_in: bool,
                   start_transactions: bool, waits: list[float] | None = None) -> int:
    """One round: try to start ``sims``; move those that started into ``fleet.sims`` (in fleet order) and
    leave the others in ``fleet.pending``/``fleet.failed``. Returns how many started."""
    waits = waits or [0.0] * len(sims)
    errors = await asyncio.gather(*(_start_one(s, sem, plug_in, start_transactions, w)
                                    for s, w in zip(sims, waits)))
    tried = {s.cp_id: why for s, why in zip(sims, errors)}
    started = {cp_id for cp_id, why in tried.items() if why is None}
    running = {s.cp_id for s in fleet.sims} | started
    fleet.sims = [s for s in fleet.order if s.cp_id in running]
    fleet.pending = [s for s in fleet.order if s.cp_id not in running]
    old = dict(fleet.failed)
    fleet.failed = [(s.cp_id, tried.get(s.cp_id) or old.get(s.cp_id, "")) for s in fleet.pending]
    return len(started)


def _new_fleet(url: str, count: int, version: Literal["1.6", "2.0.1"], id_prefix: str,
               per_charge_point: Callable[[str], Mapping[str, Any]] | None = None, **kw: Any) -> Fleet:
    """``count`` simulators (ids from :func:`fleet_ids`), none started yet: all pending. ``per_charge_point``
    gives keyword arguments of one charge point (its own password or client certificate, say)."""
    own = per_charge_point or (lambda cp_id: {})
    return Fleet([], [], [ChargePointSim(cp_id, url, version, **kw, **own(cp_id))
                          for cp_id in fleet_ids(count, id_prefix)])


async def start_fleet(url: str, count: int, version: Literal["1.6", "2.0.1"] = "1.6", id_prefix: str = "CP", *,
                      concurrency: int = 50, plug_in: bool = False, start_transactions: bool = False,
                      **kw: Any) -> Fleet:
    """Start ``count`` simulators (ids from :func:`fleet_ids`), at most ``concurrency`` handshakes at once;
    one attempt each: those that failed are in ``failed`` (and, stopped, in ``pending``)."""
    fleet = _new_fleet(url, count, version, id_prefix, **kw)
    await _attempt(fleet, fleet.pending, asyncio.Semaphore(max(1, concurrency)), plug_in, start_transactions)
    return fleet


def _errors(failed: list[tuple[str, str]]) -> str:
    """The most common error of ``failed`` (and how many other kinds there were), for one log line."""
    kinds = Counter(why for _, why in failed).most_common()
    if not kinds:
        return "no error"
    why, _ = kinds[0]
    return why if len(kinds) == 1 else f"{why}; and {len(kinds) - 1} other kind(s) of error"


async def _start(fleet: Fleet, url: str, version: str, backoff: Backoff | None, concurrency: int, plug_in: bool,
                 start_transactions: bool) -> None:
    """The first attempt for every charge point; then, with ``backoff``, rounds of retries over those still
    pending (see the module docstring) until every one has started."""
    count = len(fleet.order)
    sem = asyncio.Semaphore(max(1, concurrency))
    await _attempt(fleet, fleet.pending, sem, plug_in, start_transactions)
    log.info("OCPP %s fleet: %d charge points running against %s (%d failed to start)", version, len(fleet), url,
             len(fleet.failed))
    if not fleet.failed:
        return
    if backoff is None:
        log.warning("OCPP fleet: %d of %d charge points could not connect to %s (%s); not retried",
                    len(fleet.failed), count, url, _errors(fleet.failed))
        return
    said = (len(fleet.pending), _errors(fleet.failed))
    log.warning("OCPP fleet: %d of %d charge points could not connect to %s (%s); retrying with backoff "
                "(%g s doubling to %g s, full jitter)", said[0], count, url, said[1], backoff.base, backoff.cap)
    attempts = 1
    while fleet.pending:
        attempts += 1
        pending = list(fleet.pending)
        started = await _attempt(fleet, pending, sem, plug_in, start_transactions,
                                 [backoff.delay(attempts - 1) for _ in pending])
        if not fleet.pending:
            log.warning("OCPP fleet: all %d charge points connected to %s (after %d attempts)", count, url,
                        attempts)
            return
        now = (len(fleet.pending), _errors(fleet.failed))
        log.log(logging.WARNING if now != said else logging.INFO,
                "OCPP fleet: %d of %d charge points still not connected to %s after %d attempts (%s)%s; "
                "next attempt within %g s", now[0], count, url, attempts, now[1],
                f"; {started} connected in this round" if started else "", backoff.ceiling(attempts))
        said = now


async def run_fleet(url: str, count: int, version: Literal["1.6", "2.0.1"] = "1.6", id_prefix: str = "CP", *,
                    stop: asyncio.Event | None = None, retry: bool = False, retry_base: float = 0.5,
                    retry_cap: float = 30.0, rng: random.Random | None = None, concurrency: int = 50,
                    plug_in: bool = False, start_transactions: bool = False,
                    on_fleet: Callable[[Fleet], None] | None = None, **kw: Any) -> Fleet:
    """Run ``count`` simulators until ``stop`` is set (or the task is cancelled), then stop them all.
    Returns the (stopped) fleet: ``sims`` those that started, ``failed`` those that never did.

    ``retry``: keep retrying the charge points that did not start, with :class:`Backoff` (``retry_base``,
    ``retry_cap``, ``rng``), until each has started or the fleet stops; without it they are tried once (as
    by :func:`start_fleet`) and logged. Starting runs alongside the wait, so a stop is prompt even in the
    middle of an attempt. ``on_fleet`` is called with the fleet before any simulator starts (its ``order``
    lists every simulator: fault injection, :mod:`protocols.sim.control`). A malformed ``url``
    (:func:`check_url`) raises ``ValueError`` at once, as does a retry window with ``retry_cap < retry_base``.
    """
    try:
        check_url(url)
    except ValueError as exc:
        raise ValueError(f"url {url!r}: {exc}") from None
    backoff = Backoff(retry_base, retry_cap, rng) if retry else None
    fleet = _new_fleet(url, count, version, id_prefix, **kw)
    if on_fleet is not None:
        on_fleet(fleet)
    starting = asyncio.get_running_loop().create_task(
        _start(fleet, url, version, backoff, concurrency, plug_in, start_transactions), name="fleet-start")
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        starting.cancel()
        (outcome,) = await asyncio.gather(starting, return_exceptions=True)
        if isinstance(outcome, Exception):  # pragma: no cover - a bug in the start loop, not a failed connect
            log.error("OCPP fleet: starting the charge points failed", exc_info=outcome)
        await fleet.stop()
    return fleet


def stop_on(io: Any, sims: Iterable[Any], timeout: float = 10.0) -> None:
    """Stop each simulator (``await sim.stop()``) on the :class:`~runtime.core.iothread.IOThread` ``io``
    that runs them, then the thread itself; a simulator that fails to stop is logged and the others are
    still stopped. Nothing happens when ``io`` is not running. Call it from any thread but ``io``'s."""
    if not io.running:
        return
    for sim in sims:
        try:
            io.call(sim.stop(), timeout=timeout)
        except Exception:
            log.exception("stopping simulator %r failed", sim)
    io.stop()
