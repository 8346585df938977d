"""The HTTP API, ``/v1``: models of what it answers, and the routes.

==========================  =====================  ==========================================
route                       who                    answers
==========================  =====================  ==========================================
``POST /v1/findings``       agent token            200 ``{"accepted", "new"}``; 400 malformed
                                                   JSON or gzip; 401; 403; 413; 415; 422 with
                                                   the index of the bad finding; 503
``GET /v1/findings``        agent or viewer        200 ``{"items", "next_cursor"}``, newest first
``GET /v1/findings/{id}``   agent or viewer        200 one item; 404
``GET /v1/targets``         agent or viewer        200 the latest state per agent × target × port
``GET /v1/agents``          agent or viewer        200 agents: last seen, version, cloud identity
``GET /healthz``            anyone                 200 while the process is up
``GET /readyz``             anyone                 200 when the database answers, else 503
``GET /metrics``            anyone                 Prometheus text format
==========================  =====================  ==========================================

Every error is JSON: ``{"detail": "...", ...}``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyCookie, HTTPBearer
from mailpath.agent.finding import Cause, Finding, Severity
from mailpath.collector import auth, ingest, queries
from mailpath.collector.db import as_utc, read_session, write_session
from mailpath.collector.settings import MAX_PAGE
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# -- models ------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Out):
    """An error: ``detail`` says what is wrong; for a refused batch, ``reason`` (a code) and
    ``index`` (the bad finding's position, or null when the whole document is at fault)."""

    detail: str
    reason: str | None = None
    index: int | None = None
    errors: list[dict[str, Any]] | None = None


class FindingBatch(BaseModel):
    """What ``POST /v1/findings`` takes: the document ``mailpath diagnose --json`` prints."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Literal["mailpath.diagnose/v1"] = Field(
        "mailpath.diagnose/v1", alias="schema", description="May be left out; when given, this value."
    )
    findings: list[Finding]
    error: dict[str, Any] | None = None  # ignored: a run that failed still sends what it found


class IngestResult(_Out):
    accepted: int = Field(description="Findings in the batch (each id counted once).")
    new: int = Field(description="Of those, how many were not stored before.")


class FindingItem(_Out):
    id: uuid.UUID
    agent: str = Field(description="The agent, as its token names it.")
    target: str
    port: int
    cause: Cause
    severity: Severity
    created_at: dt.datetime
    received_at: dt.datetime
    finding: dict[str, Any] = Field(description="The whole finding, a mailpath.finding/v1 object.")


class FindingPage(_Out):
    items: list[FindingItem]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last.")


class TargetState(_Out):
    agent: str
    target: str
    port: int
    cause: Cause
    severity: Severity
    headline: str
    location: dict[str, Any] | None
    since: dt.datetime = Field(description="When the target entered this state (cause, location, verdicts).")
    last_finding_at: dt.datetime = Field(description="created_at of its newest finding.")
    finding_id: uuid.UUID = Field(description="Its newest finding.")


class TargetPage(_Out):
    items: list[TargetState]
    next_cursor: str | None


class AgentItem(_Out):
    name: str
    created_at: dt.datetime
    last_seen: dt.datetime | None = Field(description="When its last batch was received.")
    version: str | None = Field(description="mailpath version of its newest finding.")
    hostname: str | None
    cloud: dict[str, Any] | None = Field(description="Cloud identity of its newest finding.")


class AgentPage(_Out):
    items: list[AgentItem]
    next_cursor: str | None


class Status(_Out):
    status: str


# -- authentication ----------------------------------------------------------------------

bearer_scheme = HTTPBearer(auto_error=False, description="A token from `mailpath collector token create`.")
cookie_scheme = APIKeyCookie(
    name=auth.COOKIE, auto_error=False, description="The dashboard's session cookie."
)


def _principal(request: Request, cookie: bool = True) -> auth.Principal:
    token = auth.bearer_token(
        request.headers.get("authorization"), request.cookies.get(auth.COOKIE) if cookie else None
    )
    challenge = {"WWW-Authenticate": "Bearer"}
    if token is None:
        raise HTTPException(401, "missing token: send Authorization: Bearer <token>", headers=challenge)
    with read_session(request.app.state.collector.engine) as session:
        principal = auth.authenticate(session, token)
    if principal is None:
        raise HTTPException(401, "invalid or revoked token", headers=challenge)
    return principal


def reader(
    request: Request,
    _bearer: Annotated[Any, Security(bearer_scheme)] = None,
    _cookie: Annotated[Any, Security(cookie_scheme)] = None,
) -> auth.Principal:
    """Any valid token: agent or viewer."""
    return _principal(request)


def sender(request: Request, _bearer: Annotated[Any, Security(bearer_scheme)] = None) -> auth.Principal:
    """An agent token, in the Authorization header only: the cookie is the dashboard's, for
    reading, so a page another site makes a browser load can never send findings with it."""
    metrics = request.app.state.collector.metrics
    try:
        principal = _principal(request, cookie=False)
    except HTTPException:
        metrics.rejected.labels("unauthorized").inc()
        raise
    if principal.role != "agent":
        metrics.rejected.labels("forbidden").inc()
        raise HTTPException(403, f"a {principal.role} token cannot send findings: use an agent token")
    return principal


Reader = Annotated[auth.Principal, Depends(reader)]
Sender = Annotated[auth.Principal, Depends(sender)]


def _errors(*codes: int) -> dict:
    text = {
        400: "Malformed request (JSON, gzip, cursor)",
        401: "Missing, invalid or revoked token",
        403: "The token's role may not do this",
        404: "No such item",
        413: "Body over the limit (declared, read or decompressed)",
        415: "Unsupported Content-Type or Content-Encoding",
        422: "Invalid parameters or findings (index names the bad finding)",
        503: "The database is unavailable",
    }
    return {code: {"model": Problem, "description": text[code]} for code in codes}


# -- routes ------------------------------------------------------------------------------

router = APIRouter()

BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "The document `mailpath diagnose --json` prints; `Content-Encoding: gzip` accepted. "
            "Besides the schema: no string may hold a NUL (U+0000) or an unpaired surrogate, and "
            "each created_at must be a time within years 1-9999 in UTC too (else 422)."
        ),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FindingBatch"}}},
    }
}


@router.post(
    "/v1/findings",
    response_model=IngestResult,
    responses=_errors(400, 401, 403, 413, 415, 422, 503),
    openapi_extra=BATCH_BODY,
    tags=["findings"],
)
async def post_findings(request: Request, principal: Sender) -> Any:
    """Store a batch of findings under the token's agent. Idempotent on finding id: a retried
    batch stores nothing twice; ``new`` says how many were not stored before. A bad finding
    refuses the whole batch (``index`` names it); nothing of it is stored."""
    state = request.app.state.collector
    limit = state.settings.body_limit
    headers = request.headers
    try:
        body = await ingest.read_body(request.stream(), headers.get("content-length"), limit)
        findings = await run_in_threadpool(_decode_and_parse, body, headers, limit)
        agent = _sending_agent(principal, findings)
    except ingest.Rejected as rejected:
        state.metrics.rejected.labels(rejected.reason).inc()
        return JSONResponse(rejected.body(), status_code=rejected.status)
    if agent is None:  # an empty batch from a fleet token: no host to name
        return IngestResult(accepted=0, new=0)
    if state.writer is None:
        new = await run_in_threadpool(_store, state.engine, agent, findings)
    else:
        new = await state.writer.store(agent, findings)
    state.metrics.ingested.inc(new)
    return IngestResult(accepted=len({f.id for f in findings}), new=new)


def _sending_agent(principal: auth.Principal, findings: list[Finding]) -> str | None:
    """The agent a batch is stored under: the token's, or for a fleet token the sending host's
    (``HOSTNAME@FLEET``; None for an empty batch)."""
    if not principal.fleet:
        return principal.agent
    if not findings:
        return None
    try:
        return auth.fleet_agent(principal.agent, {f.agent.hostname for f in findings})
    except ValueError as e:
        raise ingest.Rejected(422, "wrong-host", str(e)) from None


def _decode_and_parse(body: bytes, headers, limit: int) -> list[Finding]:
    data = ingest.decode(body, headers.get("content-encoding"), headers.get("content-type"), limit)
    return ingest.parse(data)


def _store(engine, agent: str, findings: list[Finding]) -> int:
    with write_session(engine) as session:
        return ingest.store(session, agent, findings)


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not hold a NUL character")
    return value


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    try:
        return None if value is None else as_utc(value)
    except OverflowError:
        raise ValueError("is out of range") from None


Text = AfterValidator(_no_nul)
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Items per page (at most {MAX_PAGE}).")]
Cursor = Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page.")]
AgentQ = Annotated[str | None, Query(max_length=128, description="Only this agent."), Text]
TargetQ = Annotated[str | None, Query(max_length=255, description="Only this target (host)."), Text]
PortQ = Annotated[int | None, Query(ge=1, le=65535, description="Only this port.")]
CauseQ = Annotated[Cause | None, Query(description="Only this cause.")]
SeverityQ = Annotated[Severity | None, Query(description="Only this severity.")]


def _bad_cursor(e: queries.BadCursor) -> HTTPException:
    return HTTPException(400, str(e))


@router.get(
    "/v1/findings", response_model=FindingPage, responses=_errors(400, 401, 422, 503), tags=["findings"]
)
def get_findings(
    request: Request,
    _who: Reader,
    agent: AgentQ = None,
    target: TargetQ = None,
    port: PortQ = None,
    cause: CauseQ = None,
    severity: SeverityQ = None,
    since: Annotated[
        dt.datetime | None, Query(description="created_at at or after (ISO 8601)."), AfterValidator(_utc)
    ] = None,
    until: Annotated[
        dt.datetime | None, Query(description="created_at before (ISO 8601)."), AfterValidator(_utc)
    ] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Any:
    """Findings, newest received first, filtered; paginated by an opaque cursor (keyset on
    received_at and id: stable while findings are added)."""
    where = queries.FindingFilter(agent, target, port, cause, severity, since, until)
    try:
        with read_session(request.app.state.collector.engine) as session:
            return queries.list_findings(session, where, limit, cursor)
    except queries.BadCursor as e:
        raise _bad_cursor(e) from None


@router.get(
    "/v1/findings/{finding_id}",
    response_model=FindingItem,
    responses=_errors(401, 404, 422, 503),
    tags=["findings"],
)
def get_finding(request: Request, finding_id: uuid.UUID, _who: Reader) -> Any:
    """One finding by its id."""
    with read_session(request.app.state.collector.engine) as session:
        item = queries.get_finding(session, finding_id)
    if item is None:
        raise HTTPException(404, f"no finding {finding_id}")
    return item


@router.get("/v1/targets", response_model=TargetPage, responses=_errors(400, 401, 422, 503), tags=["state"])
def get_targets(
    request: Request,
    _who: Reader,
    agent: AgentQ = None,
    target: TargetQ = None,
    port: PortQ = None,
    cause: CauseQ = None,
    severity: SeverityQ = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Any:
    """The latest state of every agent × target × port, with ``since``: when it entered that
    state (its cause, location and the addresses' verdicts)."""
    try:
        with read_session(request.app.state.collector.engine) as session:
            return queries.list_targets(session, limit, cursor, agent, target, port, cause, severity)
    except queries.BadCursor as e:
        raise _bad_cursor(e) from None


@router.get("/v1/agents", response_model=AgentPage, responses=_errors(400, 401, 422, 503), tags=["state"])
def get_agents(request: Request, _who: Reader, limit: Limit = 100, cursor: Cursor = None) -> Any:
    """Agents by name: when each was last seen, and the version and cloud identity of its
    newest finding."""
    try:
        with read_session(request.app.state.collector.engine) as session:
            return queries.list_agents(session, limit, cursor)
    except queries.BadCursor as e:
        raise _bad_cursor(e) from None


@router.get("/healthz", response_model=Status, tags=["operations"])
def healthz() -> Any:
    """The process is up (nothing else is checked)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Status, responses=_errors(503), tags=["operations"])
def readyz(request: Request) -> Any:
    """Ready to serve: the database answers."""
    from sqlalchemy import text

    try:
        with request.app.state.collector.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:
        return JSONResponse({"detail": f"database unreachable: {type(e).__name__}"}, status_code=503)
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    tags=["operations"],
)
def metrics(request: Request) -> Response:
    """Prometheus metrics (see :mod:`mailpath.collector.metrics`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(
        generate_latest(request.app.state.collector.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


def fleet_gauges(engine) -> tuple[dict[str, int], dict[str, dt.datetime | None]]:
    """What /metrics reads at scrape: targets per cause now, and each agent's last batch."""
    with read_session(engine) as session:
        return queries.latest_by_cause(session), queries.agents_last_seen(session)
