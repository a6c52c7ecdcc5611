"""``coordinator run --simulate``: every configured device started as a simulator, in the same process.

Chargers become :class:`~protocols.sim.chargepoint.ChargePointSim` charge points that connect over a
real websocket to the site's OCPP central system (with the configured charge point id and password),
batteries become :class:`~protocols.sim.battery.BatterySim` Modbus TCP servers on free loopback ports
(with the configured register map), and each battery's link is pointed at its simulator. The
simulators run on an I/O thread of their own, as a real device would run elsewhere: the site cannot
tell them from hardware.

Security profiles 1-3 are simulated too (:mod:`protocols.sim.pki`): profile 1 and 2 chargers present their
configured passwords; under profiles 2 and 3 the site and the simulators use a throwaway CA made at start
(the configured ``tls_cert``, ``tls_key`` and ``ca_cert`` are checked by ``coordinator check`` but not used:
a simulator cannot get a client certificate from a CA whose key the site does not hold), with a client
certificate per charge point under profile 3. The certificates live in a temporary folder removed at stop.
"""

from __future__ import annotations

import logging
from typing import Any

from protocols.base import DeviceLink
from protocols.modbus.link import ModbusBatteryLink
from protocols.modbus.register_map import load_register_map, sunspec_map
from protocols.sim.battery import BatterySim
from protocols.sim.chargepoint import ChargePointSim
from protocols.sim.fleet import stop_on
from protocols.sim.pki import SimulatedSecurity, temporary_security
from runtime.config.models import BatteryConfig, ChargerConfig, SiteConfig
from runtime.core.iothread import IOThread

log = logging.getLogger(__name__)

__all__ = ["Simulators"]


class Simulators:
    """The simulated devices of one site configuration. :meth:`start_batteries` before the site starts
    (it returns the links to use), :meth:`start_chargers` once the central system listens, :meth:`stop`."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.io = IOThread(name="simulators")
        self.batteries: dict[str, BatterySim] = {}
        self.chargers: dict[str, ChargePointSim] = {}
        self.security: SimulatedSecurity | None = None

    def secure(self, ocpp: dict[str, Any]) -> dict[str, Any]:
        """The central system's options (``ocpp``, from :func:`~runtime.config.build.ocpp_options`) for the
        simulated chargers: under security profiles 2 and 3 with the throwaway PKI's files instead of the
        configured ones (and a log line saying so)."""
        profile = int(ocpp.get("security_profile") or 0)
        ids = [a.ocpp.charge_point_id for a in self.config.assets if isinstance(a, ChargerConfig) and a.ocpp]
        passwords = {a.ocpp.charge_point_id: a.ocpp.password for a in self.config.assets
                     if isinstance(a, ChargerConfig) and a.ocpp is not None and a.ocpp.password is not None}
        self.security = temporary_security(profile, ids, passwords)
        if self.security.directory is not None:
            log.info("simulated chargers: security profile %d with a throwaway CA in %s (the configured "
                     "certificates are not used with --simulate)", profile, self.security.directory)
        secured = {k: v for k, v in ocpp.items() if k not in ("tls_cert", "tls_key", "ca_cert")}
        return {**secured, **self.security.server}

    def start_batteries(self) -> dict[str, DeviceLink]:
        """Start one battery simulator per battery; returns {asset_id: link to its simulator}."""
        self.io.start()
        links: dict[str, DeviceLink] = {}
        for asset in self.config.assets:
            if not isinstance(asset, BatteryConfig):
                continue
            m = asset.modbus
            spec: Any = m.register_map if m is not None else "default"
            control = m.sunspec_control if m is not None else "storage"
            register_map = sunspec_map(control=control) if spec == "sunspec" else load_register_map(spec)
            sim = BatterySim(asset.capacity_kwh, asset.max_charge_kw, asset.max_discharge_kw, register_map=register_map,
                             host="127.0.0.1", port=0, device_id=m.unit_id if m is not None else 1, name=asset.id)
            self.io.call(sim.start(), timeout=10)
            self.batteries[asset.id] = sim
            links[asset.id] = ModbusBatteryLink("127.0.0.1", sim.port, device_id=sim.device_id,
                                                register_map=register_map, name=asset.id,
                                                poll_interval_s=m.poll_interval_s if m is not None else 5.0)
            log.info("simulated battery %s listening on 127.0.0.1:%d", asset.id, sim.port)
        return links

    def start_chargers(self, central_system_url: str) -> None:
        """Start one charge point simulator per OCPP charger, connecting to ``central_system_url``."""
        if not self.io.running:
            self.io.start()
        for asset in self.config.assets:
            if not isinstance(asset, ChargerConfig) or asset.ocpp is None:
                continue
            c = asset.ocpp
            secured = self.security.charge_point(c.charge_point_id) if self.security else {"password": c.password}
            sim = ChargePointSim(c.charge_point_id, central_system_url, "1.6", max_kw=asset.max_kw,
                                 connector_id=c.connector_id, phases=asset.phases, auto_reconnect=True, **secured)
            self.io.call(sim.start(), timeout=10)
            self.chargers[asset.id] = sim
            log.info("simulated charger %s (charge point %s) connected to %s", asset.id, c.charge_point_id,
                     central_system_url)

    def stop(self) -> None:
        """Stop every simulator and remove the throwaway certificates. Idempotent."""
        stop_on(self.io, [*self.chargers.values(), *self.batteries.values()])
        if self.security is not None:
            self.security.close()
