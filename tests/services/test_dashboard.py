"""The dashboard over HTTP (httpx, no browser), on SQLite and on PostgreSQL: login and its
cookie, cross-site posts refused, pages behind the token (revocation holds at the next page),
escaping of what agents send, the history's transitions, security headers, assets served by
the collector itself. The browser's way through it is test_dashboard_browser.py."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
from mailpath.collector import admin

from tests.services.conftest import batch, finding, pages

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def origin(collector) -> dict[str, str]:
    return {"Origin": collector.url, **FORM}


def login(collector, token: str, **headers: str):
    with collector.client(follow_redirects=False) as c:
        return c.post("/login", data={"token": token}, headers={**origin(collector), **headers})


def signed_in(collector, token: str):
    """A client holding the cookie a successful login set."""
    r = login(collector, token)
    assert r.status_code == 303, r.text
    c = collector.client(follow_redirects=False)
    c.cookies.set("mailpath_token", r.cookies["mailpath_token"])
    return c


def post(collector, agent_token: str, *findings: dict) -> None:
    with collector.client(agent_token) as c:
        r = c.post("/v1/findings", json=batch(*findings))
        assert r.status_code == 200, r.text


class Assets(HTMLParser):
    """Every URL a page loads (scripts, stylesheets, icons, images, frames) or posts to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.scripts += tag == "script"
        key = {"script": "src", "img": "src", "iframe": "src", "link": "href", "form": "action"}.get(tag)
        if key and a.get(key):
            self.urls.append(a[key])


@pytest.fixture
def fleet(collector, name):
    """Two agents of this test, one target each way: a firewall that recovered, and a service."""
    now = dt.datetime.now(dt.UTC)
    a, b = f"{name}-a", f"{name}-b"
    ta, tb = collector.token(a), collector.token(b)
    post(
        collector,
        ta,
        finding(f"{name}.mx", 25, "none", created_at=now - dt.timedelta(hours=5)),
        finding(f"{name}.mx", 25, "firewall", created_at=now - dt.timedelta(hours=3)),
        finding(f"{name}.mx", 25, "firewall", created_at=now - dt.timedelta(hours=2)),
        finding(f"{name}.mx", 25, "firewall", hop=3, created_at=now - dt.timedelta(minutes=90)),
        finding(f"{name}.mx", 25, "none", created_at=now - dt.timedelta(minutes=30)),
    )
    post(collector, tb, finding(f"{name}.mx", 587, "service", created_at=now - dt.timedelta(minutes=10)))
    return {"a": a, "b": b, "target": f"{name}.mx", "viewer": collector.token(f"{name}-v", "viewer")}


# -- login ---------------------------------------------------------------------------------


