"""probes.wire against scapy, an independent implementation of the same formats."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mailpath.probes import wire
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6TimeExceeded, IPv6

ports = st.integers(1, 65535)
u32 = st.integers(0, 2**32 - 1)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@given(v4, v4, ports, ports, u32, st.integers(1, 255))
def test_ipv4_syn_matches_scapy(src, dst, sport, dport, seq, ttl):
    seg = wire.tcp_segment(src, dst, sport, dport, seq)
    pkt = IP(wire.ipv4_packet(src, dst, wire.PROTO_TCP, seg, ttl=ttl, ident=7))
    assert (pkt.src, pkt.dst, pkt.ttl, pkt.proto, pkt.id, pkt.flags.DF) == (src, dst, ttl, 6, 7, True)
    tcp = pkt[TCP]
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, str(tcp.flags)) == (sport, dport, seq, 0, "S")
    assert tcp.options == [("MSS", 1460)]
    # scapy recomputes both checksums when they are deleted; ours must agree
    ours_ip, ours_tcp = pkt.chksum, tcp.chksum
    del pkt.chksum, pkt[TCP].chksum
    again = IP(bytes(pkt))
    assert (again.chksum, again[TCP].chksum) == (ours_ip, ours_tcp)


@given(v6, v6, ports, ports, u32)
def test_ipv6_syn_checksum_matches_scapy(src, dst, sport, dport, seq):
    seg = wire.tcp_segment(src, dst, sport, dport, seq)
    pkt = IPv6(src=src, dst=dst) / TCP(seg)
    ours = pkt[TCP].chksum
    del pkt[TCP].chksum
    assert IPv6(bytes(pkt))[TCP].chksum == ours


@given(v4, v4, ports, ports, u32, u32, st.sampled_from(["SA", "RA", "R", "A", "PA"]), st.integers(1, 255))
def test_parse_tcp_reads_scapy_packets(src, dst, sport, dport, seq, ack, flags, ttl):
    raw = bytes(IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags))
    dg = wire.parse_ipv4(raw)
    assert (dg.family, dg.src, dg.dst, dg.ttl, dg.proto) == (4, src, dst, ttl, 6)
    tcp = wire.parse_tcp(dg)
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (sport, dport, seq, ack)
    assert tcp.flags == int(TCP(bytes(dg.payload)).flags)


@given(v4, v4, ports, ports, u32, st.sampled_from([(3, 13), (3, 3), (3, 1), (11, 0)]))
def test_icmp4_error_quote(router, dst, sport, dport, seq, kind):
    src = "198.18.1.1"
    original = bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, seq=seq, flags="S"))
    raw = bytes(IP(src=router, dst=src) / ICMP(type=kind[0], code=kind[1]) / original[:28])
    msg = wire.parse_icmp(wire.parse_ipv4(raw))
    assert (msg.type, msg.code) == kind
    assert msg.quote == wire.Quote(src, dst, 6, sport, dport, seq)


@given(v6, ports, ports, u32, st.booleans(), st.integers(0, 6))
def test_icmp6_error_quote(dst, sport, dport, seq, time_exceeded, code):
    src, router = "2001:db8:1::1", "2001:db8:1::2"
    original = bytes(IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, seq=seq, flags="S"))
    layer = ICMPv6TimeExceeded() if time_exceeded else ICMPv6DestUnreach(code=code)
    icmp = bytes((IPv6(src=router, dst=src) / layer / original)[1])
    msg = wire.parse_icmp(wire.Datagram(6, router, src, 64, 58, icmp))
    assert msg.type == (3 if time_exceeded else 1)
    assert msg.quote == wire.Quote(src, dst, 6, sport, dport, seq)


def test_echo_requests_are_valid():
    v4req = wire.icmp_echo(0x1234, 7, v6=False)
    assert ICMP(v4req).chksum == ICMP(bytes(ICMP(type=8, id=0x1234, seq=7) / b"mailpath")).chksum
    raw = bytes(IPv6(src="2001:db8:9::9", dst="2001:db8:1::1") / ICMPv6EchoReply(id=5, seq=9, data=b"x"))
    msg = wire.parse_icmp(wire.Datagram(6, "2001:db8:9::9", "2001:db8:1::1", 61, 58, raw[40:]))
    assert (msg.type, msg.ident, msg.seq, msg.quote) == (129, 5, 9, None)


def _valid_rst() -> bytes:
    return bytes(IP(src="198.18.3.2", dst="198.18.1.1") / TCP(sport=25, dport=40000, ack=11, flags="RA"))


@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data):
    dg = wire.parse_ipv4(data)
    for proto, fam in ((6, 4), (1, 4), (6, 6), (58, 6)):
        d = wire.Datagram(
            fam,
            "198.18.3.2" if fam == 4 else "2001:db8::2",
            "198.18.1.1" if fam == 4 else "2001:db8::1",
            64,
            proto,
            data,
        )
        wire.parse_tcp(d)
        wire.parse_icmp(d)
    if dg is not None:
        wire.parse_tcp(dg)
        wire.parse_icmp(dg)


@given(st.integers(0, 39))
def test_truncated_packets_are_refused(cut):
    assert wire.parse_ipv4(_valid_rst()[:cut]) is None


def test_every_bit_flip_in_tcp_is_refused():
    for bit in range(20 * 8, 40 * 8):
        raw = bytearray(_valid_rst())
        raw[bit // 8] ^= 1 << (bit % 8)
        dg = wire.parse_ipv4(bytes(raw))
        assert dg is not None and wire.parse_tcp(dg) is None, f"bit {bit}"


def test_partial_checksum_from_offload_is_accepted():
    """veth and loopback leave TCP checksums to the NIC; the field holds the pseudo sum."""
    seg = bytearray(
        wire.tcp_segment("198.18.3.2", "198.18.1.1", 25, 40000, 1, ack=2, flags=wire.RST | wire.ACK)
    )
    pseudo = wire.pseudo_header("198.18.3.2", "198.18.1.1", 6, len(seg))
    seg[16:18] = (~wire.checksum(pseudo) & 0xFFFF).to_bytes(2, "big")
    assert wire.parse_tcp(wire.Datagram(4, "198.18.3.2", "198.18.1.1", 62, 6, bytes(seg))) is not None
    seg[16:18] = b"\x12\x34"
    assert wire.parse_tcp(wire.Datagram(4, "198.18.3.2", "198.18.1.1", 62, 6, bytes(seg))) is None
