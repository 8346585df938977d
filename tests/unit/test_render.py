"""Human output helpers."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from mailpath.agent.render import port_ranges, print_probe
from mailpath.probes.classify import Verdict
from mailpath.probes.result import ProbeResult
from rich.console import Console


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=200, unique=True))
def test_port_ranges_round_trip(ports):
    text = port_ranges(ports)
    back = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        back += range(int(lo), int(hi or lo) + 1)
    assert back == sorted(ports)


def test_many_results_are_grouped_by_verdict():
    results = [
        ProbeResult("mx", "198.51.100.7", p, Verdict.FILTERED, "raw", "no reply to 3 SYNs in 3.5 s")
        for p in range(20000, 20100)
    ]
    results.append(ProbeResult("mx", "198.51.100.7", 25, Verdict.OPEN, "raw", "SYN-ACK", "198.51.100.7", 3))
    console = Console(width=120, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    print_probe(results, console)
    text = console.export_text()
    assert "20000-20099" in text and "100" in text and "open" in text and text.count("filtered") == 1


def test_report_lines_fit_80_columns_and_never_split_an_address_or_the_cause():
    from mailpath.agent.finding import Agent, Evidence, Finding, Location
    from mailpath.agent.render import print_findings

    v6 = "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe"
    f = Finding(
        agent=Agent(hostname="h", version="0"),
        target="a-rather-long-mail-exchanger-name.subdomain.example.com",
        port=587,
        cause="cloud-config",
        location=Location(kind="hop", hop=2, address=v6),
        headline=f"587 on a-rather-long-mail-exchanger-name.subdomain.example.com: dropped after hop 2 "
        f"({v6}): sg-0123456789abcdef0 blocks it — cloud-config",
        evidence=[Evidence(source="trace", ref=f"trace:{v6}:587/ttl=3", fact=f"silent after {v6} " * 3)],
        remediation=[f"Change security-group sg-0123456789abcdef0: allow TCP 587 to {v6} " * 2],
        severity="error",
    )
    console = Console(width=80, record=True, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    print_findings([f], console)
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "— cloud-config" in text  # the cause stays with the dash
    assert text.count("2001:db8") == text.count(v6)  # every address whole on its line
    assert text.rstrip().endswith("1 target, 1 port: 0 ok, 1 with a problem (cloud-config 1)")


def test_cloud_evaluations_wrap_under_their_indent_within_80_columns():
    from mailpath.agent.render import print_evaluations

    long = (
        "AWS blocks outbound TCP 25 from EC2 instances by default; ask AWS to lift it "
        "(the 'Request to remove email sending limitations' form) or relay through port 587"
    )
    doc = {
        "provider": "aws",
        "instance": {"instance_id": "i-0123456789abcdef0"},
        "destination": {"address": "2001:db8:3::10", "port": 25},
        "verdict": "likely-blocked",
        "blockers": [
            {
                "component": "provider-policy",
                "id": None,
                "rule": None,
                "certain": False,
                "code": "provider-port-25",
                "direction": "egress",
                "message": long,
            }
        ],
        "checked": [
            {
                "component": "security-group",
                "direction": "egress",
                "id": "sg-1",
                "result": "allows",
                "detail": "0/0",
            }
        ],
        "unchecked": [{"action": "ec2:DescribeNetworkAcls", "message": "not read: " + long}],
    }
    console = Console(width=80, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    print_evaluations([doc], console)
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80, lines
    blocker = next(i for i, ln in enumerate(lines) if ln.startswith("  provider-port-25 provider-policy"))
    assert lines[blocker + 1].startswith("      ") and lines[blocker + 1].strip(), lines  # hangs
    table = next(i for i, ln in enumerate(lines) if ln.startswith("checked "))
    told = lines[1:table] + lines[table + 2 :]  # all but the first line and the table's
    assert all(ln.startswith(" ") for ln in told if ln.strip()), lines  # nothing back at column 0
    text = " ".join(" ".join(lines).split())
    assert "likely blocked: provider policy" in text and long in text
