"""The operator page in a real browser: headless Chromium (Debian's) driven by selenium, against a real
``coordinator router`` process and real edge sites (a runtime Site with in-memory devices, linked to the
router over its websocket).

One router, one browser and the site ``e1`` serve the whole module (they take seconds to start); each test
signs in as it needs. Waits are bounded (WebDriverWait), never sleeps; after each test the browser's console
must hold no error but the ones that test expects (a refused sign-in's 401, a stopped router's refused
connections). The module's threads and sockets are checked once at its end (the browser's connections to an
in-process router would look like leaks to a per-test check, so the router is a process of its own).
"""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from runtime.router.audit import COLUMNS

from tests.conftest import live_threads, open_sockets
from tests.operator_page import PASSWORDS, EdgeSite, Router, chrome, console_errors, wait_for
from tests.servers import http

pytestmark = pytest.mark.timeout(120)

WAIT = 25.0


@pytest.fixture(scope="module")
def module_leaks() -> Iterator[None]:
    """Every thread, socket and process this module starts is gone at its end."""
    threads, sockets = live_threads(), open_sockets()
    yield
    deadline = time.monotonic() + 5
    while True:
        extra_threads, extra_sockets = live_threads() - threads, open_sockets() - sockets
        if not extra_threads and not extra_sockets:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)  # threads that are already exiting
    assert not extra_threads, f"leaked threads: {sorted(t.name for t in extra_threads)}"
    assert not extra_sockets, f"leaked sockets: {extra_sockets}"


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.router = Router(tmp).start()
        self.e1 = EdgeSite(self.router.ws_url, "e1", tmp / "e1").start()
        self.admin = self.router.login("alice")
        wait_for(lambda: self.router.edge("e1", self.admin).get("online"), WAIT, "e1 online")
        self.e1.report(soc=55.0, power_kw=-10.0)

    def close(self) -> None:
        try:
            self.e1.stop()
        finally:
            self.router.stop()

    def audit(self, **params: str) -> list[dict[str, Any]]:
        from urllib.parse import urlencode
        status, _, body = http("GET", f"{self.router.url}/api/v1/audit?{urlencode(params)}", self.admin)
        assert status == 200, body
        return list(body["rows"])


@pytest.fixture(scope="module")
def env(module_leaks: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("page"))
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(env: Env, downloads: Path) -> Iterator[Any]:
    driver = chrome(1280, 800, downloads)
    service = driver.service
    try:
        yield driver
    finally:
        driver.quit()
        assert service.process is None or service.process.poll() is not None, "chromedriver still running"


@pytest.fixture
def page(browser: Any, env: Env) -> Iterator["Page"]:
    p = Page(browser, env)
    yield p
    p.check_console()


# ---- a page object: what a user does, in selenium's words -------------------------------------------

