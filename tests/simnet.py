"""A simulated routed path with virtual time, for testing the sans-I/O probe machines.

Replies are built with scapy, an implementation independent of ``probes.wire``. Routers
behave as Linux does where it matters: TTL expiry is answered before any firewall rule,
and ICMP errors are rate-limited per destination by a token bucket (burst 6, one token per
``icmp_interval``). Deliveries happen after ``delay`` seconds per hop, each way.

This host's kernel may drop replies too (a receive queue that overflowed): ``lose`` decides,
for each reply about to be delivered (its index in delivery order, its time, the datagram),
whether it is dropped; :func:`run` then reports the drops to the machine, as the real driver
does from the sockets' drop counters.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from mailpath.probes import wire
from mailpath.probes.classify import Verdict, unreach_verdict
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6TimeExceeded,
    IPv6,
)

# Actions a router (on a port) or the destination (on a port) may take.
PASS, DROP, FORGE_RST, FORGE_SYNACK = "pass", "drop", "rst", "synack"
OPEN, CLOSED = "open", "closed"


def icmp(code: int, late: float = 0.0) -> tuple:
    """An ICMP destination-unreachable; ``late`` seconds after the packet arrives."""
    return ("icmp", code, late) if late else ("icmp", code)


@dataclass
class Bucket:
    """Linux's per-destination ICMP limiter (inet_peer_xrlim_allow)."""

    interval: float
    burst: int = 6
    tokens: float = 6.0
    last: float = 0.0

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) / self.interval)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class Router:
    address4: str
    address6: str
    ports: dict[int, object] = field(default_factory=dict)  # port -> action (default PASS)
    icmp_interval: float = 1.0
    initial_tokens: float = 6.0
    silent: bool = False  # never sends time-exceeded
    blackhole: bool = False  # forwards nothing at all (a route to nowhere)

    def __post_init__(self) -> None:
        self.bucket = Bucket(self.icmp_interval, tokens=self.initial_tokens)


@dataclass
class Path:
    routers: list[Router]
    dest4: str = "198.18.9.9"
    dest6: str = "2001:db8:9::9"
    ports: dict[int, object] = field(default_factory=dict)  # destination port -> action
    echo: bool = True
    delay: float = 0.001
    dest_bucket_interval: float = 1.0

    def __post_init__(self) -> None:
        self.dest_bucket = Bucket(self.dest_bucket_interval)

    def expected(self, port: int, family: int) -> Verdict:
        """What a correct prober must conclude for ``port``."""
        for r in self.routers:
            action = r.ports.get(port, PASS)
            if action != PASS:
                return _verdict(action, family)
        return _verdict(self.ports.get(port, CLOSED), family)


def _verdict(action, family: int) -> Verdict:
    if action == OPEN:
        return Verdict.OPEN
    if action == CLOSED:
        return Verdict.REFUSED
    if action == FORGE_RST:
        return Verdict.RESET_IN_PATH
    if action == DROP:
        return Verdict.FILTERED
    return unreach_verdict(family, action[1])


