"""``mailpath pcap``: the per-connection state machine on synthetic packets (built with the
project's wire builders), the file formats and link types, bad files, and bounded memory."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailpath.probes import wire
from mailpath.probes.classify import judge, read_reply
from mailpath.probes.flows import Flows, Limits
from mailpath.probes.pcapfile import datagram, read

from tests import pcapgen as g
from tests.conftest import MAILPATH, validate_document

C4, S4, R1_4, R2_4 = "198.18.1.1", "198.18.3.2", "198.18.1.2", "198.18.2.2"
C6, S6, R1_6 = "2001:db8:1::1", "2001:db8:3::2", "2001:db8:1::2"


def scenarios(c: str, s: str, r1: str) -> dict[int, list[tuple[float, bytes]]]:
    """Per port, the packets of one attempt, as a capture on the client shows them: the server
    is 3 hops away (r1 = hop 1)."""
    v6 = ":" in c
    out = {}
    # open
    out[25] = g.Session(c, 40025, s, 25).handshake().packets
    # refused: a RST from the server itself
    syn = g.tcp(c, s, 40026, 26, 77)
    out[26] = [(1.0, syn), (1.001, g.tcp(s, c, 26, 40026, 0, ack=78, flags=wire.RST | wire.ACK, ttl=62))]
    # reset in path: a RST carrying the server's address from hop 2 (TTL 63)
    syn = g.tcp(c, s, 40027, 27, 99)
    out[27] = [(1.0, syn), (1.001, g.tcp(s, c, 27, 40027, 0, ack=100, flags=wire.RST | wire.ACK, ttl=63))]
    # rejected: ICMP administratively prohibited from r1
    syn = g.tcp(c, s, 40030, 30, 5)
    kind, code = (1, 1) if v6 else (3, 13)
    out[30] = [(1.0, syn), (1.002, g.icmp_error(r1, syn, kind=kind, code=code))]
    # unreachable: host unreachable from r1
    syn = g.tcp(c, s, 40035, 35, 6)
    kind, code = (1, 3) if v6 else (3, 1)
    out[35] = [(1.0, syn), (4.0, g.icmp_error(r1, syn, kind=kind, code=code))]
    # filtered: three SYNs (one try, two retransmissions) and nothing
    syn = g.tcp(c, s, 40033, 33, 7)
    out[33] = [(1.0, syn), (2.0, syn), (4.0, syn)]
    return out


EXPECTED = {
    25: ("open", 3),
    26: ("refused", 3),
    27: ("reset-in-path", 2),
    30: ("rejected", 1),
    35: ("unreachable", 1),
    33: ("filtered", None),
}
PORTS = sorted(EXPECTED)


def feed(packets, ports=PORTS, limits=None) -> dict:
    flows = Flows(ports, limits)
    for n, (ts, p) in enumerate(packets, 1):
        flows.feed(datagram(p), ts, n)
    return {(c.server, c.port): c for c in flows.finish()}


def everything(c=C4, s=S4, r1=R1_4) -> list[tuple[float, bytes]]:
    return [p for port in PORTS for p in scenarios(c, s, r1)[port]] + [(20.0, g.tcp(c, s, 1, 1, 1))]


@pytest.mark.parametrize(("c", "s", "r1"), [(C4, S4, R1_4), (C6, S6, R1_6)])
def test_each_verdict_as_the_probe_names_it(c, s, r1):
    got = feed(everything(c, s, r1))
    for port, (verdict, hop) in EXPECTED.items():
        conn = got[(s, port)]
        assert (conn.verdict, conn.responder_hop) == (verdict, hop), conn.reason
    assert got[(s, 27)].destination_hop == 3  # learnt from the SYN-ACK on port 25
    assert got[(s, 33)].syns == 3 and got[(s, 33)].retransmissions == 2
    assert got[(s, 30)].icmp[0:2] == ((1, 1) if ":" in c else (3, 13))
    assert got[(s, 30)].responder == r1


def test_the_verdict_is_the_live_probes_own_function():
    """The reply that decided is judged by classify.judge, exactly as the SYN engine judges it."""
    from mailpath.probes.classify import PathFacts

    packets = scenarios(C4, S4, R1_4)
    facts = PathFacts(dest_hop=3)
    for port in (26, 27, 30):
        conn = feed(packets[25] + packets[port])[(S4, port)]
        reply = read_reply(datagram(packets[port][-1][1]), verify=False)
        live = judge(reply, S4, facts)
        assert (conn.verdict, conn.reason, conn.responder_hop) == (
            live.verdict,
            live.reason,
            live.responder_hop,
        )


def test_a_rst_with_nothing_to_place_it_says_what_the_capture_lacks():
    conn = feed(scenarios(C4, S4, R1_4)[27])[(S4, 27)]
    assert conn.verdict == "refused" and conn.destination_hop is None
    assert any("cannot be told" in n and "no SYN-ACK" in n for n in conn.limitations), conn.limitations


def test_a_ttl_limited_syn_that_expired_places_the_rst_in_the_path():
    """As the live probe's check: a SYN with TTL 2 expired, so a RST from hop 2 is forged."""
    packets = scenarios(C4, S4, R1_4)[27]
    check = g.tcp(C4, S4, 40027, 27, 500, ttl=2)
    expired = g.icmp_error(R2_4, check, kind=11, code=0, ttl=63)
    conn = feed([*packets, (1.5, check), (1.51, expired)])[(S4, 27)]
    assert conn.verdict == "reset-in-path" and "expired there" in conn.reason


