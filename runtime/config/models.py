"""The site configuration file, as pydantic models: strict types, unknown keys refused.

One TOML file describes a site (``coordinator run site.toml``)::

    [site]
    name = "depot-1"

    [[assets]]                      # a charger, driven over OCPP
    id = "ev-1"
    kind = "charger"
    max_kw = 22
    phases = 3
    ocpp = { charge_point_id = "CP0001", password = "secret" }

    [[assets]]                      # a battery, driven over Modbus TCP
    id = "bat-1"
    kind = "battery"
    max_charge_kw = 50
    max_discharge_kw = 50
    capacity_kwh = 100
    modbus = { host = "10.0.0.20", port = 502, unit_id = 1, register_map = "sunspec" }

    [ocpp]                          # the central system the chargers connect to
    host = "0.0.0.0"
    port = 9000

    [grid]                          # the site's connection: caps what the assets are told to draw / feed
    import_limit_kw = 100
    policy = "proportional"

    [journal]
    dir = "journal"

The same asset and policy models are used by scenario files (:mod:`runtime.scenario.model`), so both
are equally strict. Every model refuses keys it does not know (a typo is an error, not a silent
default) and values of the wrong type (``max_kw = "eleven"``); limits cannot be negative.
:func:`runtime.config.load_site_config` reports every problem at once, each naming the key path, the
value given and what was expected.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocols.ocpp.authorization import AuthorizeConfig

__all__ = [
    "Strict", "OcppConnection", "ModbusConnection", "ChargerConfig", "BatteryConfig", "AssetConfig",
    "OcppServerConfig", "JournalConfig", "RetryConfig", "TimeoutsConfig", "GridConfig", "HttpConfig",
    "FolderSourceConfig", "SourcesConfig", "CloudConfig", "ShutdownConfig", "LoggingConfig", "SiteSection",
    "SiteConfig", "NonNegative", "Positive",
]

NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


class Strict(BaseModel):
    """Base of every config model: unknown keys and loose types are errors; models are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---- assets ----------------------------------------------------------------------------------------

class OcppConnection(Strict):
    """How a charger is reached: the charge point id it connects to the site's central system as."""

    charge_point_id: Annotated[str, Field(min_length=1, max_length=48)]
    connector_id: Annotated[int, Field(ge=1)] = 1
    evse_id: Annotated[int, Field(ge=1)] = 1
    #: HTTP Basic password of this charge point (OCPP security profile 1); none: no authentication.
    password: Annotated[str, Field(min_length=1)] | None = None
    voltage: Positive = 230.0
    call_timeout_s: Positive = 10.0


class ModbusConnection(Strict):
    """How a battery is reached: a Modbus TCP server, a unit id and a register map."""

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    #: "default" (the seed map), "sunspec", or an inline table (see RegisterMap.from_config).
    register_map: Literal["default", "sunspec"] | dict[str, Any] = "default"
    #: SunSpec only: "storage" (model 124 rates) or "der" (model 704 WSet).
    sunspec_control: Literal["storage", "der"] = "storage"
    timeout_s: Positive = 1.0
    poll_interval_s: Positive = 5.0


class _AssetBase(Strict):
    id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
    #: Higher first when the grid limit is shared by priority.
    priority: int = 0
    #: Seconds a device gets to answer one command (default: [timeouts] ack_timeout_s).
    ack_timeout_s: Positive | None = None


class ChargerConfig(_AssetBase):
    """An EV charger: charges up to ``max_kw``."""

    kind: Literal["charger"]
    max_kw: NonNegative = 22.0
    phases: Literal[1, 2, 3] = 3
    ocpp: OcppConnection | None = None


class BatteryConfig(_AssetBase):
    """A stationary battery: charges up to ``max_charge_kw``, discharges up to ``max_discharge_kw``."""

    kind: Literal["battery"]
    max_charge_kw: NonNegative = 50.0
    max_discharge_kw: NonNegative = 50.0
    capacity_kwh: Positive = 100.0
    modbus: ModbusConnection | None = None


AssetConfig = Annotated[Union[ChargerConfig, BatteryConfig], Field(discriminator="kind")]


def duplicate_ids(ids: list[Any]) -> list[str]:
    """``[i].id: duplicate asset id 'x'`` for each repeated id (shared by the site and scenario models,
    and run by the loader on the raw file too, so that it is reported with every other problem)."""
    seen: set[Any] = set()
    problems = []
    for i, asset_id in enumerate(ids):
        if asset_id in seen:
            problems.append(f"[{i}].id: duplicate asset id {asset_id!r}")
        seen.add(asset_id)
    return problems


def check_unique_ids(assets: list[Any]) -> list[Any]:
    problems = duplicate_ids([a.id for a in assets])
    if problems:
        raise ValueError(problems[0])
    return assets


# ---- policies --------------------------------------------------------------------------------------

