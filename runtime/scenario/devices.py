"""The devices a scenario runs against, and how each fault action reaches them.

``devices = "memory"`` (default): every asset gets the Site's :class:`~protocols.memory.InMemoryDevice`;
each action is one of its knobs. Fast, and on a virtual clock exactly repeatable.

``devices = "sim"``: the real simulators over real sockets on 127.0.0.1. Chargers are
:class:`~protocols.sim.chargepoint.ChargePointSim` charge points (OCPP 1.6) that connect to the Site's
own central system and are driven through :class:`~protocols.ocpp.link.OcppChargerLink`; an EV is
plugged in and charging at each one from the start, so that the charger's power follows its profile
(MeterValues report it); with ``security_profile`` 1-3 they connect under that OCPP security profile
(:mod:`protocols.sim.pki`: passwords, and a throwaway CA for TLS). Batteries are
:class:`~protocols.sim.battery.BatterySim` pymodbus servers (default register map, SoC integrated on the
site clock) behind :class:`~protocols.modbus.link.ModbusBatteryLink`. The simulators run on an I/O thread of
their own, as devices elsewhere would. Each action maps onto the simulator's own fault injection:

==========  ===================================================  ===============================================
action      charger (ChargePointSim)                              battery (BatterySim)
==========  ===================================================  ===============================================
status      FAULTED: ``fault()``; AVAILABLE: ``clear_fault()``    (no state of its own: refused)
reject      ``set_reject_profiles`` (value "" stops)              ``set_exception`` (value: an exception name, or
                                                                  ILLEGAL_DATA_VALUE; "" stops)
fail_next   (refused: no counted failures)                        (refused: no counted failures)
silent      ``set_delay`` of an hour / 0                          ``set_silent``
connected   ``drop()`` / ``reconnect()``                          ``set_offline()`` / ``set_online()``
reboot      ``reboot()``, then the EV starts charging again       offline, then ``set_online(reboot=True)``
crash       the asset actor crashes (both kinds, both device sets: a :class:`CrashableLink` around the link)
==========  ===================================================  ===============================================

:func:`unsupported` says, as one sentence, why an action cannot be done for a kind of asset on a
kind of devices; the loader reports it against the event's ``action`` key.
"""

from __future__ import annotations

import logging
import threading
import time as _time
from typing import TYPE_CHECKING, Any, Callable

from protocols.base import CrashRequest, DeviceContext, DeviceLink, DeviceSink
from protocols.memory import InMemoryDevice

if TYPE_CHECKING:  # pragma: no cover
    from runtime.core.clock import Clock
    from runtime.core.commands import Command
    from runtime.site import Site

    from .model import FaultEvent, Scenario

log = logging.getLogger(__name__)

__all__ = ["unsupported", "CrashableLink", "MemoryDevices", "SimDevices", "make_devices"]

#: How long a "silent" OCPP charge point takes to answer (it never does within a scenario).
SILENT_DELAY_S = 3600.0
#: Charger states the charge point simulator can be put in by a ``status`` event.
SIM_CHARGER_STATES = ("FAULTED", "AVAILABLE")


def unsupported(action: str, kind: str, devices: str, value: Any = None) -> str | None:
    """Why ``action`` cannot be done to a ``kind`` asset with ``devices`` (one sentence), or None."""
    if devices != "sim":
        return None
    where = f"{action!r} cannot be done with devices = \"sim\" on a {kind}"
    if action == "fail_next":
        sim = "OCPP charge point simulator" if kind == "charger" else "Modbus battery simulator"
        return f"{where}: the {sim} cannot fail a counted number of commands (use reject or silent)"
    if action == "status" and kind == "battery":
        return f"{where}: the Modbus battery simulator has no state of its own (its state follows its power)"
    if action == "status" and kind == "charger" and isinstance(value, str) and value not in SIM_CHARGER_STATES:
        return (f"{where} with value {value!r}: the charge point simulator can only fault (FAULTED) and clear "
                f"the fault (AVAILABLE)")
    return None


