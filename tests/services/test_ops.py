"""Operations: /healthz, /readyz (503 when the database does not answer), /metrics, retention,
and tokens never in the server's log."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.services.conftest import Collector, batch, finding, pages


def test_healthz_and_readyz(collector):
    with collector.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready"}


@contextlib.contextmanager
def _in_thread(app):
    """The app served by uvicorn in a thread of this process, on 127.0.0.1 and a free port."""
    import uvicorn
    from mailpath.collector.server import bind, url_of

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the collector did not start"
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def test_readyz_is_503_and_requests_are_503_json_when_the_database_is_gone(tmp_path):
    from mailpath.collector.app import create_app
    from mailpath.collector.db import make_engine
    from mailpath.collector.settings import load_settings

    app = create_app(load_settings(data_dir=str(tmp_path)))
    with _in_thread(app) as url, httpx.Client(base_url=url, trust_env=False, timeout=10) as c:
        assert c.get("/readyz").status_code == 200
        state = app.state.collector
        working, state.engine = state.engine, make_engine(f"sqlite:///{tmp_path}/gone/collector.db")
        try:
            r = c.get("/readyz")
            assert r.status_code == 503 and "database unreachable" in r.json()["detail"]
            r = c.get("/v1/findings", headers={"Authorization": "Bearer mpc_" + "x" * 43})
            assert r.status_code == 503 and r.json() == {
                "detail": "the database is unavailable, try again later"
            }
            assert c.get("/healthz").status_code == 200
        finally:
            state.engine.dispose()
            state.engine = working
        assert c.get("/readyz").status_code == 200


def test_an_internal_error_is_a_json_500_with_the_security_headers_and_no_token_logged(tmp_path, caplog):
    from mailpath.collector.app import create_app
    from mailpath.collector.settings import load_settings

    app = create_app(load_settings(data_dir=str(tmp_path)))
    token = "mpc_" + "y" * 43
    with _in_thread(app) as url, httpx.Client(base_url=url, trust_env=False, timeout=10) as c:
        state = app.state.collector
        working, state.engine = state.engine, None  # any use of it raises AttributeError
        try:
            r = c.get("/v1/agents", headers={"Authorization": f"Bearer {token}"})
        finally:
            state.engine = working
        assert r.status_code == 500 and r.json() == {"detail": "internal error"}
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert c.get("/healthz").status_code == 200  # on the same connection
        counted = _metrics(c)["mailpath_collector_requests_total"]
        assert counted[(("method", "GET"), ("route", "/v1/agents"), ("status", "500"))] == 1, counted
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["internal error: UnboundExecutionError"]  # once
    assert token not in caplog.text


def _metrics(client) -> dict[str, dict[tuple, float]]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics(collector, name):
    token = collector.token(name)
    with collector.client(token) as c:
        before = _metrics(c)
        ingested = before.get("mailpath_collector_findings_ingested_total", {}).get((), 0)
        malformed = before.get("mailpath_collector_findings_rejected_total", {}).get(
            (("reason", "malformed-json"),), 0
        )
        assert (
            c.post(
                "/v1/findings", json=batch(finding(name + ".test"), finding(name + ".test", 587))
            ).status_code
            == 200
        )
        assert c.post("/v1/findings", content=b"{").status_code == 400
        assert c.get("/v1/nothing-here").status_code == 404
        after = _metrics(c)
        by_cause = {}
        for item in pages(c, "/v1/targets", limit=1000):
            by_cause[item["cause"]] = by_cause.get(item["cause"], 0) + 1
    assert after["mailpath_collector_findings_ingested_total"][()] == ingested + 2
    assert (
        after["mailpath_collector_findings_rejected_total"][(("reason", "malformed-json"),)] == malformed + 1
    )
    requests = after["mailpath_collector_requests_total"]
    assert requests[(("method", "POST"), ("route", "/v1/findings"), ("status", "200"))] >= 1
    assert requests[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] >= 1
    buckets = after["mailpath_collector_request_duration_seconds_bucket"]
    assert any(dict(k).get("route") == "/v1/findings" for k in buckets)
    latest = {dict(k)["cause"]: v for k, v in after["mailpath_collector_latest_states"].items()}
    assert set(latest) >= {"dns", "firewall", "none", "tls", "cloud-policy"}
    assert {k: v for k, v in latest.items() if v} == by_cause
    seen = after["mailpath_collector_agent_last_seen_timestamp_seconds"]
    agent = next(a for a in pages(collector.client(token), "/v1/agents") if a["name"] == name)
    assert seen[(("agent", name),)] == pytest.approx(
        dt.datetime.fromisoformat(agent["last_seen"]).timestamp()
    )


def test_retention_deletes_old_findings_but_keeps_each_targets_latest(tmp_path, name):
    server = Collector(tmp_path, retention_age="1d", retention_interval="0.2")
    try:
        server.start()
        now = dt.datetime.now(dt.UTC)
        days = lambda n: now - dt.timedelta(days=n)  # noqa: E731
        a, b = finding("a.test", created_at=days(5)), finding("a.test", created_at=days(3))
        c_, d = finding("b.test", created_at=days(5)), finding("b.test", created_at=now)
        with server.client(server.token(name)) as c:
            assert c.post("/v1/findings", json=batch(a, b, c_, d)).json() == {"accepted": 4, "new": 4}
            deadline = time.monotonic() + 10
            while True:
                kept = {i["id"] for i in pages(c, "/v1/findings")}
                if kept == {b["id"], d["id"]} or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert kept == {b["id"], d["id"]}  # b is old, but a.test's latest
            assert c.get(f"/v1/findings/{a['id']}").status_code == 404
            states = {i["target"]: i["finding_id"] for i in pages(c, "/v1/targets")}
            assert states == {"a.test": b["id"], "b.test": d["id"]}
        assert "retention: deleted 2 findings" in server.log
    finally:
        server.stop()


@pytest.mark.last  # after every other test on this collector: its whole log is read
def test_tokens_never_reach_the_log(collector, name, request):
    """No token made for this collector (by any test: API, dashboard, schemathesis, the 50
    agents, the security table) is in its log, nor in the PostgreSQL server's."""
    from mailpath.collector import admin

    agent, viewer = collector.token(name), collector.token(name + "-v", "viewer")
    revoked = collector.token(name + "-r")
    admin.revoke_token(admin.settings_for(collector.database), revoked[:12])
    wrong = "mpc_" + "W" * 43
    with collector.client() as c:
        for token in (agent, viewer, revoked, wrong):
            c.post(
                "/v1/findings",
                json=batch(finding(name + ".test")),
                headers={"Authorization": f"Bearer {token}"},
            )
            c.get("/v1/findings", headers={"Authorization": f"Bearer {token}"})
            c.get("/v1/agents", headers={"Cookie": f"mailpath_token={token}"})
            c.post("/v1/findings", content=b"{", headers={"Authorization": f"Bearer {token}"})
    time.sleep(0.2)  # the access log line is written after the answer
    log = collector.log
    assert '"POST /v1/findings HTTP/1.1" 401' in log and '"GET /v1/agents HTTP/1.1" 200' in log
    logs = {"collector": log}
    if collector.database.startswith("postgresql") and request.getfixturevalue("postgres_cluster"):
        logs["postgres"] = request.getfixturevalue("postgres_cluster").log
    for where, text in logs.items():
        for token in (agent, viewer, revoked, wrong, *collector.tokens):
            assert token not in text and token[12:] not in text, where
        assert "Authorization" not in text and "Bearer" not in text, where