def test_login_sets_an_httponly_strict_cookie_and_goes_back(collector, name):
    token = collector.token(f"{name}-v", "viewer")
    with collector.client(follow_redirects=False) as c:
        r = c.post("/login", data={"token": token, "next": "/findings/x?y=1"}, headers=origin(collector))
    assert r.status_code == 303 and r.headers["location"] == "/findings/x?y=1"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"mailpath_token={token};")
    attributes = {p.strip().split("=")[0].lower() for p in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes and "secure" not in attributes
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    assert r.headers["cache-control"] == "no-store"


def test_the_cookie_is_secure_when_the_page_was_https(collector, name):
    token = collector.token(f"{name}-v", "viewer")
    host = urlsplit(collector.url).netloc
    r = login(collector, token, Origin=f"https://{host}")
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


@pytest.mark.parametrize(
    "token",
    ["mpc_" + "A" * 43, "not-a-token", "x" * 300, "mpc_\u00e9\u00e9"],
    ids=["unknown", "bad", "long", "utf8"],
)
def test_a_wrong_token_is_the_login_page_with_a_message(collector, token):
    r = login(collector, token)
    assert r.status_code == 401 and "set-cookie" not in r.headers
    assert "That token is not valid, or it has been revoked." in r.text
    assert 'name="token"' in r.text


def test_an_empty_token_or_no_form(collector):
    r = login(collector, "")
    assert r.status_code == 401 and "Enter a token." in r.text
    with collector.client(follow_redirects=False) as c:
        r = c.post("/login", content=b'{"token": "x"}', headers={"Origin": collector.url})
        assert r.status_code == 400 and "set-cookie" not in r.headers
        big = c.post("/login", content=b"token=" + b"a" * 5000, headers=origin(collector))
        assert big.status_code == 400


def test_a_revoked_token_cannot_log_in(collector, name):
    token = collector.token(f"{name}-v", "viewer")
    admin.revoke_token(admin.settings_for(collector.database), token[:12])
    assert login(collector, token).status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {},  # neither Origin nor Referer
        {"Referer": "http://evil.example/login"},
        {"Origin": "SELF", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "SELF", "Sec-Fetch-Site": "same-site"},
        {"Origin": "ftp://HOST"},
    ],
    ids=[
        "other-origin",
        "null-origin",
        "none",
        "other-referer",
        "fetch-cross-site",
        "fetch-same-site",
        "ftp",
    ],
)
def test_a_cross_site_login_post_is_refused(collector, name, headers):
    """Login CSRF: another site's form posting the attacker's token is refused (403), and
    no cookie is set, whatever the token."""
    token = collector.token(f"{name}-v", "viewer")
    host = urlsplit(collector.url).netloc
    headers = {k: v.replace("SELF", collector.url).replace("HOST", host) for k, v in headers.items()}
    with collector.client(follow_redirects=False) as c:
        r = c.post("/login", data={"token": token}, headers={**FORM, **headers})
        assert r.status_code == 403 and "set-cookie" not in r.headers
        assert "own login page" in r.text
        out = c.post("/logout", headers=headers)
        assert out.status_code == 403 and "set-cookie" not in out.headers


def test_a_same_origin_referer_will_do_without_origin(collector, name):
    token = collector.token(f"{name}-v", "viewer")
    with collector.client(follow_redirects=False) as c:
        r = c.post(
            "/login",
            data={"token": token},
            headers={**FORM, "Referer": collector.url + "/login", "Sec-Fetch-Site": "same-origin"},
        )
    assert r.status_code == 303 and "mailpath_token=" in r.headers["set-cookie"]


@pytest.mark.parametrize(
    "target", ["//evil.example/", "http://evil.example/", "/\\evil.example", "x", "/\tx"]
)
def test_login_never_redirects_to_another_site(collector, name, target):
    token = collector.token(f"{name}-v", "viewer")
    with collector.client(follow_redirects=False) as c:
        r = c.post("/login", data={"token": token, "next": target}, headers=origin(collector))
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_logout_clears_the_cookie(collector, name):
    with signed_in(collector, collector.token(f"{name}-v", "viewer")) as c:
        r = c.post("/logout", headers={"Origin": collector.url})
        assert r.status_code == 303 and r.headers["location"] == "/login?m=out"
        assert re.search(r"mailpath_token=\"?\"?;.*Max-Age=0", r.headers["set-cookie"], re.I)
        assert "Signed out." in c.get("/login?m=out").text


# -- pages behind the token ------------------------------------------------------------------


def test_every_page_without_a_token_goes_to_login(collector, fleet):
    with collector.client(follow_redirects=False) as c:
        for path in (
            "/",
            f"/target?agent={fleet['a']}&target={fleet['target']}&port=25",
            f"/findings/{uuid.uuid4()}",
        ):
            r = c.get(path)
            assert r.status_code == 303, path
            where = urlsplit(r.headers["location"])
            assert where.path == "/login" and parse_qs(where.query)["next"] == [path]
        assert c.get("/login").status_code == 200


def test_a_revoked_token_is_out_at_its_next_page(collector, fleet):
    with signed_in(collector, fleet["viewer"]) as c:
        assert c.get("/").status_code == 200
        admin.revoke_token(admin.settings_for(collector.database), fleet["viewer"][:12])
        r = c.get("/")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=%2F&m=expired"
        assert "Max-Age=0" in r.headers["set-cookie"]  # the dead cookie is cleared
        assert "Your session has ended" in c.get(r.headers["location"]).text