def _interleave(draw_order, per_port):
    """Merge per-attempt packet lists in the order ``draw_order`` names the attempts."""
    queues = {p: list(v) for p, v in per_port.items()}
    out = []
    for port in draw_order:
        if queues[port]:
            out.append(queues[port].pop(0))
    for port in PORTS:
        out.extend(queues[port])
    return out


@settings(max_examples=60, deadline=None)
@given(
    order=st.lists(st.sampled_from(PORTS), max_size=40),
    dups=st.lists(st.integers(min_value=0, max_value=30), max_size=6),
    v6=st.booleans(),
)
def test_interleaving_and_duplicates_do_not_change_verdicts(order, dups, v6):
    c, s, r1 = (C6, S6, R1_6) if v6 else (C4, S4, R1_4)
    packets = _interleave(order, scenarios(c, s, r1))
    for i in dups:  # a packet captured twice (two interfaces, a mirror port): right after itself
        if i < len(packets):
            packets.insert(i + 1, packets[i])
    ts = [(n * 0.01, p) for n, (_, p) in enumerate(packets)]  # capture order is time order
    got = feed(ts)
    assert {port: (got[(s, port)].verdict, got[(s, port)].responder_hop) for port in PORTS} == EXPECTED


# -- SMTP ---------------------------------------------------------------------------------------


def smtp(session: g.Session, *, port_ends=True) -> dict:
    got = feed(session.packets, ports=[session.p])
    (conn,) = got.values()
    return conn.smtp


