"""What a capture shows of connection attempts to mail ports: pure, fed one datagram at a time.

``mailpath pcap`` reads a capture taken elsewhere (tcpdump on the failing host, a firewall's
mirror port) and hands each IP datagram to :class:`Flows`. Every SYN to a mail port opens an
*attempt* (client address and port, server address and port); the replies are tied to it the
way the live probes tie theirs (``classify.read_reply``: the flow and the sequence number a
SYN-ACK, a RST or an ICMP error answers) and its verdict is decided by the same function as a
live probe's (``classify.judge``), with the same facts about the server's distance
(``classify.PathFacts``: a SYN-ACK, an ICMP error or an echo reply from the server gives its
hop; a TTL-limited SYN that expired shows it lies further). Hops count from where the capture
was taken. What the capture lacks to place a RST is said in the attempt's ``limitations``.

When the handshake completes and the conversation is clear text, :class:`Smtp` follows it
(``smtpwire.ReplyReader`` parses the server's replies) far enough to say where it stopped: no
greeting, a refusal at some command, STARTTLS and then no TLS handshake or a TLS alert, a
reset (and whether that RST was forged in the path, by the same hop rule).

Memory is bounded whatever the capture's size: at most ``Limits.table`` attempts are followed
at once (the least recently active is closed first), an attempt idle for ``Limits.idle``
seconds of capture time is closed, a conversation keeps at most a line of text and a few
segments that came early per direction (a message's body is only scanned for its end), and
past ``Limits.listed`` attempts the rest are counted by verdict, not listed.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from mailpath.probes import wire
from mailpath.probes.classify import PathFacts, Reply, ReplyKind, Verdict, infer_hop, judge, read_reply
from mailpath.probes.smtpwire import ProtocolError, ReplyReader

DEFAULT_PORTS = (25, 465, 587)
IMPLICIT_TLS_PORTS = (465,)
_MAX_SEQS = 64  # sequence numbers of SYNs remembered per attempt
_MAX_PENDING = 16  # out-of-order segments held per direction
_LATE = 3.5  # a capture that ends sooner than this after a SYN may miss its answer (live: min_wait)


@dataclass
class Limits:
    table: int = 16384  # attempts followed at once
    idle: float = 300.0  # seconds of capture time without a packet before an attempt is closed
    listed: int = 100_000  # attempts reported one by one; past it only counted


# -- the SMTP conversation -----------------------------------------------------------------------

_ALERTS = {
    0: "close notify",
    10: "unexpected message",
    20: "bad record MAC",
    40: "handshake failure",
    42: "bad certificate",
    43: "unsupported certificate",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    47: "illegal parameter",
    48: "unknown CA",
    49: "access denied",
    50: "decode error",
    51: "decrypt error",
    70: "protocol version",
    71: "insufficient security",
    80: "internal error",
    86: "inappropriate fallback",
    90: "user canceled",
    109: "missing extension",
    110: "unsupported extension",
    112: "unrecognized name",
    116: "certificate required",
    120: "no application protocol",
}

# where a conversation stopped -> whether that is a problem
STOPS = {
    "no-greeting": True,
    "greeting": True,
    "ehlo": True,
    "starttls": True,
    "tls-handshake": True,
    "tls": False,  # the handshake went on: the rest is encrypted
    "auth": True,
    "mail": True,
    "rcpt": True,
    "data": True,
    "delivered": False,
    "quit": False,
    "closed": True,
    "incomplete": False,
    "unreadable": False,
}


@dataclass
class Stop:
    code: str
    detail: str


class _Stream:
    """One direction's bytes in order, from segments that may repeat, overlap or come early."""

    __slots__ = ("gap", "next", "pending", "retransmissions")

    def __init__(self, isn: int) -> None:
        self.next = (isn + 1) & 0xFFFFFFFF
        self.pending: dict[int, bytes] = {}
        self.retransmissions = 0
        self.gap = False  # the capture misses bytes: what follows cannot be read

    def add(self, seq: int, data: bytes) -> bytes:
        """The bytes that now follow in order (maybe none)."""
        offset = (seq - self.next) & 0xFFFFFFFF
        if offset >= 0x80000000:  # before what we have: a retransmission, maybe with new bytes
            back = 0x100000000 - offset
            if back >= len(data):
                self.retransmissions += 1
                return b""
            data, offset = data[back:], 0
        if offset:
            if self.gap:
                return b""
            if len(self.pending) >= _MAX_PENDING:
                self.gap = True
                self.pending.clear()
                return b""
            self.pending[seq] = data
            return b""
        out = data
        self.next = (self.next + len(data)) & 0xFFFFFFFF
        while self.pending:
            more = self.pending.pop(self.next, None)
            if more is None:
                break
            out += more
            self.next = (self.next + len(more)) & 0xFFFFFFFF
        return out


