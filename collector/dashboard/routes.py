"""The dashboard's routes: login and logout, the fleet, a target, a finding; security headers.

==================================  ============================================================
route                               answers
==================================  ============================================================
``GET /login``                      the login form (a message after a logout or a revocation)
``POST /login``                     a token that authenticates: 303 to the page asked for, with
                                    the ``mailpath_token`` cookie (HttpOnly, SameSite=Strict,
                                    Path=/, Secure over https); a bad or revoked one: 401 and
                                    the form; a cross-site post: 403
``POST /logout``                    303 to the login page, the cookie cleared
``GET /``                           the fleet: agents × target:port, counts, recent changes
``GET /target?agent=&target=&port=`` one agent × target × port: its history and latest finding
``GET /findings/{id}``              one finding: evidence, verdicts, hop paths, remediation
``GET /static/…``                   the stylesheet (the pages load nothing from anywhere else)
==================================  ============================================================

A page without a valid token (the cookie, or an ``Authorization: Bearer`` header) answers 303
to ``/login``; the token is looked up again on every request, so a revoked one is out at its
next page. Viewer and agent tokens may both read, as with the API. Login is protected against
cross-site posts twice: the cookie is SameSite=Strict, and ``POST /login`` and ``/logout``
demand an ``Origin`` (or, lacking one, a ``Referer``) naming this collector's own host, and a
``Sec-Fetch-Site`` of ``same-origin`` when the browser sends one.

Every response of the collector, API included, carries ``Content-Security-Policy:
default-src 'self'`` (no inline script or style; frames refused), ``X-Content-Type-Options:
nosniff``, ``X-Frame-Options: DENY`` and ``Referrer-Policy: same-origin``. None of these
routes is in the OpenAPI document: it describes the API.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from mailpath.collector import auth
from mailpath.collector.dashboard import queries, views
from mailpath.collector.db import read_session, utcnow

HERE = Path(__file__).resolve().parent
COOKIE_AGE = 30 * 86400  # the token is entered once a month at most
MAX_FORM = 4096  # a login form is a token and a path
MAX_TEXT = 255

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]

MESSAGES = {
    "expired": "Your session has ended: the token was revoked or is no longer valid. "
    "Sign in with a valid token.",
    "out": "Signed out.",
}


class SecurityHeaders:
    """Pure ASGI middleware: the headers above on every HTTP response (kept when a route set
    its own)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


# -- pure helpers ----------------------------------------------------------------------------


def same_origin(headers: dict[str, str], host: str | None) -> tuple[bool, str | None]:
    """Whether a form post comes from a page of this collector (``host``: the request's Host
    header), and the scheme that page was loaded over (to set the cookie Secure over https).
    ``headers``: the request's, lower-case names."""
    if not host:
        return False, None
    site = headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False, None
    origin = headers.get("origin")
    if origin is None or origin == "null":
        origin = headers.get("referer") if origin is None else None
    if not origin:
        return False, None
    parts = urlsplit(origin)
    ok = parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
    return ok, parts.scheme if ok else None


def safe_next(value: str | None) -> str:
    """Where to go after login: a path of this site only (never another host)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(ch) < 0x20 for ch in value) or urlsplit(value).netloc:
        return "/"
    return value


def host_port(target: str, port: int) -> str:
    return f"[{target}]:{port}" if ":" in target else f"{target}:{port}"


# -- templates -------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # everything from a finding is an agent's text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        family=views.family,
        abbrev=views.abbrev,
        stamp=views.stamp,
        duration=views.human_duration,
        location=views.describe_location,
        host_port=host_port,
        causes=views.CAUSES,
    )
    return env


ENV = _environment()


def _root(request: Request) -> str:
    return str(request.scope.get("root_path") or "").rstrip("/")


def _page(
    request: Request, template: str, status: int = 200, principal: auth.Principal | None = None, **context
) -> HTMLResponse:
    root = _root(request)
    now = utcnow()

    quoted = functools.lru_cache(maxsize=None)(quote_plus)  # a matrix repeats its names

    def target_url(agent: str, target: str, port: int) -> str:
        return f"{root}/target?agent={quoted(agent)}&target={quoted(target)}&port={int(port)}"

    def finding_url(finding_id: Any) -> str:
        return f"{root}/findings/{finding_id}"

    def ago(t: dt.datetime | None) -> str:
        return "never" if t is None else views.human_duration(now - t) + " ago"

    html = ENV.get_template(template).render(
        root=root,
        now=now,
        principal=principal,
        target_url=target_url,
        finding_url=finding_url,
        ago=ago,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


# -- authentication --------------------------------------------------------------------------


def _token(request: Request) -> str | None:
    return auth.bearer_token(request.headers.get("authorization"), request.cookies.get(auth.COOKIE))


def _who(request: Request) -> auth.Principal | None:
    token = _token(request)
    if token is None:
        return None
    with read_session(request.app.state.collector.engine) as session:
        return auth.authenticate(session, token)


def _to_login(request: Request) -> RedirectResponse:
    """303 to the login page, back to this page afterwards; a cookie that no longer works is
    cleared, and the login page says why."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    params = {"next": here}
    if request.cookies.get(auth.COOKIE):
        params["m"] = "expired"
    response = RedirectResponse(f"{_root(request)}/login?{urlencode(params)}", status_code=303)
    if request.cookies.get(auth.COOKIE):
        _clear_cookie(response, request)
    response.headers["Cache-Control"] = "no-store"
    return response