class CrashableLink(DeviceLink):
    """A device link that can make its asset actor crash (the ``crash`` action for real links): it passes
    everything to ``inner`` and keeps the sink the actor gave it, to report a
    :class:`~protocols.base.CrashRequest` through it."""

    def __init__(self, inner: DeviceLink) -> None:
        self.inner = inner
        self.required_services = inner.required_services
        self._sink: DeviceSink | None = None

    async def start(self, ctx: DeviceContext, sink: DeviceSink) -> None:
        self._sink = sink
        await self.inner.start(ctx, sink)

    async def execute(self, command: "Command") -> Any:
        return await self.inner.execute(command)

    async def stop(self) -> None:
        await self.inner.stop()

    def crash_actor(self, reason: str = "injected crash") -> None:
        sink = self._sink
        if sink is not None:
            sink(CrashRequest(reason))

    def describe(self) -> str:
        return self.inner.describe()


class MemoryDevices:
    """In-memory devices: the Site makes them; an action is one call on the asset's device."""

    name = "memory"
    _ACTIONS: dict[str, Callable[[InMemoryDevice, Any], None]] = {
        "status": lambda d, v: d.report_status(str(v)),
        "reject": lambda d, v: d.reject(str(v) if v else None),
        "fail_next": lambda d, v: d.fail_next(int(v)),
        "silent": lambda d, v: d.set_silent(bool(v)),
        "connected": lambda d, v: d.set_connected(bool(v), rebooted=bool(v)),
        "reboot": lambda d, v: d.reboot(),
        "crash": lambda d, v: d.crash_actor(),
    }

    def links(self) -> dict[str, DeviceLink]:
        return {}

    def site_options(self) -> dict[str, Any]:
        return {}

    def started(self, site: "Site") -> None:
        pass

    def apply(self, site: "Site", event: "FaultEvent") -> None:
        device = site.device(event.asset)
        assert isinstance(device, InMemoryDevice)
        self._ACTIONS[event.action](device, event.value)

    def wait_idle(self, site: "Site") -> None:
        pass

    def stop(self) -> None:
        pass


