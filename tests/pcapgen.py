"""Synthetic captures: packets built with the project's wire builders, written as classic pcap
files of any link type (Ethernet with VLAN tags, Linux cooked SLL and SLL2, raw IP, loopback).

Used by the unit tests of ``mailpath pcap`` and by ``bench.pcap_vs_tshark`` to generate large
files fast. Checksums of TCP segments that carry a payload are left as the builder makes them
(computed without the payload): captures taken on the sending host look like that too, and
the capture reader does not check them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from mailpath.probes import wire

ETHERNET, RAW, SLL, SLL2, NULL, IPV4, IPV6 = 1, 101, 113, 276, 0, 228, 229


def tcp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    *,
    ack: int = 0,
    flags: int = wire.SYN,
    ttl: int = 64,
    payload: bytes = b"",
) -> bytes:
    """A whole IP packet (IPv4 or IPv6 by the address) carrying one TCP segment."""
    segment = wire.tcp_segment(src, dst, sport, dport, seq, ack=ack, flags=flags, mss=None) + payload
    if ":" in src:
        return wire.ipv6_packet(src, dst, wire.PROTO_TCP, segment, hop_limit=ttl)
    return wire.ipv4_packet(src, dst, wire.PROTO_TCP, segment, ttl=ttl, ident=seq & 0xFFFF)


def icmp_error(router: str, quoted: bytes, *, kind: int, code: int, ttl: int = 64) -> bytes:
    """An ICMP (or ICMPv6) error from ``router`` quoting the start of ``quoted`` (an IP packet
    we sent) back to its source."""
    v6 = ":" in router
    if v6:
        src = wire.parse_ipv6(quoted).src
        body = struct.pack("!BBHI", kind, code, 0, 0) + quoted[:1232]
        csum = wire.checksum(wire.pseudo_header(router, src, wire.PROTO_ICMPV6, len(body)) + body)
        body = body[:2] + struct.pack("!H", csum) + body[4:]
        return wire.ipv6_packet(router, src, wire.PROTO_ICMPV6, body, hop_limit=ttl)
    src = wire.parse_ipv4(quoted).src
    body = struct.pack("!BBHI", kind, code, 0, 0) + quoted[:28]
    body = body[:2] + struct.pack("!H", wire.checksum(body)) + body[4:]
    return wire.ipv4_packet(router, src, wire.PROTO_ICMP, body, ttl=ttl, ident=7)


def echo_reply(src: str, dst: str, ident: int, seq: int, *, ttl: int = 64) -> bytes:
    v6 = ":" in src
    body = struct.pack("!BBHHH", wire.ICMP6_ECHO_REPLY if v6 else wire.ICMP_ECHO_REPLY, 0, 0, ident, seq)
    if v6:
        csum = wire.checksum(wire.pseudo_header(src, dst, wire.PROTO_ICMPV6, len(body)) + body)
        body = body[:2] + struct.pack("!H", csum) + body[4:]
        return wire.ipv6_packet(src, dst, wire.PROTO_ICMPV6, body, hop_limit=ttl)
    body = body[:2] + struct.pack("!H", wire.checksum(body)) + body[4:]
    return wire.ipv4_packet(src, dst, wire.PROTO_ICMP, body, ttl=ttl, ident=9)


def frame(linktype: int, packet: bytes) -> bytes:
    """``packet`` (an IP packet) framed for a link type."""
    ethertype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
    if linktype == ETHERNET:  # with one 802.1Q tag, as a trunk port's capture has
        return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + struct.pack("!HHH", 0x8100, 42, ethertype) + packet
    if linktype == SLL:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", ethertype) + packet
    if linktype == SLL2:
        return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0") + packet
    if linktype == NULL:
        return struct.pack("=I", 30 if ethertype == 0x86DD else 2) + packet
    return packet


def pcap_header(linktype: int, snaplen: int = 262144) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(ts: float, data: bytes, snaplen: int = 262144) -> bytes:
    sec = int(ts)
    kept = data[:snaplen]
    return struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(kept), len(data)) + kept


def write_pcap(
    path, packets: Iterable[tuple[float, bytes]], linktype: int = RAW, snaplen: int = 262144
) -> None:
    """Write (timestamp, IP packet) pairs as a classic pcap file of ``linktype``."""
    with open(path, "wb") as f:
        f.write(pcap_header(linktype, snaplen))
        for ts, packet in packets:
            f.write(pcap_record(ts, frame(linktype, packet), snaplen))


class Session:
    """One TCP connection's packets, seen from the client: handshake, data each way, the end."""

    def __init__(self, client: str, cport: int, server: str, port: int, *, hops: int = 3, t: float = 1000.0):
        self.c, self.cp, self.s, self.p = client, cport, server, port
        self.ttl = 65 - hops  # a Linux server ``hops`` away (the first router is hop 1)
        self.cseq, self.sseq = 1000 + cport, 5000 + cport
        self.t = t
        self.packets: list[tuple[float, bytes]] = []

    def _add(self, packet: bytes, dt: float = 0.001) -> None:
        self.t += dt
        self.packets.append((self.t, packet))

    def syn(self) -> Session:
        self._add(tcp(self.c, self.s, self.cp, self.p, self.cseq))
        return self

    def handshake(self) -> Session:
        self.syn()
        self._add(
            tcp(
                self.s,
                self.c,
                self.p,
                self.cp,
                self.sseq,
                ack=self.cseq + 1,
                flags=wire.SYN | wire.ACK,
                ttl=self.ttl,
            )
        )
        self.cseq, self.sseq = self.cseq + 1, self.sseq + 1
        self._add(tcp(self.c, self.s, self.cp, self.p, self.cseq, ack=self.sseq, flags=wire.ACK))
        return self

    def server(self, data: bytes) -> Session:
        self._add(
            tcp(
                self.s,
                self.c,
                self.p,
                self.cp,
                self.sseq,
                ack=self.cseq,
                flags=wire.ACK | wire.PSH,
                ttl=self.ttl,
                payload=data,
            )
        )
        self.sseq += len(data)
        return self

    def client(self, data: bytes) -> Session:
        self._add(
            tcp(
                self.c,
                self.s,
                self.cp,
                self.p,
                self.cseq,
                ack=self.sseq,
                flags=wire.ACK | wire.PSH,
                payload=data,
            )
        )
        self.cseq += len(data)
        return self

    def rst_from_server(self, ttl: int | None = None) -> Session:
        self._add(
            tcp(
                self.s,
                self.c,
                self.p,
                self.cp,
                self.sseq,
                ack=self.cseq,
                flags=wire.RST | wire.ACK,
                ttl=ttl or self.ttl,
            )
        )
        return self

    def fin_from_client(self) -> Session:
        self._add(tcp(self.c, self.s, self.cp, self.p, self.cseq, ack=self.sseq, flags=wire.FIN | wire.ACK))
        return self
