"""The router's configuration file (``router.toml``): strict pydantic models, every problem at once.

Unknown keys are refused (with the nearest known key as a hint), like the site's file. The router may not
import :mod:`runtime.config` (it pulls in the device protocols), so these models live here and borrow only
:func:`runtime.config.errors.describe_errors`, which imports nothing but pydantic and the ground floor.

::

    instance_id = "router-a"          # default: <host>:<port>; unique in a fleet
    ack_timeout_s = 10                # no ack within this after a send -> TIMED_OUT
    default_expiry_s = 86400          # a command without expiry_sec expires this long after it arrived

    [listen]
    host = "127.0.0.1"
    port = 8080
    ping_interval_s = 20              # websocket pings to every peer; no pong within ping_timeout_s -> closed
    ping_timeout_s = 20

    [auth]
    audience = "qubit-router"         # every token's aud must name it
    hs256_secret = "..."              # and/or public keys, and/or a JWKS URL
    jwks_url = "https://idp.example/.well-known/jwks.json"
    [[auth.public_keys]]
    alg = "EdDSA"                     # or RS256
    kid = "k1"                        # optional; matched against the token header's kid
    path = "keys/ed25519.pub"         # or pem = "-----BEGIN PUBLIC KEY-----..."

    [edges]                           # per-edge secrets (plain, or "sha256:<hex>" of the secret)
    site1_edge_prod = "sha256:9f86d0..."

    [store]
    sqlite = "router.sqlite"          # queue (and audit, unless [postgres]); relative to this file

    [redis]                           # fleet: queue in Redis Streams, owner keys, pub/sub, shared limits
    url = "redis://127.0.0.1:6379/0"

    [postgres]                        # the audit log in PostgreSQL
    dsn = "postgresql://router@db/router"

    [limits]                          # limits' rate strings
    user = "20/second"
    edge = "50/second"
    handshake = "200/second"
    login = "10/minute"               # sign-in attempts per user name
    login_address = "50/minute"       # ... and per client address

    [users.alice]                     # who may sign in to the operator page with a password
    password = "scrypt:16384:8:1:..." # a hash from `coordinator token password`, never the password
    can_control = ["*"]               # edges alice may command ("*": all)
    can_view = []                     # edges alice may only watch
    [users.viewer]
    password = "scrypt:16384:8:1:..."
    can_view = ["*"]

    [ui]                              # the operator page (/ui/)
    enabled = true
    session_secret = "..."            # signs the page's session tokens (default: [auth] hs256_secret)
    session_ttl_s = 3600              # a sign-in lasts this long
    refresh_s = 5                     # the page re-reads the edges (and charts) this often
    telemetry_window_s = 3600         # the charts' span (kept in memory, per edge and device)
    telemetry_bucket_s = 30           # one chart point (mean, min, max) per bucket
    telemetry_max_series = 10000      # (edge, device, value) series kept at most

Signing in with a password needs a key the router signs session tokens with: ``[ui] session_secret``, or else
``[auth] hs256_secret``; a file with ``[users]`` and neither is refused.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from runtime.config.errors import describe_errors
from runtime.core.errors import ConfigFileError

__all__ = ["RouterConfig", "ListenConfig", "AuthConfig", "PublicKeyConfig", "StoreConfig", "RedisConfig",
           "PostgresConfig", "LimitsConfig", "UserConfig", "UiConfig", "load_router_config", "parse_router_config"]

Positive = Annotated[float, Field(gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    #: Websocket pings from the router to every peer (uvicorn's ws_ping_interval / ws_ping_timeout): a link
    #: that stops answering is closed, so a half-open edge is noticed and its registry entry dropped.
    ping_interval_s: Positive = 20.0
    ping_timeout_s: Positive = 20.0
    #: How long a connected edge may take to send its hello.
    hello_timeout_s: Positive = 10.0
    #: Frames queued to one peer beyond this: the peer is too slow and is disconnected.
    max_outbox: Annotated[int, Field(ge=10)] = 50_000
    #: permessage-deflate on the websockets: frames are a few hundred bytes, so it costs CPU and saves little.
    compression: bool = False
    backlog: Annotated[int, Field(ge=16)] = 4096


class PublicKeyConfig(Strict):
    alg: Literal["RS256", "EdDSA"]
    kid: str | None = None
    pem: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "PublicKeyConfig":
        if (self.pem is None) == (self.path is None):
            raise ValueError("give exactly one of pem or path")
        return self


class AuthConfig(Strict):
    audience: Annotated[str, Field(min_length=1)]
    issuer: str | None = None
    hs256_secret: Annotated[str, Field(min_length=32)] | None = None
    public_keys: list[PublicKeyConfig] = []
    jwks_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    #: Seconds of clock skew tolerated on exp and nbf.
    leeway_s: Annotated[float, Field(ge=0, le=300)] = 0.0

    @model_validator(mode="after")
    def _some_key(self) -> "AuthConfig":
        if self.hs256_secret is None and not self.public_keys and self.jwks_url is None:
            raise ValueError("give at least one of hs256_secret, public_keys or jwks_url")
        return self


class StoreConfig(Strict):
    #: SQLite file of the command queue (and of the audit log when no [postgres] is set).
    sqlite: str = "router.sqlite"
    #: Final commands are kept this long (idempotency of their ids, GET /api/v1/commands), then purged.
    retention_s: Positive = 7 * 24 * 3600.0
    #: SQLite commits are at least this far apart (one commit covers every change in between; what a change
    #: vouches for leaves only after its commit): more commands per commit at a steady rate, at most this much
    #: more latency per step.
    commit_interval_s: Annotated[float, Field(ge=0, le=0.1)] = 0.002


class RedisConfig(Strict):
    url: Annotated[str, Field(pattern=r"^rediss?://")]
    #: Key prefix: several fleets (or tests) can share one Redis.
    prefix: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")] = "rt"
    #: An edge's owner key lives this long unless its router refreshes it (every third of it).
    owner_ttl_s: Annotated[float, Field(ge=1)] = 15.0
    #: Each connected edge's queue is also polled this often (a poke on pub/sub is not guaranteed).
    poll_s: Positive = 1.0


class PostgresConfig(Strict):
    dsn: Annotated[str, Field(min_length=1)]
    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "router_audit"


class LimitsConfig(Strict):
    #: Commands per user (the token's sub) and per target edge, as limits' rate strings ("20/second",
    #: "100 per minute"; several separated by ";").
    user: str = "20/second"
    edge: str = "50/second"
    #: Websocket handshakes this router instance accepts (edges and clients): a reconnect storm is spread
    #: out instead of taking the instance down (HTTP 429 with Retry-After beyond it).
    handshake: str = "200/second"
    #: Sign-in attempts (POST /api/v1/login) per user name: each attempt costs a password hash (~50 ms of
    #: CPU), and guessing gets slow.
    login: str = "10/minute"
    #: The same, per client address (higher: many people may sign in from behind one address).
    login_address: str = "50/minute"
    strategy: Literal["moving-window", "fixed-window", "sliding-window-counter"] = "moving-window"

    @field_validator("user", "edge", "handshake", "login", "login_address")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse_many
        try:
            parse_many(value)
        except ValueError:
            raise ValueError(f"not a rate limit (e.g. '20/second' or '100 per minute'): {value!r}") from None
        return value


EdgeList = list[Annotated[str, Field(min_length=1, max_length=128)]]


class UserConfig(Strict):
    """One user of the operator page (``[users.<name>]``): a password hash and the edges the user may command
    or watch, as the can_control / can_view claims of the session token the router signs at sign-in."""

    password: str
    can_control: EdgeList = []
    can_view: EdgeList = []

    @field_validator("password")
    @classmethod
    def _hashed(cls, value: str) -> str:
        from .passwords import check_hash
        problem = check_hash(value)
        if problem is not None:
            shown = "scrypt:..." if value.startswith("scrypt:") else "a value that is not a hash"
            raise ValueError(f"{problem}; got {shown}. Store only the hash that `coordinator token password` "
                             "prints, never the password itself")
        return value


class UiConfig(Strict):
    """The operator page (``[ui]``, see the module docstring)."""

    enabled: bool = True
    #: Signs the session tokens of password sign-ins (HS256); default: [auth] hs256_secret.
    session_secret: Annotated[str, Field(min_length=32)] | None = None
    session_ttl_s: Annotated[float, Field(ge=60, le=7 * 86400)] = 3600.0
    refresh_s: Annotated[float, Field(ge=0.5, le=300)] = 5.0
    telemetry_window_s: Annotated[float, Field(ge=60, le=86400)] = 3600.0
    telemetry_bucket_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    telemetry_max_series: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000

    @model_validator(mode="after")
    def _buckets(self) -> "UiConfig":
        points = self.telemetry_window_s / self.telemetry_bucket_s
        if points > 2000:
            raise ValueError(f"telemetry_window_s / telemetry_bucket_s is {points:g} points per chart; at most "
                             "2000 (raise telemetry_bucket_s)")
        return self


class RouterConfig(Strict):
    """A whole ``router.toml`` (see the module docstring)."""

    instance_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] | None = None
    ack_timeout_s: Positive = 10.0
    default_expiry_s: Annotated[float, Field(gt=0, le=30 * 24 * 3600)] = 86400.0
    #: After a restart, commands that were in flight get this long (plus ack_timeout_s) for their edge to
    #: reconnect and re-send its acks before they time out: the router's own downtime is not the edge's fault.
    restart_grace_s: Annotated[float, Field(ge=0)] = 30.0
    listen: ListenConfig = ListenConfig()
    auth: AuthConfig
    edges: dict[Annotated[str, Field(min_length=1, max_length=128)], Annotated[str, Field(min_length=16)]] = {}
    store: StoreConfig = StoreConfig()
    redis: RedisConfig | None = None
    postgres: PostgresConfig | None = None
    limits: LimitsConfig = LimitsConfig()
    users: dict[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")],
                UserConfig] = {}
    ui: UiConfig = UiConfig()
    #: The folder relative paths are resolved against (the config file's); set by the loader.
    _base_dir: str = PrivateAttr(default=".")

    @model_validator(mode="after")
    def _session_key(self) -> "RouterConfig":
        if self.users and self.session_secret() is None:
            raise ValueError("users: signing in with a password needs a key to sign the session tokens: set "
                             "[ui] session_secret (32 characters or more) or [auth] hs256_secret")
        return self

    def session_secret(self) -> str | None:
        """The key session tokens are signed with: ``[ui] session_secret``, else ``[auth] hs256_secret``."""
        return self.ui.session_secret or self.auth.hs256_secret

    def instance(self) -> str:
        """This instance's id: ``instance_id``, else ``<host>:<port>``."""
        return self.instance_id or f"{socket.gethostname()}:{self.listen.port}"

    def path(self, value: str) -> Path:
        """``value`` resolved against the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else Path(self._base_dir) / p


def parse_router_config(data: dict[str, Any], path: str = "router.toml") -> RouterConfig:
    """A validated :class:`RouterConfig` from a TOML table; ConfigFileError with every problem otherwise."""
    try:
        config = RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigFileError(str(path), describe_errors(exc, RouterConfig)) from None
    config._base_dir = str(Path(path).resolve().parent)
    return config


def load_router_config(path: str | os.PathLike[str]) -> RouterConfig:
    """Read and validate a router file; :class:`~runtime.core.errors.ConfigFileError` (one line per problem)
    when it is missing, not TOML or not valid."""
    p = Path(path)
    if p.is_dir():
        raise ConfigFileError(str(p), ["is a folder, not a file"])
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(str(p), ["no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(str(p), [f"cannot be read: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(str(p), [f"not valid TOML: {exc}"]) from None
    config = parse_router_config(data, str(p))
    problems = [f"auth.public_keys[{i}].path: no such file: {config.path(k.path)}"
                for i, k in enumerate(config.auth.public_keys) if k.path and not config.path(k.path).is_file()]
    if problems:
        raise ConfigFileError(str(p), problems)
    return config
