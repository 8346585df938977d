"""The traceroute machine against the simulated path, in virtual time."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailpath.probes.classify import Verdict
from mailpath.probes.result import Target
from mailpath.probes.trace import TraceOptions, TraceRun

from tests.simnet import DROP, FORGE_RST, OPEN, Path, Router, SimNet, icmp, run

CLIENT = {4: "198.18.1.1", 6: "2001:db8:1::1"}


def _path(n: int = 2, tokens: float = 6.0, **dest) -> Path:
    routers = [Router(f"198.18.{k}.254", f"2001:db8:{k}::fe", initial_tokens=tokens) for k in range(1, n + 1)]
    return Path(routers, **dest)


def _trace(path: Path, port: int, family: int = 4, control="icmp", seed: int = 0, **opts):
    dest = path.dest4 if family == 4 else path.dest6
    tr = TraceRun(
        Target("mx.test", dest, port), CLIENT[family], TraceOptions(**opts), control, random.Random(seed)
    )
    elapsed = run(tr, SimNet(path))
    return tr.result(), elapsed


def _router(path: Path, hop: int, family: int) -> str:
    r = path.routers[hop - 1]
    return r.address4 if family == 4 else r.address6


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(
    ("where", "action", "verdict", "drop_after", "responder_hop"),
    [
        (None, None, "open", None, 3),
        (None, "closed", "refused", None, 3),
        (1, FORGE_RST, "reset-in-path", None, 1),
        (2, FORGE_RST, "reset-in-path", None, 2),
        (1, "prohibited", "rejected", None, 1),
        (2, "unreachable", "unreachable", None, 2),
        (1, DROP, "filtered", 1, None),
        (2, DROP, "filtered", 2, None),
        (0, DROP, "filtered", 2, None),  # the destination's own firewall
        (0, "prohibited", "rejected", None, 3),
    ],
)
def test_each_fault_is_located(family, where, action, verdict, drop_after, responder_hop):
    path = _path(ports={25: OPEN})
    codes = {"prohibited": 13 if family == 4 else 1, "unreachable": 1 if family == 4 else 0}
    if isinstance(action, str) and action in codes:
        action = icmp(codes[action])
    port = 2525 if action == "closed" else 25
    if where == 0:
        path.ports[25] = action
    elif where:
        path.routers[where - 1].ports[25] = action
    r, _ = _trace(path, port, family)
    assert r.verdict == Verdict(verdict), r.reason
    assert r.drop_after_hop == drop_after
    assert r.responder_hop == responder_hop
    assert r.reached_destination == (verdict in ("open", "refused") or (where == 0 and verdict == "rejected"))
    assert r.control.reached_destination and r.destination_hop == 3
    if verdict != "open":
        assert r.port_specific is True
    for row in r.hops:
        if row.reply == "time-exceeded":
            assert row.address == _router(path, row.ttl, family)
    if verdict == "reset-in-path":
        assert f"hop {responder_hop} ({_router(path, responder_hop, family)})" in r.reason


def test_a_quiet_router_is_not_a_drop():
    path = _path(3, ports={25: OPEN})
    path.routers[1].silent = True  # hop 2 never sends time-exceeded
    r, _ = _trace(path, 25)
    assert r.verdict is Verdict.OPEN and r.drop_after_hop is None
    assert [row.reply for row in r.hops] == ["time-exceeded", None, "time-exceeded", "syn-ack"]


def test_a_path_that_goes_silent_for_everything_is_not_port_specific():
    path = _path(3, ports={25: OPEN})
    path.routers[1].blackhole = True
    r, _ = _trace(path, 25)
    assert r.verdict is Verdict.FILTERED and r.drop_after_hop == 2
    assert r.control.furthest_hop == 2 and r.port_specific is False


def test_tcp_control_port():
    path = _path(ports={25: OPEN, 443: OPEN})
    path.routers[0].ports[25] = DROP
    r, _ = _trace(path, 25, control=443)
    assert r.control.kind == "tcp" and r.control.port == 443
    assert r.control.reached_destination and r.port_specific is True and r.drop_after_hop == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([4, 6]),
    st.integers(1, 4),
    st.data(),
    st.lists(st.floats(0, 6), min_size=4, max_size=4),
)
def test_rate_limited_routers_never_move_the_drop(family, n, data, tokens):
    """Routers start with drained or partial ICMP buckets; a drop at hop k must still be
    reported after hop k, never before it."""
    path = _path(n, ports={25: OPEN})
    for router, t in zip(path.routers, tokens, strict=False):
        router.bucket.tokens = t
    k = data.draw(st.integers(1, n))
    path.routers[k - 1].ports[25] = DROP
    r, _ = _trace(path, 25, family, seed=data.draw(st.integers(0, 1000)))
    assert r.verdict is Verdict.FILTERED and r.drop_after_hop == k, r.hops


def test_trace_stops_within_its_bound_when_nothing_answers():
    path = _path(1, ports={25: OPEN})
    path.routers[0].blackhole = True
    path.routers[0].silent = True
    opts = dict(max_hops=30, timeout=1.0)
    r, elapsed = _trace(path, 25, **opts)
    assert r.verdict is Verdict.FILTERED and r.drop_after_hop == 0
    assert elapsed <= TraceOptions(**opts).time_limit
    assert len(r.hops) == 1 and r.hops[0].reply is None


def test_answered_trace_takes_about_one_round_trip():
    r, elapsed = _trace(_path(ports={25: OPEN}), 25)
    assert r.verdict is Verdict.OPEN and elapsed < 0.05


def test_every_probe_of_a_trace_uses_one_flow():
    path = _path(ports={25: OPEN})
    path.routers[1].ports[25] = DROP
    tr = TraceRun(Target("x", path.dest4, 25), CLIENT[4], TraceOptions(), None, random.Random(1))
    net = SimNet(path)
    flows = set()
    original = net.transmit

    def spy(send, now):
        flows.add((send.src, send.dst, send.payload[:4]))  # addresses, ports
        original(send, now)

    net.transmit = spy
    run(tr, net)
    assert len(flows) == 1