def test_viewer_and_agent_tokens_both_read_the_pages(collector, fleet):
    agent_token = collector.token(f"{fleet['a']}-reader")
    for token in (fleet["viewer"], agent_token):
        with signed_in(collector, token) as c:
            assert c.get("/").status_code == 200
    # the bearer header works as well as the cookie (for scripts)
    with collector.client(fleet["viewer"]) as c:
        assert c.get("/").status_code == 200


def test_the_cookie_never_sends_findings(collector, fleet, name):
    agent_token = collector.token(f"{name}-cookie-agent")
    with signed_in(collector, agent_token) as c:
        r = c.post("/v1/findings", json=batch(finding(f"{name}.cookie")))
        assert r.status_code == 401


def test_the_fleet_page(collector, fleet):
    with signed_in(collector, fleet["viewer"]) as c:
        html = c.get("/").text
    a, b, target = fleet["a"], fleet["b"], fleet["target"]
    # this test's two cells: a's recovered 25 (green), b's service 587, the newer change
    assert f'data-agent="{a}" data-target="{target}" data-port="25" data-cause="none"' in html
    assert f'data-agent="{b}" data-target="{target}" data-port="587" data-cause="service"' in html
    rows = re.findall(r'<th class="row" scope="row">([^<]+)<', html)
    assert rows.index(b) < rows.index(a)  # b changed 10 minutes ago, a 30
    cell = re.search(
        rf'<td class="cell (c-\w+)"><a href="([^"]+)" data-agent="{a}" data-target="{target}"', html
    )
    assert cell.group(1) == "c-ok"
    assert cell.group(2).replace("&amp;", "&") == f"/target?agent={a}&target={target}&port=25"
    counts = dict(re.findall(r'<li class="count c-\w+" data-cause="([\w-]+)".*?<b>(\d+)</b>', html))
    with collector.client(fleet["viewer"]) as c:
        states = pages(c, "/v1/targets")
    want: dict[str, str] = {}
    for s in states:
        want[s["cause"]] = str(int(want.get(s["cause"], 0)) + 1)
    assert counts == want


def test_the_targets_history(collector, fleet):
    """none (5h ago) → firewall at hop 2 (3h, 2h) → firewall at hop 3 (90 min) → none (30 min)."""
    a, target = fleet["a"], fleet["target"]
    with signed_in(collector, fleet["viewer"]) as c:
        html = c.get("/target", params={"agent": a, "target": target, "port": 25}).text
    with collector.client(fleet["viewer"]) as c:
        (state,) = c.get("/v1/targets", params={"agent": a, "target": target, "port": 25}).json()["items"]
    changes = re.findall(r'<tr class="change-\w+" data-change="(\w+)" data-cause="([\w-]+)">', html)
    assert changes == [
        ("recovered", "none"),
        ("changed", "firewall"),
        ("broke", "firewall"),
        ("first", "none"),
    ]
    lasted = re.findall(r"<td>(\d+[dhms] \d+[hms]|\d+s)(?:<small>[^<]*</small>)?</td>\s*<td>(\d+)</td>", html)
    assert [n for _, n in lasted] == ["1", "1", "2", "1"]
    assert [d for d, _ in lasted][1:] == ["1h 00m", "1h 30m", "2h 00m"]
    # the current period starts where the collector's `since` says it does
    since = dt.datetime.fromisoformat(state["since"])
    assert f'since <b title="{since.strftime("%Y-%m-%d %H:%M:%S UTC")}">' in html
    assert f'id="latest-finding" href="/findings/{state["finding_id"]}"' in html


