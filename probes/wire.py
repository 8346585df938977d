"""Wire formats: build the few packets mailpath sends, parse what comes back.

Pure and stdlib-only (no scapy), so the classifier can be fuzzed without root. A SYN is
24 bytes and an echo 16; building them by hand costs a few microseconds where a scapy
``Packet`` costs a hundred, which matters when a batch sends tens of thousands.
scapy is the independent oracle for this module in the tests.

Parsing is defensive: anything truncated, malformed or with a wrong checksum yields
``None`` rather than an exception, because replies come from the network, not from us.
Captures read from a file (``mailpath pcap``) go through the same parsers with
``verify=False``: a capture taken on the sending host holds checksums the NIC had yet to
fill in, and packets cut at the capture's snap length cannot be summed at all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv6Address, ip_address

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


def ipv6_packet(src: str, dst: str, proto: int, payload: bytes, *, hop_limit: int) -> bytes:
    """An IPv6 header (traffic class and flow label 0, no extension header) in front of
    ``payload``. The kernel builds the header of what an IPv6 raw socket sends and strips it
    from what one receives; captures (``--pcap``) hold this equivalent of it."""
    header = struct.pack("!IHBB", 6 << 28, len(payload), proto, hop_limit & 0xFF)
    return header + _packed(src) + _packed(dst) + payload


def _v4(b: bytes) -> str:
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"  # what str(IPv4Address(b)) gives, faster


@lru_cache(maxsize=8192)
def _v6(b: bytes) -> str:
    return str(IPv6Address(b))


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


def parse_ipv4(packet: bytes, *, verify: bool = True) -> Datagram | None:
    """Split a raw IPv4 packet (as an AF_INET raw socket delivers it) into a Datagram.
    ``verify=False`` (captures): no header checksum, and a packet cut short by the capture's
    snap length keeps what there is of its payload."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = (packet[2] << 8) | packet[3]
    if ihl < 20 or total < ihl or len(packet) < ihl:
        return None
    if verify and (len(packet) < total or checksum(packet[:ihl]) != 0):
        return None
    if packet[6] & 0x3F or packet[7]:  # a fragment (MF or an offset): we never send any
        return None
    return Datagram(4, _v4(packet[12:16]), _v4(packet[16:20]), packet[8], packet[9], packet[ihl:total])


# IPv6 extension headers a capture may show before TCP/ICMPv6: hop-by-hop, routing, destination
_EXTENSIONS = {0, 43, 60}
_FRAGMENT = 44


def parse_ipv6(packet: bytes) -> Datagram | None:
    """Split an IPv6 packet from a capture into a Datagram (raw sockets never show this header:
    the driver reads hop limit and destination from ancillary data). Extension headers are
    skipped; fragments (but an atomic one) and anything cut inside the headers yield None.
    Like ``parse_ipv4(verify=False)``, a payload cut by the snap length is kept as it is."""
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    end = 40 + ((packet[4] << 8) | packet[5])
    proto, at = packet[6], 40
    while proto in _EXTENSIONS or proto == _FRAGMENT:
        if len(packet) < at + 8:
            return None
        if proto == _FRAGMENT:
            if (packet[at + 2] << 8 | packet[at + 3]) & 0xFFF9:  # an offset or more fragments
                return None
            proto, at = packet[at], at + 8
        else:
            proto, at = packet[at], at + (packet[at + 1] + 1) * 8
    if at > end:
        return None
    return Datagram(6, _v6(packet[8:24]), _v6(packet[24:40]), packet[7], proto, packet[at:end])


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
    header_len: int = 20  # where the payload starts: ``dg.payload[header_len:]``


_TCP = struct.Struct("!HHIIBBH")


def parse_tcp(dg: Datagram, *, verify: bool = True) -> TCPHeader | None:
    """The TCP header of a datagram whose checksum verifies (``verify=False``: any), else None."""
    data = dg.payload
    if dg.proto != PROTO_TCP or len(data) < 20:
        return None
    sport, dport, seq, ack, off, flags, window = _TCP.unpack_from(data)
    size = (off >> 4) * 4
    if size < 20 or size > len(data):
        return None
    if verify:
        pseudo = pseudo_header(dg.src, dg.dst, PROTO_TCP, len(data))
        if checksum(pseudo + data) != 0 and not _partial_checksum(pseudo, data[16:18]):
            return None
    return TCPHeader(sport, dport, seq, ack, flags, window, size)


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
        src, dst = _v6(inner[8:24]), _v6(inner[24:40])
    else:
        if len(inner) < 28 or inner[0] >> 4 != 4:
            return None
        hdr = (inner[0] & 0x0F) * 4
        if hdr < 20 or len(inner) < hdr + 8:
            return None
        proto = inner[9]
        src, dst = _v4(inner[12:16]), _v4(inner[16:20])
    sport, dport, seq = struct.unpack_from("!HHI", inner, hdr)
    return Quote(src, dst, proto, sport, dport, seq)


def parse_icmp(dg: Datagram, *, verify: bool = True) -> ICMPMessage | None:
    """An ICMP/ICMPv6 message whose checksum verifies (``verify=False``: any): echo replies
    and the two errors we use."""
    v6 = dg.family == 6
    data = dg.payload
    if dg.proto != (PROTO_ICMPV6 if v6 else PROTO_ICMP) or len(data) < 8:
        return None
    if verify:
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
