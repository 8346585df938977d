"""The read side against the running collector: filters, cursor pagination (no duplicate, no
gap while findings keep arriving), the latest state per target with ``since``, agents."""

from __future__ import annotations

import datetime as dt
import uuid

from tests.services.conftest import batch, finding, pages

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _send(client, *findings: dict) -> None:
    r = client.post("/v1/findings", json=batch(*findings))
    assert r.status_code == 200, r.text


def test_filters(collector, name):
    a, b = name + "-a.test", name + "-b.test"
    t0 = NOW - dt.timedelta(hours=3)
    sent = [
        finding(a, 25, "firewall", created_at=t0),
        finding(a, 587, "tls", created_at=t0 + dt.timedelta(hours=1), severity="warning"),
        finding(b, 25, "none", created_at=t0 + dt.timedelta(hours=2), verdict="open"),
    ]
    with collector.client(collector.token(name)) as c:
        _send(c, *sent)
        viewer = collector.token(name + "-viewer", "viewer")
        c.headers["Authorization"] = f"Bearer {viewer}"

        def ids(**params) -> set[str]:
            return {i["id"] for i in pages(c, "/v1/findings", agent=name, **params)}

        every = {f["id"] for f in sent}
        assert ids() == every
        assert ids(target=a) == {sent[0]["id"], sent[1]["id"]}
        assert ids(port=587) == {sent[1]["id"]}
        assert ids(cause="none") == {sent[2]["id"]}
        assert ids(severity="warning") == {sent[1]["id"]}
        assert ids(target=a, port=25) == {sent[0]["id"]}
        since = (t0 + dt.timedelta(hours=1)).isoformat()
        assert ids(since=since) == {sent[1]["id"], sent[2]["id"]}
        assert ids(until=since) == {sent[0]["id"]}
        assert ids(since=since, until=(t0 + dt.timedelta(hours=2)).isoformat()) == {sent[1]["id"]}
        assert c.get("/v1/findings", params={"agent": name + "-nobody"}).json() == {
            "items": [],
            "next_cursor": None,
        }
        for bad in ({"cause": "gremlins"}, {"port": 0}, {"severity": "fatal"}, {"since": "yesterday"}):
            r = c.get("/v1/findings", params=bad)
            assert r.status_code == 422 and r.json()["detail"].startswith("invalid"), r.text
        item = c.get(f"/v1/findings/{sent[1]['id']}").json()
        assert item["finding"] == sent[1] and item["cause"] == "tls" and item["agent"] == name


def test_cursor_pagination_sees_every_finding_once_while_more_arrive(collector, name):
    target = name + ".test"
    first = [finding(target, 1000 + i) for i in range(23)]
    with collector.client(collector.token(name)) as c:
        for i in range(0, len(first), 5):  # several batches: several received_at values
            _send(c, *first[i : i + 5])
        seen, cursor, rounds = [], None, 0
        while True:
            params = {"agent": name, "limit": 4, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/findings", params=params).json()
            assert len(page["items"]) <= 4
            seen += [i["id"] for i in page["items"]]
            _send(c, finding(target, 2000 + rounds), finding(target, 3000 + rounds))  # arrive meanwhile
            rounds += 1
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)), "a finding was listed twice"
        assert set(seen) == {f["id"] for f in first}, "a finding was skipped (or a newer one listed)"
        assert rounds == 6
        # newest first, and a fresh walk now sees the late ones too
        every = pages(c, "/v1/findings", agent=name, limit=1000)
        assert len(every) == 23 + 2 * rounds
        keys = [(i["received_at"], i["id"]) for i in every]
        assert keys == sorted(keys, reverse=True)
        for bad in (
            "garbage",
            "eyJ4IjoxfQ",
            "WyJ0IiwiYSIsImIiLDFd",
        ):  # not base64 JSON; {"x":1}; a targets cursor
            r = c.get("/v1/findings", params={"cursor": bad})
            assert r.status_code == 400 and "cursor" in r.json()["detail"]
        assert c.get("/v1/findings", params={"limit": 1001}).status_code == 422


def _state(c, agent: str, target: str, port: int) -> dict:
    (item,) = c.get("/v1/targets", params={"agent": agent, "target": target, "port": port}).json()["items"]
    return item


