"""Human output helpers."""

from __future__ import annotations

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
