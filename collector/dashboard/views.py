"""The dashboard's page logic, pure: what each page shows, computed from plain values.

- :func:`build_matrix`: the fleet at a glance, agents × target:port, each cell a latest state;
  rows and columns with the most recent change first, counts per cause, recent changes;
- :func:`transitions`: a target's history, the periods it spent in each state (the state is
  what :func:`state_key` makes of a finding: its cause, location and the addresses' verdicts,
  the same as the collector's ``since``), newest first, each with how it began (broke,
  recovered, changed) and how long it lasted;
- :func:`hop_path`: the path one address's trace saw, hop by hop, with the hop that drops,
  rejects or forges marked and the links past it drawn as not reached.

Nothing here reads a database or a request; the routes feed these functions and hand their
results to the templates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from mailpath.agent.finding import Cause

CAUSES: tuple[str, ...] = ("none", *(c for c in get_args(Cause) if c != "none"))

# A colour per family (the stylesheet's c-<family> classes); the text says the cause too.
FAMILY = {
    "none": "ok",
    "dns": "dns",
    "network": "network",
    "firewall": "firewall",
    "service": "service",
    "tls": "session",
    "auth": "session",
    "cloud-config": "cloud",
    "cloud-policy": "cloud",
}
ABBREV = {
    "none": "OK",
    "dns": "DNS",
    "network": "NET",
    "firewall": "FW",
    "service": "SVC",
    "tls": "TLS",
    "auth": "AUTH",
    "cloud-config": "CFG",
    "cloud-policy": "POL",
}


def family(cause: str) -> str:
    """The colour family of a cause (``other`` for one this collector does not know)."""
    return FAMILY.get(cause, "other")


def abbrev(cause: str) -> str:
    """The short text a matrix cell shows."""
    return ABBREV.get(cause) or (cause[:4].upper() or "?")


# -- time ------------------------------------------------------------------------------------


def human_duration(delta: dt.timedelta) -> str:
    """``45s``, ``4m 12s``, ``3h 05m``, ``2d 04h``: two units at most (negative reads as 0s)."""
    s = max(0, int(delta.total_seconds()))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def stamp(t: dt.datetime) -> str:
    """A time as the pages show it: UTC, to the second."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the fleet matrix ------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """The latest state of one agent × target × port (a row of ``/v1/targets``)."""

    agent: str
    target: str
    port: int
    cause: str
    severity: str
    headline: str
    since: dt.datetime
    last_finding_at: dt.datetime
    finding_id: str

    @property
    def column(self) -> tuple[str, int]:
        return (self.target, self.port)


@dataclass
class Matrix:
    rows: list[str]  # agents, the most recent change first; agents with no state last, by name
    columns: list[tuple[str, int]]  # (target, port), the most recent change first
    cells: dict[tuple[str, tuple[str, int]], State]
    counts: list[tuple[str, int]]  # (cause, how many states), in CAUSES order, only those present
    recent: list[State]  # the newest changes, newest first

    def cell(self, agent: str, column: tuple[str, int]) -> State | None:
        return self.cells.get((agent, column))

    @property
    def total(self) -> int:
        return len(self.cells)


def _newest_first(latest: Mapping[Any, dt.datetime]) -> list:
    """Keys by their time, newest first; equal times by key."""
    return sorted(latest, key=lambda k: (-latest[k].timestamp(), k))


def build_matrix(states: Iterable[State], agents: Iterable[str] = (), recent: int = 10) -> Matrix:
    """The matrix of ``states`` (one per agent × target × port; a later duplicate wins), with
    a row for each of ``agents`` too (those that have not reported yet come last)."""
    cells: dict[tuple[str, tuple[str, int]], State] = {}
    for s in states:
        cells[(s.agent, s.column)] = s
    row_latest: dict[str, dt.datetime] = {}
    col_latest: dict[tuple[str, int], dt.datetime] = {}
    for (agent, column), s in cells.items():
        row_latest[agent] = max(row_latest.get(agent, s.since), s.since)
        col_latest[column] = max(col_latest.get(column, s.since), s.since)
    silent = sorted(set(agents) - set(row_latest))
    by_cause: dict[str, int] = {}
    for s in cells.values():
        by_cause[s.cause] = by_cause.get(s.cause, 0) + 1
    order = {c: i for i, c in enumerate(CAUSES)}
    counts = sorted(by_cause.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    newest = sorted(cells.values(), key=lambda s: (-s.since.timestamp(), s.agent, s.target, s.port))
    return Matrix(
        rows=_newest_first(row_latest) + silent,
        columns=_newest_first(col_latest),
        cells=cells,
        counts=counts,
        recent=newest[:recent],
    )


# -- a target's history ----------------------------------------------------------------------


def state_key(doc: Mapping[str, Any]) -> str:
    """What makes a state, from a finding as stored (its JSON): the cause, the location and
    each address's verdict. The same digest as the collector's ``since`` is kept by."""
    location = doc.get("location")
    state = {
        "cause": doc.get("cause"),
        "location": dict(location) if location else None,
        "verdicts": sorted((a.get("address"), a.get("verdict")) for a in doc.get("addresses") or ()),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Point:
    """One finding of a target, as its history reads it."""

    id: str
    created_at: dt.datetime
    cause: str
    severity: str
    headline: str
    key: str  # state_key of the finding


@dataclass
class Period:
    """A stretch of time a target spent in one state."""

    start: dt.datetime  # its first finding
    end: dt.datetime | None  # the first finding of the next state; None: the state it is in
    cause: str
    severity: str
    headline: str  # of its newest finding
    first_id: str
    last_id: str
    findings: int
    change: str  # first (the oldest known), broke, recovered, changed
    previous: str | None  # the cause before it

    def duration(self, now: dt.datetime) -> dt.timedelta:
        return (self.end or now) - self.start

    @property
    def current(self) -> bool:
        return self.end is None


def _change(previous: str | None, cause: str) -> str:
    if previous is None:
        return "first"
    if cause == "none":
        return "recovered"
    if previous == "none":
        return "broke"
    return "changed"


def transitions(points: Iterable[Point]) -> list[Period]:
    """The periods of a target's findings, newest first: a new one starts at each finding
    whose state differs from the one before it (in ``created_at`` order; a repeated id
    counts once). Each lasts until the next one starts; the newest is the current state."""
    unique: dict[str, Point] = {}
    for p in points:
        unique.setdefault(p.id, p)
    ordered = sorted(unique.values(), key=lambda p: (p.created_at, p.id))
    periods: list[Period] = []
    key = None
    for p in ordered:
        if periods and p.key == key:
            last = periods[-1]
            last.findings += 1
            last.last_id, last.headline, last.severity = p.id, p.headline, p.severity
            continue
        previous = periods[-1] if periods else None
        if previous is not None:
            previous.end = p.created_at
        periods.append(
            Period(
                start=p.created_at,
                end=None,
                cause=p.cause,
                severity=p.severity,
                headline=p.headline,
                first_id=p.id,
                last_id=p.id,
                findings=1,
                change=_change(previous.cause if previous else None, p.cause),
                previous=previous.cause if previous else None,
            )
        )
        key = p.key
    return periods[::-1]


# -- a finding's hop path --------------------------------------------------------------------

BLOCKING = ("drops", "rejects", "forges", "unreachable", "fault")


@dataclass
class Node:
    """One place on the path: this host, a hop (by TTL), or the destination."""

    kind: str  # source, hop, destination
    ttl: int | None
    address: str | None  # None: the hop did not answer
    reply: str | None = None  # what it answered: time-exceeded, syn-ack, rst, prohibited...
    reached: bool = True  # did the probes get this far (False: beyond the fault, or silent)
    mark: str | None = None  # drops, rejects, forges, unreachable, fault (the finding's location)
    note: str = ""
    link: str = "ok"  # the link from the node before: ok, cut (a blocking mark before it), unseen

    @property
    def label(self) -> str:
        if self.kind == "source":
            return "this agent"
        if self.kind == "destination":
            return "destination"
        return f"hop {self.ttl}"


@dataclass
class HopPath:
    address: str
    verdict: str
    nodes: list[Node] = field(default_factory=list)
    traced: bool = False  # drawn from a trace (else only from the finding's location)

    @property
    def marked(self) -> list[Node]:
        return [n for n in self.nodes if n.mark]


def _hop(nodes: list[Node], ttl: int, address: str | None = None) -> Node:
    """The hop node of ``ttl``, inserted in TTL order when the trace has no row for it."""
    for n in nodes:
        if n.kind == "hop" and n.ttl == ttl:
            if n.address is None and address:
                n.address = address
            return n
    node = Node("hop", ttl, address, reply=None, reached=True)
    at = next((i for i, n in enumerate(nodes) if n.kind == "destination" or (n.ttl or 0) > ttl), len(nodes))
    nodes.insert(at, node)
    return node


def _mark(node: Node, mark: str, note: str) -> None:
    node.mark, node.note, node.reached = mark, note, True


def hop_path(result: Mapping[str, Any], finding: Mapping[str, Any]) -> HopPath:
    """The path to one address of ``finding`` (``result``: one of its ``addresses``), from its
    trace when it has one: this host, each hop by TTL (a silent one has no address), then the
    destination. The hop that forged a RST, sent an ICMP reject or unreachable, or after which
    the SYNs went silent is marked; past it nothing is reached. Without a trace, the finding's
    location (a hop, this host, the destination) is marked on a path of just those places."""
    address = str(result.get("address") or "")
    verdict = str(result.get("verdict") or "")
    port = finding.get("port")
    agent = (finding.get("agent") or {}).get("hostname")
    trace = result.get("trace") or None
    path = HopPath(address, verdict, traced=trace is not None)
    source = Node("source", 0, agent, reached=True)
    rows = list((trace or {}).get("hops") or [])
    terminal = rows.pop() if rows and rows[-1].get("reply") not in (None, "time-exceeded") else None
    reached = bool((trace or {}).get("reached_destination")) or verdict in ("open", "refused")
    # a hop that did not answer was still passed when a later one answered
    answered = [r.get("reply") is not None for r in rows] + [reached or terminal is not None]
    hops = [
        Node("hop", int(r.get("ttl") or 0), r.get("address"), r.get("reply"), reached=any(answered[i:]))
        for i, r in enumerate(rows)
    ]
    responder = result.get("responder") or (terminal or {}).get("address")
    dest = Node("destination", None, address, reached=reached)
    if reached and terminal is not None:
        dest.reply = terminal.get("reply")
    nodes = [source, *hops, dest]
    responder_hop = (trace or {}).get("responder_hop") or result.get("responder_hop")
    drop = (trace or {}).get("drop_after_hop")
    own = responder is not None and responder == address
    if verdict == "reset-in-path" and responder_hop:
        _mark(_hop(nodes, responder_hop), "forges", f"forges a RST as {responder or address}")
    elif verdict == "rejected" and (own or responder_hop):
        what = (terminal or {}).get("reply") or "an ICMP reject"
        if own:
            _mark(dest, "rejects", f"rejects TCP {port} ({what})")
        else:
            _mark(_hop(nodes, responder_hop, responder), "rejects", f"rejects TCP {port} ({what})")
    elif verdict == "unreachable" and (own or responder_hop):
        node = dest if own else _hop(nodes, responder_hop, responder)
        _mark(node, "unreachable", f"answers unreachable ({(terminal or {}).get('reply') or 'ICMP'})")
    elif verdict == "filtered" and drop is not None and trace is not None:
        node = source if drop == 0 else _hop(nodes, drop)
        where = "nothing leaves this host" if drop == 0 else "the last to answer"
        _mark(node, "drops", f"{where}: TCP {port} goes silent after it")
    if not any(n.mark for n in nodes) and verdict not in ("open", "refused"):
        _mark_location(nodes, finding.get("location") or {}, dest, source)
    if verdict == "open" and dest.reply is None:
        dest.reply = "syn-ack" if trace is not None or result.get("method") == "raw" else "connected"
    _links(nodes)
    path.nodes = nodes
    return path


def _mark_location(nodes: list[Node], location: Mapping[str, Any], dest: Node, source: Node) -> None:
    kind = location.get("kind")
    if kind == "hop" and location.get("hop"):
        _mark(
            _hop(nodes, int(location["hop"]), location.get("address")), "fault", "where the finding places it"
        )
    elif kind == "destination":
        _mark(dest, "fault", "where the finding places it")
    elif kind == "local":
        _mark(source, "fault", "this host: where the finding places it")


def _links(nodes: list[Node]) -> None:
    """Each node's link from the one before, and what lies past a blocking mark."""
    blocked = False
    for i, n in enumerate(nodes):
        if i == 0:
            n.link = ""
        elif blocked:
            n.link, n.reached = "cut" if nodes[i - 1].mark in BLOCKING else "unseen", False
        else:
            n.link = "ok" if n.reached and nodes[i - 1].reached else "unseen"
        if n.mark in BLOCKING and n.kind != "destination":
            blocked = True


def hop_paths(finding: Mapping[str, Any]) -> list[HopPath]:
    """:func:`hop_path` of each address of a finding."""
    return [hop_path(r, finding) for r in finding.get("addresses") or ()]


def describe_location(location: Mapping[str, Any] | None) -> str:
    """Where a finding places its cause, in words."""
    if not location:
        return "—"
    kind = location.get("kind")
    address = location.get("address")
    if kind == "hop":
        return f"hop {location.get('hop')}" + (f" ({address})" if address else "")
    if kind == "destination":
        return "the destination" + (f" {address}" if address else "")
    if kind == "local":
        return "this host"
    if kind == "cloud":
        return f"cloud component {location.get('component') or '?'}"
    return str(kind)
