"""``coordinator check site.toml [--connect]``: validate a site configuration without running the site.

Without ``--connect`` it only loads the file (every problem reported at once, exit 2) and prints what
the site would be made of. With ``--connect`` it also probes each device once and prints a table:
asset, address, reachable, what it answered.

* A Modbus battery is probed by its own link: connect, discover the register map, read the probe and
  the telemetry once (bounded by the link's timeout).
* An OCPP charger cannot be called: the charger connects to the central system. The check starts the
  configured central system (host, port, allow-list, Basic auth) for ``wait_s`` seconds and reports, per
  charge point, whether it connected and booted, and what it said in its BootNotification.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, TextIO

from protocols.base import DeviceContext, LinkDown, LinkUp, Telemetry
from protocols.modbus.link import ModbusBatteryLink
from protocols.ocpp.central_system import CentralSystem, is_loopback
from protocols.ocpp.notifications import ChargerOnline
from runtime.config.build import device_link, ocpp_options
from runtime.config.models import BatteryConfig, ChargerConfig, SiteConfig
from runtime.core.clock import RealClock
from runtime.core.errors import ConfigurationError

log = logging.getLogger(__name__)

__all__ = ["Probe", "describe", "probe_devices", "print_probes"]


@dataclass(frozen=True)
class Probe:
    asset_id: str
    address: str
    reachable: bool
    answer: str


def describe(config: SiteConfig, out: TextIO) -> None:
    """What the site would be made of, one line per asset, then the policies."""
    print(f"site {config.site.name}: {len(config.assets)} assets", file=out)
    for a in config.assets:
        if isinstance(a, ChargerConfig):
            where = f"OCPP {a.ocpp.charge_point_id}" if a.ocpp is not None else "in-memory device"
            print(f"  {a.id:<12} charger  {a.max_kw:g} kW, {a.phases} phase(s), {where}", file=out)
        else:
            where = (f"Modbus {a.modbus.host}:{a.modbus.port} unit {a.modbus.unit_id} "
                     f"({a.modbus.register_map if isinstance(a.modbus.register_map, str) else 'custom map'})"
                     if a.modbus is not None else "in-memory device")
            print(f"  {a.id:<12} battery  {a.max_charge_kw:g}/{a.max_discharge_kw:g} kW, {a.capacity_kwh:g} kWh, "
                  f"{where}", file=out)
    g = config.grid
    if g.import_limit_kw is not None or g.export_limit_kw is not None:
        print(f"  grid limit: import {g.import_limit_kw} kW, export {g.export_limit_kw} kW ({g.policy})", file=out)
    print(f"  journal: {config.journal.dir} (fsync {config.journal.fsync})", file=out)
    if config.http is not None:
        print(f"  HTTP API and metrics: http://{config.http.listen}", file=out)
    _warn_unauthenticated_ocpp(config, out)


def _warn_unauthenticated_ocpp(config: SiteConfig, out: TextIO) -> None:
    """A warning line when the central system would listen beyond loopback and authenticate nobody."""
    try:
        options = ocpp_options(config)
    except ConfigurationError:  # reported by the caller (coordinator check exits 2 before describing)
        return
    if options is None or options["security_profile"] != 0 or is_loopback(options["host"]):
        return
    print(f"  WARNING: the OCPP central system listens on {options['host']}:{options['port']} and authenticates "
          f"nobody (security profile 0): anyone who reaches it can connect as a configured charge point; "
          f"set ocpp.password on every charger (profile 1) or use TLS ([ocpp] security_profile = 2 or 3)",
          file=out)


async def _probe_battery(asset: BatteryConfig, loop: asyncio.AbstractEventLoop) -> Probe:
    assert asset.modbus is not None
    link = device_link(asset)
    assert isinstance(link, ModbusBatteryLink)
    address = f"{asset.modbus.host}:{asset.modbus.port} unit {asset.modbus.unit_id}"
    seen: list[Any] = []
    got = asyncio.Event()

    def sink(event: Any) -> None:
        seen.append(event)
        if isinstance(event, (LinkUp, LinkDown, Telemetry)):
            loop.call_soon_threadsafe(got.set)

    clock = RealClock()
    try:
        await link.start(DeviceContext(loop, clock), sink)
        deadline = loop.time() + asset.modbus.timeout_s * 4 + 2
        while loop.time() < deadline and not any(isinstance(e, Telemetry) for e in seen) \
                and not any(isinstance(e, LinkDown) for e in seen):
            got.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await got.wait()
            except TimeoutError:
                break
    finally:
        await link.stop()
        clock.stop()
    tel = next((e for e in seen if isinstance(e, Telemetry)), None)
    up = any(isinstance(e, LinkUp) for e in seen)
    if up:
        values = ", ".join(f"{k} {v:g}" for k, v in (tel.values.items() if tel is not None else ()))
        return Probe(asset.id, address, True, f"answered ({link.register_map.describe()}){': ' + values if values else ''}")
    down = next((e for e in seen if isinstance(e, LinkDown)), None)
    return Probe(asset.id, address, False, down.reason if down is not None else "no answer")


async def _probe_chargers(config: SiteConfig, wait_s: float) -> list[Probe]:
    chargers = [a for a in config.assets if isinstance(a, ChargerConfig) and a.ocpp is not None]
    options = ocpp_options(config)
    if not chargers or options is None:
        return []
    cs = CentralSystem(**options)
    online: dict[str, ChargerOnline] = {}
    everyone = asyncio.Event()
    ids = {a.ocpp.charge_point_id for a in chargers if a.ocpp is not None}

    def listener(event: Any) -> None:
        if isinstance(event, ChargerOnline):
            online[event.cp_id] = event
            if ids <= online.keys():
                everyone.set()

    await cs.start()
    try:
        for cp_id in ids:
            cs.register_listener(cp_id, listener)
        try:
            async with asyncio.timeout(wait_s):
                await everyone.wait()
        except TimeoutError:
            pass
        probes = []
        for a in chargers:
            assert a.ocpp is not None
            cp = a.ocpp.charge_point_id
            scheme = "wss" if options.get("security_profile", 0) >= 2 else "ws"
            address = f"OCPP {cp} -> {scheme}://{options['host']}:{cs.port}/{cp}"
            if cp in online:
                rec = cs.charge_point(cp)
                boot = rec.boot if rec is not None else {}
                who = " ".join(str(boot.get(k)) for k in ("charge_point_vendor", "charge_point_model") if boot.get(k))
                probes.append(Probe(a.id, address, True, f"connected (OCPP {online[cp].version}"
                                                         f"{', ' + who if who else ''}; rate unit {online[cp].rate_unit})"))
            else:
                probes.append(Probe(a.id, address, False, f"did not connect within {wait_s:g} s"))
        return probes
    finally:
        await cs.stop()


async def probe_devices(config: SiteConfig, wait_s: float = 10.0) -> list[Probe]:
    """Probe every configured device once (see the module docstring); in-memory ones are skipped."""
    loop = asyncio.get_running_loop()
    batteries = [a for a in config.assets if isinstance(a, BatteryConfig) and a.modbus is not None]
    results = await asyncio.gather(_probe_chargers(config, wait_s), *(_probe_battery(b, loop) for b in batteries))
    probes = list(results[0]) + list(results[1:])
    order = {a.id: i for i, a in enumerate(config.assets)}
    return sorted(probes, key=lambda p: order[p.asset_id])


def print_probes(probes: list[Probe], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="devices")
    for column in ("asset", "address", "reachable", "answer"):
        table.add_column(column)
    for p in probes:
        table.add_row(p.asset_id, p.address, "yes" if p.reachable else "NO", p.answer)
    Console(file=out, width=140).print(table)
