"""--pcap: the Recorder keeps what the engines sent and only the replies to it, and writes pcapng
that scapy (an independent reader) reads back: order, timestamps, directions, comments, and
complete IPv6 headers."""

from __future__ import annotations

import random

from mailpath.probes import wire
from mailpath.probes.capture import Recorder, probe_ref, tcp_key
from mailpath.probes.classify import Flow, read_reply
from mailpath.probes.result import Target
from mailpath.probes.syn import Options, SynBatch
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import RawPcapNgReader

from tests import pcapgen as g

ME4, SRV4, ME6, SRV6 = "198.18.1.1", "198.18.3.2", "2001:db8:1::1", "2001:db8:3::2"


def _read(path):
    out = []
    for data, meta in RawPcapNgReader(str(path)):
        ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
        out.append((ts, data, meta.direction, [c.decode() for c in meta.comments or []], meta.linktype))
    return out


def test_replies_to_what_was_sent_are_kept_and_nothing_else(tmp_path):
    rec = Recorder()
    syn = g.tcp(ME4, SRV4, 40000, 25, 1234)
    rec.sent(100.0, syn)
    answer = g.tcp(SRV4, ME4, 25, 40000, 9, ack=1235, flags=wire.SYN | wire.ACK, ttl=62)
    wrong_ack = g.tcp(SRV4, ME4, 25, 40000, 9, ack=1236, flags=wire.SYN | wire.ACK, ttl=62)
    someone_else = g.tcp(SRV4, ME4, 25, 40001, 9, ack=1235, flags=wire.SYN | wire.ACK, ttl=62)
    ssh = g.tcp("198.18.9.9", ME4, 22, 50000, 9, ack=1, flags=wire.ACK, ttl=62)
    for n, p in enumerate((ssh, wrong_ack, someone_else, answer)):
        rec.heard(100.001 + n / 1000, p, wire.parse_ipv4(p))
    assert [p.data for p in rec.packets] == [syn, answer]
    flow = Flow(ME4, 40000, SRV4, 25)
    rec.label(tcp_key(flow, 1234), probe_ref(SRV4, 25), "SYN, try 1")
    rec.decided(read_reply(wire.parse_ipv4(answer)), probe_ref(SRV4, 25), "open: SYN-ACK")
    written = rec.write(str(tmp_path / "x.pcapng"))
    assert written.frames == {"probe:198.18.3.2:25": [1, 2]} and written.packets == 2
    (t1, d1, dir1, c1, lt), (t2, d2, dir2, c2, _) = _read(tmp_path / "x.pcapng")
    assert lt == 101 and (d1, d2) == (syn, answer) and (dir1, dir2) == (2, 1)
    assert abs(t1 - 100.0) < 1e-6 and abs(t2 - 100.004) < 1e-6
    assert c1 == ["probe:198.18.3.2:25: SYN, try 1"] and c2 == ["probe:198.18.3.2:25: decides open: SYN-ACK"]
    assert not (tmp_path / "x.pcapng.part").exists()


def test_a_batch_names_every_packet_and_the_deciding_reply(tmp_path):
    """The SYN engine, fed by hand: IPv6 packets get a whole header that scapy dissects."""
    targets = [Target("x", SRV6, 25), Target("x", SRV6, 26)]
    batch = SynBatch(targets, {SRV6: ME6}, Options(timeout=0.5, retries=1), rng=random.Random(1))
    rec = Recorder()
    now = 10.0
    for s in batch.poll(now):
        rec.sent(now, wire.ipv6_packet(s.src, s.dst, s.proto, s.payload, hop_limit=s.ttl))
    sent = [wire.parse_ipv6(p.data) for p in rec.packets]
    replies = []
    for dg in sent:
        tcp = wire.parse_tcp(dg)
        flags = wire.SYN | wire.ACK if tcp.dport == 25 else wire.RST | wire.ACK
        replies.append(g.tcp(SRV6, ME6, tcp.dport, tcp.sport, 77, ack=tcp.seq + 1, flags=flags, ttl=62))
    for n, p in enumerate(replies):
        dg = wire.parse_ipv6(p)
        rec.heard(now + 0.01 + n / 1000, p, dg)
        batch.feed(dg, now + 0.01)
    while not batch.done:
        now += 0.5
        batch.poll(now)
    batch.annotate(rec)
    written = rec.write(str(tmp_path / "b.pcapng"))
    frames = _read(tmp_path / "b.pcapng")
    assert set(written.frames) == {f"probe:{SRV6}:25", f"probe:{SRV6}:26"}
    for _ts, data, direction, comments, _ in frames:
        ip = IPv6(data)
        assert ip.plen == len(data) - 40 and ip.nh == 6 and TCP in ip
        assert (ip.src == ME6) == (direction == 2)
        assert len(comments) == 1
    decided = [c[0] for *_, c, _ in frames if "decides" in c[0]]
    assert any(":25: decides open" in c for c in decided) and any(
        ":26: decides refused" in c for c in decided
    )
    assert [f[0] for f in frames] == sorted(f[0] for f in frames)


def test_ipv4_packets_are_kept_as_they_were():
    rec = Recorder()
    syn = g.tcp(ME4, SRV4, 1, 25, 5)
    rec.sent(1.0, syn)
    assert IP(rec.packets[0].data).ttl == 64 and rec.packets[0].data == syn


def test_past_the_limit_packets_are_counted_not_kept():
    rec = Recorder(limit=3)
    for i in range(5):
        rec.sent(float(i), g.tcp(ME4, SRV4, 1, 25, i))
    assert len(rec) == 3 and rec.dropped == 2
