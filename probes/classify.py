"""What a reply to a SYN means: the verdict vocabulary of DESIGN.md and the pure rules behind it.

Nothing here does I/O. ``read_reply`` turns a received datagram into a :class:`Reply` naming
the flow and the sequence number it answers; the probe engine then accepts it only if that
flow and sequence number are ones it really sent (strict matching, as nmap does).
:class:`PathFacts` gathers what replies say about how far an address is, and :func:`judge`
turns the reply that answered a SYN into a verdict with those facts. The live SYN engine and
the reading of captures (``mailpath pcap``) both decide through these, so a capture and a
probe of the same fault read alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from mailpath.probes import wire


class Verdict(StrEnum):
    OPEN = "open"
    REFUSED = "refused"
    RESET_IN_PATH = "reset-in-path"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    FILTERED = "filtered"


class ReplyKind(StrEnum):
    SYN_ACK = "syn-ack"
    RST = "rst"
    UNREACH = "unreach"  # ICMP destination unreachable, any code
    TIME_EXCEEDED = "time-exceeded"
    ECHO_REPLY = "echo-reply"


@dataclass(frozen=True, slots=True)
class Flow:
    """A probe's flow seen from our side: (local address, local port, remote address, remote port)."""

    local: str
    sport: int
    remote: str
    dport: int


@dataclass(frozen=True, slots=True)
class Reply:
    kind: ReplyKind
    responder: str  # source address of the reply
    ttl: int  # IP TTL / hop limit as received
    flow: Flow | None  # the probe flow it refers to (None for echo replies)
    seq: int  # the sequence number of ours it answers (echo: the echo seq)
    icmp_type: int | None = None
    icmp_code: int | None = None
    ident: int = 0  # echo identifier

    @property
    def hop(self) -> int:
        return infer_hop(self.ttl)


_INITIAL_TTLS = (64, 128, 255)


def infer_hop(ttl: int) -> int:
    """Hop distance of a responder from the TTL its packet arrived with (DESIGN.md).

    The first router is hop 1: a packet sent with the initial TTL and decremented by
    ``k`` routers left the responder at hop ``k + 1``.
    """
    initial = next((i for i in _INITIAL_TTLS if i >= ttl), 255)
    return initial - ttl + 1


def read_reply(dg: wire.Datagram, *, verify: bool = True) -> Reply | None:
    """Normalise a datagram into a Reply, or None if it cannot be a reply to one of our probes.
    ``verify=False`` (captures): checksums are not checked (see :mod:`mailpath.probes.wire`)."""
    if dg.proto == wire.PROTO_TCP:
        tcp = wire.parse_tcp(dg, verify=verify)
        if tcp is None:
            return None
        flow = Flow(dg.dst, tcp.dport, dg.src, tcp.sport)
        if tcp.flags & wire.RST:
            # RST to a SYN carries ACK with ack = seq + 1 (RFC 9293 3.10.7.1); a bare RST
            # cannot be tied to our probe, so it is not accepted as evidence.
            if not tcp.flags & wire.ACK:
                return None
            return Reply(ReplyKind.RST, dg.src, dg.ttl, flow, (tcp.ack - 1) & 0xFFFFFFFF)
        if tcp.flags & (wire.SYN | wire.ACK) == wire.SYN | wire.ACK:
            return Reply(ReplyKind.SYN_ACK, dg.src, dg.ttl, flow, (tcp.ack - 1) & 0xFFFFFFFF)
        return None
    if dg.proto not in (wire.PROTO_ICMP, wire.PROTO_ICMPV6):
        return None
    msg = wire.parse_icmp(dg, verify=verify)
    if msg is None:
        return None
    if msg.quote is None:
        return Reply(
            ReplyKind.ECHO_REPLY,
            dg.src,
            dg.ttl,
            None,
            msg.seq,
            msg.type,
            msg.code,
            ident=msg.ident,
        )
    q = msg.quote
    # The quoted packet must be ours: sent from the address this error came back to.
    if q.src != dg.dst:
        return None
    v6 = dg.family == 6
    echo = (wire.PROTO_ICMPV6, wire.ICMP6_ECHO) if v6 else (wire.PROTO_ICMP, wire.ICMP_ECHO)
    if q.proto == wire.PROTO_TCP:
        flow, seq, ident = Flow(q.src, q.sport, q.dst, q.dport), q.seq, 0
    elif (q.proto, q.sport >> 8) == echo:
        # A quoted echo request (a traceroute control): its first 8 bytes are type, code,
        # checksum, identifier and sequence, so the identifier and sequence sit in ``q.seq``.
        flow, seq, ident = Flow(q.src, 0, q.dst, 0), q.seq & 0xFFFF, q.seq >> 16
    else:
        return None
    unreach = wire.ICMP6_UNREACH if v6 else wire.ICMP_UNREACH
    kind = ReplyKind.UNREACH if msg.type == unreach else ReplyKind.TIME_EXCEEDED
    return Reply(kind, dg.src, dg.ttl, flow, seq, msg.type, msg.code, ident=ident)


