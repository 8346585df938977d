"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (never a downloaded browser or driver), against a collector on
127.0.0.1 holding a fleet's findings made by the real diagnosis (:mod:`tests.services.fleet`).

A person's way through it, with real typing and clicks: the login page, a token typed in, the
matrix, a cell, the target's history, its latest finding, the hop path with the hop that
forged the RST marked, sign-out, a revoked token. Screenshots are saved to tests/artifacts/
(``dashboard.png``: the fleet; ``dashboard-target.png``; ``dashboard-finding.png``).

Chromium runs with the flags that keep it off the network (no background requests, no
component updates, no sync, no proxy, and no host but 127.0.0.1 resolves) and a fresh profile
in a temporary folder; it only ever loads http://127.0.0.1. Without /usr/bin/chromium the
tests are skipped, except under CI, where the Makefile installs it and a missing browser is a
failure.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from mailpath.collector import admin

from tests.services.conftest import Collector, batch, finding
from tests.services.fleet import fleet, router

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
UNDER_CI = os.environ.get("CI") == "true"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--metrics-recording-only",
    "--no-proxy-server",
    # every host but 127.0.0.1 resolves to nothing: whatever chromium might still try goes nowhere
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1400,1000",
]

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not UNDER_CI:
    pytest.skip(
        "no /usr/bin/chromium and /usr/bin/chromedriver (Debian's chromium and chromium-driver; "
        "`make deps` installs them)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A collector of its own (SQLite) holding the fleet: two agents, four targets:ports."""
    server = Collector(tmp_path_factory.mktemp("dashboard"))
    try:
        server.start()
        for agent, findings in fleet(dt.datetime.now(dt.UTC)).items():
            with server.client(server.token(agent)) as c:
                r = c.post("/v1/findings", json=batch(*findings))
                assert r.status_code == 200 and r.json()["new"] == len(findings), r.text
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(tmp_path):
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "CI must run the browser tests: install Debian's chromium and chromium-driver (make deps)"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _by_css(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def _one(driver, css):
    found = _by_css(driver, css)
    assert len(found) == 1, f"{css}: {len(found)} elements on {driver.current_url}"
    return found[0]


def _wait_path(driver, path: str, timeout: float = 10, prefix: bool = False) -> None:
    """Until the browser is on ``path`` (or a path that starts with it)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def there(d) -> bool:
        now = urlsplit(d.current_url).path
        return now.startswith(path) if prefix else now == path

    WebDriverWait(driver, timeout).until(there, f"never reached {path}")


def _sign_in(driver, site: Collector, token: str, start: str = "/") -> None:
    driver.get(site.url + start)
    _wait_path(driver, "/login")
    box = _one(driver, "input#token")
    box.clear()
    box.send_keys(token)
    _one(driver, "button#sign-in").click()


def _assets_are_ours(driver, site: Collector, cookie: str) -> list[str]:
    """Every script, stylesheet, icon and image of the page: same origin, and served."""
    urls = driver.execute_script(
        "return [...document.querySelectorAll('script[src],link[href],img[src],iframe[src]')]"
        ".map(e => e.src || e.href)"
    )
    with httpx.Client(trust_env=False, cookies={"mailpath_token": cookie}) as c:
        for url in urls:
            assert url.startswith(site.url + "/"), f"{url} is not served by the collector"
            assert c.get(url).status_code == 200, url
    assert not _by_css(driver, "script"), "the dashboard has no script"
    return urls


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _save(driver, name: str) -> Path:
    """A screenshot of the whole page (beyond the window), through the DevTools protocol."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    return path


def test_from_login_to_the_forged_hop(site, browser):
    """Log in by typing the token, read the matrix, click through to the finding's path."""
    token = site.token("ops-viewer", "viewer")
    # a page asked for before login comes back after it
    _sign_in(browser, site, token)
    _wait_path(browser, "/")
    assert "signed in as ops-viewer (viewer)" in _one(browser, ".whoami").text

    # the cookie is HttpOnly: the page's script cannot read it, the browser keeps it
    assert browser.execute_script("return document.cookie") == ""
    (cookie,) = [c for c in browser.get_cookies() if c["name"] == "mailpath_token"]
    assert cookie["value"] == token and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/" and cookie["secure"] is False  # plain http on loopback

    # the matrix: 2 agents x 4 targets:ports, the most recent change first
    with site.client(token) as c:
        states = c.get("/v1/targets").json()["items"]
    cells = _by_css(browser, "#matrix td.cell a")
    assert len(cells) == len(states) == 8
    rows = [th.text.split("\n")[0] for th in _by_css(browser, "#matrix th.row")]
    assert rows == ["edge-fra", "edge-iad"]  # edge-fra's forged RST, 12 minutes ago, is the newest
    columns = [th.get_attribute("title") for th in _by_css(browser, "#matrix th.col")]
    assert columns[0] == "mx1.example.net:25" and len(columns) == 4
    for a in cells:
        state = next(
            s
            for s in states
            if (s["agent"], s["target"], str(s["port"]))
            == (a.get_attribute("data-agent"), a.get_attribute("data-target"), a.get_attribute("data-port"))
        )
        assert a.get_attribute("data-cause") == state["cause"]
        assert state["cause"] in a.get_attribute("title") and state["headline"] in a.get_attribute("title")
    green = [a for a in cells if a.get_attribute("data-cause") == "none"]
    assert {a.text for a in green} == {"OK"} and len(green) == 3
    colour = {a.get_attribute("data-cause"): a.value_of_css_property("background-color") for a in cells}
    assert len(set(colour.values())) == len(colour), f"each cause family its own colour: {colour}"
    counts = {li.get_attribute("data-cause"): li.text.split()[-1] for li in _by_css(browser, "#counts li")}
    want: dict[str, str] = {}
    for s in states:
        want[s["cause"]] = str(int(want.get(s["cause"], "0")) + 1)
    assert counts == want
    recent = _by_css(browser, "#recent tbody tr")
    assert "mx1.example.net:25" in recent[0].text and "firewall" in recent[0].text
    assets = _assets_are_ours(browser, site, token)
    assert any(u.endswith("/static/dashboard.css") for u in assets)
    _save(browser, "dashboard.png")

    # a real click on the forged cell, then on its latest finding
    _one(browser, '#matrix a[data-agent="edge-fra"][data-target="mx1.example.net"][data-port="25"]').click()
    _wait_path(browser, "/target")
    changes = [
        (tr.get_attribute("data-change"), tr.get_attribute("data-cause"))
        for tr in _by_css(browser, "#history tbody tr")
    ]
    assert changes == [("broke", "firewall"), ("first", "none")]
    assert "connection reset by a device at hop 2" in _one(browser, "#current").text
    _assets_are_ours(browser, site, token)
    _save(browser, "dashboard-target.png")
    _one(browser, "a#latest-finding").click()
    _wait_path(browser, "/findings/", prefix=True)
    assert "connection reset by a device at hop 2" in _one(browser, "#headline").text
    assert _one(browser, "#location").text == f"hop 2 ({router(2)})"

    # the path: this agent, hop 1, hop 2 marked as forging the RST, the destination not reached
    nodes = _by_css(browser, ".hop-path li.node")
    kinds = [n.get_attribute("class").split()[1] for n in nodes]
    assert kinds == ["source", "hop", "hop", "destination"]
    marked = _one(browser, ".hop-path li.marked")
    assert marked.get_attribute("data-mark") == "forges" and marked.get_attribute("data-ttl") == "2"
    assert router(2) in marked.text and "forges a RST as 198.18.9.9" in marked.text
    assert marked.value_of_css_property("color")  # drawn
    destination = nodes[-1]
    assert "unreached" in destination.get_attribute("class") and "link-cut" in destination.get_attribute(
        "class"
    )
    assert "not reached" in destination.text
    assert "allow the port there" in _one(browser, "#remediation").text
    assert "trace:198.18.9.9:25/ttl=2" in _one(browser, "#evidence").text
    _assets_are_ours(browser, site, token)
    _save(browser, "dashboard-finding.png")
    assert _console_errors(browser) == []  # nothing refused by the CSP, nothing missing

    # sign out: the cookie goes, and the dashboard asks for a token again
    _one(browser, "button#logout").click()
    _wait_path(browser, "/login")
    assert "Signed out." in browser.page_source
    assert not [c for c in browser.get_cookies() if c["name"] == "mailpath_token"]
    browser.get(site.url + "/")
    _wait_path(browser, "/login")


def test_the_recovery_is_in_the_targets_history(site, browser):
    _sign_in(browser, site, site.token("ops-history", "viewer"))
    _wait_path(browser, "/")
    _one(browser, '#matrix a[data-agent="edge-fra"][data-target="mx2.example.org"][data-port="25"]').click()
    _wait_path(browser, "/target")
    rows = _by_css(browser, "#history tbody tr")
    assert [(r.get_attribute("data-change"), r.get_attribute("data-cause")) for r in rows] == [
        ("recovered", "none"),
        ("first", "firewall"),
    ]
    # the firewall drop: two findings, from 240 to 45 minutes ago (3h 15m)
    cells = rows[1].find_elements("css selector", "td")
    assert cells[4].text == "3h 15m" and cells[5].text == "2"
    assert "so far" in rows[0].text
    # the drop's finding: hop 2 drops, the link after it is cut
    rows[1].find_element("css selector", "td.headline a").click()
    _wait_path(browser, "/findings/", prefix=True)
    marked = _one(browser, ".hop-path li.marked")
    assert marked.get_attribute("data-mark") == "drops" and marked.get_attribute("data-ttl") == "2"
    after = _by_css(browser, ".hop-path li.node")[3]
    assert after.get_attribute("data-ttl") == "3" and "link-cut" in after.get_attribute("class")


def test_a_wrong_then_a_revoked_token(site, browser):
    _sign_in(browser, site, "mpc_" + "x" * 43)
    _wait_path(browser, "/login")
    assert "not valid, or it has been revoked" in _one(browser, "#login-error").text
    assert not [c for c in browser.get_cookies() if c["name"] == "mailpath_token"]

    token = site.token("ops-revoked", "viewer")
    _sign_in(browser, site, token, start="/target?agent=edge-iad&target=mx2.example.org&port=25")
    _wait_path(browser, "/target")  # back to the page asked for
    assert "unreachable" in _one(browser, "#current").text
    admin.revoke_token(admin.settings_for(site.database), token[:12])
    browser.refresh()
    _wait_path(browser, "/login")
    assert "Your session has ended" in browser.page_source
    assert not [c for c in browser.get_cookies() if c["name"] == "mailpath_token"]


def test_an_agents_script_is_text(site, browser):
    """A finding whose target and headline hold markup: shown as text, never run."""
    agent = site.token("edge-xss")
    evil = finding("<script>window.__xss=1</script>", 25, "firewall")
    evil["headline"] = '<img src=x onerror="window.__xss=2"><b>bold</b>'
    with site.client(agent) as c:
        assert c.post("/v1/findings", json=batch(evil)).status_code == 200
    _sign_in(browser, site, site.token("ops-xss", "viewer"))
    _wait_path(browser, "/")
    cell = _one(browser, '#matrix a[data-agent="edge-xss"]')
    assert cell.get_attribute("data-target") == "<script>window.__xss=1</script>"
    cell.click()
    _wait_path(browser, "/target")
    assert "<script>window.__xss=1</script>" in browser.find_element("css selector", "h1").text
    _one(browser, "a#latest-finding").click()
    _wait_path(browser, f"/findings/{evil['id']}")
    assert _one(browser, "#headline").text == evil["headline"]
    assert not _by_css(browser, "img") and not _by_css(browser, "main script")
    assert browser.execute_script("return window.__xss === undefined")
