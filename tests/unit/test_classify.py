"""The pure reading of replies: hop inference, ICMP codes, reply normalisation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailpath.probes import wire
from mailpath.probes.classify import (
    Flow,
    ReplyKind,
    Verdict,
    icmp_name,
    infer_hop,
    read_reply,
    unreach_verdict,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6

ME, DEST, ROUTER = "198.18.1.1", "198.18.3.2", "198.18.2.2"


@pytest.mark.parametrize(
    ("ttl", "hop"),
    [(64, 1), (63, 2), (62, 3), (1, 64), (128, 1), (126, 3), (65, 64), (255, 1), (250, 6), (129, 127)],
)
def test_infer_hop(ttl, hop):
    assert infer_hop(ttl) == hop


@given(st.integers(1, 255))
def test_infer_hop_is_positive_and_consistent(ttl):
    hop = infer_hop(ttl)
    assert 1 <= hop <= 128
    assert ttl + hop - 1 in (64, 128, 255)


@pytest.mark.parametrize(
    ("family", "code", "verdict"),
    [
        (4, 0, "unreachable"),
        (4, 1, "unreachable"),
        (4, 2, "rejected"),
        (4, 3, "rejected"),
        (4, 4, "unreachable"),
        (4, 5, "unreachable"),
        (4, 6, "unreachable"),
        (4, 7, "unreachable"),
        (4, 9, "rejected"),
        (4, 10, "rejected"),
        (4, 11, "unreachable"),
        (4, 12, "unreachable"),
        (4, 13, "rejected"),
        (6, 0, "unreachable"),
        (6, 1, "rejected"),
        (6, 2, "unreachable"),
        (6, 3, "unreachable"),
        (6, 4, "rejected"),
        (6, 5, "rejected"),
        (6, 6, "rejected"),
    ],
)
def test_unreach_codes(family, code, verdict):
    assert unreach_verdict(family, code) == Verdict(verdict)
    assert icmp_name(family, 1 if family == 6 else 3, code)


def _dg(pkt) -> wire.Datagram:
    raw = bytes(pkt)
    if raw[0] >> 4 == 4:
        return wire.parse_ipv4(raw)
    p = IPv6(raw)
    return wire.Datagram(6, p.src, p.dst, p.hlim, p.nh, bytes(p.payload))


def test_syn_ack_and_rst_name_the_flow_and_our_seq():
    syn_ack = read_reply(
        _dg(IP(src=DEST, dst=ME, ttl=62) / TCP(sport=25, dport=40000, seq=9, ack=101, flags="SA"))
    )
    assert syn_ack.kind is ReplyKind.SYN_ACK and syn_ack.seq == 100 and syn_ack.hop == 3
    assert syn_ack.flow == Flow(ME, 40000, DEST, 25)
    rst = read_reply(_dg(IP(src=DEST, dst=ME, ttl=63) / TCP(sport=25, dport=40000, ack=0, flags="RA")))
    assert rst.kind is ReplyKind.RST and rst.seq == 0xFFFFFFFF and rst.hop == 2


@pytest.mark.parametrize("flags", ["R", "A", "PA", "S", "F"])
def test_tcp_that_cannot_answer_a_syn_is_ignored(flags):
    assert read_reply(_dg(IP(src=DEST, dst=ME) / TCP(sport=25, dport=40000, ack=5, flags=flags))) is None


def test_icmp_error_is_tied_to_the_quoted_flow():
    syn = IP(src=ME, dst=DEST, ttl=1) / TCP(sport=40000, dport=25, seq=77, flags="S")
    r = read_reply(_dg(IP(src=ROUTER, dst=ME, ttl=63) / ICMP(type=3, code=13) / bytes(syn)[:28]))
    assert r.kind is ReplyKind.UNREACH and (r.icmp_type, r.icmp_code, r.seq) == (3, 13, 77)
    assert r.flow == Flow(ME, 40000, DEST, 25) and r.responder == ROUTER and r.hop == 2


def test_icmp_quoting_someone_elses_packet_is_ignored():
    other = IP(src="198.18.1.50", dst=DEST) / TCP(sport=40000, dport=25, seq=77, flags="S")
    assert read_reply(_dg(IP(src=ROUTER, dst=ME) / ICMP(type=3, code=13) / bytes(other)[:28])) is None
    udp = IP(src=ME, dst=DEST) / UDP(sport=40000, dport=25)
    assert read_reply(_dg(IP(src=ROUTER, dst=ME) / ICMP(type=3, code=3) / bytes(udp)[:28])) is None
    short = IP(src=ME, dst=DEST) / TCP(sport=40000, dport=25, seq=77, flags="S")
    assert read_reply(_dg(IP(src=ROUTER, dst=ME) / ICMP(type=3, code=13) / bytes(short)[:24])) is None


def test_icmp6_error():
    me, dest = "2001:db8:1::1", "2001:db8:3::2"
    syn = IPv6(src=me, dst=dest) / TCP(sport=40000, dport=587, seq=5, flags="S")
    r = read_reply(_dg(IPv6(src="2001:db8:1::2", dst=me, hlim=64) / ICMPv6DestUnreach(code=1) / bytes(syn)))
    assert r.kind is ReplyKind.UNREACH and r.icmp_code == 1 and r.flow == Flow(me, 40000, dest, 587)


@given(st.binary(min_size=0, max_size=120), st.sampled_from([1, 6, 58, 17]), st.sampled_from([4, 6]))
def test_hostile_payloads_never_crash(data, proto, family):
    src, dst = (DEST, ME) if family == 4 else ("2001:db8::2", "2001:db8::1")
    read_reply(wire.Datagram(family, src, dst, 64, proto, data))