class SimDevices:
    """The simulators over real sockets (see the module docstring). :meth:`links` (before the Site starts:
    the battery simulators listen), :meth:`started` (the charge points connect), :meth:`stop`."""

    name = "sim"

    def __init__(self, scenario: "Scenario", clock: "Clock", connect_timeout_s: float = 15.0) -> None:
        from runtime.core.iothread import IOThread
        self.scenario, self.clock = scenario, clock
        self.connect_timeout_s = connect_timeout_s
        self.io = IOThread(name="scenario-sims")
        self.chargers: dict[str, Any] = {}
        self.batteries: dict[str, Any] = {}
        self._links: dict[str, CrashableLink] = {}
        self._security: Any = None
        self._ack_timeout_s = scenario.timeouts.ack_timeout_s

    def links(self) -> dict[str, DeviceLink]:
        from protocols.modbus.link import ModbusBatteryLink
        from protocols.modbus.register_map import RegisterMap
        from protocols.ocpp.link import OcppChargerLink
        from protocols.sim.battery import BatterySim
        self.io.start()
        for asset in self.scenario.assets:
            inner: DeviceLink
            if asset.kind == "battery":
                sim = BatterySim(asset.capacity_kwh, asset.max_charge_kw, asset.max_discharge_kw,
                                 register_map=RegisterMap.default(), clock=self.clock, name=asset.id)
                self.io.call(sim.start(), timeout=10)
                self.batteries[asset.id] = sim
                inner = ModbusBatteryLink("127.0.0.1", sim.port, register_map=RegisterMap.default(),
                                          timeout=min(1.0, self._ack_timeout_s), reconnect_delay=0.05,
                                          reconnect_delay_max=0.5, poll_interval_s=30.0, name=asset.id)
            else:
                inner = OcppChargerLink(asset.id, phases=getattr(asset, "phases", 3),
                                        call_timeout=min(5.0, self._ack_timeout_s))
            self._links[asset.id] = CrashableLink(inner)
        return dict(self._links)

    def site_options(self) -> dict[str, Any]:
        if not any(a.kind == "charger" for a in self.scenario.assets):
            return {}
        from protocols.sim.pki import temporary_security
        ids = [a.id for a in self.scenario.assets if a.kind == "charger"]
        self._security = temporary_security(self.scenario.security_profile, ids, prefix="scenario-pki-")
        return {"ocpp": {"host": "127.0.0.1", "port": 0, "response_timeout": 5.0, "reconnect_grace": 0.3,
                         "allow_ids": ids, **self._security.server}}

    def started(self, site: "Site") -> None:
        """Connect every charge point to the site's central system, plug in an EV at each, and wait (bounded)
        until every asset's link is up."""
        from protocols.sim.chargepoint import ChargePointSim
        chargers = [a for a in self.scenario.assets if a.kind == "charger"]
        if chargers:
            url = site.service("ocpp").url
            for asset in chargers:
                secured = self._security.charge_point(asset.id) if self._security is not None else {}
                sim = ChargePointSim(asset.id, url, "1.6", max_kw=asset.max_kw, meter_interval=0,
                                     response_timeout=5.0, phases=getattr(asset, "phases", 3), **secured)
                self.chargers[asset.id] = sim
                self.io.call(sim.start(), timeout=10)
                self.io.call(sim.start_transaction(), timeout=10)
        for asset in self.scenario.assets:
            if not _wait(site, lambda a=asset.id: site.asset_status(a).link == "up", self.connect_timeout_s):
                from runtime.core.errors import DeviceError
                raise DeviceError(f"the simulated device of {asset.id} did not connect within "
                                  f"{self.connect_timeout_s:g} s")
        site.settle()

    def apply(self, site: "Site", event: "FaultEvent") -> None:
        """Do ``event`` to its simulator (on the simulators' loop), then wait (bounded, real time) until the site
        has seen its effect: a link down or up, a fault, or for a reboot the device connecting again."""
        v, action = event.value, event.action
        if action == "crash":
            self._links[event.asset].crash_actor()
            return
        if event.asset in self.chargers:
            cp = self.chargers[event.asset]
            calls: dict[str, Callable[[], Any]] = {
                "status": lambda: cp.fault() if v == "FAULTED" else cp.clear_fault(),
                "reject": lambda: _flag(cp.set_reject_profiles, bool(v)),
                "silent": lambda: _flag(cp.set_delay, SILENT_DELAY_S if v else 0.0),
                "connected": lambda: cp.reconnect() if v else cp.drop(),
                "reboot": lambda: _reboot_charger(cp),
            }
        else:
            bat = self.batteries[event.asset]
            calls = {
                "reject": lambda: _flag(bat.set_exception, (v if _is_exception_name(v) else "ILLEGAL_DATA_VALUE")
                                        if v else None),
                "silent": lambda: _flag(bat.set_silent, bool(v)),
                "connected": lambda: bat.set_online() if v else bat.set_offline(),
                "reboot": lambda: _reboot_battery(bat),
            }
        why = unsupported(action, self.scenario.kind(event.asset) or "?", "sim", v)
        if why is not None or action not in calls:
            from runtime.core.errors import ScenarioError
            what = why or f"{action} is not possible"
            raise ScenarioError(str(self.scenario.source or self.scenario.name),
                                [f"event at {event.at_s:g} s on {event.asset}: {what}"])
        if action != "reboot":
            self.io.call(calls[action](), timeout=15)
            self._until_seen(site, event)
            return
        # a reboot is seen as a new connection: the link reads "up" before the site has noticed the device
        # went, so only an ASSET_CONNECTED after the action says it is back (else the clock would run on
        # while the link reconnects in real time, and a command sent meanwhile would wait there and expire)
        from runtime.core.events import EventType
        back = threading.Event()
        unsubscribe = site.events.subscribe(
            EventType.ASSET_CONNECTED, lambda e: back.set() if e.payload.get("asset_id") == event.asset else None)
        try:
            self.io.call(calls[action](), timeout=15)
            if not _wait(site, back.is_set, self.connect_timeout_s):
                log.warning("scenario: reboot of %s at %g s: the site did not see it connect again within %g s",
                            event.asset, event.at_s, self.connect_timeout_s)
        finally:
            unsubscribe()

    def _until_seen(self, site: "Site", event: "FaultEvent") -> None:
        """Wait (bounded, real time) until the site has seen what the action did to the device (a link that
        went down or came back, a fault reported or cleared): over real sockets that takes real time, and the
        virtual clock must not run ahead of it."""
        asset, v = event.asset, event.value
        status = lambda: site.asset_status(asset)  # noqa: E731
        wanted: Callable[[], bool] | None = None
        if event.action == "connected":
            wanted = lambda: (status().link == "up") == bool(v)  # noqa: E731
        elif event.action == "status":
            wanted = lambda: (status().device_state == "FAULTED") == (v == "FAULTED")  # noqa: E731
        if wanted is not None and not _wait(site, wanted, self.connect_timeout_s):
            log.warning("scenario: %s of %s at %g s not seen by the site within %g s", event.action, asset,
                        event.at_s, self.connect_timeout_s)

    def wait_idle(self, site: "Site", timeout: float | None = None) -> None:
        """Wait (bounded, real time) until no command is on its way to a device: the virtual clock must not
        move on while a real socket still carries one (the dispatcher would time it out in virtual time)."""
        limit = timeout if timeout is not None else self._ack_timeout_s + 1.0
        if not _wait(site, lambda: not site.counts().get("DISPATCHED", 0), limit):
            log.warning("scenario: commands still on their way to simulated devices after %g s", limit)
        site.settle()

    def stop(self) -> None:
        from protocols.sim.fleet import stop_on
        stop_on(self.io, [*self.chargers.values(), *self.batteries.values()])
        if self._security is not None:
            self._security.close()


