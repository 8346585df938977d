"""The FastAPI application: :func:`create_app` (settings in, app out).

At start-up (the lifespan) the database is migrated to this collector's schema, or refused
when it is newer (:mod:`mailpath.collector.migrate`), and the retention task starts: every
``retention_interval`` it deletes findings older than ``retention_age``, keeping each
target's latest. Errors are always JSON; a database that does not answer is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from mailpath.collector import api, ingest, migrate, queries
from mailpath.collector.dashboard import routes as dashboard
from mailpath.collector.db import make_engine, write_session
from mailpath.collector.metrics import Metrics, MetricsMiddleware
from mailpath.collector.settings import CollectorSettings
from mailpath.collector.writer import GroupWriter
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("mailpath.collector")

TITLE = "mailpath collector"
API_VERSION = "v1"


@dataclass
class Collector:
    """What the routes reach through ``request.app.state.collector``."""

    settings: CollectorSettings
    engine: Engine
    metrics: Metrics
    # SQLite takes one writer at a time: batches wait for their turn here, in the event loop
    # (in order, holding no thread), rather than in SQLite's busy handler, which retries after
    # ever longer sleeps (up to 100 ms) and keeps a worker thread meanwhile; those that waited
    # together are committed together
    writer: GroupWriter | None = None


def create_app(settings: CollectorSettings | None = None, *, migrate_on_start: bool = True) -> FastAPI:
    """The collector app for ``settings``. Nothing touches the database until it starts."""
    settings = settings or CollectorSettings()
    engine = make_engine(settings.database)
    metrics = Metrics(lambda: api.fleet_gauges(engine))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate_on_start:
            await run_in_threadpool(migrate.upgrade, engine)
        task = None
        if settings.retention_age.total_seconds() > 0:
            task = asyncio.create_task(_retention(engine, settings), name="mailpath-retention")
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            engine.dispose()

    app = FastAPI(
        title=TITLE,
        version=API_VERSION,
        summary="Findings from mailpath agents: ingest, query, latest state per target.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: the document is /openapi.json
        redoc_url=None,
    )
    writer = GroupWriter(engine) if engine.dialect.name == "sqlite" else None
    app.state.collector = Collector(settings, engine, metrics, writer)
    app.include_router(api.router)
    app.add_middleware(InternalErrors)
    dashboard.install(app)  # the HTML pages, /static, and the security headers on every response
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _errors_as_json(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _errors_as_json(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:] or first["loc"]) or "request"
        return JSONResponse({"detail": f"invalid {where}: {first['msg']}", "errors": errors}, status_code=422)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def unavailable(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return JSONResponse({"detail": "the database is unavailable, try again later"}, status_code=503)


class InternalErrors:
    """Pure ASGI middleware, inside the metrics and the security headers: an unexpected
    exception is logged once and answered as a JSON 500 that is counted and carries the
    headers, and the connection stays open. (Starlette's handler for ``Exception`` answers
    outside every middleware, then re-raises, so the server logs it again and drops the
    connection.)"""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            log.error("internal error: %s", type(exc).__name__, exc_info=exc)
            if started:  # too late for an answer of our own
                raise
            await JSONResponse({"detail": "internal error"}, status_code=500)(scope, receive, send)


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document, plus the request body of ``POST /v1/findings`` (read raw, for gzip
    and limits, so FastAPI does not see it): FindingBatch and the finding models it holds."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    batch = api.FindingBatch.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    for name, schema in batch.pop("$defs", {}).items():
        schemas.setdefault(name, schema)
    schemas["FindingBatch"] = batch
    # what the collector stores: a host name's length (the agent's model leaves it open)
    schemas["Finding"]["properties"]["target"]["maxLength"] = ingest.MAX_TARGET
    app.openapi_schema = doc
    return doc


async def _retention(engine: Engine, settings: CollectorSettings) -> None:
    """Delete old findings every interval (first at start-up); a failure is logged and retried."""
    while True:
        try:
            deleted = await run_in_threadpool(purge_all, engine, settings.retention_age)
            if deleted:
                log.info("retention: deleted %d findings older than %s", deleted, settings.retention_age)
        except Exception as e:  # the database may be down for a while: try again next time
            log.warning("retention failed: %s: %s", type(e).__name__, " ".join(str(e).split())[:200])
        await asyncio.sleep(settings.retention_interval.total_seconds())


def purge_all(engine: Engine, age, batch: int = 5000) -> int:
    """Run :func:`queries.purge` in batches, each its own transaction, until nothing is left."""
    total = 0
    while True:
        with write_session(engine) as session:
            n = queries.purge(session, age, batch=batch)
        total += n
        if n < batch:
            return total