class RetryConfig(Strict):
    """Retries of failed or timed-out commands (see runtime.core.retry.RetryPolicy)."""

    max_attempts: Annotated[int, Field(ge=1)] = 3
    base_delay_s: NonNegative = 1.0
    factor: Annotated[float, Field(ge=1)] = 2.0
    max_delay_s: NonNegative = 60.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.1

    @model_validator(mode="after")
    def _delays(self) -> "RetryConfig":
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(f"max_delay_s ({self.max_delay_s}) must be >= base_delay_s ({self.base_delay_s})")
        return self


class TimeoutsConfig(Strict):
    ack_timeout_s: Positive = 10.0
    completion_timeout_s: Positive = 60.0


class GridConfig(Strict):
    """The site's grid connection. ``import_limit_kw`` caps the sum of what the assets are told to draw,
    ``export_limit_kw`` the sum of what they are told to feed in; none: no cap. ``policy`` says who gives
    way when the sources ask for more: "proportional" (everyone scaled by the same factor) or "priority"
    (by asset ``priority``, highest first)."""

    import_limit_kw: NonNegative | None = None
    export_limit_kw: NonNegative | None = None
    policy: Literal["proportional", "priority"] = "proportional"


class JournalConfig(Strict):
    """Where commands and events are journaled (relative paths are relative to the config file)."""

    dir: Annotated[str, Field(min_length=1)] = "journal"
    fsync: Literal["always", "batch", "never"] = "batch"
    #: Final commands are forgotten from memory this long after they ended (their ids stay known).
    retention_s: Positive = 3600.0
    #: How long a final command's id stays known (a duplicate is a no-op); every command expires at the
    #: latest this long after its scheduled time (a stale duplicate is EXPIRED, never applied).
    dedupe_window_s: Positive = 7 * 86400.0
    #: The command journal is compacted when the file being appended to reaches this size or this age.
    compact_max_log_bytes: Annotated[int, Field(ge=1)] = 8 * 1024 * 1024
    compact_interval_s: Positive = 6 * 3600.0
    #: Where a compaction runs: "process" (a child process, whose memory peak leaves with it) or "thread".
    compact_isolation: Literal["process", "thread"] = "process"
    #: The event journal keeps at most this much history (oldest segments deleted first).
    events_max_age_s: Positive = 7 * 86400.0
    events_max_bytes: Annotated[int, Field(ge=1)] = 256 * 1024 * 1024


class OcppServerConfig(Strict):
    """The OCPP central system the site's chargers connect to.

    ``security_profile`` (OCPP security profiles, see :mod:`protocols.ocpp.security`): 0 nobody is
    authenticated; 1 HTTP Basic auth (every charger's ``ocpp.password``); 2 TLS (``tls_cert``, ``tls_key``)
    and Basic auth; 3 TLS with client certificates (``tls_cert``, ``tls_key``, ``ca_cert``; no passwords).
    Absent: 1 when the chargers have passwords, else 0 (as before profiles could be chosen). The TLS
    files are PEM; a relative path is relative to the current directory of the process (where
    ``coordinator run`` is started), not to the site file: give absolute paths in production. They must
    exist when the file is loaded. ``[ocpp.authorize]``: which id tags may charge
    (:class:`~protocols.ocpp.authorization.AuthorizeConfig`; default: all).
    """

    host: Annotated[str, Field(min_length=1)] = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 9000
    #: Only these charge point ids may connect (default: the configured chargers and nobody else).
    allow_ids: list[str] | None = None
    #: "Accepted" or "Pending": the BootNotification answer for an id that is not configured.
    unknown_boot: Literal["Accepted", "Pending"] = "Accepted"
    heartbeat_interval_s: Annotated[int, Field(ge=1)] = 300
    response_timeout_s: Positive = 10.0
    security_profile: Literal[0, 1, 2, 3] | None = None
    #: The central system's certificate (chain) and its unencrypted private key (profiles 2 and 3).
    tls_cert: Annotated[str, Field(min_length=1)] | None = None
    tls_key: Annotated[str, Field(min_length=1)] | None = None
    #: The CA certificate(s) the chargers' client certificates must chain to (profile 3).
    ca_cert: Annotated[str, Field(min_length=1)] | None = None
    authorize: AuthorizeConfig = AuthorizeConfig()

    @model_validator(mode="after")
    def _tls(self) -> "OcppServerConfig":
        profile = self.security_profile
        files = {"tls_cert": self.tls_cert, "tls_key": self.tls_key, "ca_cert": self.ca_cert}
        if profile is not None:
            needed = ["tls_cert", "tls_key"] if profile >= 2 else []
            needed += ["ca_cert"] if profile == 3 else []
            missing = [k for k in needed if files[k] is None]
            if missing:
                raise ValueError(f"security_profile {profile} needs {' and '.join(missing)}")
            extra = [k for k, v in files.items() if v is not None and k not in needed]
            if extra:
                raise ValueError(f"{', '.join(extra)}: not used by security_profile {profile}"
                                 f"{' (plain ws)' if profile < 2 else ''}")
        elif any(v is not None for v in files.values()):
            raise ValueError("tls_cert, tls_key and ca_cert need security_profile = 2 or 3")
        missing_files = [f"{key}: no such file {value!r}" for key, value in files.items()
                         if value is not None and not Path(value).expanduser().is_file()]
        if missing_files:
            raise ValueError(f"{'; '.join(missing_files)} (a relative path is relative to the current directory, "
                             f"{os.getcwd()})")
        return self