def _tls_record(data: bytes) -> tuple[int, int] | None:
    """(content type, first byte of its body) of a TLS record, or None if it is not one."""
    if len(data) >= 6 and data[0] in (20, 21, 22, 23) and data[1] == 3:
        return data[0], data[5]
    return None


@dataclass
class Smtp:
    """Follows a clear-text SMTP conversation (and the start of its TLS) from both streams."""

    implicit_tls: bool = False
    greeting: str | None = None
    tls: str | None = None  # "implicit" or "starttls" once TLS began
    stop: Stop | None = None
    last_command: str | None = None
    last_reply: str | None = None
    server_bytes: int = 0
    client_bytes: int = 0
    _reader: ReplyReader = field(default_factory=ReplyReader)
    _pending: list[str] = field(default_factory=list)  # commands awaiting a reply
    _client: bytes = b""  # a client line not yet complete
    _in_data: bool = False  # the client sends the message: lines are not commands
    _tail: bytes = b""  # the message's last bytes, where its end (CRLF.CRLF) may begin
    _auth: bool = False  # the client answers an AUTH challenge: lines are not commands
    _tls_wait: bool = False  # STARTTLS accepted (or implicit TLS): the handshake is next
    _client_hello: bool = False
    _server_hello: bool = False
    _mode_known: bool = False

    @property
    def done(self) -> bool:
        return self.stop is not None

    def _stop(self, code: str, detail: str) -> None:
        if self.stop is None:
            self.stop = Stop(code, detail)

    def server(self, data: bytes) -> None:
        if self.done or not data:
            return
        self.server_bytes += len(data)
        if not self._mode_known:
            self._mode_known = True
            if _tls_record(data) is not None:
                self.tls, self._tls_wait = "implicit", True
        if self._tls_wait:
            self._server_tls(data)
            return
        self._reader.feed(data)
        try:
            while not self.done and (reply := self._reader.next_reply()) is not None:
                self._reply(reply)
        except ProtocolError as e:
            self._stop("unreadable", f"the server does not speak SMTP here: {e}")

    def client(self, data: bytes) -> None:
        if self.done or not data:
            return
        self.client_bytes += len(data)
        if not self._mode_known:
            self._mode_known = True
            if _tls_record(data) is not None:
                self.tls, self._tls_wait = "implicit", True
        if self._tls_wait:
            record = _tls_record(data)
            if not self._client_hello and record is not None and record == (22, 1):
                self._client_hello = True
            elif not self._client_hello:
                self._stop("tls-handshake", "the client did not start TLS: it went on in clear text")
            return
        if self._in_data:
            data = self._body(data)
            if not data:
                return
        self._client += data
        while not self.done and (end := self._client.find(b"\n")) != -1:
            line = self._client[:end].rstrip(b"\r").decode("utf-8", "replace")
            self._client = self._client[end + 1 :]
            self._line(line)
            if self._in_data and self._client:  # the message follows the DATA line
                rest, self._client = self._client, b""
                self.client(rest)
                return
            if self._tls_wait:  # the handshake follows in the same segment (pipelined)
                rest, self._client = self._client, b""
                if rest:
                    self.client(rest)
                return
        if len(self._client) > 4096:
            self._client = self._client[-4096:]

    def _body(self, data: bytes) -> bytes:
        """Scan the message for its end; what follows it (the next commands), if any."""
        buf = self._tail + data
        end = buf.find(b"\r\n.\r\n")
        if end == -1:
            self._tail = buf[-4:]
            return b""
        self._in_data, self._tail = False, b""
        self._pending.append(".")
        return buf[end + 5 :]

    def _line(self, line: str) -> None:
        if self._auth:
            self._auth = False
            return
        verb = line.split(" ", 1)[0].upper()
        if not verb:
            return
        self.last_command = "AUTH " + line.split()[1] if verb == "AUTH" and len(line.split()) > 1 else verb
        self._pending.append(verb)

    def _reply(self, reply) -> None:
        self.last_reply = str(reply)
        if self.greeting is None:
            self.greeting = str(reply)
            if reply.code >= 400:
                kind = "refuses" if reply.code >= 500 else "defers (try later)"
                self._stop("greeting", f"the server {kind} at the greeting: {reply}")
            return
        if not self._pending:
            if reply.code == 421:
                self._stop("closed", f"the server closed the session: {reply}")
            return
        verb = self._pending.pop(0)
        code = reply.code
        if verb in ("EHLO", "HELO", "LHLO"):
            if code >= 400:
                self._stop("ehlo", f"{verb} answered {reply}")
        elif verb == "STARTTLS":
            if code == 220:
                self.tls, self._tls_wait = "starttls", True
            else:
                self._stop("starttls", f"STARTTLS answered {reply}")
        elif verb == "AUTH":
            if code == 334:
                self._auth = True
                self._pending.insert(0, "AUTH")
            elif code >= 400:
                self._stop("auth", f"{self.last_command or 'AUTH'} answered {reply}")
        elif verb == "MAIL":
            if code >= 400:
                self._stop("mail", f"MAIL FROM answered {reply}")
        elif verb == "RCPT":
            if code >= 400:
                self._stop("rcpt", f"RCPT TO answered {reply}")
        elif verb == "DATA":
            if code == 354:
                self._in_data, self._tail = True, b"\r\n"  # the CRLF that ended the DATA line
            elif code >= 400:
                self._stop("data", f"DATA answered {reply}")
        elif verb == ".":
            if code >= 400:
                self._stop("data", f"the message was refused: {reply}")
            else:
                self._stop("delivered", f"the message was accepted: {reply}")
        elif verb == "QUIT":
            self._stop("quit", f"the client said QUIT: {reply}")

    def _server_tls(self, data: bytes) -> None:
        record = _tls_record(data)
        if record is None:
            if not self._server_hello:
                self._stop("tls-handshake", "the server answered TLS with something else (clear text?)")
            return
        kind, first = record
        if kind == 21:
            name = _ALERTS.get(
                first if len(data) < 7 else data[6], f"alert {data[6] if len(data) > 6 else '?'}"
            )
            self._stop("tls-handshake", f"the server ended the TLS handshake with an alert: {name}")
        elif kind == 22 and first == 2:
            self._server_hello = True
            what = "STARTTLS accepted, " if self.tls == "starttls" else ""
            self._stop("tls", f"{what}the TLS handshake went on (ServerHello): the rest is encrypted")

    def ended(self, how: str) -> None:
        """The connection ended (``how``: closed by whom, reset, the capture ended)."""
        if self.done:
            return
        if self._tls_wait and self.tls == "implicit" and not self.implicit_tls and not self.server_bytes:
            why = "the client then tried TLS (a ClientHello), unanswered too"
            self._stop("no-greeting", f"connected, but no greeting came; {why}; {how}")
        elif self._tls_wait:
            if not self._client_hello:
                why = "the client sent no TLS ClientHello"
            else:
                why = "the server never answered the ClientHello"
            start = "STARTTLS accepted" if self.tls == "starttls" else "implicit TLS"
            self._stop("tls-handshake", f"{start}, then no TLS handshake: {why}; {how}")
        elif self.greeting is None:
            self._stop("no-greeting", f"connected, but no greeting came; {how}")
        elif how.startswith("the capture ends"):
            after = f" after {self.last_command}" if self.last_command else ""
            self._stop("incomplete", f"{how}{after}")
        else:
            after = f" after {self.last_command} ({self.last_reply})" if self.last_command else ""
            self._stop("closed", f"{how}{after}")