def test_smtp_stops_where_the_conversation_stopped():
    s = g.Session(C4, 41000, S4, 25).handshake().server(b"554 5.7.1 go away\r\n").fin_from_client()
    assert smtp(s)["stopped"] == "greeting" and "554" in smtp(s)["detail"]

    s = g.Session(C4, 41001, S4, 25).handshake()
    s.t += 30
    s.fin_from_client()
    got = smtp(s)
    assert got["stopped"] == "no-greeting" and got["problem"]

    s = g.Session(C4, 41002, S4, 587).handshake().server(b"220 hi ESMTP\r\n").client(b"EHLO me\r\n")
    s.server(b"250-hi\r\n250 STARTTLS\r\n").client(b"STARTTLS\r\n").server(b"220 2.0.0 go ahead\r\n")
    s.client(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00").server(b"\x15\x03\x03\x00\x02\x02\x28")
    got = smtp(s)
    assert (
        got["stopped"] == "tls-handshake"
        and "handshake failure" in got["detail"]
        and got["tls"] == "starttls"
    )

    s = g.Session(C4, 41003, S4, 587).handshake().server(b"220 hi\r\n").client(b"EHLO me\r\nSTARTTLS\r\n")
    s.server(b"250 hi\r\n220 go ahead\r\n").fin_from_client()
    got = smtp(s)
    assert got["stopped"] == "tls-handshake" and "no TLS ClientHello" in got["detail"]

    s = g.Session(C4, 41004, S4, 587).handshake().server(b"220 hi\r\n").client(b"EHLO me\r\n")
    s.server(b"250 hi\r\n").client(b"STARTTLS\r\n").server(b"220 go\r\n")
    s.client(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00").server(b"\x16\x03\x03\x00\x05\x02\x00\x00\x01\x00")
    got = smtp(s)
    assert got["stopped"] == "tls" and not got["problem"]

    s = g.Session(C4, 41005, S4, 587).handshake().server(b"220 hi\r\n").client(b"EHLO me\r\n")
    s.server(b"250 AUTH PLAIN\r\n").client(b"AUTH PLAIN AGZvbwBiYXI=\r\n").server(
        b"535 5.7.8 bad credentials\r\n"
    )
    got = smtp(s)
    assert got["stopped"] == "auth" and "535" in got["detail"] and got["last_command"] == "AUTH PLAIN"

    s = (
        g.Session(C4, 41006, S4, 25)
        .handshake()
        .server(b"220 hi\r\n")
        .client(b"HELO me\r\n")
        .server(b"250 ok\r\n")
    )
    s.client(b"MAIL FROM:<a@b.test>\r\n").server(b"250 ok\r\n").client(b"RCPT TO:<c@d.test>\r\n")
    s.server(b"250 ok\r\n").client(b"DATA\r\n").server(b"354 go\r\n").client(
        b"Subject: x\r\n\r\nRSET\r\n.\r\n"
    )
    s.server(b"250 queued\r\n").client(b"QUIT\r\n").server(b"221 bye\r\n")
    got = smtp(s)
    assert got["stopped"] == "delivered" and not got["problem"]  # RSET in the body is no command


def test_a_reset_after_starttls_from_a_nearer_hop_is_forged_in_the_path():
    s = g.Session(C4, 41010, S4, 25, hops=3).handshake().server(b"220 hi\r\n").client(b"EHLO me\r\n")
    s.server(b"250 STARTTLS\r\n").client(b"STARTTLS\r\n").rst_from_server(ttl=63)  # hop 2
    got = smtp(s)
    assert got["reset"] == "reset-in-path" and got["problem"] and "hop 2" in got["detail"]
    s = g.Session(C4, 41011, S4, 25, hops=3).handshake().server(b"220 hi\r\n").rst_from_server()
    assert smtp(s)["reset"] == "reset-by-server"


def test_segments_out_of_order_and_retransmitted_are_read_in_order():
    s = g.Session(C4, 41020, S4, 25).handshake().server(b"220 hi\r\n").client(b"EHLO me\r\n")
    s.server(b"250-hi\r\n").server(b"250 STARTTLS\r\n").client(b"STARTTLS\r\n").server(b"454 no TLS now\r\n")
    packets = s.packets
    # swap the two halves of the EHLO answer, and send the greeting twice
    i = next(n for n, (_, p) in enumerate(packets) if b"250-hi" in p)
    packets[i], packets[i + 1] = packets[i + 1], packets[i]
    packets.insert(4, packets[3])
    got = feed(packets, ports=[25])
    (conn,) = got.values()
    assert conn.smtp["stopped"] == "starttls" and "454" in conn.smtp["detail"]
    assert conn.data_retransmissions == 1


# -- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("linktype", [g.RAW, g.ETHERNET, g.SLL, g.SLL2, g.NULL])
def test_every_link_type_reads_alike(tmp_path, linktype):
    path = tmp_path / "c.pcap"
    g.write_pcap(path, everything() + everything(C6, S6, R1_6), linktype)
    connections, info = read(str(path), PORTS)
    got = {(c.server, c.port): (c.verdict, c.responder_hop) for c in connections}
    assert got == {(s, p): v for s in (S4, S6) for p, v in EXPECTED.items()}
    assert info.truncated is None and info.packets == info.ip_packets


def test_raw_ipv4_and_ipv6_link_types_and_gzip(tmp_path):
    v4, v6 = tmp_path / "v4.pcap", tmp_path / "v6.pcap"
    g.write_pcap(v4, everything(), g.IPV4)
    g.write_pcap(v6, everything(C6, S6, R1_6), g.IPV6)
    zipped = tmp_path / "v4.pcap.gz"
    zipped.write_bytes(gzip.compress(v4.read_bytes()))
    for path, server in ((v4, S4), (v6, S6), (zipped, S4)):
        connections, _ = read(str(path), PORTS)
        assert {c.port: c.verdict for c in connections if c.server == server} == {
            p: v for p, (v, _) in EXPECTED.items()
        }
    assert read(str(zipped), PORTS)[1].format == "pcap.gz"


def test_pcapng_with_comments_reads_alike(tmp_path):
    from scapy.packet import Raw
    from scapy.utils import PcapNgWriter

    path = tmp_path / "c.pcapng"
    w = PcapNgWriter(str(path))
    w.linktype = g.RAW
    w.write_header(None)
    for ts, p in everything():
        pkt = Raw(p)
        pkt.time, pkt.comments = ts, [b"a comment"]
        w.write_packet(pkt)
    w.close()
    connections, info = read(str(path), PORTS)
    assert info.format == "pcapng" and {c.port: c.verdict for c in connections} == {
        p: v for p, (v, _) in EXPECTED.items()
    }


def test_frame_numbers_are_the_files(tmp_path):
    path = tmp_path / "c.pcap"
    packets = everything()
    g.write_pcap(path, packets, g.ETHERNET)
    connections, _ = read(str(path), PORTS)
    for c in connections:
        first = datagram(packets[c.first_frame - 1][1])
        assert wire.parse_tcp(first, verify=False).dport == c.port
        if c.reply_frame is not None:
            assert datagram(packets[c.reply_frame - 1][1]).dst == C4


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAILPATH, "pcap", *args], capture_output=True, text=True, timeout=60)


