"""Security, table-driven over every route the app has (read from the app itself at test time,
so a route added later is covered, or fails until it is classified):

- public routes answer without a token: the operations endpoints, the OpenAPI document and its
  viewers, the login and logout pages, static files;
- every other route refuses a request without a token, with a malformed one, with another
  scheme, with an overlong one and with a revoked one (as a header and as the cookie): the API
  (``/v1``) with 401, a page with 401 or a redirect to the login page; with a valid token the
  same request is let through (so the refusals are not an accident of a broken route);
- writing routes take an agent token only: a viewer's is a 403, and the cookie never counts;
- filters and ids hold injection attempts as plain values: nothing matched, or a 4xx; the
  tables intact; and no SQL text in ``collector/`` is built with f-strings, ``%`` or ``format``.

The tokens-never-in-the-log check (test_ops.py) runs after all of this (marked ``last``)."""

from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from starlette.routing import Mount

from tests.services.conftest import batch, finding, pages

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/login",
    "/logout",
}
WRITES = {("POST", "/v1/findings")}  # agent tokens only; every other route only reads


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route and mount of the collector's app, built without a database."""
    from mailpath.collector.app import create_app
    from mailpath.collector.settings import CollectorSettings

    app = create_app(CollectorSettings(database_url="sqlite:///unused-routes.db"), migrate_on_start=False)
    return sorted(set(_walk(app.routes)))


def _walk(routes, prefix: str = ""):
    for route in routes:
        inner = getattr(route, "original_router", None)  # an included router (FastAPI 0.160+)
        if inner is not None:
            yield from _walk(inner.routes, prefix + getattr(route.include_context, "prefix", ""))
        elif isinstance(route, Mount):
            yield ("GET", prefix + route.path + "/")
        else:
            for method in getattr(route, "methods", None) or {"GET"}:
                yield (method, prefix + route.path)


ROUTES = app_routes()


def _public(path: str) -> bool:
    return path in PUBLIC or path.startswith("/static/") or path == "/static"


PROTECTED = [(m, p) for m, p in ROUTES if not _public(p)]


def _url(path: str) -> str:
    """The route's path with its parameters filled in (an id that exists nowhere)."""
    return re.sub(r"\{[^}]+\}", lambda m: str(uuid.uuid4()) if "id" in m.group(0) else "x", path)


def _request(client, method: str, path: str, **kw):
    body = b'{"findings": []}' if method in ("POST", "PUT", "PATCH") else None
    headers = {"Content-Type": "application/json"} if body else {}
    return client.request(
        method, _url(path), content=body, headers={**headers, **kw.pop("headers", {})}, **kw
    )


def _refused(r, path: str) -> bool:
    """401 for the API; 401 or a redirect to the login page for a page."""
    if r.status_code == 401:
        return True
    if not path.startswith("/v1/") and r.status_code in (302, 303, 307):
        return urlsplit(r.headers["location"]).path.endswith("/login")
    return False


def test_every_route_is_known():
    assert ("POST", "/v1/findings") in ROUTES and ("GET", "/v1/findings") in ROUTES
    assert set(ROUTES) >= WRITES
    for method, path in ROUTES:
        if path.startswith("/v1/") and method not in ("GET", "HEAD"):
            assert (method, path) in WRITES, f"{method} {path}: a new write route: classify it"


@pytest.fixture(scope="module")
def creds(collector):
    """Tokens: an agent's and a viewer's that work, and a revoked one."""
    from mailpath.collector import admin

    revoked = collector.token("sec-revoked", "viewer")
    admin.revoke_token(admin.settings_for(collector.database), revoked[:12])
    return {
        "agent": collector.token("sec-agent"),
        "viewer": collector.token("sec-viewer", "viewer"),
        "revoked": revoked,
    }


