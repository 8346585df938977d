"""Packets as evidence, in the lab: ``--pcap`` files read back by tcpdump and scapy, and
``mailpath pcap`` on captures tcpdump took in the client namespace while each fault was on,
with the verdicts the live probe gave.

Topology: client — r1 (hop 1) — r2 (hop 2) — server (hop 3); the mail services of lab.mail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from mailpath.probes.classify import infer_hop
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import RawPcapNgReader

from tests.conftest import MAILPATH, Run

pytestmark = pytest.mark.lab

# port -> (node, kind, fault, verdict the probe gives, responder hop)
FAULTS = {
    25: (None, None, None, "open", 3),
    26: (None, None, None, "refused", 3),
    27: ("r1", "block", "tcp-reset", "reset-in-path", 1),
    28: ("r2", "block", "tcp-reset", "reset-in-path", 2),
    30: ("r1", "block", "admin-prohibited", "rejected", 1),
    33: ("r2", "block", "drop", "filtered", None),
    35: ("r1", "route", "unreachable", "unreachable", 1),
    38: ("r2", "block", "net-unreachable", "unreachable", 2),
}
PORTS = ",".join(map(str, FAULTS))
FAST = ("--timeout", "0.5", "--retries", "1")


@pytest.fixture(scope="module")
def mail():
    from lab import Lab
    from lab.mail import setup_mail

    with Lab() as lab:
        yield setup_mail(lab)


@pytest.fixture
def faults(mail):
    lab = mail.lab
    for port, (node, kind, fault, *_) in FAULTS.items():
        if kind == "block":
            lab.block(node, port, fault)
        elif kind == "route":
            for family in (4, 6):
                lab.route(node, fault, port=port, family=family)
    yield mail
    lab.reset_faults()


def run(mail, *args: str, timeout: float = 300) -> Run:
    r = mail.lab.exec("client", [MAILPATH, *args], check=False, timeout=timeout, env=dict(os.environ))
    return Run(r.returncode, r.stdout, r.stderr)


class Tcpdump:
    """tcpdump in the client namespace, writing what crosses its link to r1."""

    def __init__(self, mail, path):
        self.path = path
        self.proc = mail.lab.popen(
            "client",
            [
                "tcpdump",
                "-i",
                "r1",
                "-n",
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-w",
                str(path),
                "tcp or icmp or icmp6",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stderr.readline()
        assert "listening on" in line, line

    def stop(self) -> None:
        # immediate mode hands each packet over as it comes (without it, libpcap's ring
        # holds a block up to a second, and SIGINT drops what was not handed over)
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)


def frames(path) -> list[tuple[float, bytes, list[str]]]:
    out = []
    for data, meta in RawPcapNgReader(str(path)):
        ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
        out.append((ts, data, [c.decode() for c in meta.comments or []]))
    return out


def packet(data: bytes):
    return IPv6(data) if data[0] >> 4 == 6 else IP(data)


def verdicts(items: list[dict], address_key: str = "address") -> dict:
    return {(r[address_key], r["port"]): r["verdict"] for r in items}


def test_probe_pcap_holds_each_syn_and_the_reply_that_decided(faults, tmp_path):
    mail = faults
    out = tmp_path / "probe.pcapng"
    before = time.time()
    r = run(mail, "probe", "good.lab.test", "-p", PORTS, *FAST, "--pcap", str(out), "--json")
    after = time.time()
    assert r.code == 1, r.stderr
    doc = r.json
    results, capture = doc["results"], doc["capture"]
    assert {(x["port"], x["verdict"]) for x in results} == {(p, f[3]) for p, f in FAULTS.items()}
    assert capture["path"] == str(out) and capture["dropped"] == 0
    got = frames(out)
    assert len(got) == capture["packets"]
    stamps = [ts for ts, _, _ in got]
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after
    for res in results:
        ref = f"probe:{res['address']}:{res['port']}"
        mine = capture["frames"][ref]
        assert mine == sorted(mine)
        syns = [n for n in mine if any(c.startswith(f"{ref}: SYN, try") for c in got[n - 1][2])]
        assert len(syns) == res["attempts"], (ref, mine)
        for n in syns:
            tcp = packet(got[n - 1][1])[TCP]
            assert tcp.flags == "S" and tcp.dport == res["port"]
        decided = [
            n for n in mine if any(c.startswith(f"{ref}: decides {res['verdict']}") for c in got[n - 1][2])
        ]
        if res["verdict"] == "filtered":
            assert decided == []
            continue
        (n,) = decided
        assert n > syns[0]
        reply = packet(got[n - 1][1])
        assert reply.src == res["responder"]
        ttl = reply.hlim if res["address"].count(":") else reply.ttl
        assert infer_hop(ttl) == res["responder_hop"]

    # tcpdump (libpcap) reads the file: every frame, numbered as the document numbers them
    dump = subprocess.run(["tcpdump", "-r", str(out), "-n", "-#", "-tt"], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "link-type RAW" in dump.stderr
    lines = [ln for ln in dump.stdout.splitlines() if ln[:6].strip().isdigit()]
    assert len(lines) == capture["packets"]
    by_number = {int(ln.split()[0]): ln for ln in lines}
    for res in results:
        for n in capture["frames"][f"probe:{res['address']}:{res['port']}"]:
            assert res["address"] in by_number[n] or (res["responder"] or "-") in by_number[n]

    # and mailpath pcap reads its own capture with the same verdicts
    back = run(mail, "pcap", str(out), "-p", PORTS, "--json")
    assert back.code == 1, back.stderr
    assert verdicts(back.json["connections"], "server") == verdicts(results)


def test_a_tcpdump_capture_of_each_fault_reads_as_the_probe_said(faults, tmp_path):
    mail = faults
    dump = Tcpdump(mail, tmp_path / "faults.pcap")
    r = run(mail, "probe", "good.lab.test", "-p", PORTS, *FAST, "--json")
    dump.stop()
    assert r.code == 1, r.stderr
    probe = verdicts(r.json["results"])
    back = run(mail, "pcap", str(dump.path), "-p", PORTS, "--json")
    assert back.code == 1, back.stderr
    conns = back.json["connections"]
    assert verdicts(conns, "server") == probe
    assert back.json["capture"]["link_types"] == ["Ethernet"]
    hops = {(c["server"], c["port"]): c["responder_hop"] for c in conns}
    for res in r.json["results"]:
        assert hops[(res["address"], res["port"])] == res["responder_hop"], res
    text = run(mail, "pcap", str(dump.path), "-p", PORTS)
    assert "reset-in-path" in text.stdout and max(len(ln) for ln in text.stdout.splitlines()) <= 80


def test_trace_pcap_names_every_ttl(faults, tmp_path):
    mail = faults
    out = tmp_path / "trace.pcapng"
    address = mail.addresses("good")[0]
    r = run(mail, "trace", f"{address}:28", "--timeout", "0.5", "--pcap", str(out), "--json")
    tr = r.one
    assert tr["verdict"] == "reset-in-path" and tr["responder_hop"] == 2
    refs = r.json["capture"]["frames"]
    assert f"trace:{address}:28/ttl=1" in refs and f"trace:{address}:28/ttl=2" in refs
    got = frames(out)
    expired = [packet(got[n - 1][1]) for n in refs[f"trace:{address}:28/ttl=2"]]
    assert any(p.src == mail.lab.addr("r2") for p in expired)  # r2's time exceeded, for TTL 2
    dump = subprocess.run(["tcpdump", "-r", str(out), "-n"], capture_output=True, text=True)
    assert dump.returncode == 0 and "time exceeded" in dump.stdout
    back = run(mail, "pcap", str(out), "-p", "28", "--json")
    (conn,) = back.json["connections"]
    assert conn["verdict"] == "reset-in-path" and conn["responder_hop"] == 2


def test_diagnose_pcap_holds_the_evidence_refs_of_its_findings(faults, tmp_path):
    mail = faults
    out = tmp_path / "diagnose.pcapng"
    r = run(
        mail,
        "diagnose",
        "good.lab.test",
        "-p",
        "27,30",
        "--no-cloud",
        *FAST,
        "--smtp-timeout",
        "2",
        "--pcap",
        str(out),
        "--json",
    )
    assert r.code == 1, r.stderr
    doc = r.json
    comments = [c for *_, cs in frames(out) for c in cs]
    refs = [e["ref"] for f in doc["findings"] for e in f["evidence"] if e["source"] in ("probe", "trace")]
    assert any(ref.startswith("trace:") for ref in refs) and any(ref.startswith("probe:") for ref in refs)
    for ref in refs:
        if ref.endswith("/gateway"):
            continue
        assert ref in doc["capture"]["frames"], ref
        assert any(c.startswith(ref + ":") for c in comments), ref


def test_a_capture_of_smtp_conversations_says_where_each_stopped(mail, tmp_path):
    dump = Tcpdump(mail, tmp_path / "smtp.pcap")
    cases = {  # (host, port) -> where the conversation stops
        ("refuse", 25): "greeting",
        ("silent", 25): "no-greeting",
        ("broken", 25): "starttls",
        ("broken", 587): "tls-handshake",
        ("good", 587): "tls",
    }
    for host, port in cases:
        # by address, so a slow name lookup on a loaded machine cannot leave a case out
        session = run(
            mail,
            "smtp",
            mail.addresses(host)[0],
            "--server-name",
            f"{host}.lab.test",
            "-p",
            str(port),
            "--timeout",
            "5",
            "--ca-file",
            str(mail.ca_file),
            "--json",
        )
        assert session.one["address"] == mail.addresses(host)[0], (host, port, session.stderr)
    dump.stop()
    back = run(mail, "pcap", str(dump.path), "--json")
    assert back.code == 1, back.stderr
    seen = {}
    for c in back.json["connections"]:
        assert c["verdict"] == "open", c
        seen[(c["server"], c["port"])] = c["smtp"]["stopped"]
    for (host, port), stopped in cases.items():
        assert seen.get((mail.addresses(host)[0], port)) == stopped, (host, port, seen)