def _clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict")


def _refused(request: Request, why: str) -> HTMLResponse:
    return _page(request, "error.html", 403, title="Refused", message=why)


def _not_found(request: Request, principal: auth.Principal, what: str) -> HTMLResponse:
    return _page(request, "error.html", 404, principal, title="Not found", message=what)


async def _form(request: Request) -> dict[str, str] | None:
    """The fields of a small urlencoded form (the first value of each); None when the body is
    not one (wrong type, too long, not UTF-8)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items() if v}


# -- routes ----------------------------------------------------------------------------------

router = APIRouter(include_in_schema=False)


@router.get("/login")
def login_form(request: Request, next: str = "/", m: str = "") -> HTMLResponse:
    return _page(request, "login.html", next=safe_next(next), message=MESSAGES.get(m), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    ok, scheme = same_origin(dict(request.headers), request.headers.get("host"))
    if not ok:
        return _refused(request, "A sign-in must come from this collector's own login page.")
    form = await _form(request)
    if form is None:
        return _page(request, "login.html", 400, next="/", message=None, error="Send the login form.")
    token = form.get("token", "").strip()
    target = safe_next(form.get("next"))
    principal = None
    if token:
        engine = request.app.state.collector.engine

        def check() -> auth.Principal | None:
            with read_session(engine) as session:
                return auth.authenticate(session, token)

        principal = await run_in_threadpool(check)
    if principal is None:
        error = "That token is not valid, or it has been revoked." if token else "Enter a token."
        return _page(request, "login.html", 401, next=target, message=None, error=error)
    response = RedirectResponse(_root(request) + target, status_code=303)
    response.set_cookie(
        auth.COOKIE,
        token,
        max_age=COOKIE_AGE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or scheme == "https",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    ok, _ = same_origin(dict(request.headers), request.headers.get("host"))
    if not ok:
        return _refused(request, "A sign-out must come from this collector's own pages.")
    response = RedirectResponse(f"{_root(request)}/login?m=out", status_code=303)
    _clear_cookie(response, request)
    return response


@router.get("/")
def fleet(request: Request) -> Response:
    principal = _who(request)
    if principal is None:
        return _to_login(request)
    with read_session(request.app.state.collector.engine) as session:
        states, total = queries.fleet(session)
        seen = queries.agents_seen(session)
    matrix = views.build_matrix(states, seen)
    return _page(request, "fleet.html", principal=principal, matrix=matrix, seen=seen, total=total)


@router.get("/target")
def target(request: Request, agent: str = "", target: str = "", port: str = "") -> Response:
    principal = _who(request)
    if principal is None:
        return _to_login(request)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return _not_found(request, principal, "No such target: the port must be 1-65535.")
    if not agent or not target or len(agent) > 128 or len(target) > MAX_TEXT or "\x00" in agent + target:
        return _not_found(request, principal, "No such target.")
    number = int(port)
    with read_session(request.app.state.collector.engine) as session:
        state = queries.target_state(session, agent, target, number)
        points, older = queries.history(session, agent, target, number)
        latest = queries.finding(session, uuid.UUID(state.finding_id)) if state else None
    if state is None and not points:
        return _not_found(request, principal, f"No findings from {agent} for {host_port(target, number)}.")
    return _page(
        request,
        "target.html",
        principal=principal,
        agent=agent,
        target=target,
        port=number,
        state=state,
        periods=views.transitions(points),
        older=older,
        latest=latest.doc if latest else None,
        latest_id=str(latest.id) if latest else None,
        latest_at=latest.created_at if latest else None,
    )


@router.get("/findings/{finding_id}")
def finding(request: Request, finding_id: str) -> Response:
    principal = _who(request)
    if principal is None:
        return _to_login(request)
    try:
        ident = uuid.UUID(finding_id)
    except ValueError:
        return _not_found(request, principal, "No such finding.")
    with read_session(request.app.state.collector.engine) as session:
        row = queries.finding(session, ident)
    if row is None:
        return _not_found(request, principal, f"No finding {ident}.")
    doc = row.doc
    return _page(
        request,
        "finding.html",
        principal=principal,
        row=row,
        f=doc,
        paths=views.hop_paths(doc),
    )


def install(app: FastAPI) -> None:
    """Add the dashboard to the collector's app: its routes, its static files and the
    security headers (for every response)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(SecurityHeaders)
