"""What the operator page's browser tests and the screenshot script share: a router process configured with
users, real edge sites (a runtime Site with in-memory devices and a cloud link to the router), and headless
Chromium driven by selenium.

Chromium and its driver come from Debian (``chromium``, ``chromium-driver``; ``bash tests/setup.sh`` installs
them). Selenium is given both paths, so it never tries to download a browser; as root Chromium needs
``--no-sandbox``. A missing binary fails with that instruction instead of skipping.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from runtime.router.passwords import hash_password

from tests.servers import AUDIENCE, EDGE_SECRETS, SECRET, RouterProcess, free_port, http

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORDS = {"alice": "alice-password-1", "viewer": "viewer-password-1"}
#: Hashed once per process (scrypt takes a moment).
_HASHES: dict[str, str] = {}


def _hash(user: str) -> str:
    if user not in _HASHES:
        _HASHES[user] = hash_password(PASSWORDS[user])
    return _HASHES[user]


def router_toml(tmp: Path, port: int, *, refresh_s: float = 1.0, login_limit: str = "100/minute") -> Path:
    """router.toml for the page's tests: HS256, edges e1..e5, users alice (commands everything) and viewer
    (watches everything), the page refreshing every ``refresh_s``."""
    edges = "\n".join(f'{k} = "{v}"' for k, v in EDGE_SECRETS.items())
    text = f"""instance_id = "ui-tests"
ack_timeout_s = 10.0

[listen]
host = "127.0.0.1"
port = {port}
ping_interval_s = 5.0
ping_timeout_s = 5.0

[auth]
audience = "{AUDIENCE}"
hs256_secret = "{SECRET}"

[edges]
{edges}

[store]
sqlite = "{tmp / 'router.sqlite'}"

[limits]
user = "1000/second"
edge = "1000/second"
handshake = "1000/second"
login = "{login_limit}"
login_address = "1000/minute"

[users.alice]
password = "{_hash('alice')}"
can_control = ["*"]
can_view = ["*"]

[users.viewer]
password = "{_hash('viewer')}"
can_view = ["*"]

[ui]
refresh_s = {refresh_s}
telemetry_bucket_s = 30
"""
    path = tmp / "router.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Router:
    """``coordinator router`` as a process on a fixed port (so a restart comes back at the same address)."""

    def __init__(self, tmp: Path, **kw: Any) -> None:
        self.port = free_port()
        self.config = router_toml(tmp, self.port, **kw)
        self.proc: RouterProcess | None = None

    def start(self) -> "Router":
        self.proc = RouterProcess(self.config, self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def login(self, user: str) -> str:
        status, _, body = http("POST", f"{self.url}/api/v1/login", body={"username": user,
                                                                         "password": PASSWORDS[user]})
        assert status == 200, body
        return str(body["token"])

    def edge(self, edge_id: str, token: str) -> dict[str, Any]:
        status, _, body = http("GET", f"{self.url}/api/v1/edges/{edge_id}", token)
        return body if status == 200 else {}


class EdgeSite:
    """A real edge: a runtime Site on the real clock with an in-memory battery (50 kW) and charger (22 kW),
    linked to the router as ``edge_id``. Its journal stays in ``folder`` across :meth:`stop` / :meth:`start`."""

    def __init__(self, router_ws: str, edge_id: str, folder: Path) -> None:
        self.url = router_ws + "/ws/edge"
        self.edge_id = edge_id
        self.folder = folder
        self.site: Any = None

    def start(self) -> "EdgeSite":
        from actors.edge_link import EdgeLinkOptions
        from runtime import BatterySpec, ChargerSpec, RealClock, Site
        options = EdgeLinkOptions(url=self.url, edge_id=self.edge_id, credential=EDGE_SECRETS[self.edge_id],
                                  reconnect_min_s=0.05, reconnect_max_s=0.5, telemetry_interval_s=0,
                                  state_interval_s=0, ping_interval_s=5, ping_timeout_s=5, seed=3)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clock = RealClock()
        self.site = Site([BatterySpec("bat-1", max_charge_kw=50, max_discharge_kw=50),
                          ChargerSpec("ev-1", max_kw=22)], clock=self.clock, journal_dir=self.folder,
                         cloud=options).start()
        return self

    def stop(self) -> None:
        if self.site is not None:
            try:
                self.site.stop()
            finally:
                self.clock.stop()   # the Site does not own the clock it is given
                self.site = None

    def device(self, asset_id: str) -> Any:
        return self.site.device(asset_id)

    def report(self, soc: float, power_kw: float) -> None:
        """The battery reports its state of charge and power (> 0 charging, as the site measures it)."""
        self.device("bat-1").report_telemetry(soc_pct=soc, power_kw=power_kw)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (bounded) from the test thread; returns its truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)  # polling a process across a socket; no logic waits on this


def chrome(width: int = 1280, height: int = 800, downloads: Path | None = None) -> Any:
    """Headless Chromium (Debian's) with its browser log kept, at ``width`` x ``height``."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: run bash tests/setup.sh (apt: chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--password-store=basic", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False,
                                                  "safebrowsing.enabled": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(width, height)
    return driver


def console_errors(driver: Any, allowed: tuple[str, ...] = ()) -> list[str]:
    """The browser's SEVERE log entries since the last call, but those containing one of ``allowed``."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def have_chromium() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists() and shutil.which("chromium") is not None


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
