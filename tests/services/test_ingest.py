"""POST /v1/findings against the running collector: storing, idempotency, gzip, and every way
a batch is refused (each a 4xx naming the problem, nothing of the batch stored)."""

from __future__ import annotations

import gzip
import json
import socket
import uuid
from urllib.parse import urlsplit

import pytest

from tests.services.conftest import batch, finding

LIMIT = 262144  # the shared collector's body limit


def _post(client, doc, **headers):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return client.post("/v1/findings", content=body, headers={"Content-Type": "application/json", **headers})


def test_a_batch_is_stored_under_the_tokens_agent_and_a_retry_stores_nothing_twice(collector, name):
    token = collector.token(name)
    doc = batch(
        finding(name + ".test", hostname="elsewhere"), finding(name + ".test", 587, hostname="elsewhere")
    )
    with collector.client(token) as c:
        first = _post(c, doc)
        assert first.status_code == 200, first.text
        assert first.json() == {"accepted": 2, "new": 2}
        again = _post(c, doc)
        assert again.json() == {"accepted": 2, "new": 0}
        items = c.get("/v1/findings", params={"agent": name}).json()["items"]
    assert sorted(i["id"] for i in items) == sorted(f["id"] for f in doc["findings"])
    assert {i["agent"] for i in items} == {name}  # the token's name, not the payload's hostname
    assert {i["finding"]["agent"]["hostname"] for i in items} == {"elsewhere"}


def test_a_batch_without_the_schema_key_and_a_duplicate_id_in_one_batch(collector, name):
    one = finding(name + ".test")
    with collector.client(collector.token(name)) as c:
        r = _post(c, {"findings": [one, one]})
    assert r.status_code == 200 and r.json() == {"accepted": 1, "new": 1}


def test_gzip_bodies_are_accepted(collector, name):
    doc = batch(finding(name + ".test"))
    with collector.client(collector.token(name)) as c:
        r = _post(c, gzip.compress(json.dumps(doc).encode()), **{"Content-Encoding": "gzip"})
        assert r.status_code == 200 and r.json() == {"accepted": 1, "new": 1}
        # two gzip members are one body
        body = gzip.compress(json.dumps(doc).encode()[:10]) + gzip.compress(json.dumps(doc).encode()[10:])
        r = _post(c, body, **{"Content-Encoding": "gzip"})
        assert r.status_code == 200 and r.json() == {"accepted": 1, "new": 0}


def test_an_empty_batch_is_fine(collector, name):
    with collector.client(collector.token(name)) as c:
        r = _post(c, batch())
    assert r.status_code == 200 and r.json() == {"accepted": 0, "new": 0}