REVOKED = "<the revoked token>"
BAD = {  # label: (Authorization header, cookie)
    "no token": (None, None),
    "malformed": ("Bearer mpc_" + "x" * 43, None),
    "not mpc_": ("Bearer " + "a" * 47, None),
    "empty bearer": ("Bearer", None),
    "basic": ("Basic dXNlcjpwYXNz", None),
    "overlong": ("Bearer mpc_" + "y" * 5000, None),
    "revoked": (f"Bearer {REVOKED}", None),
    "revoked cookie": (None, REVOKED),
    "garbage cookie": (None, "mpc_garbage"),
}


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_a_protected_route_refuses_every_bad_credential_and_takes_a_good_one(collector, creds, method, path):
    with collector.client(follow_redirects=False) as c:
        for label, (authorization, cookie) in BAD.items():
            c.cookies.clear()
            if cookie:
                c.cookies.set("mailpath_token", cookie.replace(REVOKED, creds["revoked"]))
            headers = (
                {"Authorization": authorization.replace(REVOKED, creds["revoked"])} if authorization else {}
            )
            r = _request(c, method, path, headers=headers)
            assert _refused(r, path), (label, method, path, r.status_code, r.text[:200])
            assert creds["revoked"] not in r.text and creds["revoked"] not in str(r.headers)
        c.cookies.clear()
        good = creds["agent" if (method, path) in WRITES else "viewer"]
        r = _request(c, method, path, headers={"Authorization": f"Bearer {good}"})
        assert not _refused(r, path) and r.status_code != 403, (method, path, r.status_code)
        assert r.status_code < 500


@pytest.mark.parametrize(("method", "path"), sorted(WRITES))
def test_a_write_takes_an_agent_token_in_the_header_only(collector, creds, method, path):
    with collector.client(follow_redirects=False) as c:
        r = _request(c, method, path, headers={"Authorization": f"Bearer {creds['viewer']}"})
        assert r.status_code == 403 and "viewer" in r.json()["detail"]
        c.cookies.set("mailpath_token", creds["agent"])
        r = _request(c, method, path)
        assert r.status_code == 401  # the dashboard's cookie never sends findings
        r = _request(c, method, path, headers={"Authorization": f"Bearer {creds['agent']}"})
        assert r.status_code == 200


# the public form posts (login, logout) are the dashboard's tests' business
@pytest.mark.parametrize("path", [p for m, p in ROUTES if _public(p) and m == "GET"])
def test_a_public_page_answers_without_a_token(collector, path):
    with collector.client(follow_redirects=False) as c:
        r = c.get(_url(path))
    assert r.status_code not in (401, 403) and r.status_code < 500, (path, r.status_code)


# -- injection ---------------------------------------------------------------------------

INJECTIONS = [
    "x' OR '1'='1",
    "x' OR 1=1 --",
    "'; DROP TABLE findings; --",
    '" OR ""="',
    "x') UNION SELECT hash, hash FROM tokens --",
    "1; DELETE FROM tokens",
    "$$; DROP TABLE agents; $$",
    "%",
    "_",
    "*",
    "\\",
]


def _counts(database: str) -> dict[str, int]:
    from mailpath.collector.db import AgentRow, FindingRow, LatestRow, TokenRow, make_engine
    from mailpath.collector.settings import normalize_database_url
    from sqlalchemy import func, select

    engine = make_engine(normalize_database_url(database))
    try:
        with engine.connect() as conn:
            return {
                row.__tablename__: conn.execute(select(func.count()).select_from(row)).scalar_one()
                for row in (AgentRow, FindingRow, LatestRow, TokenRow)
            }
    finally:
        engine.dispose()


