"""The dashboard's page logic (mailpath.collector.dashboard.views) and the login's pure checks:
the matrix, a target's transitions, the hop path, the origin check and the redirect target."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailpath.agent.finding import Cause, Finding
from mailpath.collector.dashboard import views
from mailpath.collector.dashboard.routes import safe_next, same_origin
from mailpath.collector.dashboard.views import Point, State, build_matrix, hop_path, transitions
from mailpath.collector.ingest import signature

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
CAUSES = list(get_args(Cause))


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def state(agent: str, target: str, port: int, cause: str, minutes: float) -> State:
    return State(
        agent, target, port, cause, "error", f"{port} on {target}: {cause}", at(minutes), at(minutes), "id"
    )


# -- causes and times ------------------------------------------------------------------------


def test_every_cause_has_a_family_and_a_short_text():
    assert set(views.FAMILY) == set(CAUSES) == set(views.ABBREV) == set(views.CAUSES)
    assert views.family("none") == "ok" and views.CAUSES[0] == "none"
    # the problems that call for different people have different colours
    families = {views.family(c) for c in ("dns", "network", "firewall", "service", "tls", "cloud-config")}
    assert len(families) == 6 and "ok" not in families
    assert len(set(views.ABBREV.values())) == len(views.ABBREV)
    assert views.family("from-the-future") == "other" and views.abbrev("from-the-future") == "FROM"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "0s"), (0, "0s"), (59, "59s"), (60, "1m 00s"), (3599, "59m 59s"), (3600, "1h 00m"),
     (5400, "1h 30m"), (86399, "23h 59m"), (86400, "1d 00h"), (90061, "1d 01h"),
     (400 * 86400, "400d 00h")],
)  # fmt: skip
def test_durations(seconds, text):
    assert views.human_duration(dt.timedelta(seconds=seconds)) == text


def test_stamps_are_utc():
    cet = dt.timezone(dt.timedelta(hours=1))
    assert views.stamp(dt.datetime(2025, 3, 1, 13, 0, 5, 999, tzinfo=cet)) == "2025-03-01 12:00:05 UTC"


# -- the matrix ------------------------------------------------------------------------------


def test_the_matrix_puts_the_newest_change_first():
    m = build_matrix(
        [
            state("edge-a", "mx1", 25, "none", 0),
            state("edge-a", "mx2", 25, "firewall", 50),
            state("edge-b", "mx1", 25, "tls", 60),
            state("edge-b", "mx1", 587, "none", 10),
        ],
        agents=["edge-a", "edge-b", "edge-new"],
        recent=2,
    )
    assert m.rows == ["edge-b", "edge-a", "edge-new"]  # edge-new has not reported: last
    assert m.columns == [("mx1", 25), ("mx2", 25), ("mx1", 587)]
    assert m.cell("edge-a", ("mx2", 25)).cause == "firewall" and m.cell("edge-a", ("mx1", 587)) is None
    assert m.counts == [("none", 2), ("firewall", 1), ("tls", 1)]
    assert [(s.agent, s.target, s.port) for s in m.recent] == [("edge-b", "mx1", 25), ("edge-a", "mx2", 25)]
    assert m.total == 4


def test_an_empty_fleet():
    m = build_matrix([], agents=["b", "a"])
    assert (m.rows, m.columns, m.cells, m.counts, m.recent) == (["a", "b"], [], {}, [], [])


states_st = st.lists(
    st.builds(
        state,
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(["mx1", "mx2", "mx3"]),
        st.sampled_from([25, 465, 587]),
        st.sampled_from(CAUSES),
        st.integers(0, 10_000),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(states_st, st.lists(st.sampled_from(["a", "b", "e", "f"]), max_size=4))
def test_the_matrix_holds_every_state_once_in_recency_order(states, agents):
    m = build_matrix(states, agents)
    latest = {(s.agent, s.column): s for s in states}
    assert m.cells == latest
    assert sorted(m.rows) == sorted({s.agent for s in states} | set(agents))
    assert sorted(m.columns) == sorted({s.column for s in states})
    assert sum(n for _, n in m.counts) == len(latest)
    assert dict(m.counts) == {
        c: sum(1 for s in latest.values() if s.cause == c) for c in {s.cause for s in latest.values()}
    }

    def newest_row(agent):
        return max((s.since for s in latest.values() if s.agent == agent), default=None)

    reported = [r for r in m.rows if newest_row(r) is not None]
    assert m.rows[: len(reported)] == reported  # the silent ones come last
    times = [newest_row(r) for r in reported]
    assert times == sorted(times, reverse=True)
    column_times = [max(s.since for s in latest.values() if s.column == c) for c in m.columns]
    assert column_times == sorted(column_times, reverse=True)
    assert [s.since for s in m.recent] == sorted((s.since for s in latest.values()), reverse=True)[:10]


# -- transitions -----------------------------------------------------------------------------


def point(minutes: float, cause: str, key: str | None = None, ident: str | None = None) -> Point:
    return Point(ident or str(uuid.uuid4()), at(minutes), cause, "error", f"h {cause}", key or cause)


def test_broke_changed_recovered():
    periods = transitions(
        [
            point(0, "none"),
            point(10, "none"),
            point(20, "firewall"),
            point(30, "firewall"),
            point(35, "firewall"),
            point(40, "firewall", key="firewall@hop3"),
            point(70, "none"),
        ]
    )
    assert [(p.change, p.cause, p.previous, p.findings) for p in periods] == [
        ("recovered", "none", "firewall", 1),
        ("changed", "firewall", "firewall", 1),
        ("broke", "firewall", "none", 3),
        ("first", "none", None, 2),
    ]
    assert [p.duration(at(100)) for p in periods] == [dt.timedelta(minutes=m) for m in (30, 30, 20, 20)]
    assert periods[0].current and periods[0].end is None and not periods[1].current
    assert transitions([]) == []


def test_order_of_arrival_and_redelivery_change_nothing():
    pts = [point(0, "none"), point(5, "dns"), point(9, "none")]
    assert transitions(pts[::-1] + pts[:1]) == transitions(pts)


history_st = st.lists(
    st.tuples(
        st.integers(0, 500), st.sampled_from(["none", "firewall", "dns"]), st.sampled_from(["h2", "h3"])
    ),
    max_size=30,
)


@settings(max_examples=300)
@given(history_st, st.randoms(use_true_random=False))
def test_transitions_tile_the_history(raw, rnd):
    pts = [point(m, c, key=f"{c}/{h}", ident=f"{i:04d}") for i, (m, c, h) in enumerate(raw)]
    shuffled = list(pts)
    rnd.shuffle(shuffled)
    periods = transitions(shuffled)
    assert periods == transitions(pts)  # whatever the order they come in
    ordered = sorted(pts, key=lambda p: (p.created_at, p.id))
    # every finding in exactly one period; a new period exactly where the state changes
    assert sum(p.findings for p in periods) == len(pts)
    changes = sum(1 for x, y in itertools.pairwise(ordered) if x.key != y.key)
    assert len(periods) == (changes + 1 if pts else 0)
    chronological = periods[::-1]
    for older, newer in itertools.pairwise(chronological):
        assert older.end == newer.start and older.start <= newer.start
        assert newer.previous == older.cause
        assert newer.change == (
            "recovered" if newer.cause == "none" else "broke" if older.cause == "none" else "changed"
        )
    if pts:
        assert periods[0].end is None and periods[0].last_id == ordered[-1].id
        assert chronological[0].change == "first" and chronological[0].start == ordered[0].created_at


def test_a_state_is_what_the_collectors_since_follows():
    """state_key of a stored finding changes exactly when ingest.signature does."""
    base = {
        "agent": {"hostname": "h", "version": "1"},
        "target": "mx",
        "port": 25,
        "headline": "x",
        "severity": "error",
        "cause": "firewall",
        "location": {"kind": "hop", "hop": 2, "address": "198.18.2.1"},
        "addresses": [
            {"address": "198.18.3.2", "verdict": "filtered"},
            {"address": "2001:db8::2", "verdict": "open"},
        ],
    }
    variants = [
        {},
        {"headline": "other words", "severity": "warning"},  # not part of the state
        {"location": {"kind": "hop", "hop": 3, "address": "198.18.2.1"}},
        {"cause": "network"},
        {"addresses": base["addresses"][::-1]},  # the same verdicts
        {"addresses": [{"address": "198.18.3.2", "verdict": "rejected"}, base["addresses"][1]]},
        {"location": None, "cause": "none"},
    ]
    for v in variants:
        f = Finding.model_validate({**base, **v})
        assert views.state_key(f.to_json_dict()) == signature(f), v


# -- the hop path ----------------------------------------------------------------------------


def trace_finding(
    verdict: str, hops, *, responder=None, responder_hop=None, drop=None, reached=False, location=None
):
    rows = [{"ttl": t, "address": a, "reply": r} for t, a, r in hops]
    return {
        "port": 25,
        "agent": {"hostname": "edge"},
        "location": location,
        "addresses": [
            {
                "address": "198.18.9.9",
                "verdict": verdict,
                "method": "raw",
                "responder": responder,
                "responder_hop": responder_hop,
                "trace": {
                    "verdict": verdict,
                    "drop_after_hop": drop,
                    "reached_destination": reached,
                    "responder_hop": responder_hop,
                    "hops": rows,
                },
            }
        ],
    }


def shape(path):
    return [(n.kind, n.ttl, n.address, n.mark, n.link, n.reached) for n in path.nodes]


R1, R2, R3, DEST = "198.18.1.254", "198.18.2.254", "198.18.3.254", "198.18.9.9"
TE = "time-exceeded"


def test_a_forged_rst_marks_the_hop_that_sent_it():
    f = trace_finding(
        "reset-in-path", [(1, R1, TE), (2, R2, TE), (3, DEST, "rst")], responder=DEST, responder_hop=2
    )
    (p,) = views.hop_paths(f)
    assert shape(p) == [
        ("source", 0, "edge", None, "", True),
        ("hop", 1, R1, None, "ok", True),
        ("hop", 2, R2, "forges", "ok", True),
        ("destination", None, DEST, None, "cut", False),
    ]
    assert p.marked[0].note == f"forges a RST as {DEST}" and p.traced


def test_a_forging_hop_that_never_answered_is_still_marked():
    f = trace_finding(
        "reset-in-path", [(1, R1, TE), (2, None, None), (3, DEST, "rst")], responder=DEST, responder_hop=2
    )
    nodes = hop_path(f["addresses"][0], f).nodes
    assert [(n.ttl, n.address, n.mark) for n in nodes[1:3]] == [(1, R1, None), (2, None, "forges")]


def test_a_silent_drop_marks_the_last_hop_and_cuts_the_link_after_it():
    f = trace_finding("filtered", [(1, R1, TE), (2, R2, TE), (3, None, None)], drop=2)
    (p,) = views.hop_paths(f)
    assert shape(p) == [
        ("source", 0, "edge", None, "", True),
        ("hop", 1, R1, None, "ok", True),
        ("hop", 2, R2, "drops", "ok", True),
        ("hop", 3, None, None, "cut", False),
        ("destination", None, DEST, None, "unseen", False),
    ]
    local = trace_finding("filtered", [], drop=0)
    assert [(n.kind, n.mark, n.link) for n in views.hop_paths(local)[0].nodes] == [
        ("source", "drops", ""),
        ("destination", None, "cut"),
    ]


def test_a_reject_by_a_hop_or_by_the_destination():
    hop = trace_finding("rejected", [(1, R1, TE), (2, R1, "prohibited")], responder=R1, responder_hop=1)
    nodes = views.hop_paths(hop)[0].nodes
    assert [(n.kind, n.ttl, n.mark) for n in nodes] == [
        ("source", 0, None),
        ("hop", 1, "rejects"),
        ("destination", None, None),
    ]
    assert nodes[1].note == "rejects TCP 25 (prohibited)" and nodes[2].link == "cut"
    own = trace_finding(
        "rejected", [(1, R1, TE), (2, R2, TE), (3, DEST, "prohibited")], responder=DEST, responder_hop=3
    )
    nodes = views.hop_paths(own)[0].nodes
    assert nodes[-1].mark == "rejects" and nodes[-1].kind == "destination"
    assert [n.mark for n in nodes[:-1]] == [None, None, None]


def test_unreachable_from_a_hop():
    f = trace_finding(
        "unreachable", [(1, R1, TE), (2, R2, TE), (3, R2, "unreachable")], responder=R2, responder_hop=2
    )
    nodes = views.hop_paths(f)[0].nodes
    assert [n.mark for n in nodes] == [None, None, "unreachable", None] and not nodes[-1].reached


def test_an_open_path_marks_nothing_and_a_quiet_router_was_still_passed():
    f = trace_finding(
        "open",
        [(1, R1, TE), (2, None, None), (3, R3, TE), (4, DEST, "syn-ack")],
        responder=DEST,
        responder_hop=4,
        reached=True,
    )
    (p,) = views.hop_paths(f)
    assert p.marked == []
    assert [(n.address, n.reached, n.link) for n in p.nodes] == [
        ("edge", True, ""),
        (R1, True, "ok"),
        (None, True, "ok"),
        (R3, True, "ok"),
        (DEST, True, "ok"),
    ]
    assert p.nodes[-1].reply == "syn-ack"


def test_without_a_trace_the_findings_location_is_marked():
    f = {
        "port": 25,
        "agent": {"hostname": "edge"},
        "location": {"kind": "hop", "hop": 3, "address": R3},
        "addresses": [{"address": DEST, "verdict": "filtered", "method": "connect", "trace": None}],
    }
    (p,) = views.hop_paths(f)
    assert not p.traced
    assert [(n.kind, n.ttl, n.address, n.mark) for n in p.nodes] == [
        ("source", 0, "edge", None),
        ("hop", 3, R3, "fault"),
        ("destination", None, DEST, None),
    ]
    for kind, marked in (("destination", "destination"), ("local", "source")):
        f["location"] = {"kind": kind}
        assert [n.kind for n in views.hop_paths(f)[0].nodes if n.mark] == [marked]
    f["location"] = {"kind": "cloud", "component": "sg-1"}
    assert views.hop_paths(f)[0].marked == []
    assert views.hop_paths({"addresses": []}) == []


def test_locations_in_words():
    assert views.describe_location({"kind": "hop", "hop": 2, "address": R2}) == f"hop 2 ({R2})"
    assert views.describe_location({"kind": "hop", "hop": 2}) == "hop 2"
    assert views.describe_location({"kind": "destination", "address": DEST}) == f"the destination {DEST}"
    assert views.describe_location({"kind": "local"}) == "this host"
    assert views.describe_location({"kind": "cloud", "component": "sg-0abc"}) == "cloud component sg-0abc"
    assert views.describe_location(None) == "—"


@settings(max_examples=200)
@given(
    st.sampled_from(["open", "refused", "reset-in-path", "rejected", "unreachable", "filtered"]),
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from([R1, R2, R3, DEST])),
            st.sampled_from([TE, None, "rst", "prohibited"]),
        ),
        max_size=6,
    ),
    st.one_of(st.none(), st.integers(0, 7)),
    st.one_of(st.none(), st.integers(0, 7)),
)
def test_any_trace_draws_one_path_in_ttl_order_with_nothing_reached_past_a_block(verdict, rows, hop, drop):
    f = trace_finding(
        verdict,
        [(i + 1, a, r) for i, (a, r) in enumerate(rows)],
        responder=DEST,
        responder_hop=hop,
        drop=drop,
    )
    nodes = views.hop_paths(f)[0].nodes
    assert nodes[0].kind == "source" and nodes[-1].kind == "destination"
    ttls = [n.ttl for n in nodes[1:-1]]
    assert ttls == sorted(set(ttls))
    assert len([n for n in nodes if n.mark]) <= 1
    blocked = next(
        (i for i, n in enumerate(nodes) if n.mark in views.BLOCKING and n.kind != "destination"), None
    )
    if blocked is not None:
        assert all(not n.reached and n.link in ("cut", "unseen") for n in nodes[blocked + 1 :])
        assert nodes[blocked + 1].link == "cut"


# -- login checks ----------------------------------------------------------------------------

HOST = "127.0.0.1:8080"


@pytest.mark.parametrize(
    ("headers", "ok", "scheme"),
    [
        ({"origin": "http://127.0.0.1:8080"}, True, "http"),
        ({"origin": "https://127.0.0.1:8080"}, True, "https"),
        ({"origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-origin"}, True, "http"),
        ({"origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-site"}, False, None),
        ({"origin": "http://127.0.0.1:8080", "sec-fetch-site": "cross-site"}, False, None),
        ({"origin": "http://127.0.0.1:8081"}, False, None),
        ({"origin": "http://evil.example"}, False, None),
        ({"origin": "null", "referer": "http://127.0.0.1:8080/login"}, False, None),
        ({"referer": "http://127.0.0.1:8080/login?next=/"}, True, "http"),
        ({"referer": "http://127.0.0.1:8080.evil.example/login"}, False, None),
        ({"origin": "javascript://127.0.0.1:8080"}, False, None),
        ({}, False, None),
    ],
)
def test_same_origin(headers, ok, scheme):
    assert same_origin(headers, HOST) == (ok, scheme)
    assert same_origin(headers, None) == (False, None)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("/", "/"),
        ("/target?agent=a&port=25", "/target?agent=a&port=25"),
        ("/findings/1", "/findings/1"),
        (None, "/"),
        ("", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("evil", "/"),
        ("/\nSet-Cookie: x", "/"),
    ],
)
def test_safe_next(value, want):
    assert safe_next(value) == want
