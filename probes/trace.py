"""TCP SYN traceroute on the real port, with a control trace, as a sans-I/O machine.

Every probe of a trace uses one flow (addresses and ports fixed, Paris-traceroute style) and
differs only in its sequence number, which is how replies are tied to a TTL; per-flow load
balancers therefore keep the whole trace on one path. TTLs go out in parallel, ``probes``
per TTL, in a window that advances as hops answer, and the trace stops at the destination
or after ``max_silent`` silent TTLs past the last answer.

A *control* trace runs alongside (ICMP echo by default, or another TCP port). Comparing
the two tells "this port's packets die after hop N" from "the path goes silent at hop N
anyway".

Routers rate-limit time-exceeded like any ICMP error, so a hop that stays silent while a
later hop answered is a quiet router, never a drop; and before a trace is declared silent
after hop N, TTL N+1 is probed once more, paced (see ``probes.pacing``) and listening for
``min_wait`` so that a late host-unreachable (a failed ARP/ND) is not missed either.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import asdict, dataclass, field

from mailpath.probes import wire
from mailpath.probes.classify import (
    Flow,
    Reply,
    ReplyKind,
    Verdict,
    icmp_name,
    is_prohibited,
    read_reply,
    unreach_verdict,
)
from mailpath.probes.local import LOCAL, local_verdict, route
from mailpath.probes.pacing import Pacer, pacers
from mailpath.probes.result import Icmp, Target
from mailpath.probes.syn import Send

_TERMINAL = (ReplyKind.SYN_ACK, ReplyKind.RST, ReplyKind.UNREACH, ReplyKind.ECHO_REPLY)
_LABEL = {
    ReplyKind.TIME_EXCEEDED: "time-exceeded",
    ReplyKind.SYN_ACK: "syn-ack",
    ReplyKind.RST: "rst",
    ReplyKind.ECHO_REPLY: "echo-reply",
}


@dataclass
class TraceOptions:
    max_hops: int = 30
    probes: int = 3  # per TTL
    control_probes: int = 1  # per TTL of the control: routers' ICMP budget is small (burst 6)
    timeout: float = 1.0  # seconds each probe waits
    window: int = 8  # TTLs sent before any hop has answered
    max_silent: int = 3  # silent TTLs past the last answer before the trace stops
    icmp_interval: float = 1.0
    min_wait: float = 3.5  # the final silence check listens this long (late host-unreachable)

    @property
    def time_limit(self) -> float:
        """A hard bound on a whole trace: every TTL once, plus the paced checks."""
        return self.timeout * (self.max_hops + 2) + self.min_wait + 2 * self.icmp_interval


@dataclass(eq=False)
class _Probe:
    line: _Line
    ttl: int
    sent_at: float
    wait: float
    reply: Reply | None = None
    rtt: float | None = None
    live: bool = True


@dataclass(eq=False)
class _Line:
    """One traced flow: the port under test, or the control."""

    kind: str  # "tcp" or "icmp"
    port: int | None
    flow: Flow
    target: str
    probes: dict[int, list[_Probe]] = field(default_factory=dict)
    next_ttl: int = 1
    confirmed: set[int] = field(default_factory=set)  # TTLs given a paced second chance
    queued: int = 0  # paced probes waiting to be sent

    def replies(self, ttl: int) -> list[_Probe]:
        return [p for p in self.probes.get(ttl, []) if p.reply is not None]

    @property
    def terminal_ttl(self) -> int | None:
        ttls = [t for t, ps in self.probes.items() if any(p.reply and p.reply.kind in _TERMINAL for p in ps)]
        return min(ttls, default=None)

    @property
    def last_answered(self) -> int:
        """The highest TTL that drew any reply before the terminal one (0: none)."""
        stop = self.terminal_ttl or 10**6
        return max((t for t in self.probes if t <= stop and self.replies(t)), default=0)

    def live(self) -> bool:
        """Is a probe that still matters in flight? Past the terminal TTL none does."""
        stop = self.terminal_ttl or 10**6
        return any(p.live for t, ps in self.probes.items() if t <= stop for p in ps)


@dataclass
class TraceRun:
    target: Target
    source: str
    options: TraceOptions = field(default_factory=TraceOptions)
    control: str | int | None = "icmp"  # "icmp", a TCP port, or None
    rng: random.Random = field(default_factory=random.Random)
    shared_pacers: dict[int, Pacer] | None = None

    def __post_init__(self) -> None:
        o, t = self.options, self.target
        self._pacer = (self.shared_pacers or pacers(o.icmp_interval))[t.family]
        sport = self.rng.randrange(33000, 61000)
        self.main = _Line("tcp", t.port, Flow(self.source, sport, t.address, t.port), t.address)
        self.lines = [self.main]
        self.control_line: _Line | None = None
        if self.control == "icmp":
            self.control_line = _Line("icmp", None, Flow(self.source, 0, t.address, 0), t.address)
        elif self.control is not None:
            port = int(self.control)
            self.control_line = _Line("tcp", port, Flow(self.source, sport, t.address, port), t.address)
        if self.control_line:
            self.lines.append(self.control_line)
        self._ident = self.rng.randrange(1, 0x10000)
        self._seq: dict[tuple[Flow, int], _Probe] = {}
        self._timers: list[tuple[float, int, _Probe]] = []
        self._tick = 0
        self._echo_seq = 0
        self._start: float | None = None
        self._aborted = False
        self._max_rtt = 0.0

    # -- driver interface -------------------------------------------------------------

    @property
    def done(self) -> bool:
        if self._aborted:
            return True
        return all(self._line_done(line) for line in self.lines)

    def next_wakeup(self, now: float) -> float:
        times = [self._timers[0][0]] if self._timers else []
        if any(self._sendable(line) for line in self.lines):
            times.append(now)
        if self._pacer.queue:
            times.append(self._pacer.gate(self._max_rtt))
        if self._start is not None:
            times.append(self._start + self.options.time_limit)
        return min(times, default=now + self.options.timeout)

    def poll(self, now: float) -> list[Send]:
        if self._start is None:
            self._start = now
        if now >= self._start + self.options.time_limit:
            self._aborted = True
            return []
        self._expire(now)
        sends: list[Send] = []
        # TTL by TTL across both lines, so that every hop's time-exceeded is asked for before
        # the rejects of a nearer hop can use up that router's ICMP budget
        while ready := [line for line in self.lines if self._sendable(line)]:
            line = min(ready, key=lambda ln: ln.next_ttl)
            ttl = line.next_ttl
            line.next_ttl += 1
            count = self.options.probes if line is self.main else self.options.control_probes
            sends += [self._send(line, ttl, now) for _ in range(count)]
        for line in self.lines:
            self._second_chances(line)
        pacer = self._pacer
        if pacer.queue and now >= pacer.gate(self._max_rtt):
            line, ttl, final = pacer.queue.popleft()
            line.queued -= 1
            sends.append(self._send(line, ttl, now, listen=final))
            pacer.last_sent = now
        return sends

    def feed(self, dg: wire.Datagram, now: float) -> None:
        r = read_reply(dg)
        if r is None:
            return
        if r.kind is ReplyKind.ECHO_REPLY:
            if r.responder != self.target.address or r.ident != self._ident:
                return
            probe = self._seq.get((self.control_line.flow, r.seq)) if self.control_line else None
        else:
            if r.flow is not None and r.flow.sport == 0 and r.ident != self._ident:
                return  # an error quoting somebody else's echo
            probe = self._seq.get((r.flow, r.seq))
        if probe is None:
            return
        if r.kind in (ReplyKind.UNREACH, ReplyKind.TIME_EXCEEDED) and dg.family == self.target.family:
            self._pacer.error_from(r.responder, now)
        # the pacing margin: a reply held back at a router (a failed ARP) is no round trip
        self._max_rtt = max(self._max_rtt, min(now - probe.sent_at, self.options.timeout))
        if probe.reply is None:
            probe.reply, probe.rtt, probe.live = r, now - probe.sent_at, False

    def send_failed(self, send: Send, err: int, now: float) -> None:
        send.key.live = False

    # -- internals ----------------------------------------------------------------------

    def _horizon(self, line: _Line) -> int:
        o = self.options
        limit = max(o.window, line.last_answered + o.max_silent)
        terminal = line.terminal_ttl
        if terminal is not None:
            limit = min(limit, terminal)
        return min(limit, o.max_hops)

    def _sendable(self, line: _Line) -> bool:
        return not self._aborted and line.next_ttl <= self._horizon(line)

    def _line_done(self, line: _Line) -> bool:
        return not (
            self._sendable(line) or line.live() or line.queued or self._second_chances(line, dry=True)
        )

    def _second_chances(self, line: _Line, dry: bool = False) -> bool:
        """Once a line is quiet, queue paced re-probes where an answer matters: the TTL of
        the hop that forged a RST, when its time-exceeded was rate-limited away (to name
        it), and the first silent TTL after the last answer (to be sure the silence is
        real). Other quiet hops stay ``*``: asking every router again costs a second each.
        Returns whether anything was (or, with ``dry``, would be) queued."""
        if self._sendable(line) or line.live() or line.queued:
            return False
        last = line.last_answered
        wanted = []
        forged = _terminal_reply(line)
        if (
            forged is not None
            and forged.kind is ReplyKind.RST
            and forged.hop < line.terminal_ttl
            and _address(line, forged.hop) is None
        ):
            wanted.append(forged.hop)
        if line.terminal_ttl is None and last < self.options.max_hops:
            wanted.append(last + 1)
        wanted = [t for t in wanted if t not in line.confirmed and t in line.probes]
        if not dry:
            for t in wanted:
                line.confirmed.add(t)
                line.queued += 1
                self._pacer.queue.append((line, t, t == last + 1))
        return bool(wanted)

    def _send(self, line: _Line, ttl: int, now: float, listen: bool = False) -> Send:
        """One probe at ``ttl``; ``listen``: the final silence check, which waits ``min_wait``."""
        o = self.options
        wait = max(o.timeout, o.min_wait) if listen else o.timeout
        probe = _Probe(line, ttl, now, wait)
        line.probes.setdefault(ttl, []).append(probe)
        heapq.heappush(self._timers, (now + wait, self._tick, probe))
        self._tick += 1
        t, f = self.target, line.flow
        if line.kind == "icmp":
            self._echo_seq = (self._echo_seq + 1) & 0xFFFF
            seq = self._echo_seq
            payload = wire.icmp_echo(self._ident, seq, v6=t.family == 6, src=f.local, dst=f.remote)
            proto = wire.PROTO_ICMPV6 if t.family == 6 else wire.PROTO_ICMP
        else:
            seq = self.rng.getrandbits(32)
            payload = wire.tcp_segment(f.local, f.remote, f.sport, f.dport, seq)
            proto = wire.PROTO_TCP
        self._seq[(f, seq)] = probe
        return Send(t.family, f.local, f.remote, proto, payload, ttl, probe)

    def _expire(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, probe = heapq.heappop(self._timers)
            probe.live = False

    # -- evidence for a capture (--pcap) -------------------------------------------------

    def annotate(self, recorder) -> None:
        """Name, in ``recorder`` (a :class:`~mailpath.probes.capture.Recorder`), the TTL every
        packet of this trace was sent with, and the reply that ended it."""
        from mailpath.probes.capture import echo_key, tcp_key, trace_ref

        t = self.target
        for (flow, seq), probe in self._seq.items():
            ref = trace_ref(t.address, t.port, probe.ttl)
            line = probe.line
            if line.kind == "icmp":
                key = echo_key(flow.local, flow.remote, self._ident, seq)
                recorder.label(key, ref, f"control echo, TTL {probe.ttl}")
            elif line is self.main:
                recorder.label(tcp_key(flow, seq), ref, f"SYN, TTL {probe.ttl}")
            else:
                recorder.label(tcp_key(flow, seq), ref, f"control SYN to port {line.port}, TTL {probe.ttl}")
        r = _terminal_reply(self.main)
        if r is not None:
            res = self.result()
            text = f"{res.verdict}: {res.reason}"
            recorder.decided(r, trace_ref(t.address, t.port, self.main.terminal_ttl), text)
            if res.responder_hop is not None and res.responder_hop != self.main.terminal_ttl:
                recorder.decided(r, trace_ref(t.address, t.port, res.responder_hop), text)

    # -- results ------------------------------------------------------------------------

    def result(self) -> TraceResult:
        main, control = self.main, self.control_line
        hops = _rows(main, self.options)
        verdict, responder, responder_hop, reason = self._verdict(main, control)
        terminal = main.terminal_ttl
        reached = _reached(main)
        drop_after = None if terminal is not None else main.last_answered
        ctl = _control_summary(control, self.options) if control else None
        stop = terminal - 1 if terminal is not None else main.last_answered
        port_specific = None
        if ctl is not None and verdict is not Verdict.OPEN:
            port_specific = ctl.furthest_hop > stop
        return TraceResult(
            host=self.target.host,
            address=self.target.address,
            port=self.target.port,
            source=self.source,
            hops=hops,
            verdict=verdict,
            drop_after_hop=drop_after,
            reached_destination=reached,
            responder=responder,
            responder_hop=responder_hop,
            destination_hop=_destination_hop(main, control),
            control=ctl,
            port_specific=port_specific,
            reason=reason,
            complete=not self._aborted,
        )

    def _verdict(self, main: _Line, control: _Line | None) -> tuple[Verdict, str | None, int | None, str]:
        terminal = main.terminal_ttl
        if terminal is None:
            last = main.last_answered
            if not last:
                why = f"SYNs to port {main.port} get no answer, not even from hop 1"
                return Verdict.FILTERED, None, None, why
            where = f"hop {last} ({_address(main, last)})"
            return Verdict.FILTERED, None, None, f"SYNs to port {main.port} go silent after {where}"
        r = _terminal_reply(main)
        hop = r.hop
        if r.kind is ReplyKind.SYN_ACK:
            return Verdict.OPEN, r.responder, hop, f"SYN-ACK from {r.responder} at hop {terminal}"
        if r.kind is ReplyKind.RST:
            dest = _destination_hop(main, control)
            if hop < terminal or (dest is not None and hop < dest):
                by = _address(main, hop)
                who = f"hop {hop}" + (f" ({by})" if by else "")
                return (
                    Verdict.RESET_IN_PATH,
                    r.responder,
                    hop,
                    f"RST carrying {r.responder} was generated by {who}, before the destination",
                )
            return Verdict.REFUSED, r.responder, hop, f"RST from {r.responder} itself at hop {hop}"
        family = self.target.family
        name = icmp_name(family, r.icmp_type, r.icmp_code)
        return (
            unreach_verdict(family, r.icmp_code),
            r.responder,
            hop,
            f"ICMP {name} from {r.responder} (hop {hop})",
        )


def _address(line: _Line, ttl: int) -> str | None:
    """Who answered at ``ttl`` with time-exceeded: the router at that hop."""
    for p in line.replies(ttl):
        if p.reply.kind is ReplyKind.TIME_EXCEEDED:
            return p.reply.responder
    return None


def _label(r: Reply, family: int) -> str:
    if r.kind is ReplyKind.UNREACH:
        return "prohibited" if is_prohibited(family, r.icmp_code) else "unreachable"
    return _LABEL[r.kind]


def _rows(line: _Line, o: TraceOptions) -> list[Hop]:
    terminal = line.terminal_ttl
    last = terminal if terminal is not None else min(line.last_answered + 1, max(line.probes, default=0))
    family = 6 if ":" in line.target else 4
    rows = []
    for ttl in range(1, last + 1):
        answered = line.replies(ttl)
        sent = len(line.probes.get(ttl, []))
        if not answered:
            rows.append(Hop(ttl=ttl, sent=sent))
            continue
        best = min(answered, key=lambda p: p.rtt)
        r = best.reply
        icmp = None
        if r.icmp_type is not None and r.kind is not ReplyKind.ECHO_REPLY:
            icmp = Icmp(r.icmp_type, r.icmp_code, icmp_name(family, r.icmp_type, r.icmp_code))
        rows.append(
            Hop(
                ttl=ttl,
                address=r.responder,
                reply=_label(r, family),
                rtt_ms=round(best.rtt * 1000, 3),
                hop=r.hop,
                answered=len(answered),
                sent=sent,
                icmp=icmp,
                addresses=sorted({p.reply.responder for p in answered}),
            )
        )
    return rows


def _terminal_reply(line: _Line) -> Reply | None:
    """The first reply that ended the line (SYN-ACK, RST, unreachable, echo reply)."""
    terminal = line.terminal_ttl
    if terminal is None:
        return None
    return next(p.reply for p in line.replies(terminal) if p.reply.kind in _TERMINAL)


def _reached(line: _Line) -> bool:
    """Did the line's packets reach the destination itself? A RST forged in the path claims
    the destination's address but comes from a nearer hop than the TTL it answered."""
    r = _terminal_reply(line)
    return r is not None and r.responder == line.target and r.hop >= line.terminal_ttl