def _wait(site: "Site", done: Callable[[], bool], timeout: float) -> bool:
    """Wait (real time, at most ``timeout`` s) until ``done()``, checking again on every site event (and at
    least every 50 ms). True when it came true."""
    changed = threading.Event()
    unsubscribe = site.events.subscribe(None, lambda event: changed.set())
    try:
        deadline = _time.monotonic() + timeout
        while not done():
            remaining = deadline - _time.monotonic()
            if remaining <= 0:
                return False
            changed.wait(min(0.05, remaining))
            changed.clear()
        return True
    finally:
        unsubscribe()


async def _flag(setter: Callable[[Any], None], value: Any) -> None:
    """Flip a simulator flag on its own loop (its state belongs to that thread)."""
    setter(value)


async def _reboot_charger(cp: Any) -> None:
    await cp.reboot()
    await cp.start_transaction()  # the EV is still plugged in: it charges again once the charger is back


async def _reboot_battery(bat: Any) -> None:
    await bat.set_offline()
    await bat.set_online(reboot=True)


def _is_exception_name(value: Any) -> bool:
    from protocols.sim.battery import exception_code
    try:
        exception_code(value)
    except (KeyError, ValueError, TypeError):
        return False
    return True


def make_devices(scenario: "Scenario", devices: str, clock: "Clock") -> MemoryDevices | SimDevices:
    """The device set ``devices`` ("memory" or "sim") for ``scenario``."""
    return SimDevices(scenario, clock) if devices == "sim" else MemoryDevices()