class Page:
    def __init__(self, driver: Any, env: Env) -> None:
        from selenium.webdriver.common.by import By
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait
        self.d = driver
        self.env = env
        self.By = By
        # a region the page re-rendered while a condition read it: read it again
        self.wait = WebDriverWait(driver, WAIT, poll_frequency=0.05,
                                  ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        #: console messages this test expects (substrings)
        self.allowed: list[str] = []
        driver.get_log("browser")   # start from an empty log

    def check_console(self) -> None:
        errors = console_errors(self.d, tuple(self.allowed))
        assert not errors, f"errors in the browser console: {errors}"

    def el(self, css: str) -> Any:
        return self.wait.until(lambda d: d.find_element(self.By.CSS_SELECTOR, css), f"no {css}")

    def visible(self, css: str) -> Any:
        def found(d: Any) -> Any:
            els = [e for e in d.find_elements(self.By.CSS_SELECTOR, css) if e.is_displayed()]
            return els[0] if els else False
        return self.wait.until(found, f"{css} not visible")

    def until(self, predicate: Any, what: str) -> Any:
        return self.wait.until(lambda d: predicate(), what)

    def text(self, css: str) -> str:
        return str(self.el(css).text)

    def go(self, hash_: str) -> None:
        self.d.get(f"{self.env.router.url}/ui/{hash_}")

    def sign_in(self, user: str = "alice", password: str | None = None) -> None:
        self.sign_out()
        self.visible("#login-user").send_keys(user)
        self.el("#login-password").send_keys(password or PASSWORDS[user])
        self.el("#login-submit").click()
        if password is None:
            self.visible("#who")
            self.until(lambda: self.text("#who").startswith(user), f"signed in as {user}")

    def sign_out(self) -> None:
        """Back at the sign-in form (with the Sign out button when someone is signed in)."""
        self.go("#/sites")
        self.visible("#login-user, #signout")
        if self.d.find_element(self.By.ID, "signout").is_displayed():
            self.el("#signout").click()
        self.visible("#login-user")

    def select(self, css: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select
        Select(self.el(css)).select_by_value(value)

    def fill(self, css: str, value: str) -> None:
        el = self.el(css)
        el.clear()
        el.send_keys(value)

    def open_site(self, edge_id: str) -> None:
        self.go(f"#/site/{edge_id}")
        self.visible("#command-form")

    def send(self, value: str, *, device: str = "bat-1", channel: str = "SetActivePower", unit: str = "kW",
             priority: str = "normal") -> None:
        self.select("#cmd-device", device)
        self.select("#cmd-channel", channel)
        self.fill("#cmd-value", value)
        if unit:
            self.select("#cmd-unit", unit)
        self.select("#cmd-priority", priority)
        self.el("#cmd-send").click()

    def sent_id(self) -> str:
        return str(self.until(lambda: self.el("#cmd-result").get_attribute("data-command-id"), "a command id"))

    def row(self, command_id: str, state: str | None = None) -> Any:
        css = f'tr[data-command-id="{command_id}"]' + (f'[data-state="{state}"]' if state else "")
        return self.el(css)

    def no_page_overflow(self) -> bool:
        return bool(self.d.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"))


def states_of(row: Any) -> list[str]:
    return [li.get_attribute("textContent").split(" ")[0] for li in row.find_elements("css selector", "ol li")]


# ---- the cases ------------------------------------------------------------------------------------

def test_sign_in_and_see_every_site_online_with_its_devices_and_controllers(page: Page, env: Env):
    page.sign_in("alice")
    card = page.visible('article.site-card[data-edge="e1"]')
    page.el('article.site-card[data-edge="e1"] .badge.online')
    page.until(lambda: "bat-1" in card.text and "DISCHARGING" in card.text and "SoC 55" in card.text,
               f"e1's devices with their state ({card.text!r})")
    assert "ev-1" in card.text
    assert "grid_limit, schedule" in page.text('article.site-card[data-edge="e1"] .controllers')
    assert "none active" in page.text('article.site-card[data-edge="e1"] .overrides')
    assert re.search(r"(just now|\d+ s ago)", page.text('article.site-card[data-edge="e1"] .last-seen'))
    assert page.text("#conn") == "live" and page.text("#who") == "alice"


def test_a_wrong_password_is_refused_with_the_reason(page: Page):
    page.allowed.append("api/v1/login - Failed to load resource: the server responded with a status of 401")
    page.sign_in("alice", password="not-the-password")
    page.until(lambda: "wrong user name or password" in page.text("#login-error"), "the refusal")
    assert page.d.execute_script("return sessionStorage.length") == 0


def test_sign_in_with_a_token_instead_of_a_password(page: Page, env: Env):
    from tests.servers import token
    page.sign_out()
    page.el("#login-token").send_keys(token("ops", control=["e1"], view="*"))
    page.el("#token-submit").click()
    page.until(lambda: page.text("#who") == "ops", "signed in with the token")
    page.visible('article.site-card[data-edge="e1"] .badge.online')


def test_a_setpoint_is_executed_and_the_page_shows_each_state_with_its_time(page: Page, env: Env):
    page.sign_in("alice")
    page.open_site("e1")
    page.el("#devices [data-device='bat-1']")
    page.until(lambda: page.d.find_elements("css selector", "#chart-power svg polyline, #chart-power svg circle"),
               "the power chart")
    assert "bat-1" in page.el("#chart-power svg").get_attribute("aria-label")
    page.el("#chart-soc svg")
    channels = page.text("#devices [data-device='bat-1'] table")
    assert "SetActivePower" in channels and "−50 000 … 50 000 W" in channels and "read only" in channels
    assert "Range −50 000 … 50 000 W" in page.text("#cmd-value-help")
    page.send("20")
    cid = page.sent_id()
    row = page.row(cid, "EXECUTED")
    assert states_of(row) == ["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "EXECUTED"]
    for cell in ("td.executed-at", "td.submitted", "td.state .state-at"):   # today's times: HH:MM:SS
        shown = row.find_element("css selector", f"{cell} time")
        assert re.fullmatch(r"\d\d:\d\d:\d\d", shown.text), (cell, shown.text)
        at = datetime.fromisoformat(shown.get_attribute("datetime").replace("Z", "+00:00"))
        assert abs(at.timestamp() - time.time()) < 120, (cell, at)
    assert row.find_element("css selector", "td.user").text == "alice"
    assert "bat-1.SetActivePower = 20 kW" in row.find_element("css selector", "td.cmd").text
    applied = env.e1.device("bat-1").applied
    assert [(a.command_type, a.value) for a in applied][-1] == ("SET_DISCHARGE_RATE", 20.0)


def test_overrides_show_the_time_they_have_left_and_controllers_switched_off_leave_the_list(page: Page, env: Env):
    page.sign_in("alice")
    page.open_site("e1")
    page.select("#cmd-device", "bat-1")
    page.select("#cmd-channel", "MinSoc")
    page.visible("#cmd-duration")
    page.fill("#cmd-value", "20")
    page.fill("#cmd-duration", "600")
    page.el("#cmd-send").click()
    page.row(page.sent_id(), "EXECUTED")
    page.select("#cmd-device", "site")
    page.select("#cmd-channel", "schedule")
    page.select("#cmd-value", "false")
    page.el("#cmd-send").click()
    page.row(page.sent_id(), "EXECUTED")
    page.go("#/sites")
    card = 'article.site-card[data-edge="e1"]'
    page.until(lambda: page.text(f"{card} .controllers") == "grid_limit", "schedule switched off")
    left = page.until(lambda: re.search(r"bat-1\.MinSoc = 20 % · (\d+) min (\d+) s left",
                                        page.text(f"{card} .overrides")), "the override and its time left")
    assert 9 * 60 <= int(left[1]) * 60 + int(left[2]) <= 600
    first = page.text(f"{card} .overrides .left")
    page.until(lambda: page.text(f"{card} .overrides .left") != first, "the time left counting down")
    page.open_site("e1")                                     # switch it on again for the tests after this one
    page.select("#cmd-device", "site")
    page.select("#cmd-channel", "schedule")
    page.select("#cmd-value", "true")
    page.el("#cmd-send").click()
    page.row(page.sent_id(), "EXECUTED")
    page.until(lambda: page.text("#site-state .controllers") == "grid_limit, schedule", "schedule on again")


def test_an_out_of_range_value_is_refused_in_the_page_and_a_forged_request_by_the_router(page: Page, env: Env):
    page.sign_in("alice")
    page.open_site("e1")
    before = len(env.audit(user_id="alice", kind="submit"))
    page.send("60")
    refusal = "Value: 60 kW is outside −50 000 … 50 000 W (bat-1.SetActivePower)"
    page.until(lambda: refusal in page.text("#cmd-errors"), "the page's refusal")
    assert page.el("#cmd-value").get_attribute("aria-invalid") == "true"
    assert page.d.switch_to.active_element.get_attribute("id") == "cmd-value"
    assert page.el("#cmd-result").get_attribute("data-command-id") is None
    assert len(env.audit(user_id="alice", kind="submit")) == before          # nothing left the page
    # the same command posted straight to the API, bypassing the page: the router refuses it too
    url = f"{env.router.url}/api/v1/commands"
    forged = {"command_id": "forged-range", "command_type": "setpoint", "unit": "W", "value": 60000,
              "target": {"edge_id": "e1", "device_id": "bat-1", "channel": "SetActivePower"}}
    status, _, body = http("POST", url, env.admin, forged)
    assert status == 422 and body["code"] == "out_of_range", body
    assert body["message"] == "bat-1.SetActivePower: 60000 W is outside -50000..50000 W"
    viewer = env.router.login("viewer")
    status, _, body = http("POST", url, viewer, {**forged, "command_id": "forged-viewer", "value": 1000})
    assert status == 403 and body["code"] == "forbidden", body
    assert body["message"] == "viewer may only view edge 'e1' (token claim can_control)"
    refused = {r["command_id"]: r for r in env.audit(kind="refused") if r["command_id"]}
    assert refused["forged-range"]["user_id"] == "alice" and "out_of_range" in refused["forged-range"]["detail"]
    assert refused["forged-viewer"]["user_id"] == "viewer"
    assert env.e1.site.command("cloud:forged-range") is None and env.e1.site.command("cloud:forged-viewer") is None


def test_an_emergency_asks_for_confirmation_and_the_whole_flow_works_from_the_keyboard(page: Page, env: Env):
    from selenium.webdriver.common.keys import Keys
    page.sign_out()
    active = page.d.switch_to

    def tab_to(css: str, limit: int = 80) -> None:
        target = page.el(css)
        for _ in range(limit):
            if active.active_element == target:
                return
            active.active_element.send_keys(Keys.TAB)
        raise AssertionError(f"Tab never reached {css}")

    page.until(lambda: active.active_element.get_attribute("id") == "login-user", "focus in the user name")
    active.active_element.send_keys("alice", Keys.TAB, PASSWORDS["alice"], Keys.ENTER)
    page.visible('article.site-card[data-edge="e1"]')
    tab_to('article.site-card[data-edge="e1"] h2 a')
    active.active_element.send_keys(Keys.ENTER)
    page.visible("#command-form")
    tab_to("#cmd-value")
    active.active_element.send_keys("5")
    tab_to("#cmd-priority")
    active.active_element.send_keys(Keys.END)           # the last option: emergency
    assert page.el("#cmd-priority").get_attribute("value") == "emergency"
    tab_to("#cmd-send")
    active.active_element.send_keys(Keys.ENTER)
    dialog = page.visible("#confirm")
    assert "bat-1.SetActivePower = 5 kW on e1" in dialog.text
    assert active.active_element.get_attribute("id") == "confirm-cancel"   # the safe choice has the focus
    active.active_element.send_keys(Keys.ENTER)
    page.until(lambda: "Not sent" in page.text("#cmd-result"), "cancelled")
    assert not dialog.is_displayed()
    tab_to("#cmd-send")
    active.active_element.send_keys(Keys.ENTER)
    page.visible("#confirm")
    active.active_element.send_keys(Keys.TAB)
    assert active.active_element.get_attribute("id") == "confirm-send"
    active.active_element.send_keys(Keys.ENTER)
    cid = page.sent_id()
    row = page.row(cid, "EXECUTED")
    assert "emergency" in row.text.lower()


def test_a_command_for_an_offline_edge_is_queued_then_executed_when_it_reconnects(page: Page, env: Env):
    e2 = EdgeSite(env.router.ws_url, "e2", env.tmp / "e2").start()
    try:
        wait_for(lambda: env.router.edge("e2", env.admin).get("online"), WAIT, "e2 online")
        e2.stop()
        page.sign_in("alice")
        page.el('article.site-card[data-edge="e2"] .badge.offline')
        page.open_site("e2")
        page.el("#site-online .badge.offline")
        page.send("5")
        cid = page.sent_id()
        page.row(cid, "QUEUED")
        assert "QUEUED" in page.text("#cmd-result")
        e2.start()
        row = page.row(cid, "EXECUTED")
        assert states_of(row) == ["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "EXECUTED"]
        page.el("#site-online .badge.online")
        assert [(a.command_type, a.value) for a in e2.device("bat-1").applied] == [("SET_DISCHARGE_RATE", 5.0)]
    finally:
        e2.stop()


def test_a_view_only_user_sees_everything_but_cannot_send(page: Page, env: Env):
    page.sign_in("viewer")
    assert page.text("#who") == "viewer (view only)"
    page.visible('article.site-card[data-edge="e1"] .badge.online')
    page.open_site("e1")
    assert page.el("#cmd-fieldset").get_attribute("disabled") is not None
    assert not page.el("#cmd-send").is_enabled()
    assert "View only" in page.visible("#view-only-note").text
    page.el("#devices [data-device='bat-1']")
    page.el("#commands-body tr")                     # alice's commands are there to watch


def test_history_filters_by_site_user_status_and_time_and_exports_csv(page: Page, env: Env, downloads: Path):
    page.sign_in("alice")
    page.go("#/history")
    page.visible("#history-form")
    page.until(lambda: "e1" in [o.get_attribute("value") for o in page.el("#f-edge").find_elements(
        "css selector", "option")], "the sites in the filter")
    page.select("#f-edge", "e1")
    page.select("#f-status", "EXECUTED")
    page.select("#f-range", "1h")
    page.el("#history-apply").click()

    def rows() -> list[Any]:
        return page.d.find_elements("css selector", "#history-body tr")
    page.el('#history[data-loaded="edge_id=e1&status=EXECUTED&range=1h"]')
    assert rows() and all(r.get_attribute("data-status") == "EXECUTED" for r in rows())
    shown = rows()
    assert all(r.find_elements("css selector", "td")[3].text == "e1" for r in shown)
    assert f"{len(shown)} row" in page.text("#history-count")
    assert "edge_id=e1" in page.d.current_url and "status=EXECUTED" in page.d.current_url
    page.el("#history-csv").click()
    found = wait_for(lambda: [p for p in downloads.glob("audit-*.csv")], WAIT, "the CSV file")
    table = list(csv.reader(io.StringIO(found[0].read_text(encoding="utf-8"))))
    assert tuple(table[0]) == COLUMNS
    assert len(table) - 1 == len(shown)
    assert {(r[3], r[5]) for r in table[1:]} == {("e1", "EXECUTED")}
    # by user and kind, and a custom time range in the future: nothing
    page.select("#f-status", "")
    page.select("#f-kind", "submit")
    page.fill("#f-user", "alice")
    page.el("#history-apply").click()
    page.el('#history[data-loaded="edge_id=e1&user_id=alice&kind=submit&range=1h"]')
    assert rows() and all(r.get_attribute("data-kind") == "submit" for r in rows())
    assert all(r.find_element("css selector", "td.user").text == "alice" for r in rows())
    page.select("#f-range", "custom")
    page.d.execute_script("document.getElementById('f-since').value = '2099-01-01T00:00:00'")
    page.el("#history-apply").click()
    page.el('#history[data-loaded*="since=2099-"]')
    assert page.text("#history-count") == "0 rows" and not rows()
    page.d.refresh()                                  # the filters are in the address: a reload keeps them
    page.visible("#history-form")
    assert page.el("#f-kind").get_attribute("value") == "submit"
    assert page.el("#f-user").get_attribute("value") == "alice"


def test_the_page_works_at_a_phones_width(page: Page, env: Env):
    page.d.set_window_size(390, 844)
    try:
        page.sign_in("alice")
        page.visible('article.site-card[data-edge="e1"]')
        assert page.no_page_overflow()
        page.open_site("e1")
        page.visible("#cmd-value")
        assert page.no_page_overflow()
        page.send("3")
        page.row(page.sent_id(), "EXECUTED")
        assert page.no_page_overflow()
        page.go("#/history")
        page.visible("#history-form")
        page.until(lambda: page.d.find_elements("css selector", "#history-body tr"), "history rows")
        assert page.no_page_overflow()
    finally:
        page.d.set_window_size(1280, 800)


def test_after_a_router_restart_the_page_reconnects_and_refreshes(page: Page, env: Env):
    page.allowed += ["ERR_CONNECTION_REFUSED", "WebSocket connection to", "ERR_EMPTY_RESPONSE",
                     "ERR_CONNECTION_RESET", "Failed to load resource"]
    page.sign_in("alice")
    page.open_site("e1")
    page.until(lambda: page.text("#conn") == "live", "live")
    env.router.stop()
    page.until(lambda: page.text("#conn") == "reconnecting…", "the page notices")
    page.visible("#banner")
    env.router.start()
    page.until(lambda: page.text("#conn") == "live", "live again")
    wait_for(lambda: env.router.edge("e1", env.admin).get("online"), WAIT, "e1 back online")
    page.el("#site-online .badge.online")
    page.until(lambda: not page.el("#banner").is_displayed(), "the banner gone")
    page.send("4")
    page.row(page.sent_id(), "EXECUTED")
