"""Fleet tokens: one agent token shared by the hosts of a DaemonSet, each host stored as its
own agent ``HOSTNAME@NAME`` (so their latest states never overwrite each other)."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import MAILPATH
from tests.services.conftest import batch, finding, pages


def fleet_token(collector, name: str) -> str:
    from mailpath.collector import admin

    token, info = admin.create_token(admin.settings_for(collector.database), name, "agent", fleet=True)
    assert info.fleet
    collector.tokens.append(token)
    return token


def test_each_host_of_a_fleet_is_its_own_agent(collector, name):
    token = fleet_token(collector, name)
    target = f"{name}.test"
    with collector.client(token) as c:
        for host, cause in (("node-a", "firewall"), ("Node-B.cluster.local", "none")):
            r = c.post("/v1/findings", json=batch(finding(target, cause=cause, hostname=host)))
            assert r.status_code == 200 and r.json()["new"] == 1, r.text
        states = {s["agent"]: s["cause"] for s in pages(c, "/v1/targets") if s["target"] == target}
        agents = {a["name"] for a in pages(c, "/v1/agents")}
    assert states == {f"node-a@{name}": "firewall", f"node-b.cluster.local@{name}": "none"}
    assert {f"node-a@{name}", f"node-b.cluster.local@{name}"} <= agents
    assert name not in agents  # the fleet itself is no agent


def test_a_fleet_batch_from_two_hosts_or_a_bad_host_name_is_refused_whole(collector, name):
    token = fleet_token(collector, name)
    target = f"{name}.test"
    with collector.client(token) as c:
        mixed = batch(finding(target, hostname="node-a"), finding(target, 587, hostname="node-b"))
        bad = batch(finding(target, hostname="not a host/name"))
        for doc, words in ((mixed, "names 2"), (bad, "not a host name")):
            r = c.post("/v1/findings", json=doc)
            assert r.status_code == 422, r.text
            assert r.json()["reason"] == "wrong-host" and words in r.json()["detail"]
        assert c.post("/v1/findings", json=batch()).json() == {"accepted": 0, "new": 0}
        assert [s for s in pages(c, "/v1/targets") if s["target"] == target] == []


def test_the_cli_makes_and_lists_fleet_tokens_and_refuses_a_viewer_fleet(collector, name):
    db = ["--database", collector.database]
    made = subprocess.run(
        [MAILPATH, "collector", "token", "create", "--agent", name, "--fleet", "--json", *db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    collector.tokens.append(doc["token"])
    assert (doc["agent"], doc["role"], doc["fleet"]) == (name, "agent", True)
    listed = subprocess.run(
        [MAILPATH, "collector", "token", "list", "--json", *db], capture_output=True, text=True, timeout=60
    )
    (mine,) = [t for t in json.loads(listed.stdout)["tokens"] if t["agent"] == name]
    assert mine["fleet"] is True
    viewer = subprocess.run(
        [MAILPATH, "collector", "token", "create", "--agent", name, "--role", "viewer", "--fleet", *db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert viewer.returncode == 2 and "fleet" in viewer.stderr and viewer.stderr.count("\n") == 1