def _destination_hop(main: _Line, control: _Line | None) -> int | None:
    """The destination's hop: the TTL at which it first answered on either line."""
    return min((ln.terminal_ttl for ln in (main, control) if ln is not None and _reached(ln)), default=None)


def _control_summary(line: _Line, o: TraceOptions) -> ControlTrace:
    reached = _reached(line)
    return ControlTrace(
        kind=line.kind,
        port=line.port,
        hops=_rows(line, o),
        reached_destination=reached,
        last_hop=line.last_answered or None,
        furthest_hop=line.terminal_ttl if reached else line.last_answered,
    )


@dataclass(slots=True)
class Hop:
    """One TTL of a trace: who answered (the fastest of its probes), with what, and how often."""

    ttl: int
    address: str | None = None
    reply: str | None = None  # time-exceeded, syn-ack, rst, echo-reply, prohibited, unreachable
    rtt_ms: float | None = None
    hop: int | None = None  # the responder's hop, inferred from the reply's TTL
    answered: int = 0
    sent: int = 0
    icmp: Icmp | None = None
    addresses: list[str] = field(default_factory=list)  # every responder at this TTL


@dataclass(slots=True)
class ControlTrace:
    """The control trace (ICMP echo or another TCP port) that ran beside the main one."""

    kind: str  # "icmp" or "tcp"
    port: int | None
    hops: list[Hop]
    reached_destination: bool
    last_hop: int | None
    furthest_hop: int


