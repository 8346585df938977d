"""Raw TCP SYN probes, batched: a sans-I/O state machine plus a thin driver.

:class:`SynBatch` never touches a socket. The driver asks it what to send (:meth:`poll`),
feeds it what came back (:meth:`feed`) and sleeps until :meth:`next_wakeup`. That keeps every
timing decision testable with a simulated clock and a simulated network.

How a batch runs:

1. *Fast phase*: one SYN per target, paced by our own send rate; every unanswered SYN is
   retried ``retries`` times, each try waiting ``timeout``.
2. *Settle phase*:
   - Routers rate-limit ICMP errors per destination (Linux: a burst of 6, then one per
     second). If any ICMP error arrived, an unanswered probe may have been a reject whose
     ICMP was suppressed, so it is re-sent alone and paced: only once every router that sent
     us errors has had ``icmp_interval`` to earn a token since its last error and since our
     last paced probe. Silence then really is a silent drop.
   - A RST's hop (TTL-inferred) is compared with the destination's hop, learnt from other
     replies of that address (SYN-ACK, ICMP from the address, echo reply). When the batch
     does not tell, we ask: an ICMP echo to the address, and the same SYN with TTL equal to
     the RST's hop. Time-exceeded to that SYN proves something lies beyond the RST's origin.

Replies this host's kernel dropped (a receive queue that overflowed while the driver was
starved of CPU) must never read as silence. The driver reports them (:meth:`dropped`: *n*
replies were lost between two moments); every try still unanswered that listened in that
interval then does not count, and its probe (or check) is asked again, at half the send rate
so the re-asks do not overflow the queue once more. A reply that comes after its probe was
declared silent still counts while the batch runs. Drops cost time, never a verdict.
"""

from __future__ import annotations

import errno
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mailpath.probes import wire
from mailpath.probes.classify import Flow, PathFacts, Reply, ReplyKind, Verdict, judge, read_reply
from mailpath.probes.local import LOCAL, local_verdict
from mailpath.probes.pacing import pacers
from mailpath.probes.result import Icmp, ProbeResult, Target

DEFAULT_TTL = 64


@dataclass(frozen=True, slots=True)
class Send:
    """One packet the driver must put on the wire. ``payload`` is the L4 message."""

    family: int
    src: str
    dst: str
    proto: int
    payload: bytes
    ttl: int
    key: object = None  # handed back in send_failed


@dataclass(slots=True)
class _Probe:
    target: Target
    flow: Flow | None  # None when the host has no route (local verdict)
    attempts: int = 0
    reply: Reply | None = None
    rtt: float | None = None
    local_errno: int | None = None
    paced: bool = False  # its last try was a paced one
    unconfirmed: bool = False  # the pace budget ran out before its paced try
    first_sent: float | None = None
    listened: float = 0.0  # seconds from the first try to the end of the last
    done: bool = False
    live: bool = False  # a try is in flight and its timer runs
    # -- replies the kernel dropped (see SynBatch.dropped)
    sent_at: float = 0.0  # when the latest try went out
    ended_at: float = 0.0  # when the latest try stopped listening
    extra: int = 0  # tries that do not count: their answer may have been dropped
    cleared: int = 0  # the try (its number) last found to have possibly lost its answer
    tainted: bool = False  # the live try may have lost its answer (it is refunded at expiry)
    exhausted: bool = False  # fast tries used up, waiting for the settle phase
    reasked: int = 0  # tries asked again because of drops
    lost: bool = False  # more drops than re-asks allowed: silence not confirmed


@dataclass(slots=True)
class _Check:
    """A question asked to place a RST: an echo to the address, or a TTL-limited SYN."""

    address: str
    ttl: int  # TTL-limited SYN: the RST's hop; echo: DEFAULT_TTL
    flow: Flow | None  # None for an echo
    src: str
    attempts: int = 0
    reply: Reply | None = None
    done: bool = False
    live: bool = False  # a try is in flight and its timer runs
    moot: bool = False  # another answer made it unnecessary
    sent_at: float = 0.0
    ended_at: float = 0.0
    extra: int = 0
    cleared: int = 0
    tainted: bool = False
    reasked: int = 0
    lost: bool = False