def test_unknown_pages_are_404_html(collector, fleet):
    with signed_in(collector, fleet["viewer"]) as c:
        for path in (
            f"/findings/{uuid.uuid4()}",
            "/findings/not-a-uuid",
            f"/target?agent={fleet['a']}&target=nowhere&port=25",
            f"/target?agent={fleet['a']}&target={fleet['target']}&port=0",
            f"/target?agent={fleet['a']}&target={fleet['target']}&port=x",
            "/target?agent=&target=&port=25",
        ):
            r = c.get(path)
            assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), path
            assert "Not found" in r.text


# -- what agents send is text ----------------------------------------------------------------


def test_markup_from_agents_is_escaped_on_every_page(collector, name):
    token = collector.token(f"{name}-x")
    evil = finding("<script>alert(1)</script>", 25, "firewall")
    evil["headline"] = "<img src=x onerror=alert(2)>\"'&"
    evil["remediation"] = ["<a href=javascript:alert(3)>fix</a>"]
    evil["evidence"] = [{"source": "probe", "ref": "<b>ref</b>", "fact": "</td><script>alert(4)</script>"}]
    evil["agent"]["hostname"] = "<svg onload=alert(5)>"
    evil["addresses"][0]["verdict"] = "<i>x</i>"
    post(collector, token, evil)
    with signed_in(collector, collector.token(f"{name}-v", "viewer")) as c:
        pages = [
            c.get("/").text,
            c.get("/target", params={"agent": f"{name}-x", "target": evil["target"], "port": 25}).text,
            c.get(f"/findings/{evil['id']}").text,
        ]
    for html in pages:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        for raw in ("<script", "<img", "<svg", "<i>", "<b>ref", "<a href=javascript"):
            assert raw not in html, raw
        parser = Assets()
        parser.feed(html)
        assert parser.scripts == 0
    assert "&lt;img src=x onerror=alert(2)&gt;&#34;&#39;&amp;" in pages[2]


# -- headers and assets ----------------------------------------------------------------------


def test_security_headers_on_pages_api_and_assets(collector, fleet):
    with signed_in(collector, fleet["viewer"]) as c:
        for path in ("/login", "/", "/static/dashboard.css", "/v1/agents", "/healthz"):
            r = c.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["referrer-policy"] == "same-origin"
        assert c.get("/").headers["cache-control"] == "no-store"


def test_every_asset_of_every_page_is_the_collectors_own(collector, fleet):
    """No CDN: each script, stylesheet, icon and form target is a path of this collector,
    and each is served (the stylesheet as text/css)."""
    with signed_in(collector, fleet["viewer"]) as c:
        html = c.get("/").text
        first = re.search(
            r'href="(/findings/[^"]+)"',
            c.get("/target", params={"agent": fleet["a"], "target": fleet["target"], "port": 25}).text,
        )
        pages = {
            "/": html,
            "/login": c.get("/login").text,
            "target": c.get(
                "/target", params={"agent": fleet["a"], "target": fleet["target"], "port": 25}
            ).text,
            "finding": c.get(first.group(1)).text,
            "404": c.get(f"/findings/{uuid.uuid4()}").text,
        }
        seen = set()
        for page, text in pages.items():
            parser = Assets()
            parser.feed(text)
            assert parser.scripts == 0, page
            assert parser.urls, page
            for url in parser.urls:
                parts = urlsplit(url)
                assert not parts.scheme and not parts.netloc and url.startswith("/"), (page, url)
                seen.add(parts.path)
        for path in seen - {"/login", "/logout"}:
            if path.startswith("/static/"):
                r = c.get(path)
                assert r.status_code == 200, path
        css = c.get("/static/dashboard.css")
        assert css.headers["content-type"].startswith("text/css") and "url(" not in css.text
        assert "/static/dashboard.css" in seen and "/static/favicon.svg" in seen
        assert c.get("/static/nothing.css").status_code == 404
        assert c.get("/static/../app.py").status_code == 404


def test_no_page_of_the_collector_names_a_cdn(collector):
    """Swagger UI and ReDoc (scripts from a CDN) are off; the OpenAPI document stays."""
    with collector.client() as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200
        for path in ("/login", "/static/dashboard.css"):
            assert "http" not in c.get(path).text.replace("http-equiv", "")
