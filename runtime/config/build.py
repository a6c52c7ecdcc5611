"""From a validated configuration to the objects a site is made of: asset specs with their device
links, and the keyword arguments of :class:`~runtime.site.Site`.

Nothing here starts anything: links are created, not connected. ``links`` lets the caller put its own
link in place of an asset's configured one (``coordinator run --simulate`` points every asset at a
simulator this way).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protocols.base import DeviceLink
from protocols.modbus.link import ModbusBatteryLink
from protocols.modbus.register_map import sunspec_map
from protocols.ocpp.central_system import resolve_security_profile
from protocols.ocpp.link import OcppChargerLink
from protocols.ocpp.security import server_context
from runtime.core.assets import AssetSpec, BatterySpec, ChargerSpec
from runtime.core.errors import ConfigurationError
from runtime.core.retention import CompactionPolicy, EventRetention
from runtime.core.retry import RetryPolicy

from .models import BatteryConfig, ChargerConfig, RetryConfig, SiteConfig

__all__ = ["device_link", "asset_spec", "asset_specs", "retry_policy", "site_options", "ocpp_options"]


def device_link(asset: ChargerConfig | BatteryConfig) -> DeviceLink | None:
    """The configured link of ``asset``; None when it has no connection (an in-memory device)."""
    if isinstance(asset, ChargerConfig):
        c = asset.ocpp
        if c is None:
            return None
        return OcppChargerLink(c.charge_point_id, connector_id=c.connector_id, evse_id=c.evse_id, voltage=c.voltage,
                               phases=asset.phases, call_timeout=c.call_timeout_s)
    m = asset.modbus
    if m is None:
        return None
    register_map: Any = m.register_map
    if register_map == "sunspec":
        register_map = sunspec_map(control=m.sunspec_control)
    return ModbusBatteryLink(m.host, m.port, device_id=m.unit_id, register_map=register_map, timeout=m.timeout_s,
                             poll_interval_s=m.poll_interval_s, name=asset.id)


def asset_spec(asset: ChargerConfig | BatteryConfig, link: DeviceLink | None) -> AssetSpec:
    if isinstance(asset, ChargerConfig):
        return ChargerSpec(asset.id, max_kw=asset.max_kw, device=link, ack_timeout_s=asset.ack_timeout_s)
    return BatterySpec(asset.id, max_charge_kw=asset.max_charge_kw, max_discharge_kw=asset.max_discharge_kw,
                       capacity_kwh=asset.capacity_kwh, device=link, ack_timeout_s=asset.ack_timeout_s)


def asset_specs(config: SiteConfig, links: Mapping[str, DeviceLink] | None = None) -> list[AssetSpec]:
    """One spec per configured asset; ``links[asset_id]`` replaces that asset's configured link."""
    links = links or {}
    return [asset_spec(a, links[a.id] if a.id in links else device_link(a)) for a in config.assets]


def retry_policy(config: RetryConfig) -> RetryPolicy:
    return RetryPolicy(max_attempts=config.max_attempts, base_delay_s=config.base_delay_s, factor=config.factor,
                       max_delay_s=config.max_delay_s, jitter=config.jitter)


def ocpp_options(config: SiteConfig) -> dict[str, Any] | None:
    """Keyword arguments of the OCPP central system; None when no asset uses OCPP.

    The allow-list defaults to the configured charge point ids, so a stranger cannot connect. Basic
    auth (security profiles 1 and 2) uses the chargers' passwords; it must then be all of them (a
    charger without one could not connect). Without ``security_profile`` the profile is 1 when the
    chargers have passwords, else 0. The TLS files of profiles 2 and 3 are loaded here once, so that a
    file that is not a certificate or key is reported by ``coordinator check``; the id-tag policy is
    ``[ocpp.authorize]``."""
    chargers = [a for a in config.assets if isinstance(a, ChargerConfig) and a.ocpp is not None]
    if not chargers:
        return None
    with_password = [a for a in chargers if a.ocpp is not None and a.ocpp.password is not None]
    if with_password and len(with_password) != len(chargers):
        missing = [a.id for a in chargers if a.ocpp is not None and a.ocpp.password is None]
        raise ConfigurationError(f"assets: ocpp.password is set for some chargers but not for {', '.join(missing)}; "
                                 f"with Basic auth every charge point needs one")
    s = config.ocpp
    ids = sorted({a.ocpp.charge_point_id for a in chargers if a.ocpp is not None})
    options: dict[str, Any] = {
        "host": s.host, "port": s.port, "allow_ids": s.allow_ids if s.allow_ids is not None else ids,
        "unknown_boot": s.unknown_boot, "heartbeat_interval": s.heartbeat_interval_s,
        "response_timeout": s.response_timeout_s, "authorize": s.authorize}
    if with_password:
        options["basic_auth"] = {a.ocpp.charge_point_id: a.ocpp.password for a in with_password
                                 if a.ocpp is not None and a.ocpp.password is not None}
    tls = {key: str(Path(value).expanduser()) for key, value in
           (("tls_cert", s.tls_cert), ("tls_key", s.tls_key), ("ca_cert", s.ca_cert)) if value is not None}
    try:
        profile = resolve_security_profile(s.security_profile, basic_auth=bool(with_password),
                                           tls_cert="tls_cert" in tls, tls_key="tls_key" in tls,
                                           ca_cert="ca_cert" in tls)
    except ConfigurationError as exc:
        hint = ("set ocpp.password on every charger" if s.security_profile in (1, 2)
                else "remove the chargers' ocpp.password")
        raise ConfigurationError(f"ocpp.security_profile: {exc}; {hint}") from None
    if profile >= 2:
        try:
            server_context(tls["tls_cert"], tls["tls_key"], tls.get("ca_cert"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"ocpp.tls_cert / tls_key / ca_cert cannot be loaded: {exc}") from None
    options.update(security_profile=profile, **tls)
    return options


def site_options(config: SiteConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`~runtime.site.Site` (everything but the assets and the clock)."""
    j = config.journal
    options: dict[str, Any] = {
        "journal_dir": j.dir, "fsync": j.fsync, "retention_s": j.retention_s, "dedupe_window_s": j.dedupe_window_s,
        "compaction": CompactionPolicy(max_log_bytes=j.compact_max_log_bytes, interval_s=j.compact_interval_s,
                                       isolation=j.compact_isolation),
        "event_retention": EventRetention(max_age_s=j.events_max_age_s, max_bytes=j.events_max_bytes),
        "retry": retry_policy(config.retry), "ack_timeout_s": config.timeouts.ack_timeout_s,
        "completion_timeout_s": config.timeouts.completion_timeout_s, "ocpp": ocpp_options(config)}
    return options