def test_targets_since_is_when_the_state_began(collector, name):
    target = name + ".test"
    t0 = NOW - dt.timedelta(hours=2)
    at = lambda minutes: t0 + dt.timedelta(minutes=minutes)  # noqa: E731
    with collector.client(collector.token(name)) as c:
        f1 = finding(target, 25, "firewall", created_at=at(0))
        _send(c, f1)
        state = _state(c, name, target, 25)
        assert state["since"] == state["last_finding_at"] == at(0).isoformat().replace("+00:00", "Z")
        assert state["finding_id"] == f1["id"] and state["cause"] == "firewall"
        assert state["location"] == {"kind": "hop", "hop": 2, "address": "198.18.2.1", "component": None}
        # the same state again: since stays, the latest finding moves
        f2 = finding(target, 25, "firewall", created_at=at(10))
        _send(c, f2)
        state = _state(c, name, target, 25)
        assert state["since"].startswith(at(0).isoformat()[:19]) and state["finding_id"] == f2["id"]
        # the same cause at another hop is another state
        f3 = finding(target, 25, "firewall", created_at=at(20), hop=1)
        _send(c, f3)
        assert _state(c, name, target, 25)["since"].startswith(at(20).isoformat()[:19])
        # a late redelivery of something older changes nothing
        _send(c, finding(target, 25, "service", created_at=at(5), verdict="refused"))
        state = _state(c, name, target, 25)
        assert state["finding_id"] == f3["id"] and state["cause"] == "firewall"
        # two findings in one batch, out of order: the newest wins, since from the change
        f4 = finding(target, 25, "none", created_at=at(40), verdict="open")
        f5 = finding(target, 25, "none", created_at=at(30), verdict="open")
        _send(c, f4, f5)
        state = _state(c, name, target, 25)
        assert state["finding_id"] == f4["id"] and state["cause"] == "none" and state["severity"] == "info"
        assert state["since"].startswith(at(30).isoformat()[:19])
        assert state["last_finding_at"].startswith(at(40).isoformat()[:19])
        # the list: one state per agent x target x port, by cause, paged
        _send(
            c, finding(target, 587, "tls", created_at=at(1)), finding(name + "-z.test", 25, created_at=at(1))
        )
        items = pages(c, "/v1/targets", agent=name, limit=1)
        assert [(i["target"], i["port"]) for i in items] == sorted(
            [(target, 25), (target, 587), (name + "-z.test", 25)]
        )
        assert [i["port"] for i in pages(c, "/v1/targets", agent=name, cause="tls")] == [587]
        assert c.get("/v1/targets", params={"cursor": "bad"}).status_code == 400


def test_agents_show_last_seen_version_and_cloud_of_the_newest_finding(collector, name):
    cloud = {"provider": "aws", "instance_id": "i-0abc", "region": "eu-west-1"}
    quiet = name + "-quiet"
    collector.token(quiet)  # registered, never reports
    with collector.client(collector.token(name)) as c:
        _send(
            c,
            finding(name + ".test", created_at=NOW - dt.timedelta(hours=1), version="0.1.0"),
            finding(name + ".test", 587, created_at=NOW, version="0.2.0", cloud=cloud),
        )
        _send(c, finding(name + ".test", created_at=NOW - dt.timedelta(hours=5), version="0.0.9"))  # older
        agents = {a["name"]: a for a in pages(c, "/v1/agents", limit=2)}
    me = agents[name]
    assert me["version"] == "0.2.0" and me["cloud"] == cloud and me["hostname"] == "agent-host"
    assert me["last_seen"] is not None
    seen = dt.datetime.fromisoformat(me["last_seen"])
    assert abs((seen - dt.datetime.now(dt.UTC)).total_seconds()) < 60
    assert agents[quiet]["last_seen"] is None and agents[quiet]["version"] is None
    assert name + "-viewer" not in agents  # viewers are not agents


def _cursor(*parts) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


def test_nasty_query_parameters_are_4xx_never_5xx(collector, name):
    nasty = [
        ("/v1/findings", {"target": "a\x00b"}),
        ("/v1/findings", {"agent": "\x00"}),
        ("/v1/findings", {"since": "0001-01-01T00:00:00+01:00"}),
        ("/v1/findings", {"until": "9999-12-31T23:59:59-01:00"}),
        ("/v1/findings", {"port": str(10**30)}),
        ("/v1/findings", {"limit": "-1"}),
        ("/v1/findings", {"cursor": _cursor("f", "0001-01-01T00:00:00+01:00", str(uuid.uuid4()))}),
        ("/v1/findings", {"cursor": _cursor("f", "2026-01-01T00:00:00", "not-a-uuid")}),
        ("/v1/findings", {"cursor": _cursor("f", 1, 2)}),
        ("/v1/findings", {"cursor": "x" * 2000}),
        ("/v1/targets", {"cursor": _cursor("t", "a", "b", 10**30)}),
        ("/v1/targets", {"cursor": _cursor("t", "a\x00", "b", 25)}),
        ("/v1/targets", {"cursor": _cursor("t", "a", "b", True)}),
        ("/v1/agents", {"cursor": _cursor("a", "\x00")}),
        ("/v1/agents", {"cursor": _cursor("a", None)}),
        ("/v1/findings/00000000-0000-0000-0000-00000000000g", {}),
    ]
    with collector.client(collector.token(name)) as c:
        for path, params in nasty:
            r = c.get(path, params=params)
            assert 400 <= r.status_code < 500, (path, params, r.status_code, r.text)
            assert "detail" in r.json()
        assert c.put("/v1/findings").status_code == 405
        assert c.delete("/v1/agents").status_code == 405