@dataclass
class TraceResult:
    host: str
    address: str
    port: int
    source: str
    hops: list[Hop]
    verdict: Verdict
    drop_after_hop: int | None
    reached_destination: bool
    responder: str | None
    responder_hop: int | None
    destination_hop: int | None
    control: ControlTrace | None
    port_specific: bool | None
    reason: str
    complete: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = str(self.verdict)
        return d

    def hop_address(self, hop: int | None) -> str | None:
        """The address of the router at ``hop``, as it answered time-exceeded."""
        for row in self.hops:
            if hop is not None and row.ttl == hop and row.reply == "time-exceeded":
                return row.address
        return None


def trace_raw(
    targets: list[Target], options: TraceOptions, control: str | int | None = "icmp", recorder=None
) -> list[TraceResult]:
    """Trace every target concurrently over raw sockets. Raises PermissionDenied without
    CAP_NET_RAW; an address with no local route comes back as an ``unreachable`` result.
    ``recorder`` (a :class:`~mailpath.probes.capture.Recorder`): keep every packet sent and
    every reply to them, each named after its trace and TTL."""
    from mailpath.probes.machine import Together
    from mailpath.probes.rawsock import RawNet, drive

    shared = pacers(options.icmp_interval)
    runs, results = [], {}
    with RawNet({t.family for t in targets}, recorder=recorder) as net:
        for t in targets:
            source = route(t.address)
            if isinstance(source, int):
                results[t] = _local_result(t, source)
            else:
                runs.append(TraceRun(t, source, options, control, shared_pacers=shared))
        drive(Together(runs), net)
    for run in runs if recorder is not None else []:
        run.annotate(recorder)
    results.update({run.target: run.result() for run in runs})
    return [results[t] for t in targets]


def _local_result(t: Target, err: int) -> TraceResult:
    verdict, why = local_verdict(err)
    return TraceResult(
        host=t.host,
        address=t.address,
        port=t.port,
        source="",
        hops=[],
        verdict=verdict,
        drop_after_hop=0 if verdict is Verdict.FILTERED else None,
        reached_destination=False,
        responder=LOCAL,
        responder_hop=0,
        destination_hop=None,
        control=None,
        port_specific=None,
        reason=why,
        complete=True,
    )
