"""Wire formats: build the few packets mailpath sends, parse what comes back.

Pure and stdlib-only (no scapy), so the classifier can be fuzzed without root. A SYN is
24 bytes and an echo 16; building them by hand costs a few microseconds where a scapy
``Packet`` costs a hundred, which matters when a batch sends tens of thousands.
scapy is the independent oracle for this module in the tests.

Parsing is defensive: anything truncated, malformed or with a wrong checksum yields
``None`` rather than an exception, because replies come from the network, not from us.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_ICMPV6 = 58

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

ICMP_ECHO_REPLY, ICMP_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
ICMP6_UNREACH, ICMP6_TIME_EXCEEDED, ICMP6_ECHO, ICMP6_ECHO_REPLY = 1, 3, 128, 129

_MSS_OPTION = b"\x02\x04"


def checksum(data: bytes) -> int:
    """RFC 1071 internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packed(address: str) -> bytes:
    return ip_address(address).packed


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    """The IPv4 or IPv6 pseudo-header that TCP and ICMPv6 checksums cover."""
    s, d = _packed(src), _packed(dst)
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, proto, length)
    return s + d + struct.pack("!I3xB", length, proto)


def tcp_segment(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    *,
    ack: int = 0,
    flags: int = SYN,
    window: int = 64240,
    mss: int | None = 1460,
) -> bytes:
    """A TCP header (no payload) with a valid checksum; an MSS option when ``mss`` is set."""
    options = _MSS_OPTION + struct.pack("!H", mss) if mss else b""
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0, 0) + options
    csum = checksum(pseudo_header(src, dst, PROTO_TCP, len(header)) + header)
    return header[:16] + struct.pack("!H", csum) + header[18:]


def icmp_echo(ident: int, seq: int, *, v6: bool, src: str = "", dst: str = "") -> bytes:
    """An echo request; for ICMPv6 the checksum needs the addresses (the kernel redoes it anyway)."""
    payload = b"mailpath"
    kind = ICMP6_ECHO if v6 else ICMP_ECHO
    message = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    pseudo = pseudo_header(src, dst, PROTO_ICMPV6, len(message)) if v6 else b""
    csum = checksum(pseudo + message)
    return message[:2] + struct.pack("!H", csum) + message[4:]


def ipv4_packet(src: str, dst: str, proto: int, payload: bytes, *, ttl: int, ident: int) -> bytes:
    """An IPv4 header (DF set) in front of ``payload``, for an IP_HDRINCL raw socket."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        ident & 0xFFFF,
        0x4000,
        ttl,
        proto,
        0,
        _packed(src),
        _packed(dst),
    )
    csum = checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received IP datagram, the same shape for IPv4 and IPv6: L4 bytes plus what the
    IP header said (for IPv6 raw sockets the kernel hands these over as ancillary data)."""

    family: int  # 4 or 6
    src: str
    dst: str
    ttl: int
    proto: int
    payload: bytes


def parse_ipv4(packet: bytes) -> Datagram | None:
    """Split a raw IPv4 packet (as an AF_INET raw socket delivers it) into a Datagram."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    if ihl < 20 or total < ihl or len(packet) < total or checksum(packet[:ihl]) != 0:
        return None
    frag = struct.unpack_from("!H", packet, 6)[0]
    if frag & 0x1FFF or frag & 0x2000:  # a fragment: we never send anything that needs them
        return None
    src, dst = str(IPv4Address(packet[12:16])), str(IPv4Address(packet[16:20]))
    return Datagram(4, src, dst, packet[8], packet[9], packet[ihl:total])


def _partial_checksum(pseudo: bytes, field: bytes) -> bool:
    """True when the checksum field holds only the pseudo-header sum.

    Linux leaves TCP checksums to the NIC (CHECKSUM_PARTIAL); on loopback and veth nobody
    ever fills them in, so a raw socket sees the uncomplemented pseudo-header sum there.
    Anything else that fails to verify is corrupt or forged.
    """
    return (~checksum(pseudo) & 0xFFFF) == struct.unpack("!H", field)[0]


@dataclass(frozen=True, slots=True)
class TCPHeader:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int


def parse_tcp(dg: Datagram) -> TCPHeader | None:
    """The TCP header of a datagram whose checksum verifies, else None."""
    data = dg.payload
    if dg.proto != PROTO_TCP or len(data) < 20 or (data[12] >> 4) * 4 < 20:
        return None
    pseudo = pseudo_header(dg.src, dg.dst, PROTO_TCP, len(data))
    if checksum(pseudo + data) != 0 and not _partial_checksum(pseudo, data[16:18]):
        return None
    sport, dport, seq, ack, _off, flags, window = struct.unpack_from("!HHIIBBH", data)
    return TCPHeader(sport, dport, seq, ack, flags, window)


@dataclass(frozen=True, slots=True)
class Quote:
    """The start of our own packet as an ICMP error quotes it back."""

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    seq: int


@dataclass(frozen=True, slots=True)
class ICMPMessage:
    type: int
    code: int
    ident: int = 0  # echo replies
    seq: int = 0
    quote: Quote | None = None  # errors


def _parse_quote(inner: bytes, v6: bool) -> Quote | None:
    if v6:
        if len(inner) < 48 or inner[0] >> 4 != 6:
            return None
        proto, hdr = inner[6], 40
        src, dst = str(IPv6Address(inner[8:24])), str(IPv6Address(inner[24:40]))
    else:
        if len(inner) < 28 or inner[0] >> 4 != 4:
            return None
        hdr = (inner[0] & 0x0F) * 4
        if hdr < 20 or len(inner) < hdr + 8:
            return None
        proto = inner[9]
        src, dst = str(IPv4Address(inner[12:16])), str(IPv4Address(inner[16:20]))
    sport, dport, seq = struct.unpack_from("!HHI", inner, hdr)
    return Quote(src, dst, proto, sport, dport, seq)


def parse_icmp(dg: Datagram) -> ICMPMessage | None:
    """An ICMP/ICMPv6 message whose checksum verifies: echo replies and the two errors we use."""
    v6 = dg.family == 6
    data = dg.payload
    if dg.proto != (PROTO_ICMPV6 if v6 else PROTO_ICMP) or len(data) < 8:
        return None
    pseudo = pseudo_header(dg.src, dg.dst, PROTO_ICMPV6, len(data)) if v6 else b""
    if checksum(pseudo + data) != 0:
        return None
    kind, code = data[0], data[1]
    if kind == (ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY):
        ident, seq = struct.unpack_from("!HH", data, 4)
        return ICMPMessage(kind, code, ident=ident, seq=seq)
    errors = (ICMP6_UNREACH, ICMP6_TIME_EXCEEDED) if v6 else (ICMP_UNREACH, ICMP_TIME_EXCEEDED)
    if kind not in errors:
        return None
    quote = _parse_quote(data[8:], v6)
    return ICMPMessage(kind, code, quote=quote) if quote else None