# ICMP destination-unreachable codes (REFERENCE.md). Admin-prohibited and, for TCP,
# port/protocol unreachable are a firewall's REJECT; the rest say routing failed.
_REJECT_CODES = {4: {2, 3, 9, 10, 13}, 6: {1, 4, 5, 6}}
_ICMP_NAMES = {
    4: {
        0: "net unreachable",
        1: "host unreachable",
        2: "protocol unreachable",
        3: "port unreachable",
        4: "fragmentation needed",
        5: "source route failed",
        6: "net unknown",
        7: "host unknown",
        9: "net administratively prohibited",
        10: "host administratively prohibited",
        11: "net unreachable for TOS",
        12: "host unreachable for TOS",
        13: "communication administratively prohibited",
    },
    6: {
        0: "no route to destination",
        1: "administratively prohibited",
        2: "beyond scope of source address",
        3: "address unreachable",
        4: "port unreachable",
        5: "source address failed ingress/egress policy",
        6: "reject route to destination",
    },
}


def unreach_verdict(family: int, code: int) -> Verdict:
    """Verdict for an ICMP destination-unreachable with this code answering a TCP SYN."""
    return Verdict.REJECTED if code in _REJECT_CODES[family] else Verdict.UNREACHABLE


def icmp_name(family: int, icmp_type: int, code: int) -> str:
    """Human name of an ICMP error, as traceroute and nmap --reason print it."""
    if icmp_type == (wire.ICMP6_TIME_EXCEEDED if family == 6 else wire.ICMP_TIME_EXCEEDED):
        return "time exceeded"
    return _ICMP_NAMES[family].get(code, f"unreachable code {code}")


def is_prohibited(family: int, code: int) -> bool:
    """Administratively prohibited (traceroute's ``!X``), as opposed to other unreachables."""
    return code in ({9, 10, 13} if family == 4 else {1})


# -- from a reply to a verdict ------------------------------------------------------------------