@dataclass
class Options:
    timeout: float = 1.0  # seconds to wait for each try
    retries: int = 2  # tries after the first
    icmp_interval: float = 1.0  # assumed ICMP error token rate of a router (Linux default)
    rate: float = 20000.0  # our own packets per second
    burst: int = 512
    # Least time to listen, from a probe's first try, before calling it filtered: a router
    # answers host-unreachable only once ARP/ND for the next hop fails (~3 s on Linux).
    min_wait: float = 3.5
    # Seconds the paced phase may take at most. A router earns one ICMP token a second, so
    # N unanswered probes behind an error-sending router take about N seconds; past this
    # budget the rest are reported filtered, marked as not confirmed. None: no limit.
    pace_budget: float | None = 120.0
    # How often one probe may be asked again because this host dropped replies it may have
    # carried; past it the probe is reported filtered, marked as not confirmed.
    reasks: int = 8
    # The send rate never falls below this, however often replies are dropped.
    min_rate: float = 500.0


def _family(item: _Probe | _Check) -> int:
    return 6 if ":" in (item.target.address if isinstance(item, _Probe) else item.address) else 4


@dataclass
class _Seq:
    owner: _Probe | _Check
    sent_at: float


@dataclass
class SynBatch:
    targets: list[Target]
    sources: dict[str, str | int]  # address -> our source address, or the errno of no route
    options: Options = field(default_factory=Options)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        o = self.options
        self._probes: list[_Probe] = []
        self._seqs: dict[tuple[Flow, int], _Seq] = {}
        self._echo: dict[tuple[str, int], _Seq] = {}
        self._echo_ident = self.rng.randrange(1, 0x10000)
        self._pending: deque[_Probe] = deque()  # never sent yet
        self._retry: deque[_Probe] = deque()
        self._pacers = pacers(o.icmp_interval)
        self._free_checks: deque[_Check] = deque()  # checks that need no pacing
        self._timers: list[tuple[float, int, _Probe | _Check]] = []
        self._tick = 0
        self._inflight = 0  # items with a live try
        self._rate = o.rate
        self._burst = o.burst
        self._tokens = float(o.burst)
        self._token_time: float | None = None
        self._settling = False
        self._settled_at: float | None = None
        self._max_rtt = 0.0
        self._path: dict[str, PathFacts] = {}  # address -> how far it is, as replies tell
        self._checks: list[_Check] = []
        self._exhausted: list[_Probe] = []  # fast tries used up, waiting for the settle phase
        self._asked: set[tuple[str, int | None]] = set()  # RST placement questions: (address, TTL|None)
        self.drops = 0  # replies the driver reported dropped by the kernel
        self._locals = {s for s in self.sources.values() if isinstance(s, str)}
        base = self.rng.randrange(33000, 60000)
        for n, t in enumerate(self.targets):
            src = self.sources.get(t.address)
            p = _Probe(t, None)
            if isinstance(src, str):
                # one source port per target; the port spread keeps flows distinct per address
                sport = 1024 + (base + n) % 64000
                p.flow = Flow(src, sport, t.address, t.port)
                self._pending.append(p)
            else:
                p.local_errno = src if isinstance(src, int) else 0
                p.done = True
            self._probes.append(p)

    # -- driver interface -------------------------------------------------------------

    @property
    def done(self) -> bool:
        busy = self._pending or self._retry or self._free_checks or self._inflight
        busy = busy or any(not i.done for p in self._pacers.values() for i in p.queue)
        return self._settling and not busy

    @property
    def progress(self) -> tuple[int, int]:
        return sum(p.done for p in self._probes), len(self._probes)

    def next_wakeup(self, now: float) -> float:
        """When poll() next has something to do (a timer, a paced slot or send tokens)."""
        times = [self._timers[0][0]] if self._timers else []
        if self._pending or self._retry or self._free_checks:
            times.append(now if self._tokens >= 1 else now + 1 / self._rate)
        times += [p.gate(self._max_rtt) for p in self._pacers.values() if p.queue]
        return min(times, default=now + self.options.timeout)

    def poll(self, now: float) -> list[Send]:
        self._expire(now)
        self._refill(now)
        sends: list[Send] = []
        for queue in (self._retry, self._free_checks, self._pending):
            while queue and self._tokens >= 1:
                item = queue.popleft()
                if not item.done:
                    sends.append(self._send(item, now))
                    self._tokens -= 1
        if self._settled_at is None and self._settling:
            self._settled_at = now
        budget = self.options.pace_budget
        if budget is not None and self._settled_at is not None and now - self._settled_at > budget:
            for pacer in self._pacers.values():
                while pacer.queue:
                    item = pacer.queue.popleft()
                    if isinstance(item, _Probe) and not item.done:
                        item.unconfirmed = True
                    item.done = True
        for pacer in self._pacers.values():
            if pacer.queue and now >= pacer.gate(self._max_rtt):
                item = pacer.queue.popleft()
                if not item.done:
                    if isinstance(item, _Probe):
                        item.paced = True
                    sends.append(self._send(item, now))
                    pacer.last_sent = now
        if not self._settling and not (self._pending or self._retry or self._inflight):
            self._settle()
            sends.extend(self.poll(now))
        return sends

    def feed(self, dg: wire.Datagram, now: float) -> None:
        reply = read_reply(dg)
        if reply is None:
            return
        if reply.kind is ReplyKind.ECHO_REPLY:
            seq = self._echo.get((reply.responder, reply.seq))
            if seq is None or reply.ident != self._echo_ident:
                return
        else:
            seq = self._seqs.get((reply.flow, reply.seq))
            if seq is None:
                return
        if reply.kind in (ReplyKind.UNREACH, ReplyKind.TIME_EXCEEDED):
            self._pacers[dg.family].error_from(reply.responder, now)
        # the pacing margin: a reply held back at a router (a failed ARP) is no round trip
        self._max_rtt = max(self._max_rtt, min(now - seq.sent_at, self.options.timeout))
        owner = seq.owner
        if owner.done and (owner.reply is not None or not self._late_ok(owner)):
            return
        owner.reply, owner.done = reply, True
        if owner.live:
            owner.live = False
            self._inflight -= 1
        if isinstance(owner, _Probe):
            owner.rtt = now - seq.sent_at
            self._learn(owner.target.address, reply)
            if self._settling and reply.kind is ReplyKind.RST:  # a re-asked probe, refused late
                self._ask_about_rsts([owner])
        else:
            self._learn_check(owner, reply)

    def send_failed(self, send: Send, err: int, now: float) -> None:
        """The kernel would not send: no route, a local firewall, or a full queue."""
        item = send.key
        if item.live:
            item.live = False
            self._inflight -= 1
        if err in (errno.EAGAIN, errno.ENOBUFS):  # queue full: back off, try again
            item.attempts -= 1
            self._retry.append(item)
            self._tokens = min(self._tokens, 0.0)
            return
        if isinstance(item, _Probe):
            item.local_errno = err
        item.done = True

    def dropped(self, n: int, now: float, since: float | None = None) -> None:
        """The kernel dropped ``n`` replies after ``since`` (None: at any time) and by ``now``.

        Every try still unanswered that listened in that interval may have lost its answer:
        it does not count. A live try is asked again when its timer ends; a probe waiting
        for the settle phase or already declared silent is asked again now (paced, if its
        silence was a paced one). The send rate halves, so the re-asks do not overflow the
        receive queue again.
        """
        if n <= 0:
            return
        o = self.options
        self.drops += n
        self._rate = max(o.min_rate, self._rate / 2)
        self._burst = max(16, self._burst // 2)
        self._tokens = min(self._tokens, float(self._burst))
        # a reply may arrive a while after its try stopped listening (a late host-unreachable)
        lo = float("-inf") if since is None else since - o.timeout - self._max_rtt
        for item in [*self._probes, *self._checks]:
            if item.reply is not None or item.attempts == 0 or item.cleared == item.attempts:
                continue
            if isinstance(item, _Probe) and (item.flow is None or item.local_errno is not None):
                continue
            if isinstance(item, _Check) and item.moot:
                continue
            if item.sent_at > now or not (item.live or item.ended_at >= lo):
                continue
            if item.reasked >= o.reasks:
                item.lost = True
                continue
            item.cleared = item.attempts
            item.reasked += 1
            if item.live:
                item.tainted = True  # refunded when its timer ends
            else:
                item.extra += 1
                self._reask(item)

    def results(self) -> list[ProbeResult]:
        return [self._result(p) for p in self._probes]

    # -- internals ---------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        if self._token_time is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._token_time) * self._rate)
        self._token_time = now

    def _late_ok(self, item: _Probe | _Check) -> bool:
        """May a reply still count for this item, declared done without one? Yes while the
        batch runs, unless the item never went out or its question became moot."""
        if isinstance(item, _Probe):
            return item.flow is not None and item.local_errno is None
        return not item.moot

    def _reask(self, item: _Probe | _Check) -> None:
        """Put an item whose latest (finished) try may have lost its answer back in line."""
        pacer = self._pacers[_family(item)]
        if isinstance(item, _Check):
            if item.done:
                item.done = False
                if item.flow is not None and pacer.errors:
                    pacer.queue.appendleft(item)
                else:
                    self._free_checks.append(item)
            return  # else it is queued already, and its refunded try makes room for one more
        if item.exhausted:
            item.exhausted = False
            self._retry.append(item)
        elif item.done:
            item.done = item.unconfirmed = False
            if item.paced:  # its silence was a paced one: so is the re-ask
                pacer.queue.append(item)
            else:
                self._retry.append(item)

    def _wait(self, item: _Probe | _Check, now: float) -> float:
        """How long this try listens: ``timeout``, but a probe's last fast try listens until
        ``min_wait`` after its first try, for late host-unreachables."""
        o = self.options
        if not isinstance(item, _Probe):
            return o.timeout
        if item.first_sent is None:
            item.first_sent = now
        if item.paced:  # the fast tries already listened min_wait for late answers
            return o.timeout
        if item.attempts > o.retries:
            return max(o.timeout, item.first_sent + o.min_wait - now)
        return o.timeout

    def _send(self, item: _Probe | _Check, now: float) -> Send:
        item.attempts += 1
        item.live = True
        item.sent_at = now
        self._inflight += 1
        heapq.heappush(self._timers, (now + self._wait(item, now), self._tick, item))
        self._tick += 1
        if isinstance(item, _Check) and item.flow is None:  # echo
            seq = self.rng.randrange(0x10000)
            self._echo[(item.address, seq)] = _Seq(item, now)
            v6 = ":" in item.address
            payload = wire.icmp_echo(self._echo_ident, seq, v6=v6, src=item.src, dst=item.address)
            proto = wire.PROTO_ICMPV6 if v6 else wire.PROTO_ICMP
            return Send(6 if v6 else 4, item.src, item.address, proto, payload, DEFAULT_TTL, item)
        flow = item.flow
        seq = self.rng.getrandbits(32)
        self._seqs[(flow, seq)] = _Seq(item, now)
        ttl = item.ttl if isinstance(item, _Check) else DEFAULT_TTL
        payload = wire.tcp_segment(flow.local, flow.remote, flow.sport, flow.dport, seq)
        family = 6 if ":" in flow.remote else 4
        return Send(family, flow.local, flow.remote, wire.PROTO_TCP, payload, ttl, item)

    def _expire(self, now: float) -> None:
        retries = self.options.retries
        while self._timers and self._timers[0][0] <= now:
            _, _, item = heapq.heappop(self._timers)
            if not item.live:
                continue
            item.live = False
            self._inflight -= 1
            item.ended_at = now
            refunded = item.tainted  # this try may have lost its answer: it does not count
            if refunded:
                item.tainted = False
                item.extra += 1
            if isinstance(item, _Probe):
                item.listened = now - item.first_sent
            pacer = self._pacers[_family(item)]
            if isinstance(item, _Check):
                if item.attempts > retries + item.extra:
                    item.done = True
                elif item.flow is not None and pacer.errors:
                    pacer.queue.appendleft(item)  # its time-exceeded may have been rate-limited
                else:
                    self._free_checks.append(item)
            elif item.paced and refunded:
                pacer.queue.append(item)
            elif item.paced:
                item.done = True  # a paced try had a token at every router: a real drop
            elif item.attempts <= retries + item.extra:
                self._retry.append(item)
            elif not self._settling:
                item.exhausted = True
                self._exhausted.append(item)
            elif pacer.errors:
                pacer.queue.append(item)
            else:
                item.done = True

    def _settle(self) -> None:
        """The fast phase is over: queue paced retries and the checks that place RSTs."""
        self._settling = True
        for p in self._exhausted:
            if not p.exhausted:  # asked again meanwhile (a drop)
                continue
            p.exhausted = False
            pacer = self._pacers[_family(p)]
            if pacer.errors:
                pacer.queue.append(p)
            else:
                p.done = True
        self._exhausted.clear()
        self._ask_about_rsts(self._probes)

    def _ask_about_rsts(self, probes: list[_Probe]) -> None:
        """Queue the questions that place the RSTs these probes got (each asked once)."""
        rst_hops: dict[str, dict[int, _Probe]] = {}
        for p in probes:
            if p.reply and p.reply.kind is ReplyKind.RST:
                rst_hops.setdefault(p.target.address, {}).setdefault(p.reply.hop, p)
        for address, hops in rst_hops.items():
            if self._facts(address).dest_hop is not None:
                continue
            src = next(iter(hops.values())).flow.local
            if (address, None) not in self._asked:
                self._asked.add((address, None))
                echo = _Check(address, DEFAULT_TTL, None, src)
                self._checks.append(echo)
                self._free_checks.append(echo)
            for hop, p in sorted(hops.items()):
                if (address, hop) in self._asked:
                    continue
                self._asked.add((address, hop))
                check = _Check(address, hop, p.flow, src)
                self._checks.append(check)
                pacer = self._pacers[_family(check)]
                (pacer.queue if pacer.errors else self._free_checks).appendleft(check)

    def _learn(self, address: str, reply: Reply) -> None:
        self._path.setdefault(address, PathFacts()).learn(address, reply)

    def _learn_check(self, check: _Check, reply: Reply) -> None:
        if check.flow is None:
            self._learn(check.address, reply)
        else:
            self._path.setdefault(check.address, PathFacts()).learn_limited(check.address, check.ttl, reply)
        # Once the echo gave the destination's hop, or every TTL-limited SYN was answered, the
        # other questions about this address are moot: do not wait for their timeouts.
        mine = [c for c in self._checks if c.address == check.address]
        if self._facts(check.address).dest_hop is not None or all(c.done for c in mine if c.flow is not None):
            for c in mine:
                if not c.done:
                    c.done = c.moot = True
                    if c.live:
                        c.live = False
                        self._inflight -= 1

    def _result(self, p: _Probe) -> ProbeResult:
        t = p.target
        dest_hop = self._facts(t.address).dest_hop
        base = dict(host=t.host, address=t.address, port=t.port, method="raw", attempts=p.attempts)
        if p.flow is None or p.local_errno is not None:
            verdict, why = local_verdict(p.local_errno or 0)
            return ProbeResult(**base, verdict=verdict, reason=why, responder=LOCAL, responder_hop=0)
        r = p.reply
        if r is None:
            n = p.attempts
            why = f"no reply to {n} SYN{'s' if n > 1 else ''} in {p.listened:.1f} s"
            routers = ", ".join(sorted(self._pacers[t.family].errors))
            if p.reasked:
                why += f" ({p.reasked} asked again: this host dropped replies they may have drawn)"
            if p.lost:
                why += (
                    "; not confirmed: this host dropped replies (its receive queue overflowed) "
                    "more often than the probe could be asked again"
                )
            if p.paced:
                why += f"; the last one paced so that ICMP rate limits ({routers}) could not hide a reject"
            elif p.unconfirmed:
                why += (
                    f"; not confirmed: {routers} rate-limited ICMP and the paced retries ran out of "
                    "time (--pace-budget), so a reject may be hidden"
                )
            return ProbeResult(**base, verdict=Verdict.FILTERED, reason=why, destination_hop=dest_hop)
        local = r.responder in self._locals and r.responder != t.address
        j = judge(r, t.address, self._facts(t.address), local=local)
        return ProbeResult(
            **base,
            verdict=j.verdict,
            reason=j.reason,
            responder=r.responder,
            responder_hop=j.responder_hop,
            destination_hop=j.destination_hop,
            icmp=Icmp(*j.icmp) if j.icmp else None,
            rtt_ms=round(p.rtt * 1000, 3) if p.rtt is not None else None,
        )

    def _facts(self, address: str) -> PathFacts:
        return self._path.get(address) or PathFacts()

    # -- evidence for a capture (--pcap) -------------------------------------------------

    def annotate(self, recorder) -> None:
        """Name, in ``recorder`` (a :class:`~mailpath.probes.capture.Recorder`), the probe
        every packet of this batch belongs to, and the reply that decided each verdict."""
        from mailpath.probes.capture import echo_key, probe_ref, tcp_key

        rsts: dict[str, dict[int, list[int]]] = {}  # address -> RST hop -> ports
        for p in self._probes:
            if p.reply is not None and p.reply.kind is ReplyKind.RST:
                rsts.setdefault(p.target.address, {}).setdefault(p.reply.hop, []).append(p.target.port)
        tries: dict[int, int] = {}
        for (flow, seq), s in self._seqs.items():  # in the order they were sent
            owner = s.owner
            if isinstance(owner, _Probe):
                n = tries[id(owner)] = tries.get(id(owner), 0) + 1
                recorder.label(tcp_key(flow, seq), probe_ref(flow.remote, flow.dport), f"SYN, try {n}")
                continue
            what = f"SYN with TTL {owner.ttl}: is the RST's origin at hop {owner.ttl}?"
            for port in rsts.get(owner.address, {}).get(owner.ttl, [flow.dport]):
                recorder.label(tcp_key(flow, seq), probe_ref(owner.address, port), what)
        for (address, seq), s in self._echo.items():
            key = echo_key(s.owner.src, address, self._echo_ident, seq)
            for port in sorted({port for ports in rsts.get(address, {}).values() for port in ports}):
                recorder.label(key, probe_ref(address, port), f"echo to {address}: its hop, to place the RST")
        for p, r in zip(self._probes, self.results(), strict=True):
            if p.reply is not None:
                recorder.decided(p.reply, probe_ref(r.address, r.port), f"{r.verdict}: {r.reason}")


def probe_raw(
    targets: list[Target],
    options: Options,
    progress: Callable[[int, int], None] | None = None,
    recorder=None,
) -> list[ProbeResult]:
    """Probe all targets in one raw batch. Raises PermissionDenied without CAP_NET_RAW.
    ``recorder`` (a :class:`~mailpath.probes.capture.Recorder`): keep every packet sent and
    every reply to them, each named after its probe."""
    from mailpath.probes.local import route
    from mailpath.probes.rawsock import RawNet, drive, rcvbuf_for

    # every reply of every try (and the RST checks) may be queued at once on a starved host
    rcvbuf = rcvbuf_for(len(targets) * (options.retries + 1))
    with RawNet({t.family for t in targets}, rcvbuf, recorder=recorder) as net:
        sources = {a: route(a) for a in {t.address for t in targets}}
        batch = SynBatch(targets, sources, options)
        tick = (lambda: progress(*batch.progress)) if progress else None
        drive(batch, net, progress=tick)
    if recorder is not None:
        batch.annotate(recorder)
    return batch.results()