def _host_port(value: str, key: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:8080), got {value!r}")
    return value


class HttpConfig(Strict):
    """The local HTTP API, the Prometheus metrics and /healthz + /readyz, on one address."""

    listen: str = "127.0.0.1:8080"
    #: Off by default: the API answers loopback clients only unless this is true.
    allow_remote: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _host_port(value, "listen")

    @model_validator(mode="after")
    def _loopback(self) -> "HttpConfig":
        host = self.listen.rpartition(":")[0].strip("[]")
        if not self.allow_remote:
            try:
                loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ValueError(f"listen: {self.listen!r} is not a loopback address; set allow_remote = true "
                                 f"to serve the API to other hosts")
        return self


class FolderSourceConfig(Strict):
    """A watched folder: CSV or Parquet schedules dropped in are submitted; a processed file moves to
    ``done/``, a refused one to ``failed/`` beside a ``.error`` file that says why."""

    path: Annotated[str, Field(min_length=1)]
    poll_s: Positive = 2.0
    #: asset_map for the schedules in this folder (schedule key -> asset id).
    asset_map: dict[str, str] = {}
    #: The time zone of naive CSV timestamps (e.g. "Europe/Berlin"); none: naive timestamps are refused.
    timezone: str | None = None


class SourcesConfig(Strict):
    folder: FolderSourceConfig | None = None


class CloudConfig(Strict):
    """The edge link to the cloud command router (actors.edge_link): one persistent WebSocket, commands
    journaled in ``cloud.jnl`` beside the site's journal."""

    url: Annotated[str, Field(pattern=r"^wss?://")]
    edge_id: Annotated[str, Field(min_length=1)]
    #: Sent as ``Authorization: Bearer <credential>`` in the WebSocket handshake.
    credential: Annotated[str, Field(min_length=1)]
    #: Device commands that may wait for their device; one more is rejected "edge_busy".
    queue_size: Annotated[int, Field(ge=0)] = 100
    #: Reconnect backoff with full jitter: a delay between 0 and min(max, min * 2**attempt) seconds.
    reconnect_min_s: Positive = 1.0
    reconnect_max_s: Positive = 60.0
    #: WebSocket pings; an unanswered one closes a half-open link (then it reconnects).
    ping_interval_s: Positive = 20.0
    ping_timeout_s: Positive = 20.0
    open_timeout_s: Positive = 10.0
    #: At most one telemetry frame per device this often; site_state frames at most this often.
    telemetry_interval_s: NonNegative = 10.0
    state_interval_s: NonNegative = 1.0
    #: A command id seen within this window is never executed again (keep it >= the router's command TTL).
    dedupe_window_s: Positive = 86400.0

    @model_validator(mode="after")
    def _backoff(self) -> "CloudConfig":
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s "
                             f"({self.reconnect_min_s})")
        return self


class ShutdownConfig(Strict):
    #: How long SIGTERM/SIGINT may take: in-flight commands finish or are journaled, devices close.
    timeout_s: Positive = 10.0


class LoggingConfig(Strict):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class SiteSection(Strict):
    name: Annotated[str, Field(min_length=1)] = "site"


class SiteConfig(Strict):
    """A whole site configuration file (see the module docstring)."""

    site: SiteSection = SiteSection()
    assets: Annotated[list[AssetConfig], Field(min_length=1)]
    ocpp: OcppServerConfig = OcppServerConfig()
    journal: JournalConfig = JournalConfig()
    retry: RetryConfig = RetryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    grid: GridConfig = GridConfig()
    http: HttpConfig | None = None
    sources: SourcesConfig = SourcesConfig()
    cloud: CloudConfig | None = None
    shutdown: ShutdownConfig = ShutdownConfig()
    logging: LoggingConfig = LoggingConfig()
    @field_validator("assets")
    @classmethod
    def _unique_ids(cls, assets: list[Any]) -> list[Any]:
        return check_unique_ids(assets)

    @model_validator(mode="after")
    def _connections(self) -> "SiteConfig":
        used: dict[tuple[Any, ...], str] = {}
        for i, asset in enumerate(self.assets):
            ocpp, modbus = getattr(asset, "ocpp", None), getattr(asset, "modbus", None)
            if ocpp is not None:
                key: tuple[Any, ...] = ("ocpp", ocpp.charge_point_id, ocpp.connector_id, ocpp.evse_id)
                where = f"assets[{i}].ocpp: charge point {ocpp.charge_point_id!r} connector {ocpp.connector_id}"
            elif modbus is not None:
                key = ("modbus", modbus.host, modbus.port, modbus.unit_id)
                where = f"assets[{i}].modbus: {modbus.host}:{modbus.port} unit {modbus.unit_id}"
            else:
                continue
            other = used.setdefault(key, asset.id)
            if other != asset.id:
                raise ValueError(f"{where} is already used by asset {other!r}")
        return self