# -- attempts ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Syn:
    ttl: int  # as captured
    frame: int


@dataclass
class Attempt:
    client: str
    client_port: int
    server: str
    port: int
    family: int
    first: float
    last: float  # the last packet of this attempt
    last_syn: float
    first_frame: int
    syns: dict[int, _Syn] = field(default_factory=dict)  # sequence number -> the SYN
    count: int = 0  # SYNs, retransmissions included
    retransmissions: int = 0  # SYNs that repeat an earlier SYN's sequence number
    reply: Reply | None = None  # the first SYN-ACK, RST or ICMP unreachable
    reply_frame: int | None = None
    reply_at: float | None = None
    expired: list[tuple[int, Reply]] = field(default_factory=list)  # (SYN TTL, time exceeded)
    synack_retransmissions: int = 0
    server_isn: int | None = None
    client_isn: int | None = None
    established: bool = False
    smtp: Smtp | None = None
    streams: dict[bool, _Stream] = field(default_factory=dict)  # from the server? -> stream
    ended: str | None = None  # how the connection ended
    reset: Reply | None = None  # a RST from the server's address after the handshake
    reset_frame: int | None = None
    evicted: bool = False
    truncated: bool = False  # payload cut by the snap length

    @property
    def key(self) -> tuple:
        return (self.client, self.client_port, self.server, self.port)


