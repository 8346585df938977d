"""Packets as evidence: what the raw engines sent and what answered them, kept as a pcapng file
that Wireshark and tcpdump read (``--pcap FILE`` on probe, trace and diagnose).

A :class:`Recorder` is handed to the engines' I/O edge (``probes.rawsock.RawNet``), which calls
:meth:`Recorder.sent` for every packet it puts on the wire (the timestamp taken just before
the send) and :meth:`Recorder.heard` for every datagram it reads (the kernel's receive
timestamp). Only replies to packets this recorder saw sent are kept, matched as strictly as
the engines match them (flow and sequence number, ``classify.read_reply``): the raw sockets
see every TCP and ICMP packet of the host, and none of that traffic belongs in evidence.
Without a recorder the engines do nothing of this.

After the run each engine names its packets (:meth:`Recorder.label`: the finding evidence
``ref`` they back, e.g. ``probe:198.18.3.2:25`` or ``trace:198.18.3.2:25/ttl=2``) and the reply
that decided each verdict (:meth:`Recorder.decided`). :meth:`Recorder.write` sorts the packets by
time and writes them with scapy's pcapng writer, link type raw IP (LINKTYPE_RAW, 101), each
with a packet comment that names its ref, and returns the frame numbers of every ref. scapy is
imported only there.

IPv6 raw sockets never show the IP header (the kernel builds it on send and strips it on
receive), so the IPv6 header of every IPv6 packet is rebuilt from what the socket tells
(addresses, hop limit; traffic class and flow label 0). IPv4 packets are as sent and received.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mailpath.probes import wire
from mailpath.probes.classify import Flow, Reply, ReplyKind, read_reply

LINKTYPE_RAW = 101
DEFAULT_LIMIT = 1_000_000  # packets kept at most; past it they are counted, not kept

Key = tuple


def probe_ref(address: str, port: int) -> str:
    """The evidence ref of a probe (as findings name it, ``agent.correlate``)."""
    return f"probe:{address}:{port}"


def trace_ref(address: str, port: int, ttl: int) -> str:
    """The evidence ref of one TTL of a trace (as findings name it)."""
    return f"trace:{address}:{port}/ttl={ttl}"


def tcp_key(flow: Flow, seq: int) -> Key:
    """A SYN we sent, seen from our side, and so any reply to it."""
    return ("tcp", flow, seq)


def echo_key(local: str, remote: str, ident: int, seq: int) -> Key:
    """An ICMP echo request we sent, and so its reply or an error quoting it."""
    return ("echo", local, remote, ident, seq)


def _sent_key(dg: wire.Datagram) -> Key | None:
    if dg.proto == wire.PROTO_TCP:
        tcp = wire.parse_tcp(dg, verify=False)
        return None if tcp is None else tcp_key(Flow(dg.src, tcp.sport, dg.dst, tcp.dport), tcp.seq)
    echo = wire.ICMP6_ECHO if dg.family == 6 else wire.ICMP_ECHO
    if len(dg.payload) >= 8 and dg.payload[0] == echo:
        ident, seq = (dg.payload[4] << 8) | dg.payload[5], (dg.payload[6] << 8) | dg.payload[7]
        return echo_key(dg.src, dg.dst, ident, seq)
    return None


def reply_key(dg: wire.Datagram, r: Reply) -> Key:
    """The key of the packet of ours that ``r`` (read from ``dg``) answers."""
    if r.kind is ReplyKind.ECHO_REPLY:
        return echo_key(dg.dst, r.responder, r.ident, r.seq)
    f = r.flow
    if f.sport == 0 and f.dport == 0:  # an ICMP error quoting an echo request
        return echo_key(f.local, f.remote, r.ident, r.seq)
    return tcp_key(f, r.seq)


def datagram(packet: bytes) -> wire.Datagram | None:
    """An IPv4 or IPv6 packet as a Datagram (no checksum checks: the packet is ours or was
    already accepted)."""
    if not packet:
        return None
    if packet[0] >> 4 == 4:
        return wire.parse_ipv4(packet, verify=False)
    return wire.parse_ipv6(packet)


@dataclass(slots=True)
class Packet:
    ts: float  # seconds since the epoch
    data: bytes  # the whole IP packet
    outbound: bool
    key: Key
    reply: Reply | None = None  # inbound: what it says


@dataclass(frozen=True, slots=True)
class Written:
    """What :meth:`Recorder.write` wrote: the file, how many packets, and the frame numbers
    (1-based, as Wireshark and ``tcpdump -#`` number them) of every evidence ref."""

    path: str
    packets: int
    frames: dict[str, list[int]]
    dropped: int  # packets past the recorder's limit, not written

    def to_dict(self) -> dict:
        return {"path": self.path, "packets": self.packets, "frames": self.frames, "dropped": self.dropped}


@dataclass
class Recorder:
    """Keeps what the raw engines send and the replies to it, then writes them as pcapng.

    One recorder may serve several engines in turn (diagnose: the probes, then the traces).
    ``limit``: packets kept at most (memory is about 150 bytes each); later ones are counted
    in ``dropped``."""

    limit: int = DEFAULT_LIMIT
    packets: list[Packet] = field(default_factory=list)
    dropped: int = 0
    _sent: set[Key] = field(default_factory=set)
    _labels: dict[Key, list[tuple[str, str]]] = field(default_factory=dict)
    _decided: dict[Reply, list[tuple[str, str]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.packets)

    def _keep(self, packet: Packet) -> None:
        if len(self.packets) >= self.limit:
            self.dropped += 1
        else:
            self.packets.append(packet)

    # -- the I/O edge calls these ------------------------------------------------------

    def sent(self, ts: float, packet: bytes) -> None:
        """A packet (the whole IP packet) went on the wire at ``ts``."""
        dg = datagram(packet)
        key = _sent_key(dg) if dg is not None else None
        if key is None:
            return
        self._sent.add(key)
        self._keep(Packet(ts, packet, True, key))

    def heard(self, ts: float, packet: bytes, dg: wire.Datagram) -> None:
        """A datagram (``packet``: the whole IP packet) arrived at ``ts``; kept when it answers
        a packet this recorder saw sent."""
        r = read_reply(dg)
        if r is None:
            return
        key = reply_key(dg, r)
        if key in self._sent:
            self._keep(Packet(ts, packet, False, key, r))

    # -- the engines call these after the run ------------------------------------------

    def label(self, key: Key, ref: str, what: str) -> None:
        """The packet sent under ``key`` (and every reply to it) backs evidence ``ref``."""
        self._labels.setdefault(key, []).append((ref, what))

    def decided(self, reply: Reply, ref: str, text: str) -> None:
        """The first packet that reads as ``reply`` decided the verdict of ``ref``."""
        self._decided.setdefault(reply, []).append((ref, text))

    # -- the file ------------------------------------------------------------------------

    def frames(self) -> list[tuple[Packet, list[str]]]:
        """The packets in time order, each with its comments (the refs it backs)."""
        out, decided = [], set()
        for p in sorted(self.packets, key=lambda p: p.ts):
            labels = self._labels.get(p.key, [])
            if p.outbound:
                notes = [f"{ref}: {what}" for ref, what in labels]
            elif p.reply in self._decided and p.reply not in decided:
                decided.add(p.reply)
                notes = [f"{ref}: decides {text}" for ref, text in self._decided[p.reply]]
            else:
                notes = [f"{ref}: answers {what}" for ref, what in labels]
            out.append((p, notes))
        return out

    def write(self, path: str) -> Written:
        """Write the capture to ``path`` (pcapng; atomically: a reader never sees half a file).
        Raises OSError when the file cannot be written."""
        from scapy.packet import Raw
        from scapy.utils import PcapNgWriter

        frames: dict[str, list[int]] = {}
        part = f"{path}.part"
        writer = PcapNgWriter(part)
        try:
            writer.linktype = LINKTYPE_RAW
            writer.write_header(None)
            for n, (p, notes) in enumerate(self.frames(), 1):
                pkt = Raw(p.data)
                pkt.time = p.ts
                pkt.direction = 2 if p.outbound else 1  # pcapng epb_flags: outbound, inbound
                if notes:
                    pkt.comments = [n.encode() for n in notes]
                writer.write_packet(pkt)
                for ref in dict.fromkeys(note.split(": ", 1)[0] for note in notes):
                    frames.setdefault(ref, []).append(n)
        except BaseException:
            writer.close()
            os.unlink(part)
            raise
        writer.close()
        os.replace(part, path)
        return Written(path, len(self.packets), frames, self.dropped)