def test_injection_attempts_in_every_filter_are_plain_values(collector, name):
    import json

    doc = json.loads((ROOT / "collector" / "openapi.json").read_text())
    token = collector.token(name)
    literal = finding("x' OR '1'='1")  # a target that is itself an injection attempt
    with collector.client(token) as c:
        assert c.post("/v1/findings", json=batch(literal, finding(name + ".test"))).status_code == 200
        before = _counts(collector.database)
        assert before["findings"] >= 2
        tried = 0
        for path, item in doc["paths"].items():
            get = item.get("get")
            if not get or not path.startswith("/v1/"):
                continue
            for param in get.get("parameters", []):
                for value in INJECTIONS:
                    if param["in"] == "path":
                        url, params = path.replace("{" + param["name"] + "}", quote(value, safe="")), {}
                    else:
                        url, params = path, {param["name"]: value}
                    r = c.get(url, params=params)
                    tried += 1
                    assert r.status_code < 500, (path, param["name"], value, r.text)
                    if r.status_code != 200:
                        assert 400 <= r.status_code < 500
                        continue
                    body = r.json()
                    items = body.get("items", [body])
                    if param["name"] == "target" and value == literal["target"]:
                        # the literal value matches exactly the one finding that holds it
                        assert {i.get("target") for i in items} == {value}, (path, items)
                    elif param["name"] in ("agent", "target"):
                        assert items == [], (path, param["name"], value, items)
        assert tried >= 10 * len(INJECTIONS)
        assert (
            c.get("/v1/findings", params={"target": literal["target"]}).json()["items"][0]["id"]
            == (literal["id"])
        )
        assert len(pages(c, "/v1/findings", agent=name)) == 2
    after = _counts(collector.database)
    assert after == before  # nothing dropped, deleted or added


# -- SQL only through bound parameters ----------------------------------------------------

SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA|CREATE|ALTER|DROP|WHERE|VALUES|BEGIN|FROM|SET)\b")
RAW_SQL_CALLS = {"text", "literal_column", "exec_driver_sql", "execute", "executemany", "executescript"}


def _constant_name(node: ast.AST) -> bool:
    """A module constant (ALL_CAPS name): not input, fine to interpolate."""
    return isinstance(node, ast.Name) and node.id.isupper()


def _built_string(node: ast.AST) -> str | None:
    """For a string built at run time (f-string, %, .format, +), its literal text; else None.
    An f-string that only interpolates module constants does not count."""
    if isinstance(node, ast.JoinedStr):
        values = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        if values and not all(_constant_name(v) for v in values):
            return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        parts = [
            n for n in (node.left, node.right) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        if parts and not all(isinstance(n, ast.Constant) for n in (node.left, node.right)):
            return "".join(p.value for p in parts)
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
    ):
        return node.func.value.value
    return None


def sql_built_from_strings(source: str) -> list[tuple[int, str]]:
    """(line, why) for each SQL text built from strings at run time: a built string that
    reads like SQL anywhere, or any built string handed to text(), execute() and the like."""
    found = []
    for node in ast.walk(ast.parse(source)):
        text = _built_string(node)
        if text is not None and SQL.search(text):
            found.append((node.lineno, f"SQL built with string formatting: {text[:60]!r}"))
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in RAW_SQL_CALLS and _built_string(node.args[0]) is not None:
                found.append((node.lineno, f"{called}() of a string built at run time"))
    return found


@pytest.mark.parametrize(
    ("snippet", "caught"),
    [
        ("conn.execute(text(f\"SELECT * FROM findings WHERE target = '{target}'\"))", True),
        ("q = \"SELECT * FROM t WHERE a = '%s'\" % value", True),
        ('q = "DELETE FROM tokens WHERE id = {}".format(ident)', True),
        ('q = "SELECT * FROM t WHERE a = " + value', True),
        ("conn.exec_driver_sql(f'{statement}')", True),
        ('conn.execute(text("SELECT 1 WHERE a = :a"), {"a": value})', False),
        ('cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")', False),
        ('log.info(f"deleted {n} findings from {where}")', False),
        ('connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")', False),
    ],
)
def test_the_sql_check_catches_formatted_sql(snippet, caught):
    assert bool(sql_built_from_strings(snippet)) is caught


def test_the_collector_builds_no_sql_from_strings():
    files = sorted((ROOT / "collector").rglob("*.py"))
    assert len(files) > 10
    problems = [
        f"{path.relative_to(ROOT)}:{line}: {why}"
        for path in files
        for line, why in sql_built_from_strings(path.read_text())
    ]
    assert problems == []