def _bad_files(tmp_path):
    good = tmp_path / "good.pcap"
    g.write_pcap(good, everything(), g.ETHERNET)
    data = good.read_bytes()
    files = {
        "empty": b"",
        "not a capture": b"Received: from mail.example\r\nSubject: hello\r\n" * 20,
        "unknown link type": g.pcap_header(105) + g.pcap_record(1.0, b"\0" * 40),
        "cut inside a record": data[:-10],
        "cut inside a record header": data + b"\x01\x02\x03",
        "cut gzip": gzip.compress(data)[:-30],
    }
    out = {}
    for name, content in files.items():
        p = tmp_path / name.replace(" ", "-")
        p.write_bytes(content)
        out[name] = p
    return out


def test_bad_files_are_one_line_and_exit_2(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        r = _cli(str(path))
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("mailpath: error: "), (name, r.stderr)
        assert "Traceback" not in r.stderr
        r = _cli(str(path), "--json")
        doc = json.loads(r.stdout)
        validate_document(doc)
        assert r.returncode == 2 and doc["error"]["code"] == "bad-input", name


def test_a_cut_file_shows_what_comes_before_the_cut(tmp_path):
    path = _bad_files(tmp_path)["cut inside a record"]
    connections, info = read(str(path), PORTS)
    assert info.truncated and "ends inside packet" in info.truncated
    assert {c.port for c in connections} >= {25, 26, 27}
    r = _cli(str(path), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["connections"] and "cut short" in doc["error"]["message"]


def test_a_good_file_is_a_valid_document(tmp_path):
    path = tmp_path / "good.pcap"
    g.write_pcap(path, everything(), g.SLL2)
    r = _cli(str(path), "--json", "-p", ",".join(map(str, PORTS)))
    doc = json.loads(r.stdout)
    validate_document(doc)
    assert r.returncode == 1  # problems were found
    assert doc["capture"]["link_types"] == ["Linux cooked (SLL2)"] and doc["capture"]["connections"] == 6
    r = _cli(str(path), "-p", "25")
    assert r.returncode == 0 and "open" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80


# -- memory -------------------------------------------------------------------------------------


def test_the_table_of_attempts_is_bounded():
    flows = Flows([25], Limits(table=100, listed=500))
    for i in range(3000):
        flows.feed(datagram(g.tcp(C4, S4, 10000 + i, 25, i)), i * 0.001, i + 1)
        assert len(flows) <= 100
    connections = flows.finish()
    assert len(connections) == 500 and sum(flows.unlisted.values()) == 2500 and flows.evicted == 2900
    assert all(c.verdict == "filtered" for c in connections)


def test_idle_attempts_are_closed_as_the_capture_goes_on():
    flows = Flows([25], Limits(idle=10))
    for i in range(20000):
        flows.feed(datagram(g.tcp(C4, S4, 1024 + i % 60000, 25, i)), i * 0.01, i + 1)
    assert len(flows) <= 10 / 0.01 + 0x1000  # at most idle's worth, plus one check interval
    assert flows.evicted == 0


def _sessions(path, n_sessions: int, data_packets: int) -> int:
    """A capture of SMTP sessions that each send ``data_packets`` segments of 1400 bytes."""
    body = b"x" * 1398 + b"\r\n"

    def packets():
        for i in range(n_sessions):
            s = g.Session(C4, 20000 + i, S4, 25, t=1000.0 + i).handshake()
            s.server(b"220 hi\r\n").client(b"EHLO me\r\n").server(b"250 ok\r\n")
            s.client(b"MAIL FROM:<a@b.test>\r\n").server(b"250 ok\r\n").client(b"RCPT TO:<c@d.test>\r\n")
            s.server(b"250 ok\r\n").client(b"DATA\r\n").server(b"354 go\r\n")
            yield from s.packets
            for _ in range(data_packets):
                s.packets = []
                s.client(body)
                yield from s.packets
            s.packets = []
            s.client(b".\r\n").server(b"250 queued\r\n").fin_from_client()
            yield from s.packets

    g.write_pcap(path, packets(), g.ETHERNET)
    return path.stat().st_size


_PEAK = """
import json, resource, sys
from mailpath.probes.pcapfile import read
connections, info = read(sys.argv[1])
print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, info.packets, len(connections)]))
"""


def _peak_kb(path) -> tuple[int, int, int]:
    r = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return tuple(json.loads(r.stdout))


def test_memory_does_not_grow_with_the_size_of_the_capture(tmp_path):
    small, big = tmp_path / "small.pcap", tmp_path / "big.pcap"
    small_size = _sessions(small, 200, 10)
    big_size = _sessions(big, 200, 160)
    assert big_size > small_size + 40_000_000
    rss_small, _, n_small = _peak_kb(small)
    rss_big, packets, n_big = _peak_kb(big)
    assert n_small == n_big == 200 and packets > 30_000
    # 40+ MB more capture, a few MB more memory at most (allocator noise)
    assert rss_big - rss_small < 8 * 1024, (rss_small, rss_big)
