"""`mailpath trace` in the lab: which hop drops, rejects or forges, over IPv4 and IPv6."""

from __future__ import annotations

import time

import pytest

from tests.conftest import mailpath

pytestmark = pytest.mark.lab

# name -> (node, action, verdict, drop_after_hop, responder_hop, reached_destination)
CASES = {
    "drop at hop 1": ("r1", "drop", "filtered", 1, None, False),
    "drop at hop 2": ("r2", "drop", "filtered", 2, None, False),
    "drop by the destination": ("server", "drop", "filtered", 2, None, False),
    "forged RST at hop 1": ("r1", "tcp-reset", "reset-in-path", None, 1, False),
    "forged RST at hop 2": ("r2", "tcp-reset", "reset-in-path", None, 2, False),
    "ICMP reject at hop 2": ("r2", "admin-prohibited", "rejected", None, 2, False),
    "reject by the destination": ("server", "port-unreachable", "rejected", None, 3, True),
    "open": (None, None, "open", None, 3, True),
    "refused": (None, None, "refused", None, 3, True),
}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("case", list(CASES))
def test_trace_locates_the_fault(faults, case, family):
    lab = faults
    node, action, verdict, drop_after, responder_hop, reached = CASES[case]
    port = 26 if case == "refused" else 25
    if node:
        lab.block(node, port, action, family=family)
    address = lab.server4 if family == 4 else f"[{lab.server6}]"
    run = mailpath(lab, "trace", f"{address}:{port}", "--json")
    assert run.code == (0 if verdict == "open" else 1), run.stderr
    t = run.one
    assert set(t) >= {
        "host",
        "address",
        "port",
        "hops",
        "verdict",
        "drop_after_hop",
        "reached_destination",
        "control",
    }
    assert t["verdict"] == verdict, t["reason"]
    assert t["drop_after_hop"] == drop_after
    assert t["responder_hop"] == responder_hop
    assert t["reached_destination"] is reached
    # every hop that answered time-exceeded is the router at that TTL
    for row in t["hops"]:
        assert set(row) >= {"ttl", "address", "reply", "rtt_ms"}
        if row["reply"] == "time-exceeded":
            assert row["address"] == lab.addr(f"r{row['ttl']}", family)
    ctl = t["control"]
    assert ctl["kind"] == "icmp" and ctl["reached_destination"] and t["destination_hop"] == 3
    if verdict != "open":
        assert t["port_specific"] is True
    if verdict == "reset-in-path":
        assert lab.addr(f"r{responder_hop}", family) in t["reason"]
    if verdict == "rejected" and responder_hop == 2:
        assert t["hops"][-1]["reply"] == "prohibited" and t["hops"][-1]["address"] == lab.addr("r2", family)


def test_a_path_silent_for_everything_is_not_blamed_on_the_port(faults):
    lab = faults
    lab.route("r2", "blackhole", dest=f"{lab.server4}/32")
    run = mailpath(lab, "trace", lab.server4, "-p", "25", "--json")
    t = run.one
    # r2 looks the route up before it checks the TTL: a blackhole route swallows even the
    # probes that expire there, so the path goes silent after hop 1, for the control too.
    assert t["verdict"] == "filtered" and t["drop_after_hop"] == 1
    assert t["control"]["reached_destination"] is False and t["port_specific"] is False


def test_trace_respects_its_bound(faults):
    lab = faults
    lab.route("r1", "blackhole", dest=f"{lab.server4}/32")
    lab.sh("r1", "iptables -A OUTPUT -p icmp -j DROP")  # and the router says nothing at all
    start = time.monotonic()
    run = mailpath(
        lab, "trace", lab.server4, "--max-hops", "5", "--timeout", "0.5", "--min-wait", "1", "--json"
    )
    elapsed = time.monotonic() - start
    t = run.one
    assert t["verdict"] == "filtered" and t["drop_after_hop"] == 0
    assert elapsed < 0.5 * (5 + 2) + 1 + 2 + 2  # time_limit plus process start-up


def test_trace_bad_input(lab):
    for args, names in (
        (("trace", "bad host!"), "bad host!"),
        (("trace", lab.server4, "-p", "0"), "--port"),
        (("trace", lab.server4, "--control", "ftp"), "ftp"),
    ):
        run = mailpath(lab, *args)
        assert run.code == 2 and names in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_trace_human_output(lab):
    run = mailpath(lab, "trace", "v4only.lab.test", "-p", "25")
    assert run.code == 0
    assert "time-exceeded" in run.stdout and "syn-ack" in run.stdout and lab.addr("r2") in run.stdout