@dataclass
class Connection:
    """One attempt as reported (``mailpath pcap``): the probe's vocabulary, and the SMTP stop."""

    client: str
    client_port: int
    server: str
    port: int
    start: float  # the first SYN, seconds since the epoch
    verdict: Verdict
    reason: str
    responder: str | None
    responder_hop: int | None
    destination_hop: int | None
    icmp: tuple[int, int, str] | None
    rtt_ms: float | None
    syns: int
    retransmissions: int
    synack_retransmissions: int
    data_retransmissions: int
    first_frame: int
    reply_frame: int | None
    smtp: dict | None
    limitations: list[str]

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["verdict"] = str(self.verdict)
        d["icmp"] = dict(zip(("type", "code", "name"), self.icmp, strict=True)) if self.icmp else None
        return d


class Flows:
    """The attempts of a capture, datagram by datagram; :meth:`finish` at the end."""

    def __init__(self, ports: tuple[int, ...] | list[int] = DEFAULT_PORTS, limits: Limits | None = None):
        self.ports = frozenset(ports)
        self.limits = limits or Limits()
        self._table: OrderedDict[tuple, Attempt] = OrderedDict()
        self._done: list[Attempt] = []
        self.facts: dict[str, PathFacts] = {}
        self.unlisted: Counter[str] = Counter()  # verdicts of attempts past Limits.listed
        self.evicted = 0
        self.now = 0.0
        self.end: float | None = None
        self._tick = 0

    def __len__(self) -> int:
        return len(self._table)

    # -- feeding -----------------------------------------------------------------------

    def feed(self, dg: wire.Datagram, ts: float, frame: int, cut: bool = False) -> None:
        """One datagram of the capture, its timestamp and frame number (1-based); ``cut``: the
        capture kept only the start of the packet (its snap length)."""
        self.now = ts
        self._tick += 1
        if self._tick & 0xFFF == 0:
            self._expire(ts)
        if dg.proto == wire.PROTO_TCP:
            self._tcp(dg, ts, frame, cut)
        elif dg.proto in (wire.PROTO_ICMP, wire.PROTO_ICMPV6):
            self._icmp(dg, ts, frame)

    def _tcp(self, dg: wire.Datagram, ts: float, frame: int, cut: bool) -> None:
        data = dg.payload
        if len(data) < 20:
            return
        sport, dport = (data[0] << 8) | data[1], (data[2] << 8) | data[3]
        ports = self.ports
        if sport not in ports and dport not in ports:
            return
        tcp = wire.parse_tcp(dg, verify=False)
        if tcp is None:
            return
        flags = tcp.flags
        if flags & wire.SYN and not flags & wire.ACK:
            if dport in ports:
                self._syn(dg, tcp, ts, frame)
            return
        a = self._table.get((dg.src, sport, dg.dst, dport))
        if a is not None:
            self._from_client(a, dg, tcp, ts, cut)
            return
        a = self._table.get((dg.dst, dport, dg.src, sport))
        if a is not None:
            self._from_server(a, dg, tcp, ts, frame, cut)

    def _syn(self, dg: wire.Datagram, tcp: wire.TCPHeader, ts: float, frame: int) -> None:
        key = (dg.src, tcp.sport, dg.dst, tcp.dport)
        a = self._table.get(key)
        if a is not None and (a.established or a.ended or ts - a.last > self.limits.idle):
            self._close(key)  # the port is used again: a new attempt
            a = None
        if a is None:
            a = Attempt(dg.src, tcp.sport, dg.dst, tcp.dport, dg.family, ts, ts, ts, frame)
            self._table[key] = a
            self.facts.setdefault(dg.dst, PathFacts())
            if len(self._table) > self.limits.table:
                _, oldest = self._table.popitem(last=False)
                oldest.evicted = True
                self.evicted += 1
                self._finish(oldest)
        else:
            self._table.move_to_end(key)
        a.last = a.last_syn = ts
        a.count += 1
        if tcp.seq in a.syns:
            a.retransmissions += 1
        elif len(a.syns) < _MAX_SEQS:
            a.syns[tcp.seq] = _Syn(dg.ttl, frame)

    def _from_server(
        self, a: Attempt, dg: wire.Datagram, tcp: wire.TCPHeader, ts: float, frame: int, cut: bool
    ) -> None:
        self._table.move_to_end(a.key)
        a.last = ts
        flags = tcp.flags
        if flags & wire.SYN or (flags & wire.RST and a.server_isn is None):
            r = read_reply(dg, verify=False)
            if r is None or r.seq not in a.syns:
                return
            if a.reply is not None and r.kind is ReplyKind.SYN_ACK and a.reply.kind is ReplyKind.SYN_ACK:
                a.synack_retransmissions += 1
                return
            self._replied(a, r, ts, frame)
            if r.kind is ReplyKind.SYN_ACK and a.server_isn is None:
                a.server_isn, a.client_isn = tcp.seq, r.seq
            return
        if a.server_isn is None:
            return
        if flags & wire.RST:
            if a.reset is None:
                a.reset = read_reply(dg, verify=False) or Reply(ReplyKind.RST, dg.src, dg.ttl, None, 0)
                a.reset_frame = frame
            self._end(a, "reset by the server")
            return
        self._payload(a, True, dg, tcp, cut)
        if flags & wire.FIN:
            self._end(a, "the server closed the connection")

    def _from_client(self, a: Attempt, dg: wire.Datagram, tcp: wire.TCPHeader, ts: float, cut: bool) -> None:
        self._table.move_to_end(a.key)
        a.last = ts
        if a.server_isn is None:
            return
        flags = tcp.flags
        if flags & wire.ACK and not a.established and tcp.ack == (a.server_isn + 1) & 0xFFFFFFFF:
            a.established = True
        if flags & wire.RST:
            self._end(a, "reset by the client")
            return
        self._payload(a, False, dg, tcp, cut)
        if flags & wire.FIN:
            self._end(a, "the client closed the connection")

    def _payload(
        self, a: Attempt, from_server: bool, dg: wire.Datagram, tcp: wire.TCPHeader, cut: bool
    ) -> None:
        data = dg.payload[tcp.header_len :]
        if not data:
            return
        if a.smtp is None:
            a.smtp = Smtp(implicit_tls=a.port in IMPLICIT_TLS_PORTS)
        stream = a.streams.get(from_server)
        if stream is None:
            isn = a.server_isn if from_server else a.client_isn
            stream = a.streams[from_server] = _Stream(isn)
        if a.smtp.done:
            return  # its stop is known: the rest is not read
        if cut:
            a.truncated = True
        fresh = stream.add(tcp.seq, data)
        if stream.gap and not a.smtp.done:
            a.smtp._stop("unreadable", "the capture misses bytes of the conversation")
        if fresh:
            (a.smtp.server if from_server else a.smtp.client)(fresh)

    def _end(self, a: Attempt, how: str) -> None:
        if a.ended is None:
            a.ended = how
        if a.smtp is not None:
            a.smtp.ended(how)

    def _icmp(self, dg: wire.Datagram, ts: float, frame: int) -> None:
        r = read_reply(dg, verify=False)
        if r is None:
            return
        if r.kind is ReplyKind.ECHO_REPLY:
            facts = self.facts.get(r.responder)
            if facts is not None:
                facts.learn(r.responder, r)
            return
        f = r.flow
        if f.dport not in self.ports:
            return
        a = self._table.get((f.local, f.sport, f.remote, f.dport))
        if a is None or r.seq not in a.syns:
            return
        a.last = ts
        if r.kind is ReplyKind.TIME_EXCEEDED:
            a.expired.append((a.syns[r.seq].ttl, r))
            del a.expired[:-_MAX_SEQS]
            self.facts[a.server].learn_limited(a.server, a.syns[r.seq].ttl, r)
        elif a.reply is None:
            self._replied(a, r, ts, frame)

    def _replied(self, a: Attempt, r: Reply, ts: float, frame: int) -> None:
        facts = self.facts[a.server]
        facts.learn(a.server, r)
        facts.learn_limited(a.server, a.syns[r.seq].ttl, r)
        if a.reply is None:
            a.reply, a.reply_frame, a.reply_at = r, frame, ts

    # -- closing -------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        idle = self.limits.idle
        while self._table:
            key, a = next(iter(self._table.items()))
            if now - a.last <= idle:
                break
            self._close(key)

    def _close(self, key: tuple) -> None:
        a = self._table.pop(key)
        self._finish(a)

    def _finish(self, a: Attempt) -> None:
        if len(self._done) < self.limits.listed:
            self._done.append(a)
        else:
            self.unlisted[str(self.connection(a).verdict)] += 1

    def finish(self) -> list[Connection]:
        """Close every attempt still open (the capture ended) and report them all, in the
        order of their first SYN."""
        self.end = self.now
        for key in list(self._table):
            self._close(key)
        return sorted((self.connection(a) for a in self._done), key=lambda c: (c.start, c.first_frame))

    # -- the verdict ---------------------------------------------------------------------

    def connection(self, a: Attempt) -> Connection:
        facts = self.facts.get(a.server) or PathFacts()
        notes: list[str] = []
        r = a.reply
        if r is None and a.expired:
            top = max(s.ttl for s in a.syns.values())
            loops = [rep for ttl, rep in a.expired if ttl >= top]
            r = loops[0] if loops else None
        base = dict(
            client=a.client,
            client_port=a.client_port,
            server=a.server,
            port=a.port,
            start=a.first,
            syns=a.count,
            retransmissions=a.retransmissions,
            synack_retransmissions=a.synack_retransmissions,
            data_retransmissions=sum(s.retransmissions for s in a.streams.values()),
            first_frame=a.first_frame,
        )
        if a.evicted:
            notes.append("closed early: more connections at once than this reading follows")
        if r is None:
            return Connection(
                **base,
                verdict=Verdict.FILTERED,
                reason=self._silence(a, notes),
                responder=None,
                responder_hop=None,
                destination_hop=facts.dest_hop,
                icmp=None,
                rtt_ms=None,
                reply_frame=None,
                smtp=None,
                limitations=notes,
            )
        missing = (
            f"the capture holds no SYN-ACK, ICMP error or echo reply from {a.server}, "
            "nor an expired TTL-limited SYN"
        )
        j = judge(r, a.server, facts, local=r.responder == a.client, no_origin=missing)
        if r.kind is ReplyKind.RST and j.verdict is Verdict.REFUSED and j.destination_hop is None:
            notes.append(
                f"whether the RST came from {a.server} itself cannot be told: {missing} "
                "to compare its hop with"
            )
        rtt = None
        if a.reply_at is not None and r is a.reply:
            rtt = round((a.reply_at - a.first) * 1000, 3)
        paths = sorted({(ttl, rep.responder) for ttl, rep in a.expired})
        reason = j.reason
        if paths and r is a.reply:
            last = max(paths)
            reason += f"; the path answered up to TTL {last[0]} ({last[1]})"
        if a.truncated:
            notes.append(
                "the capture cut packets short (its snap length): the conversation is not read whole"
            )
        smtp = self._smtp(a, facts)
        return Connection(
            **base,
            verdict=j.verdict,
            reason=reason,
            responder=r.responder,
            responder_hop=j.responder_hop,
            destination_hop=j.destination_hop,
            icmp=j.icmp,
            rtt_ms=rtt,
            reply_frame=a.reply_frame if r is a.reply else None,
            smtp=smtp,
            limitations=notes,
        )

    def _silence(self, a: Attempt, notes: list[str]) -> str:
        n = a.count
        span = a.last_syn - a.first
        why = f"no reply to {n} SYN{'s' if n > 1 else ''} over {span:.1f} s"
        if a.expired:
            ttl, who = max((ttl, rep.responder) for ttl, rep in a.expired)
            why += f"; SYNs with a TTL up to {ttl} expired on the way (the last at {who}), no more answered"
        after = (self.end if self.end is not None else self.now) - a.last_syn
        if after < _LATE and not a.evicted:
            notes.append(
                f"the capture ends {after:.1f} s after the last SYN: a late answer (a host-unreachable "
                "comes about 3 s late) may be missing"
            )
        return why

    def _smtp(self, a: Attempt, facts: PathFacts) -> dict | None:
        s = a.smtp
        if a.reply is None or a.reply.kind is not ReplyKind.SYN_ACK:
            return None
        if s is None and not a.established:
            return None  # a half-open probe (the client never completed the handshake)
        if s is None:
            s = Smtp(implicit_tls=a.port in IMPLICIT_TLS_PORTS)
        if not s.done:
            end = self.end if self.end is not None else self.now
            if a.ended is not None:
                s.ended(a.ended)
            elif a.evicted:
                s.ended("no longer followed (too many connections at once)")
            elif s.greeting is None and not s.tls and end - (a.reply_at or a.first) < _LATE:
                s._stop(
                    "incomplete",
                    f"the capture ends {end - (a.reply_at or a.first):.1f} s after the handshake",
                )
            else:
                s.ended(f"the capture ends {end - a.last:.1f} s after its last packet")
        stop = s.stop or Stop("incomplete", "the conversation was still going")
        detail = stop.detail
        reset = None
        if a.reset is not None:
            hop = infer_hop(a.reset.ttl)
            if facts.dest_hop is not None and hop < facts.dest_hop:
                reset = "reset-in-path"
                detail += (
                    f" (the RST carrying {a.server} came from hop {hop}, but {a.server} is at hop "
                    f"{facts.dest_hop}: forged by a device in the path)"
                )
            else:
                reset = "reset-by-server"
        return {
            "stopped": stop.code,
            "problem": STOPS.get(stop.code, True) or reset == "reset-in-path",
            "detail": detail,
            "greeting": s.greeting,
            "last_command": s.last_command,
            "last_reply": s.last_reply,
            "tls": s.tls,
            "reset": reset,
            "reset_frame": a.reset_frame,
        }