@pytest.mark.parametrize(
    ("body", "status", "reason", "words"),
    [
        (b"{", 400, "malformed-json", "malformed JSON"),
        (b"\xff\xfe", 400, "malformed-json", "UTF-8"),
        (b"[]", 422, "not-a-batch", "findings"),
        (b'{"findings": null}', 422, "not-a-batch", "findings"),
        (b'{"findings": [], "extra": 1}', 422, "not-a-batch", "extra"),
        (b'{"schema": "mailpath.probe/v1", "findings": []}', 422, "unknown-schema", "mailpath.probe/v1"),
        (b'{"findings": [NaN]}', 400, "malformed-json", "NaN"),
        (b'{"findings": [1e999]}', 400, "malformed-json", "range"),
        (b"[" * 100_000, 400, "malformed-json", ""),
        (b'{"findings": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "malformed-json", "nested"),
    ],
)
def test_a_malformed_document_is_a_4xx_naming_the_problem(collector, name, body, status, reason, words):
    with collector.client(collector.token(name)) as c:
        r = _post(c, body)
    assert r.status_code == status, r.text
    assert r.json()["reason"] == reason and words in r.json()["detail"]
    assert r.json()["index"] is None


def _bad(field: str, value) -> dict:
    f = finding("bad.test")
    f[field] = value
    return f


@pytest.mark.parametrize(
    ("bad", "reason", "words"),
    [
        (_bad("port", 0), "schema-violation", "port"),
        (_bad("cause", "gremlins"), "schema-violation", "cause"),
        (_bad("unexpected", 1), "schema-violation", "unexpected"),
        (_bad("schema", "mailpath.finding/v2"), "unknown-schema", "mailpath.finding/v2"),
        (_bad("target", "a\x00b"), "schema-violation", "NUL"),
        (_bad("headline", "\ud800"), "schema-violation", "surrogate"),
        (_bad("target", "x" * 300), "schema-violation", "longer"),
        (_bad("created_at", "0001-01-01T00:00:00+01:00"), "schema-violation", "created_at"),
        (_bad("created_at", "9999-12-31T23:59:59-01:00"), "schema-violation", "created_at"),
        (_bad("port", 10**40), "schema-violation", "port"),
        ("not an object", "schema-violation", "finding 2"),
    ],
)
def test_a_bad_finding_refuses_the_batch_with_its_index(collector, name, bad, reason, words):
    good = [finding(name + ".test"), finding(name + ".test", 587)]
    with collector.client(collector.token(name)) as c:
        raw = json.dumps(batch(*good, bad)).encode()
        r = _post(c, raw)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["index"] == 2 and body["reason"] == reason and words in body["detail"], body
        assert c.get("/v1/findings", params={"agent": name}).json()["items"] == []


def test_a_token_is_needed_and_must_be_valid_and_an_agents(collector, name):
    doc = batch(finding(name + ".test"))
    viewer = collector.token(name + "-viewer", "viewer")
    with collector.client() as c:
        assert _post(c, doc).status_code == 401
        assert _post(c, doc, Authorization="Bearer mpc_" + "x" * 43).status_code == 401
        assert _post(c, doc, Authorization="Basic dXNlcjpwYXNz").status_code == 401
        assert _post(c, doc, Authorization="Bearer").status_code == 401
        r = _post(c, doc, Authorization=f"Bearer {viewer}")
        assert r.status_code == 403 and "viewer" in r.json()["detail"]
        assert r.headers["content-type"] == "application/json"
        r = c.get("/v1/findings")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/findings", headers={"Authorization": f"Bearer {viewer}"}).status_code == 200
        c.cookies.set("mailpath_token", viewer)
        assert c.get("/v1/findings").status_code == 200
        # the cookie reads, it never sends (an agent's included)
        c.cookies.set("mailpath_token", collector.token(name))
        assert c.get("/v1/findings").status_code == 200
        assert _post(c, doc).status_code == 401


def test_a_revoked_token_is_refused_from_the_next_request(collector, name):
    from mailpath.collector import admin

    token = collector.token(name)
    with collector.client(token) as c:
        assert _post(c, batch(finding(name + ".test"))).status_code == 200
        admin.revoke_token(admin.settings_for(collector.database), token[:12])
        assert _post(c, batch(finding(name + ".test"))).status_code == 401
        assert c.get("/v1/agents").status_code == 401


def test_a_body_over_the_limit_is_413(collector, name):
    with collector.client(collector.token(name)) as c:
        r = _post(c, b" " * (LIMIT + 1))
        assert r.status_code == 413 and r.json()["reason"] == "too-large"
        # gzip bomb: 64 MiB of spaces in about 64 KiB, refused past the limit without inflating it all
        bomb = gzip.compress(b" " * (64 << 20), 9)
        assert len(bomb) < LIMIT
        r = _post(c, bomb, **{"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "decompressed" in r.json()["detail"]
        # a body that does not declare its length is cut off when it passes the limit
        r = c.post("/v1/findings", content=iter([b" " * 65536] * 8))
        assert r.status_code == 413


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(collector, name):
    token = collector.token(name)
    url = urlsplit(collector.url)
    request = (
        f"POST /v1/findings HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {10**12}\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(request.encode())
        answer = s.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413"), answer


@pytest.mark.parametrize(
    ("encoding", "body", "status"),
    [
        ("gzip", b"not gzip at all", 400),
        ("gzip", gzip.compress(b'{"findings": []}')[:-6], 400),
        ("br", b"{}", 415),
    ],
)
def test_bad_or_unknown_content_encoding(collector, name, encoding, body, status):
    with collector.client(collector.token(name)) as c:
        r = _post(c, body, **{"Content-Encoding": encoding})
    assert r.status_code == status, r.text
    assert r.json()["reason"] in ("bad-encoding", "unsupported-media-type")


def test_other_content_types_are_415(collector, name):
    with collector.client(collector.token(name)) as c:
        r = c.post("/v1/findings", content=b"findings=1", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_a_finding_id_sent_by_another_agent_is_not_new(collector, name):
    one = finding(name + ".test")
    with collector.client(collector.token(name)) as c:
        assert _post(c, batch(one)).json()["new"] == 1
    with collector.client(collector.token(name + "-b")) as c:
        assert _post(c, batch(one)).json() == {"accepted": 1, "new": 0}
        assert c.get(f"/v1/findings/{one['id']}").json()["agent"] == name


def test_unknown_finding_is_404_and_a_bad_id_422(collector, name):
    with collector.client(collector.token(name)) as c:
        r = c.get(f"/v1/findings/{uuid.uuid4()}")
        assert r.status_code == 404 and r.json()["detail"].startswith("no finding")
        assert c.get("/v1/findings/not-a-uuid").status_code == 422
