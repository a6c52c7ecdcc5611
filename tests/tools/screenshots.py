"""Screenshots of the operator page's main views, for the README: sites, one site, the command form, history,
and the sites list at a phone's width.

    PYTHONPATH=. .venv/bin/python tests/tools/screenshots.py [--out tests/screenshots]

It runs what the browser tests run (tests/operator_page.py): a ``coordinator router`` process with the users
alice and viewer, two real edge sites with in-memory devices (e1 online, e2 offline after it has published
its capabilities), and headless Chromium at 1280x800 (and 390x844). So that the charts show an hour, a stand-in
edge first sends e1's last hour of telemetry as ordinary ``telemetry`` frames with their measurement times
(the router keeps them as it would a reconnecting edge's); then the real site takes over. The commands on the
pictures are sent through the page. PNGs are reduced to a 128-colour palette (Pillow) to stay small.
Needs Chromium and chromedriver from Debian (``bash tests/setup.sh``). Takes about half a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from protocols.edge.channels import device_channels, site_channels  # noqa: E402
from protocols.edge.wire import Capabilities, Device, Telemetry  # noqa: E402
from runtime.router.testkit import FakeEdge  # noqa: E402

from tests.operator_page import PASSWORDS, EdgeSite, Router, chrome, wait_for  # noqa: E402
from tests.servers import EDGE_SECRETS, http  # noqa: E402


def caps() -> Capabilities:
    """e1's capabilities, as the real site publishes them."""
    from protocols.edge.channels import CONTROLLERS
    devices = [Device(device_id="bat-1", kind="battery", channels=device_channels("battery", 50, 50)),
               Device(device_id="ev-1", kind="charger", channels=device_channels("charger", 22, 0)),
               Device(device_id="site", kind="site", channels=site_channels())]
    return Capabilities(devices=devices, controllers=dict(CONTROLLERS))


async def replay_hour(router: Router) -> None:
    """The hour before now, one frame per device every 30 s (a battery charging, then discharging; a car)."""
    edge = FakeEdge(router.ws_url, "e1", EDGE_SECRETS["e1"], caps=caps())
    await edge.connect()
    now = time.time()
    for i in range(120):
        at = now - 3600 + i * 30
        stamp = datetime.fromtimestamp(at, timezone.utc).isoformat()
        phase = i / 120
        power = -30_000 if phase < 0.55 else 18_000 + 4000 * math.sin(i / 4)        # W, > 0 discharging
        soc = 30 + 60 * min(phase, 0.55) - (35 * (phase - 0.55) if phase > 0.55 else 0)
        car = 11_000 + 3000 * math.sin(i / 9) if 0.2 < phase < 0.8 else 0.0
        await edge.send(Telemetry(device_id="bat-1", values={"ActivePower": power, "Soc": soc}, at=stamp))
        await edge.send(Telemetry(device_id="ev-1", values={"ActivePower": car}, at=stamp))
    await edge.close()


def shrink(path: Path) -> None:
    from PIL import Image
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshots of the operator page for the README.")
    parser.add_argument("--out", default=str(ROOT / "tests" / "screenshots"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp_name:
        tmp = Path(tmp_name)
        router = Router(tmp).start()
        e1 = e2 = driver = None
        try:
            asyncio.run(replay_hour(router))
            token = router.login("alice")
            e2 = EdgeSite(router.ws_url, "e2", tmp / "e2").start()
            wait_for(lambda: router.edge("e2", token).get("online"), 30, "e2 online")
            e2.stop()
            e1 = EdgeSite(router.ws_url, "e1", tmp / "e1").start()
            wait_for(lambda: router.edge("e1", token).get("online"), 30, "e1 online")
            e1.report(soc=48.5, power_kw=-18.0)
            driver = chrome(1280, 800)
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
            wait = WebDriverWait(driver, 30, poll_frequency=0.05)
            css = lambda sel: wait.until(lambda d: d.find_element(By.CSS_SELECTOR, sel))  # noqa: E731

            def shot(name: str, full: bool = False) -> None:
                path = out / f"{name}.png"
                if full:
                    height = driver.execute_script("return document.documentElement.scrollHeight")
                    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                        "width": 1280, "height": min(int(height), 2000), "deviceScaleFactor": 1, "mobile": False})
                driver.save_screenshot(str(path))
                if full:
                    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                           {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
                shrink(path)
                print(path)

            def send(device: str, channel: str, value: str, **more: str) -> str:
                Select(css("#cmd-device")).select_by_value(device)
                Select(css("#cmd-channel")).select_by_value(channel)
                if channel == "schedule":
                    Select(css("#cmd-value")).select_by_value(value)
                else:
                    css("#cmd-value").clear()
                    css("#cmd-value").send_keys(value)
                if "unit" in more:
                    Select(css("#cmd-unit")).select_by_value(more["unit"])
                if "duration" in more:
                    css("#cmd-duration").clear()
                    css("#cmd-duration").send_keys(more["duration"])
                css("#cmd-send").click()
                cid = wait.until(lambda d: d.find_element(By.ID, "cmd-result").get_attribute("data-command-id"))
                return str(cid)

            driver.get(router.url + "/ui/")
            css("#login-user").send_keys("alice")
            css("#login-password").send_keys(PASSWORDS["alice"])
            css("#login-submit").click()
            css('article.site-card[data-edge="e1"] .badge.online')
            driver.get(router.url + "/ui/#/site/e1")
            css("#command-form")
            for cid in (send("bat-1", "SetActivePower", "25", unit="kW"),
                        send("bat-1", "MinSoc", "20", duration="1800"),
                        send("ev-1", "SetChargePowerLimit", "11", unit="kW")):
                css(f'tr[data-command-id="{cid}"][data-state="EXECUTED"]')
            e1.report(soc=48.5, power_kw=-25.0)
            driver.get(router.url + "/ui/#/site/e2")
            css("#command-form")
            css(f'tr[data-command-id="{send("bat-1", "SetActivePower", "-10", unit="kW")}"][data-state="QUEUED"]')
            driver.get(router.url + "/ui/#/sites")
            css('article.site-card[data-edge="e1"] .overrides .left')
            css('article.site-card[data-edge="e2"] .badge.offline')
            shot("sites")
            driver.get(router.url + "/ui/#/site/e1")
            css("#chart-power svg polyline")
            css("#chart-soc svg polyline")
            wait.until(lambda d: "25 kW" in d.find_element(By.ID, "devices").text)
            driver.execute_script("document.getElementById('charts-h').scrollIntoView()")
            shot("site")
            driver.execute_script("window.scrollTo(0, 0)")
            Select(css("#cmd-device")).select_by_value("bat-1")
            Select(css("#cmd-channel")).select_by_value("SetActivePower")
            css("#cmd-value").send_keys("60")
            css("#cmd-send").click()
            css("#cmd-errors li")
            shot("command")
            http("POST", f"{router.url}/api/v1/commands", token, {   # a request past the page: refused
                "command_id": "script-60kW", "command_type": "setpoint", "value": 60000, "unit": "W",
                "target": {"edge_id": "e1", "device_id": "bat-1", "channel": "SetActivePower"}})
            driver.get(router.url + "/ui/#/history?range=1h")
            css("#history-body tr")
            wait.until(lambda d: d.find_element(By.ID, "history").get_attribute("data-loaded"))
            shot("history")
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
            driver.get(router.url + "/ui/#/sites")
            css('article.site-card[data-edge="e1"] .badge.online')
            shot("phone")
        finally:
            if driver is not None:
                driver.quit()
            for site in (e1, e2):
                if site is not None:
                    site.stop()
            router.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