class SimNet:
    """Transmit ``syn.Send`` packets along ``path``; replies queue up in virtual time."""

    def __init__(
        self,
        path: Path,
        client4: str = "198.18.1.1",
        client6: str = "2001:db8:1::1",
        lose: Callable[[int, float, wire.Datagram], bool] | None = None,
    ):
        self.path = path
        self.client = {4: client4, 6: client6}
        self._queue: list[tuple[float, int, wire.Datagram]] = []
        self._n = itertools.count()
        self.sent = 0
        self.lose = lose
        self.delivered = 0  # replies that reached this host, dropped ones included
        self.dropped = 0  # of those, dropped by this host's kernel (its receive queue overflowed)

    def next_delivery(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def inject(self, when: float, dg: wire.Datagram) -> None:
        heapq.heappush(self._queue, (when, next(self._n), dg))

    def deliver_until(self, now: float) -> list[wire.Datagram]:
        out = []
        while self._queue and self._queue[0][0] <= now:
            when, _, dg = heapq.heappop(self._queue)
            index, self.delivered = self.delivered, self.delivered + 1
            if self.lose is not None and self.lose(index, when, dg):
                self.dropped += 1
            else:
                out.append(dg)
        return out

    def transmit(self, send, now: float) -> None:
        self.sent += 1
        p, fam = self.path, send.family
        dest = p.dest4 if fam == 4 else p.dest6
        if send.dst != dest:
            return
        original = _ip(fam, send.src, send.dst, send.ttl, send.proto, send.payload)
        ttl = send.ttl
        for k, r in enumerate(p.routers, start=1):
            here = now + k * p.delay
            raddr = r.address4 if fam == 4 else r.address6
            if ttl <= 1:
                if not r.silent and r.bucket.allow(here):
                    self._reply(here, k, _icmp_error(fam, raddr, send.src, original, "te", 0))
                return
            ttl -= 1
            if r.blackhole:
                return
            if send.proto != wire.PROTO_TCP:
                continue
            action = r.ports.get(_dport(send.payload), PASS)
            if action == DROP:
                return
            if action in (FORGE_RST, FORGE_SYNACK):
                self._reply(here, k, _tcp_reply(fam, send, "RA" if action == FORGE_RST else "SA", src=dest))
                return
            if isinstance(action, tuple):
                late = action[2] if len(action) > 2 else 0.0  # e.g. ARP failing before host-unreachable
                if r.bucket.allow(here + late):
                    error = _icmp_error(fam, raddr, send.src, original, "unreach", action[1])
                    self._reply(here + late, k, error)
                return
        n = len(p.routers) + 1
        here = now + n * p.delay
        if send.proto != wire.PROTO_TCP:
            if p.echo:
                self._reply(here, n, _echo_reply(fam, dest, send.src, send.payload))
            return
        action = p.ports.get(_dport(send.payload), CLOSED)
        if action == OPEN:
            self._reply(here, n, _tcp_reply(fam, send, "SA", src=dest))
        elif action == CLOSED:
            self._reply(here, n, _tcp_reply(fam, send, "RA", src=dest))
        elif isinstance(action, tuple) and p.dest_bucket.allow(here):
            self._reply(here, n, _icmp_error(fam, dest, send.src, original, "unreach", action[1]))

    def _reply(self, sent_at: float, hop: int, pkt) -> None:
        """Queue ``pkt`` (sent by the node at ``hop`` with TTL 64) as the client receives it."""
        raw = bytes(pkt)
        fam = 6 if raw[0] >> 4 == 6 else 4
        ttl = 64 - (hop - 1)
        if fam == 4:
            pkt = IP(raw)
            pkt.ttl = ttl
            del pkt.chksum
            dg = wire.parse_ipv4(bytes(pkt))
        else:
            p6 = IPv6(raw)
            dg = wire.Datagram(6, p6.src, p6.dst, ttl, p6.nh, bytes(p6.payload))
        self.inject(sent_at + hop * self.path.delay, dg)


def _dport(tcp: bytes) -> int:
    return int.from_bytes(tcp[2:4], "big")


def _ip(fam: int, src: str, dst: str, ttl: int, proto: int, payload: bytes):
    if fam == 4:
        return IP(src=src, dst=dst, ttl=ttl, proto=proto) / payload
    return IPv6(src=src, dst=dst, hlim=ttl, nh=proto) / payload


def _tcp_reply(fam: int, send, flags: str, src: str):
    syn = TCP(send.payload)
    ip = IP(src=src, dst=send.src) if fam == 4 else IPv6(src=src, dst=send.src)
    return ip / TCP(
        sport=syn.dport,
        dport=syn.sport,
        seq=12345 if "S" in flags else 0,
        ack=(syn.seq + 1) & 0xFFFFFFFF,
        flags=flags,
        window=0 if "R" in flags else 65535,
    )


def _icmp_error(fam: int, src: str, dst: str, original, kind: str, code: int):
    quoted = bytes(original)[: 28 if fam == 4 else 1232]
    if fam == 4:
        return IP(src=src, dst=dst) / ICMP(type=11 if kind == "te" else 3, code=code) / quoted
    layer = ICMPv6TimeExceeded(code=0) if kind == "te" else ICMPv6DestUnreach(code=code)
    return IPv6(src=src, dst=dst) / layer / quoted


def _echo_reply(fam: int, src: str, dst: str, request: bytes):
    if fam == 4:
        req = ICMP(request)
        return IP(src=src, dst=dst) / ICMP(type=0, id=req.id, seq=req.seq) / bytes(req.payload)
    req = ICMPv6EchoRequest(request)
    return IPv6(src=src, dst=dst) / ICMPv6EchoReply(id=req.id, seq=req.seq, data=req.data)


def run(machine, net: SimNet, *, limit: float = 100_000.0) -> float:
    """Drive ``machine`` against ``net`` in virtual time; returns the virtual time taken.

    Replies the net dropped are reported as the driver does: how many, by when, and since
    when (the previous look, when none had been dropped since the last report)."""
    now = 0.0
    reported, looked = 0, 0.0
    while True:
        for send in machine.poll(now):
            net.transmit(send, now)
        if machine.done:
            return now
        wake = machine.next_wakeup(now)
        nxt = net.next_delivery()
        now = max(now, min(wake, nxt) if nxt is not None else wake)
        if now > limit:
            raise AssertionError(f"machine not done after {limit} virtual seconds")
        for dg in net.deliver_until(now):
            machine.feed(dg, now)
        if net.dropped > reported:
            machine.dropped(net.dropped - reported, now, looked)
            reported = net.dropped
        looked = now