@dataclass(slots=True)
class PathFacts:
    """What replies tell about one address's distance, from this side (hops as in
    :func:`infer_hop`): its own hop, and what TTL-limited SYNs to it drew."""

    dest_hop: int | None = None  # from a reply that certainly came from the address itself
    beyond: int = 0  # a SYN with this TTL expired on the way: the address is further away
    confirmed: set[int] = field(default_factory=set)  # TTLs whose SYN drew a RST anyway

    def learn(self, address: str, reply: Reply) -> None:
        """Record the address's hop when ``reply`` certainly came from it: a SYN-ACK, an ICMP
        error it sent itself, an echo reply (a RST may be forged in its name)."""
        if reply.responder != address:
            return
        if reply.kind in (ReplyKind.SYN_ACK, ReplyKind.UNREACH, ReplyKind.ECHO_REPLY):
            self.dest_hop = max(self.dest_hop or 0, reply.hop)

    def learn_limited(self, address: str, ttl: int, reply: Reply) -> None:
        """What the reply to a SYN sent with TTL ``ttl`` says: expired on the way (the address
        lies beyond), a RST (from hop ``ttl`` or nearer), or a SYN-ACK (the address itself)."""
        if reply.kind is ReplyKind.TIME_EXCEEDED:
            self.beyond = max(self.beyond, ttl)
        elif reply.kind is ReplyKind.RST:
            self.confirmed.add(ttl)
        elif reply.kind is ReplyKind.SYN_ACK:
            self.learn(address, reply)


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str
    responder_hop: int  # 0: this host
    destination_hop: int | None
    icmp: tuple[int, int, str] | None = None  # type, code, name


NO_ORIGIN = "no echo reply, no answer to a TTL-limited SYN"


def judge(
    reply: Reply, address: str, facts: PathFacts, *, local: bool = False, no_origin: str = NO_ORIGIN
) -> Judgement:
    """The verdict of a SYN to ``address`` that ``reply`` answered (DESIGN.md's vocabulary).

    ``local``: the reply came from this host (its own firewall or routing), hop 0. A RST's
    origin is placed by its hop against the destination's (``facts``); when nothing places
    it, the verdict is refused and the reason says so, naming what was missing
    (``no_origin``)."""
    hop = 0 if local else reply.hop
    dest = facts.dest_hop
    if reply.kind is ReplyKind.SYN_ACK:
        why = f"SYN-ACK from {reply.responder} (hop {hop})"
        if dest is not None and hop < dest:
            why = (
                f"SYN-ACK carrying {reply.responder} came from hop {hop}, but {reply.responder} is at hop "
                f"{dest}: a device in the path answered for it (an intercepting or SYN proxy)"
            )
        return Judgement(Verdict.OPEN, why, hop, dest)
    if reply.kind is ReplyKind.RST:
        return _rst(address, hop, facts, no_origin)
    family = 6 if ":" in reply.responder else 4
    name = icmp_name(family, reply.icmp_type, reply.icmp_code)
    icmp = (reply.icmp_type, reply.icmp_code, name)
    where = "this host" if hop == 0 else f"{reply.responder} (hop {hop})"
    if reply.kind is ReplyKind.TIME_EXCEEDED:
        why = f"ICMP time exceeded from {where}: a routing loop"
        return Judgement(Verdict.UNREACHABLE, why, hop, dest, icmp)
    return Judgement(unreach_verdict(family, reply.icmp_code), f"ICMP {name} from {where}", hop, dest, icmp)


def _rst(address: str, hop: int, facts: PathFacts, no_origin: str) -> Judgement:
    dest = facts.dest_hop
    if dest is not None:
        if hop < dest:
            why = (
                f"RST carrying {address} came from hop {hop}, but {address} is at hop "
                f"{dest}: forged by a device in the path"
            )
            return Judgement(Verdict.RESET_IN_PATH, why, hop, dest)
        why = f"RST from {address} itself (hop {hop}): nothing listens"
        return Judgement(Verdict.REFUSED, why, hop, dest)
    if facts.beyond >= hop:
        why = (
            f"RST carrying {address} came from hop {hop}, but a SYN with TTL {hop} "
            f"expired there: {address} is further away, the RST was forged in the path"
        )
        return Judgement(Verdict.RESET_IN_PATH, why, hop, None)
    if hop in facts.confirmed:
        why = f"RST from {address} itself (hop {hop}, confirmed by a SYN with TTL {hop}): nothing listens"
        return Judgement(Verdict.REFUSED, why, hop, hop)
    why = f"RST from hop {hop}; its origin could not be confirmed ({no_origin})"
    return Judgement(Verdict.REFUSED, why, hop, None)
